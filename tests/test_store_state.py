"""The typed state records: a daemon upgraded in place reads the state an older relaywatch wrote,
and what it writes back keeps the same JSON (so `status` of either version reads it)."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from relaywatch.model import CountRow, OpenMessage, Origin
from relaywatch.store.records import DaemonStatus, EnforcementAlarm, MapPending
from relaywatch.store.sqlite import Store

OLD = Path(__file__).parent / "data" / "state-before-issue14.db"  # made by state-before-issue14.py


def old_store(tmp_path: Path) -> Store:
    path = tmp_path / "state.db"
    shutil.copy(OLD, path)
    path.chmod(0o600)
    return Store(path)


def test_an_upgraded_daemon_reads_the_state_the_old_code_wrote(tmp_path):
    store = old_store(tmp_path)
    assert store.status.get() == DaemonStatus(
        pid=None, started=900.0, heartbeat=1005.0, source="file:/var/log/mail.log", source_note="", caught_up=True,
        last_line_at=1004.0, lines=50, unparsed=1, failed_lines=0, relayed=12, last_log_time=1003.0,
        notify={"sent": 1, "failed": 0, "dropped": 0, "pending": 0, "last_error": None, "last_success": 1002.0},
        policy=None, stopped=1006.0)
    assert store.map_state.pending() == MapPending(1000.0, "postmap failed", "not written",
                                                   "NOT_WRITTEN:PostfixError:", 5)
    assert store.notify_state.get() == {"cooldown": {"block client": 1000.0}, "sent_keys": ["audit:x"]}
    assert store.alarms.get() == {"client 198.18.7.9": EnforcementAlarm(
        "client", "198.18.7.9", 1000.0, 1001.0, 1002.0, 2, ("4XyZ3", "4XyZ4"))}
    assert store.days.days() == ["2024-05-13", "2024-05-14"]
    assert store.days.get("2024-05-14") == {"day": "2024-05-14", "relayed": 11}
    assert store.days.current() == {"day": "2024-05-15", "relayed": 3}
    assert store.days.digest_sent() == "2024-05-14"
    assert store.positions.get("file:/var/log/mail.log") == {"inode": 7, "offset": 1234, "head": "ab12"}
    assert list(store.counts_since(0)) == [CountRow("client", 100, "198.18.7.9", 3),
                                           CountRow("sender", 100, "a@example.org", 2)]
    assert store.open_messages() == [OpenMessage("mx1/4XyZ1", 990.0, 995.0, "198.18.7.9", None, "a@example.org", 2,
                                                 ("b@example.net",))]
    assert store.queue_ids(sasl_user="alice") == ["4XyZ2"]
    assert [(b.kind, b.target, b.until) for b in store.blocks(2000.0)] == [
        ("client", "198.18.7.9", 4600.0), ("sasl_user", "alice", None)]
    assert [(d.action, d.target, d.evidence) for d in store.decisions()] == [("block", "198.18.7.9", ("e1",))]
    store.close()


def test_records_written_back_keep_the_old_json(tmp_path):
    store = old_store(tmp_path)
    before = dict(sqlite3.connect(tmp_path / "state.db").execute("SELECT key, value FROM meta"))
    status, pending, alarms = store.status.get(), store.map_state.pending(), store.alarms.get()
    assert status is not None and pending is not None
    store.status.put(status)
    store.map_state.set_pending(pending)
    store.alarms.put(alarms)
    store.close()
    after = dict(sqlite3.connect(tmp_path / "state.db").execute("SELECT key, value FROM meta"))
    assert after == before


def test_a_running_daemon_writes_no_stopped_key_and_stopping_keeps_its_counters(tmp_path):
    store = Store(tmp_path / "state.db")
    store.status.put(DaemonStatus(pid=42, heartbeat=10.0, source="journal", lines=7))
    raw = json.loads(sqlite3.connect(tmp_path / "state.db").execute("SELECT value FROM meta").fetchone()[0])
    assert raw["pid"] == 42 and "stopped" not in raw
    store.status.stopped(11.0)
    assert store.status.get() == DaemonStatus(pid=None, heartbeat=10.0, source="journal", lines=7, stopped=11.0)
    store.map_state.set_pending(None)
    assert store.map_state.pending() is None and store.alarms.get() == {} and store.status.get() is not None
    store.close()


def test_old_days_are_pruned_and_the_batch_types_round_trip(tmp_path):
    store = Store(tmp_path / "state.db")
    for day in ("2024-05-01", "2024-05-02", "2024-05-03"):
        store.days.put(day, {"day": day})
    assert store.days.prune("2024-05-02") == 1 and store.days.days() == ["2024-05-02", "2024-05-03"]
    store.commit_batch([CountRow("client", 5, "198.18.0.1", 2)], (), ("journal", {"cursor": "c"}),
                       ([OpenMessage("q1", 1.0, 2.0, None, "bob", "<>", 1, ())], []),
                       ([Origin("q1", "198.18.0.1", "bob", 1.0)], []))
    assert store.positions.get("journal") == {"cursor": "c"}
    assert store.queue_ids(network="198.18.0.0/24") == ["q1"]
    assert store.open_messages()[0].sasl_user == "bob"
    store.close()
