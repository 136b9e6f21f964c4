"""The daemon under faults and restarts: a second daemon, a locked or full store, SIGKILL at the
worst moment, broken bytes in the configuration. Real processes, real SQLite files, a real
Postfix where the map must be in force, a real tmpfs filled up.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from relaywatch.config import load
from relaywatch.daemon import Daemon
from relaywatch.notify.notices import PREFIX
from relaywatch.store import sqlite as store_mod
from relaywatch.store import sqlite_file
from relaywatch.store.records import MapPending
from relaywatch.store.sqlite import BlockRow, Store
from support.configs import Sections, daemon_sections, write_config
from support.waiting import wait_for
from test_daemon import position, start
from test_hostile_faults import fill, tiny_disk  # noqa: F401 - a fixture


def messages(n: int, client: str = "203.0.113.50", first: int = 0, sender: str = "news@woodelf.org") -> str:
    """`n` relayed messages of `client`, stamped now (the daemon's day and windows are wall time)."""
    out = []
    for i in range(first, first + n):
        stamp = datetime.now().astimezone().isoformat()
        qid = f"{0xB00000 + i:X}"
        out.append(f"{stamp} mx postfix/smtpd[10]: {qid}: client=unknown[{client}]\n"
                   f"{stamp} mx postfix/qmgr[11]: {qid}: from=<{sender}>, size=900, nrcpt=1 (queue active)\n"
                   f"{stamp} mx postfix/smtp[12]: {qid}: to=<u{i}@victim.example>, relay=mx.victim.example"
                   f"[192.0.2.25]:25, delay=1, status=sent (250 ok)\n"
                   f"{stamp} mx postfix/qmgr[11]: {qid}: removed\n")
    return "".join(out)


def config(tmp_path: Path, db: Path | None = None, postfix: dict | None = None, extra: Sections | None = None) -> Path:
    """A daemon without Postfix (unless `postfix` names one), local domain woodelf.org, clients blocked at 5."""
    return write_config(tmp_path / "rw.toml", daemon_sections(tmp_path, database=db),
                        {"postfix": {"local_domains": ["woodelf.org"], **(postfix or {})}, "allow": {"networks": []},
                         "rules.client": {"threshold": 5}}, extra or {}, mode=0o600)


def rows(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


def started(cfg: Path, err: Path) -> subprocess.Popen:
    proc = start(cfg, err)
    wait_for(lambda: "following file:" in err.read_text() or proc.poll() is not None, what="the daemon to start")
    return proc


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0


def read_to_end(cfg: Path, db: Path) -> None:
    """Run a daemon until it has read the whole log, then stop it cleanly."""
    maillog = Path(load(cfg).source_path)
    proc = started(cfg, cfg.parent / "daemon.err")
    try:
        wait_for(lambda: (position(db, f"file:{maillog}") or {}).get("offset") == maillog.stat().st_size, 60,
                 "the end of the log")
    finally:
        stop(proc)


# --- item 7: one daemon per state database; writers start as writers ----------------------------------


def test_a_second_daemon_on_the_same_database_exits_with_a_clear_message(tmp_path):
    cfg = config(tmp_path)
    first = started(cfg, tmp_path / "first.err")
    try:
        second = subprocess.run([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)], capture_output=True,
                                text=True, timeout=30)
        assert second.returncode == 1
        assert (f"another relaywatch run (pid {first.pid}) already uses the state database {tmp_path / 'state.db'}:"
                " one daemon per database" in second.stderr)
        assert first.poll() is None
    finally:
        stop(first)
    again = started(cfg, tmp_path / "again.err")  # the lock goes with its process
    stop(again)


def test_a_write_that_reads_first_is_not_broken_by_another_writer(tmp_path):
    path = tmp_path / "state.db"
    store = Store(path)
    store.add_block(BlockRow("client", "192.0.2.1", "test", "manual", 100.0, 200.0))
    other = sqlite3.connect(path, isolation_level=None, timeout=0.2)
    reads = store.blocks
    interrupted = []

    def blocks_then_another_writer_commits(now=None):
        found = reads(now)
        try:  # between expire_blocks' read and its delete, another connection writes
            other.execute("INSERT INTO meta (key, value) VALUES ('other', '1')")
        except sqlite3.OperationalError as exc:
            interrupted.append(str(exc))  # it has to wait: the transaction began as a writer
        return found

    store.blocks = blocks_then_another_writer_commits
    gone = store.expire_blocks(300.0)
    assert [b.target for b in gone] == ["192.0.2.1"] and interrupted == ["database is locked"]
    other.execute("INSERT INTO meta (key, value) VALUES ('other', '1')")  # and may go on once it committed
    other.close()


# --- item 13: a decision, its block and the read position commit together -------------------------------


def test_sigkill_right_after_a_block_never_loses_its_decision(tmp_path):
    cfg = config(tmp_path)
    db = tmp_path / "state.db"
    read_to_end(cfg, db)  # a stored position: the next daemon reads the log from its start
    (tmp_path / "mail.log").write_text(messages(8))
    pid = os.fork()
    if pid == 0:  # the child: a daemon that dies by SIGKILL as it writes the batch that blocked
        try:
            committed = Store.commit_batch

            def dying(self, counts, decisions=(), *args, **kwargs):
                decisions = list(decisions)
                if any(d.action == "block" for d in decisions):
                    os.kill(os.getpid(), signal.SIGKILL)
                return committed(self, counts, decisions, *args, **kwargs)

            Store.commit_batch = dying
            logging.disable(logging.CRITICAL)
            Daemon(str(cfg), load(cfg)).run()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    blocks = rows(db, "SELECT target FROM blocks")
    decided = rows(db, "SELECT target FROM decisions WHERE action = 'block'")
    assert blocks == decided  # both or neither: never a block whose decision is lost
    read_to_end(cfg, db)
    assert rows(db, "SELECT target FROM blocks") == [("203.0.113.50",)]
    assert rows(db, "SELECT target FROM decisions WHERE action = 'block'") == [("203.0.113.50",)]


# --- issue 15: commits coalesced over many batches, still exactly once --------------------------------------


@pytest.mark.parametrize("kill_at", [13, 57, 150, 231])
def test_sigkill_between_coalesced_commits_loses_and_repeats_nothing(tmp_path, kill_at):
    """Batches of 7 lines, committed only with the heartbeat (every third batch), on a decision or when
    the log is quiet: SIGKILL at line `kill_at` leaves lines fed but not committed; the next daemon
    reads exactly those again. Counts, the day's record and the decisions come out as one clean run's."""
    cfg = config(tmp_path, extra={"rules.sender": {"threshold": 40}})
    db, maillog = tmp_path / "state.db", tmp_path / "mail.log"
    read_to_end(cfg, db)  # a stored position: the next daemon reads the log from its start
    maillog.write_text(messages(60))
    pid = os.fork()
    if pid == 0:  # the child: coalescing daemon that dies by SIGKILL as it feeds line `kill_at`
        try:
            from relaywatch import daemon as daemon_mod
            from relaywatch.engine import Pipeline

            daemon_mod.BATCH_LINES, daemon_mod.COMMIT_LINES = 7, 10**9
            fed, feed = [0], Pipeline.feed

            def dying(self, line, parser):
                fed[0] += 1
                if fed[0] == kill_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                return feed(self, line, parser)

            Pipeline.feed = dying
            logging.disable(logging.CRITICAL)
            d = Daemon(str(cfg), load(cfg))
            for step in range(1, 1000):
                d.step()
                if step % 3 == 0:
                    d.housekeeping(time.time())
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    stored = (position(db, f"file:{maillog}") or {}).get("offset", 0)
    assert 0 <= stored < maillog.stat().st_size  # lines were fed and not committed when it died
    read_to_end(cfg, db)
    assert rows(db, "SELECT sum(n) FROM counts WHERE dim = 'client'") == [(60,)]
    assert rows(db, "SELECT sum(n) FROM counts WHERE dim = 'sender'") == [(60,)]
    assert json.loads(rows(db, "SELECT value FROM meta WHERE key = 'day_current'")[0][0])["relayed"] == 60
    assert rows(db, "SELECT action, kind, target FROM decisions ORDER BY id") == [
        ("block", "client", "203.0.113.50"), ("alert", "sender", "news@woodelf.org")]


def test_batches_coalesce_until_a_decision_which_commits_at_once(tmp_path, monkeypatch):
    from relaywatch import daemon as daemon_mod

    monkeypatch.setattr(daemon_mod, "BATCH_LINES", 8)
    cfg = config(tmp_path)
    db, maillog = tmp_path / "state.db", tmp_path / "mail.log"
    daemon = Daemon(str(cfg), load(cfg))
    try:
        run_batches(daemon)  # the first position
        first = position(db, f"file:{maillog}")
        maillog.write_text(messages(2))  # 8 lines, no decision
        assert not daemon.step()
        assert position(db, f"file:{maillog}") == first  # fed, not yet committed
        with open(maillog, "a") as f:
            f.write(messages(3, first=2))  # the 5th message crosses the client rule
        daemon.step()
        daemon.step()
        decided = rows(db, "SELECT action, target FROM decisions")
        assert decided == [("block", "203.0.113.50")]  # committed by the batch that decided, not later
        assert rows(db, "SELECT sum(n) FROM counts WHERE dim = 'client'") == [(5,)]
    finally:
        daemon.close()


# --- item 15: the day's counts commit with the batch ----------------------------------------------------


def test_after_sigkill_the_report_shows_the_true_relayed_count_and_blocks(tmp_path):
    cfg = config(tmp_path)
    db, maillog = tmp_path / "state.db", tmp_path / "mail.log"
    proc = started(cfg, tmp_path / "daemon.err")
    try:
        wait_for(lambda: position(db, f"file:{maillog}"), what="the first position")
        with open(maillog, "a") as f:
            f.write(messages(37))
        wait_for(lambda: (position(db, f"file:{maillog}") or {}).get("offset") == maillog.stat().st_size, 60,
                 "the end of the log")
    finally:
        proc.kill()
        proc.wait()
    done = subprocess.run([sys.executable, "-m", "relaywatch", "report", "--format", "json", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["relayed"] == 37
    assert [(d["action"], d["target"]) for d in report["decisions"]] == [("block", "203.0.113.50")]


# --- item 14: alert quiet periods outlive restarts ----------------------------------------------------


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_an_alert_is_not_sent_again_after_a_restart(tmp_path, how):
    cfg = config(tmp_path, extra={"rules.sender": {"threshold": 3}})
    db, maillog = tmp_path / "state.db", tmp_path / "mail.log"
    for first in (0, 10, 20):  # three restarts, each with more of the same sender's mail
        proc = started(cfg, tmp_path / "daemon.err")
        try:
            wait_for(lambda: position(db, f"file:{maillog}"), what="the first position")
            with open(maillog, "a") as f:
                f.write(messages(4, client=f"203.0.113.{60 + first}", first=first))
            wait_for(lambda: (position(db, f"file:{maillog}") or {}).get("offset") == maillog.stat().st_size, 60,
                     "the end of the log")
        finally:
            proc.send_signal(how)
            proc.wait(timeout=15)
    assert rows(db, "SELECT action, kind, target FROM decisions WHERE action = 'alert'") == [
        ("alert", "sender", "news@woodelf.org")]


# --- item 9: the store cannot be written: keep going, lose nothing ----------------------------------------


@pytest.fixture
def short_lock_wait(monkeypatch):
    monkeypatch.setattr(sqlite_file, "BUSY_TIMEOUT_S", 0.2)
    monkeypatch.setattr(store_mod, "OUTAGE_RETRY_S", 0.0)


def run_batches(daemon: Daemon, n: int = 30) -> None:
    for _ in range(n):
        if daemon.step():
            return


@pytest.mark.postfix
def test_a_locked_store_keeps_the_daemon_detecting_and_blocking_and_loses_nothing(
        postfix_instance, tmp_path, short_lock_wait, caplog):
    rig = postfix_instance
    db, maillog = tmp_path / "state.db", tmp_path / "mail.log"
    cfg_path = config(tmp_path, postfix={"client_access_map": str(rig.reject_list),
                                         "config_directory": rig.config_directory})
    daemon = Daemon(str(cfg_path), load(cfg_path))
    other = sqlite3.connect(db, isolation_level=None)
    try:
        run_batches(daemon)  # the first position
        other.execute("BEGIN IMMEDIATE")  # an admin's sqlite3 shell, in the middle of a write
        with open(maillog, "a") as f:
            f.write(messages(12, client="127.0.0.9"))
        with caplog.at_level(logging.ERROR, "relaywatch.daemon"):
            run_batches(daemon)
            with open(maillog, "a") as f:
                f.write(messages(3, client="127.0.0.9", first=12))
            run_batches(daemon)
            daemon.housekeeping(time.time())
        assert daemon.pipeline.totals.relayed == 15  # detection went on in memory
        assert rig.send("127.0.0.9")[0] == 554  # and the block is in force through the map
        assert rig.send("127.0.0.10")[0] == 250
        said = [r for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(said) == 1 and "keeps following the log, detecting and blocking" in said[0].getMessage()
        assert rows(db, "SELECT count(*) FROM decisions") == [(0,)]
        other.execute("ROLLBACK")  # the lock goes away: the backlog is written
        run_batches(daemon)
        assert daemon.store.unavailable is None
    finally:
        other.close()
        daemon.close()
        subprocess.run([sys.executable, "-m", "relaywatch", "unblock", "127.0.0.9", "-c", str(cfg_path)],
                       capture_output=True)
    assert rows(db, "SELECT action, target FROM decisions WHERE action != 'unblock'") == [("block", "127.0.0.9")]
    assert rows(db, "SELECT sum(n) FROM counts WHERE dim = 'client'") == [(15,)]
    assert position(db, f"file:{maillog}")["offset"] == maillog.stat().st_size
    assert json.loads(rows(db, "SELECT value FROM meta WHERE key = 'day_current'")[0][0])["relayed"] == 15


def test_a_full_state_disk_keeps_the_daemon_running_and_loses_nothing(tmp_path, tiny_disk):  # noqa: F811
    db, maillog = tiny_disk / "state.db", tmp_path / "mail.log"
    cfg = config(tmp_path, db=db)
    err = tmp_path / "daemon.err"
    proc = started(cfg, err)
    try:
        wait_for(lambda: position(db, f"file:{maillog}"), what="the first position")
        filler = fill(tiny_disk)
        with open(maillog, "a") as f:
            f.write(messages(40))
        wait_for(lambda: "the disk is full" in err.read_text(), what="the fault to be noticed")
        time.sleep(2)  # under systemd this used to be exit 1 and a restart loop
        assert proc.poll() is None
        assert err.read_text().count("cannot write its state database") + err.read_text().count(
            "keeps following the log") == 1
        filler.unlink()
        wait_for(lambda: (position(db, f"file:{maillog}") or {}).get("offset") == maillog.stat().st_size, 60,
                 "the backlog to be written")
        # said after the commit that wrote the backlog: the position can be read a moment before the words
        wait_for(lambda: "the state database can be written again" in err.read_text(), what="the recovery to be said")
    finally:
        stop(proc)
    assert rows(db, "SELECT sum(n) FROM counts WHERE dim = 'client'") == [(40,)]
    assert rows(db, "SELECT action, target FROM decisions") == [("block", "203.0.113.50")]


# --- item 10: bytes that are not UTF-8, NUL ----------------------------------------------------------------


@pytest.mark.parametrize("bad, reason", [
    (b'[source]\npath = "/var/log/m\xe4il.log"\n', "line 2: byte 0xE4 is not UTF-8"),
    (b'[source]\npath = "/var/log/m\x00il.log"\n', "not valid TOML: Illegal character"),
    (b'[source]\npath = "/var/log/m\\u0000il.log"\n', "[source] path: '/var/log/m\\x00il.log' holds the control"
                                                      " character U+0000"),
])
def test_bad_bytes_in_the_config_are_refused_with_exit_78(tmp_path, bad, reason):
    cfg = tmp_path / "rw.toml"
    cfg.write_bytes(bad)
    cfg.chmod(0o600)
    done = subprocess.run([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 78 and reason in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_sighup_with_bad_bytes_keeps_the_old_config_and_the_daemon(tmp_path):
    cfg = config(tmp_path)
    good = cfg.read_bytes()
    err = tmp_path / "daemon.err"
    proc = started(cfg, err)
    try:
        for bad in (good + b"# caf\xe9\n", good.replace(b"mail.log", b"mail\\u0000.log")):
            cfg.write_bytes(bad)
            proc.send_signal(signal.SIGHUP)
            refusals = 2 if b"u0000" in bad else 1
            wait_for(lambda refusals=refusals: err.read_text().count("keeping the old configuration") == refusals,
                     what="the reload to be refused")
            assert proc.poll() is None
        assert "is not UTF-8" in err.read_text() and "control character U+0000" in err.read_text()
    finally:
        stop(proc)


def test_a_store_in_degrade_mode_keeps_blocks_and_meta_in_memory_until_it_can_write(tmp_path, short_lock_wait):
    path = tmp_path / "state.db"
    store = Store(path, degrade=True)
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        store.add_block(BlockRow("client", "192.0.2.5", "flood", "client", 100.0, None))
        store.map_state.set_pending(MapPending(100.0))
        assert [b.target for b in store.blocks(200.0)] == ["192.0.2.5"]
        assert store.map_state.pending() == MapPending(100.0) and store.backlog == 2
        with pytest.raises(store_mod.StoreUnavailable):
            store.commit_batch([("client", 1, "192.0.2.5", 1)])
    finally:
        other.execute("ROLLBACK")
        other.close()
    store.commit_batch([("client", 1, "192.0.2.5", 1)])
    assert store.backlog == 0 and store.unavailable is None
    store.close()
    again = Store(path)
    assert [(b.target, b.offences) for b in again.blocks(200.0)] == [("192.0.2.5", 1)]
    assert again.map_state.pending() == MapPending(100.0)
    again.close()


def test_a_notification_cooldown_outlives_a_restart(tmp_path, sink):
    cfg = config(tmp_path, extra={"rules.sender": {"threshold": 3},
                                  "notify": {"urls": [sink.url("json", "/phone")], "coalesce": "1s", "cooldown": "1h"}})
    maillog = tmp_path / "mail.log"
    daemon = Daemon(str(cfg), load(cfg))
    try:
        run_batches(daemon)
        maillog.write_text(messages(3, client="203.0.113.61", sender="a@woodelf.org"))
        run_batches(daemon)
        [first] = sink.wait_for("/phone", 1)
    finally:
        daemon.close()
    assert first["title"] == f"{PREFIX}alert sender a@woodelf.org"
    again = Daemon(str(cfg), load(cfg))  # a clean restart, well within the hour
    try:
        with open(maillog, "a") as f:
            f.write(messages(3, client="203.0.113.62", first=3, sender="b@woodelf.org"))
        run_batches(again)
        assert [d.target for d in again.store.decisions() if d.action == "alert"] == ["a@woodelf.org",
                                                                                      "b@woodelf.org"]
        time.sleep(2.5)  # past the 1 s coalescing: without the stored cooldown it would have gone
        assert len(sink.to("/phone")) == 1 and again.notifier.status()["pending"] == 1  # waits for the cooldown
    finally:
        again.notifier.close(timeout=0)  # the held notice is sent at close: not part of this test
        again.close()
