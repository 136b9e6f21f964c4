"""Postfix reads relaywatch's blocks straight from PostgreSQL (issue 18): three private Postfix
instances with pgsql: access maps on one relaywatch_blocks table in a private PostgreSQL 15,
real SMTP sessions to 127.0.0.1 (XCLIENT supplies the client address Postfix judges)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from relaywatch.core.blocks_table import READ_ROLE
from relaywatch.model import ConfigError
from relaywatch.postfix.commands import Postfix
from relaywatch.postfix.mapguard import ForeignMap
from relaywatch.postfix.mapkeys import MapSpec
from relaywatch.postfix.maps import AccessMap
from relaywatch.respond.blocking import Blocker, MapState, maps_from_config
from relaywatch.store.sqlite import Store
from support.pgsql_blocks import cfs, insert, need_parts, prepare
from support.postfix_rig import PostfixRig
from support.postgres import PostgresServer

pytestmark = pytest.mark.postfix


@dataclass
class Fleet:
    pg: PostgresServer
    rigs: list[PostfixRig]

    def replies(self, addr: str, login: str | None = None) -> list[tuple[int, str]]:
        """Each instance's answer to a NEW session judged as client `addr` (and SASL login)."""
        return [rig.send("127.0.0.9", xclient_addr=addr, xclient_login=login) for rig in self.rigs]


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    need_parts()
    pg = PostgresServer.start()
    rigs: list[PostfixRig] = []
    try:
        pg.createdb("relaywatch")
        prepare(pg)
        for _ in range(3):
            rigs.append(PostfixRig.start("pgsql", cfs(pg)))
        yield Fleet(pg, rigs)
    finally:
        for rig in rigs:
            rig.stop()
        pg.stop()


@pytest.fixture
def blocks(fleet: Fleet) -> Iterator[Fleet]:
    fleet.pg.psql("DELETE FROM relaywatch_blocks")
    yield fleet
    fleet.pg.psql("DELETE FROM relaywatch_blocks")


def refused(reply: tuple[int, str]) -> bool:
    return reply[0] == 554 and "blocked by relaywatch: manual: relay abuse" in reply[1]


def test_a_row_written_once_is_refused_by_every_instance_at_the_next_rcpt(blocks: Fleet) -> None:
    assert not any(refused(r) for r in blocks.replies("218.144.1.2"))
    insert(blocks.pg, "client", "218.144.1.2")
    assert all(refused(r) for r in blocks.replies("218.144.1.2"))  # no postmap, no reload
    assert not any(refused(r) for r in blocks.replies("218.144.1.3"))


@pytest.mark.parametrize(("network", "inside", "outside"), [
    ("218.144.0.0/16", "218.144.77.5", "218.145.0.1"),
    ("61.177.3.0/24", "61.177.3.200", "61.177.4.1"),
    ("2a01:4f8:10:2::/64", "IPV6:2a01:4f8:10:2::25", "IPV6:2a01:4f8:10:3::25"),
])
def test_partial_keys_as_access5_asks_them(blocks: Fleet, network: str, inside: str, outside: str) -> None:
    insert(blocks.pg, "subnet", network)
    assert all(refused(r) for r in blocks.replies(inside))
    assert not any(refused(r) for r in blocks.replies(outside))


def test_a_sasl_login_is_refused_by_every_instance(blocks: Fleet) -> None:
    assert [r[0] for r in blocks.replies("127.0.0.9", login="alice@woodelf.example")] == [250] * 3
    insert(blocks.pg, "sasl_user", "alice@woodelf.example")
    assert all(refused(r) for r in blocks.replies("127.0.0.9", login="alice@woodelf.example"))
    assert [r[0] for r in blocks.replies("127.0.0.9", login="bob@woodelf.example")] == [250] * 3


def test_an_expired_block_stops_matching_at_once(blocks: Fleet) -> None:
    insert(blocks.pg, "client", "203.0.114.7", until=time.time() - 1)
    insert(blocks.pg, "client", "218.144.9.9", until=time.time() + 3600)
    assert not any(refused(r) for r in blocks.replies("203.0.114.7"))
    assert all(refused(r) for r in blocks.replies("218.144.9.9"))
    blocks.pg.psql("UPDATE relaywatch_blocks SET until = extract(epoch FROM now()) - 1")  # its time came
    assert not any(refused(r) for r in blocks.replies("218.144.9.9"))


