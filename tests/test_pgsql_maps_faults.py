"""A pgsql: access map whose database is down: Postfix defers (4xx), it does not accept; the audit
says so and names what this site chose; relaywatch says the blocks are not in force (not answered)
and in force again once Postfix's own client reads them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relaywatch.postfix.audit import run_audit
from relaywatch.postfix.audit_blocks import AuditMaps
from relaywatch.postfix.commands import Postfix
from relaywatch.respond.blocking import Blocker, MapState, maps_from_config
from relaywatch.store.sqlite import Store
from support.pgsql_blocks import cfs, insert, need_parts, prepare
from support.postfix_rig import PostfixRig
from support.postgres import PostgresServer

pytestmark = pytest.mark.postfix


@pytest.fixture
def rig(postgres_private: PostgresServer) -> Iterator[PostfixRig]:
    """A pgsql rig on the test's own PostgreSQL."""
    need_parts()
    postgres_private.dbname = "relaywatch"
    prepare(postgres_private)
    own = PostfixRig.start("pgsql", cfs(postgres_private))
    try:
        yield own
    finally:
        own.stop()


def test_database_down_defers_mail_and_the_audit_says_so(postgres_private: PostgresServer, rig: PostfixRig,
                                                          tmp_path: Path) -> None:
    pg = postgres_private
    assert rig.sasl_list is not None
    insert(pg, "client", "218.144.1.2")
    blocker = Blocker(Store(str(tmp_path / "state.db")), Postfix(rig.config_directory),
                      maps_from_config(str(rig.reject_list), str(rig.sasl_list), "hash",
                                       config_directory=rig.config_directory), 3600)
    blocker.block("client", "218.144.1.2", "relay abuse")
    assert blocker.sync().state is MapState.IN_FORCE
    assert rig.send("127.0.0.9")[0] == 250

    pg.stop(remove=False)
    code, text = rig.send("127.0.0.9")  # a real RCPT: deferred, not accepted
    assert code == 451 and text.startswith("4.3.5 ")
    assert rig.send("127.0.0.9", xclient_addr="218.144.1.2")[0] == 451
    blocker.block("client", "218.144.1.3", "relay abuse")
    result = blocker.sync()
    assert result.state is MapState.NOT_ANSWERED and "Connection refused" in (result.error or "")
    found = [f for f in run_audit(rig.config_directory, AuditMaps(str(rig.reject_list), str(rig.sasl_list)))
             if f.code == "pgsql-map-defers"]
    assert [f.details["map"] for f in found] == [str(rig.reject_list), str(rig.sasl_list)]
    assert f"one server (inet:127.0.0.1:{pg.port})" in found[0].explanation
    assert "each smtpd process asks PostgreSQL itself (main.cf: smtpd_client_restrictions)" in found[0].explanation
    assert "451 4.3.5" in found[0].explanation and found[0].severity == "warning"

    pg.restart()  # it is stopped: this starts it on the same data and port
    insert(pg, "client", "218.144.1.3")
    assert blocker.sync().state is MapState.IN_FORCE  # postmap is a new process: no 60 s wait
    pids = rig.smtpd_pids()
    rig.reload()  # smtpd processes that saw the failure wait 60 s otherwise
    rig.wait_for_exit(pids)
    assert rig.send("127.0.0.9")[0] == 250
    assert rig.send("127.0.0.9", xclient_addr="218.144.1.3")[0] == 554
