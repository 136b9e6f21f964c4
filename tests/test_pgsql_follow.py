"""Hosts that keep hash: maps follow the fleet's blocks: on a NOTIFY relaywatch_blocks the follower
renders the local map from the table's rows and a real Postfix refuses the block at its next session.

The LISTEN side is t18-store's (relaywatch/store/postgres.py imports the driver); until it lands,
`TableChanges` stands in for it: its notices are the test's, its rows come from the real table."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaywatch.core.blocks_table import DDL
from relaywatch.postfix.commands import Postfix
from relaywatch.respond.blocking import maps_from_config
from relaywatch.respond.pgsql_follow import BlockFollower
from relaywatch.store.records import BlockRow
from support.pgsql_blocks import insert
from support.postfix_rig import PostfixRig
from support.postgres import PostgresServer

pytestmark = pytest.mark.postfix


class TableChanges:
    def __init__(self, pg: PostgresServer) -> None:
        self.pg = pg
        self.notices = 0

    def wait(self, timeout: float) -> bool:
        came, self.notices = self.notices > 0, 0
        return came

    def blocks(self, now: float) -> list[BlockRow]:
        out = self.pg.psql("SELECT kind, target, reason, rule, since, until, offences FROM relaywatch_blocks "
                           f"WHERE until IS NULL OR until > {now}")
        rows = []
        for line in out.splitlines():
            kind, target, reason, rule, since, until, offences = line.split("|")
            rows.append(BlockRow(kind, target, reason, rule, float(since), float(until) if until else None,
                                 int(offences)))
        return rows


def test_a_notice_resyncs_the_hash_map(postgres: PostgresServer, postfix_instance: PostfixRig) -> None:
    rig = postfix_instance
    Path(rig.reject_list.path).write_bytes(b"")
    postgres.psql(DDL)
    changes = TableChanges(postgres)
    maps = maps_from_config(str(rig.reject_list), "", "hash", config_directory=rig.config_directory)
    follower = BlockFollower(changes, maps, Postfix(rig.config_directory))
    assert follower.step(0) is None  # no notice: nothing read, nothing written
    assert rig.send("127.0.0.9")[0] == 250

    insert(postgres, "subnet", "127.0.0.0/24", host="mx2")  # another host decided it
    changes.notices += 1
    pids = rig.smtpd_pids()
    assert follower.step(0) == [str(rig.reject_list)]
    rig.wait_for_exit(pids)
    code, text = rig.send("127.0.0.9")
    assert code == 554 and "blocked by relaywatch: manual: relay abuse" in text
    assert "127.0.0 REJECT" in Path(rig.reject_list.path).read_text()

    postgres.psql("UPDATE relaywatch_blocks SET until = 1")  # expired (or deleted) on the other host
    changes.notices += 1
    pids = rig.smtpd_pids()
    assert follower.step(0) == [str(rig.reject_list)]
    rig.wait_for_exit(pids)
    assert rig.send("127.0.0.9")[0] == 250
    changes.notices += 1
    assert follower.step(0) == []  # the map already holds the rows: no postmap, no reload
