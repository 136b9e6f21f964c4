"""The state database: window counts, decisions and read positions, in SQLite.

Counts are written in batches, each batch in one transaction together with
the read position that produced it, so a crash loses or repeats nothing.
WAL with synchronous=FULL: relaywatch must remember what it blocked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import sqlite_utils

from .model import Decision

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    dim TEXT NOT NULL, bucket INTEGER NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (dim, bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, action TEXT NOT NULL, kind TEXT NOT NULL,
    target TEXT NOT NULL, rule TEXT NOT NULL, count INTEGER NOT NULL, window_s INTEGER NOT NULL,
    clients INTEGER NOT NULL, evidence TEXT NOT NULL, sample_qids TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS positions (source TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_UPSERT = (
    "INSERT INTO counts (dim, bucket, key, n) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (dim, bucket, key) DO UPDATE SET n = n + excluded.n"
)


class Store:
    def __init__(self, path: str | Path | None = None) -> None:
        """`path` None keeps everything in memory (a dry-run replay)."""
        if path is None:
            self.db = sqlite_utils.Database(memory=True)
        else:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite_utils.Database(path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def commit_batch(
        self,
        counts: Iterable[tuple[str, int, str, int]],
        decisions: Iterable[Decision] = (),
        position: tuple[str, dict] | None = None,
    ) -> None:
        """Counts, decisions and where the source stands, all or nothing."""
        with self.db.atomic():
            self.db.conn.executemany(_UPSERT, counts)
            self.db.conn.executemany(
                "INSERT INTO decisions (time, action, kind, target, rule, count, window_s, clients, evidence,"
                " sample_qids) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (d.time, d.action, d.kind, d.target, d.rule, d.count, d.window_s, d.clients,
                     json.dumps(d.evidence), json.dumps(d.sample_qids))
                    for d in decisions
                ],
            )
            if position is not None:
                self.db.execute(
                    "INSERT INTO positions (source, value) VALUES (?, ?) "
                    "ON CONFLICT (source) DO UPDATE SET value = excluded.value",
                    [position[0], json.dumps(position[1], sort_keys=True)],
                )

    def counts_since(self, bucket: int) -> Iterator[tuple[str, int, str, int]]:
        """Stored counts from `bucket` on, oldest first (the order windows are rebuilt in)."""
        yield from self.db.execute(
            "SELECT dim, bucket, key, n FROM counts WHERE bucket >= ? ORDER BY bucket", [bucket]
        )

    def position(self, source: str) -> dict | None:
        row = self.db.execute("SELECT value FROM positions WHERE source = ?", [source]).fetchone()
        return json.loads(row[0]) if row else None

    def decisions(self) -> list[Decision]:
        return [
            Decision(r["time"], r["action"], r["kind"], r["target"], r["rule"], r["count"], r["window_s"],
                     r["clients"], tuple(json.loads(r["evidence"])), tuple(json.loads(r["sample_qids"])))
            for r in self.db.query("SELECT * FROM decisions ORDER BY time, id")
        ]

    def prune(self, before_bucket: int) -> int:
        """Forget counts older than every window; returns how many rows went."""
        with self.db.atomic():
            return self.db.execute("DELETE FROM counts WHERE bucket < ?", [before_bucket]).rowcount
