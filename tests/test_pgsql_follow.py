"""Hosts that keep hash: maps follow the fleet's blocks: a running daemon (`relaywatch run`) on a
PostgreSQL store LISTENs for relaywatch_blocks, and a block another host records, lifts or expires is
in (or out of) this host's hash map, refused (or accepted) by its real Postfix, without a line of its
own log. The follower alone: a NOTIFY raises its flag; PostgreSQL away is said once and retried."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path

import pytest

from relaywatch.build import block_keys
from relaywatch.respond import pgsql_follow
from relaywatch.respond.pgsql_follow import BlockFollower
from relaywatch.store.postgres import Store
from relaywatch.store.records import BlockRow
from support.configs import rig_sections, write_config
from support.postfix_rig import PostfixRig
from support.postgres import PostgresServer
from support.waiting import wait_for
from test_daemon import start

pytestmark = pytest.mark.postfix

NET = "127.0.0.0/24"  # the rig's clients send from 127.0.0.N


def answer(rig: PostfixRig, key: str) -> str:
    """What the hash map Postfix reads answers for `key` ("" for nothing)."""
    out = subprocess.run(["postmap", "-c", rig.config_directory, "-q", key, str(rig.reject_list)],
                         capture_output=True, text=True)
    return out.stdout.strip()


def test_a_block_another_host_records_lifts_or_expires_is_in_this_hosts_hash_map(
        postgres: PostgresServer, postfix_instance: PostfixRig, tmp_path: Path) -> None:
    rig = postfix_instance
    cfg = write_config(tmp_path / "rw.toml", rig_sections(rig, tmp_path, database=postgres.url()),
                       {"fleet": {"host": "mx1"}}, mode=0o600)
    proc = start(cfg, tmp_path / "daemon.err")
    mx2 = Store(postgres.url(), host="mx2", block_keys=block_keys)
    try:
        wait_for(lambda: "mx1" in [h.host for h in mx2.hosts() if h.last_contact], what="mx1's daemon running")
        assert answer(rig, "127.0.0") == "" and rig.send("127.0.0.9")[0] == 250

        now = time.time()
        mx2.add_block(BlockRow("subnet", NET, "relay abuse", "subnet", now, now + 3600))
        assert wait_for(lambda: answer(rig, "127.0.0"), 15, "mx2's block in mx1's map").startswith("REJECT")
        code, text = wait_for(lambda: (r := rig.send("127.0.0.9"))[0] != 250 and r, 15, "mx1's Postfix refusing")
        assert code == 554 and "relay abuse" in text

        assert mx2.remove_block("subnet", NET)  # `relaywatch unblock` on mx2
        wait_for(lambda: answer(rig, "127.0.0") == "", 15, "the unblock in mx1's map")
        wait_for(lambda: rig.send("127.0.0.9")[0] == 250, 15, "mx1's Postfix accepting again")

        now = time.time()
        mx2.add_block(BlockRow("client", "127.0.0.9", "relay abuse", "client", now, now + 3600))
        wait_for(lambda: answer(rig, "127.0.0.9"), 15, "the second block in mx1's map")
        assert [b.target for b in mx2.expire_blocks(now + 7200)] == ["127.0.0.9"]  # mx2's clock: expired
        wait_for(lambda: answer(rig, "127.0.0.9") == "", 15, "the expiry in mx1's map")
    finally:
        mx2.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    said = (tmp_path / "daemon.err").read_text()
    assert "Traceback" not in said, said


def test_the_follower_raises_its_flag_on_a_notice_and_says_once_when_postgres_is_away(
        postgres_private: PostgresServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    pg = postgres_private
    monkeypatch.setattr(pgsql_follow, "RETRY_S", 0.1)
    mx1, mx2 = (Store(pg.url(), host=h, block_keys=block_keys) for h in ("mx1", "mx2"))
    follower = BlockFollower(mx1.block_changes())
    assert follower.step(0) and follower.take()  # the first LISTEN: whatever changed before is read once
    assert not follower.step(0.2) and not follower.take()
    now = time.time()
    mx2.add_block(BlockRow("client", "198.51.100.7", "relay abuse", "client", now, now + 60))
    assert follower.step(5) and follower.take() and not follower.take()
    mx2.close()
    pg.stop(remove=False)
    with caplog.at_level(logging.INFO):
        assert not follower.step(0.2) and not follower.step(0.2)
        pg.pid = PostgresServer._boot(pg.root, pg.port).pid
        assert wait_for(lambda: follower.step(0.2), 30, "the LISTEN again")  # may have changed meanwhile
    said = [r.getMessage() for r in caplog.records]
    assert len([m for m in said if m.startswith("cannot follow the fleet's blocks")]) == 1, said
    assert "following the fleet's blocks again" in said
    follower.stop()
    mx1.close()