def blocker_for(rig: PostfixRig, tmp_path: Path) -> Blocker:
    assert rig.sasl_list is not None
    maps = maps_from_config(str(rig.reject_list), str(rig.sasl_list), "hash",
                            config_directory=rig.config_directory)
    return Blocker(Store(str(tmp_path / "state.db")), Postfix(rig.config_directory), maps, 3600)


def test_a_block_is_in_force_when_postfix_answers_it(blocks: Fleet, tmp_path: Path) -> None:
    rig = blocks.rigs[0]
    blocker = blocker_for(rig, tmp_path)
    blocker.block("subnet", "218.144.0.0/16", "relay abuse")
    result = blocker.sync()  # the store has it, PostgreSQL does not yet: Postfix would accept
    assert result.state is MapState.NOT_ANSWERED and result.fault_began
    assert "does not answer REJECT for subnet 218.144.0.0/16 (key 218.144)" in (result.error or "")
    insert(blocks.pg, "subnet", "218.144.0.0/16")
    assert blocker.sync().state is MapState.IN_FORCE
    assert sorted(os.listdir(rig.config_directory)) == ["main.cf", "master.cf", "relaywatch-clients.cf",
                                                        "relaywatch-sasl.cf"]  # no map file, no postmap


@pytest.mark.parametrize(("fault", "said"), [
    ("password", "password authentication failed for user \"relaywatch_postfix\""),
    ("grant", "permission denied for table relaywatch_blocks"),
])
def test_a_block_postfix_cannot_read_is_not_in_force(blocks: Fleet, tmp_path: Path, fault: str, said: str) -> None:
    rig = blocks.rigs[1]
    insert(blocks.pg, "client", "218.144.1.2")
    blocker = blocker_for(rig, tmp_path)
    blocker.block("client", "218.144.1.2", "relay abuse")
    assert blocker.sync().state is MapState.IN_FORCE
    if fault == "password":
        rig.write_cf(rig.reject_list, cfs(blocks.pg, password="not-the-password")["client"])
    else:
        blocks.pg.psql(f"REVOKE SELECT ON relaywatch_blocks FROM {READ_ROLE}")
    try:
        blocker.block("client", "218.144.1.3", "relay abuse")
        insert(blocks.pg, "client", "218.144.1.3")
        result = blocker.sync()
        assert result.state is MapState.NOT_ANSWERED
        assert said in (result.error or "") and "cannot read the blocks" in (result.error or "")
    finally:
        rig.write_cf(rig.reject_list, cfs(blocks.pg)["client"])
        blocks.pg.psql(f"GRANT SELECT ON relaywatch_blocks TO {READ_ROLE}")
    assert blocker.pending  # retried (1 s doubling): in force once Postfix can read the rows again
    assert blocker.sync().state is MapState.IN_FORCE


def test_map_safety_accepts_a_pgsql_spec_and_checks_its_cf(tmp_path: Path) -> None:
    """mapguard's file rules do not refuse pgsql:, but the .cf (a password) must be safe."""
    etc = tmp_path / "etc"
    etc.mkdir()
    cf = etc / "relaywatch-clients.cf"
    cf.write_text("hosts = inet:127.0.0.1:5432\n")
    cf.chmod(0o640)

    def load(spec: str) -> None:
        maps_from_config(spec, "", "hash", config_directory=str(etc))

    load(f"pgsql:{cf}")
    load(f"pgsql:{etc}/not-yet-installed.cf")  # install-maps writes it; until then: not in force
    cf.chmod(0o644)
    with pytest.raises(ConfigError, match="readable by every user .* chmod 0640"):
        load(f"pgsql:{cf}")
    (etc / "link.cf").symlink_to(cf)
    with pytest.raises(ForeignMap, match="symbolic link"):
        load(f"pgsql:{etc}/link.cf")
    with pytest.raises(ForeignMap, match="keep it in the Postfix configuration directory"):
        load(f"pgsql:{tmp_path}/elsewhere.cf")
    with pytest.raises(ForeignMap, match="Postfix's own configuration file"):
        load(f"pgsql:{etc}/main.cf")
    with pytest.raises(ValueError, match="read from a database"):
        AccessMap(MapSpec("pgsql", str(cf)))  # a REJECT line never lands in a password file
