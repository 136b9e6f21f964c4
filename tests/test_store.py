"""The state database, on real SQLite files."""

from __future__ import annotations

import sqlite3

from relaywatch.model import Decision
from relaywatch.store.sqlite import Store


def decision(t: float = 1000.0) -> Decision:
    return Decision(t, "block", "subnet", "218.144.0.0/16", "wide_subnet", 60, 600, 40,
                    ("line one", "line two"), ("8D076AE17",))


def test_counts_add_up_and_come_back_oldest_first(tmp_path):
    store = Store(tmp_path / "state.db")
    store.commit_batch([("client", 101, "1.2.3.4", 2), ("client", 100, "1.2.3.4", 1)])
    store.commit_batch([("client", 101, "1.2.3.4", 3)])
    assert list(store.counts_since(100)) == [("client", 100, "1.2.3.4", 1), ("client", 101, "1.2.3.4", 5)]
    assert list(store.counts_since(101)) == [("client", 101, "1.2.3.4", 5)]


def test_decisions_and_position_survive_a_reopen(tmp_path):
    path = tmp_path / "state.db"
    store = Store(path)
    store.commit_batch([], [decision()], ("/var/log/mail.log", {"inode": 7, "offset": 1234}))
    store.close()
    again = Store(path)
    assert again.decisions() == [decision()]
    assert again.positions.get("/var/log/mail.log") == {"inode": 7, "offset": 1234}
    assert again.positions.get("journal") is None


def test_a_failed_batch_leaves_nothing_behind(tmp_path):
    store = Store(tmp_path / "state.db")
    store.commit_batch([("client", 100, "1.2.3.4", 1)], position=("src", {"offset": 10}))
    try:
        store.commit_batch([("client", 100, "1.2.3.4", 1), ("client", None, "x", 1)], position=("src", {"offset": 20}))
    except sqlite3.IntegrityError:
        pass
    assert list(store.counts_since(0)) == [("client", 100, "1.2.3.4", 1)]
    assert store.positions.get("src") == {"offset": 10}


def test_prune_forgets_old_buckets(tmp_path):
    store = Store(tmp_path / "state.db")
    store.commit_batch([("client", b, "1.2.3.4", 1) for b in range(100, 110)])
    assert store.prune(105) == 5
    assert [row[1] for row in store.counts_since(0)] == list(range(105, 110))


def test_the_database_uses_wal_and_full_sync(tmp_path):
    store = Store(tmp_path / "state.db")
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.db.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_memory_store_for_dry_runs():
    store = Store(None)
    store.commit_batch([("client", 1, "k", 1)], [decision()])
    assert store.decisions() == [decision()]


def test_origins_of_queued_mail_until_postfix_removes_it(tmp_path):
    store = Store(tmp_path / "state.db")
    store.commit_batch([], origins=([("8D076AE17", "218.144.108.161", None, 100.0),
                                     ("8D076AE18", "218.144.9.9", None, 101.0),
                                     ("8D076AE19", "203.0.113.5", "alice", 102.0)], []))
    store.commit_batch([], origins=([], ["8D076AE18"]))
    assert store.queue_ids(client="218.144.108.161") == ["8D076AE17"]
    assert store.queue_ids(network="218.144.0.0/16") == ["8D076AE17"]
    assert store.queue_ids(sasl_user="alice") == ["8D076AE19"]
    assert store.prune_origins(101.5) == 1
    assert store.queue_ids(network="0.0.0.0/0") == ["8D076AE19"]


def test_pruning_gives_the_space_back(tmp_path):
    path = tmp_path / "state.db"
    store = Store(path)
    for b in range(50):
        store.commit_batch([("client", b, f"2001:db8::{i:x}", 1) for i in range(2000)])
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    full = path.stat().st_size
    store.prune(49)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert path.stat().st_size < full / 5


def test_a_restore_reads_no_more_keys_per_dimension_than_a_window_holds(tmp_path):
    store = Store(tmp_path / "state.db")
    flood = [("client", 100 + i % 60, f"2a01:4f8:1:{i:x}::1", 1) for i in range(5000)]
    heavy = [("client", b, "198.51.100.7", 3) for b in range(100, 160)]
    store.commit_batch(flood + heavy + [("sender", 100, "flood@spam.example", 5000), ("client", 99, "old", 9)])
    every = list(store.counts_since(100))
    capped = list(store.counts_since(100, max_keys=1000))
    for dim in ("client", "sender"):  # oldest first, as windows are rebuilt
        assert [r[1] for r in capped if r[0] == dim] == sorted(r[1] for r in capped if r[0] == dim)
    assert len({r[2] for r in capped if r[0] == "client"}) == 1000
    assert [r for r in capped if r[2] == "198.51.100.7"] == [r for r in every if r[2] == "198.51.100.7"]
    assert ("sender", 100, "flood@spam.example", 5000) in capped and not any(r[2] == "old" for r in capped)
    assert list(store.counts_since(100, max_keys=10_000)) == every
    assert sorted(every) == sorted(r for r in store.db.execute("SELECT * FROM counts WHERE bucket >= 100"))
