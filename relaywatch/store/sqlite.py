"""The state database in SQLite: window counts, decisions, blocks, open messages, origins and
read positions, and the typed state records (store.state) over its `meta` table (store.sqlite_meta).

Counts are written in batches, each batch in one transaction together with
the read position that produced it, so a crash loses or repeats nothing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import sqlite_utils

from relaywatch.model import Action, CountRow, Decision, JSONObject, Kind, OpenMessage, Origin
from relaywatch.store import sqlite_file
from relaywatch.store.records import BlockRow, FleetNews, HostRow
from relaywatch.store.sqlite_file import StoreUnavailable, sqlite_errors
from relaywatch.store.sqlite_meta import Meta
from relaywatch.store.state import (
    DayArchive,
    EnforcementAlarms,
    MapState,
    NotifyState,
    Positions,
    StatusRecord,
    own_host,
)

__all__ = ["BlockRow", "Store", "StoreUnavailable"]

OUTAGE_RETRY_S = 5.0  # while the store is unavailable, a write is tried again this often
_OUTAGE_BUSY_S = 0.5  # ... waiting this long for a lock, so the daemon never stalls on it
_UPSERT = (
    "INSERT INTO counts (dim, bucket, key, n) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (dim, bucket, key) DO UPDATE SET n = n + excluded.n"
)


class Store:
    """The SQLite backend of store.base.StateStore."""

    def __init__(self, path: str | Path | None = None, *, degrade: bool = False,
                 clock: Callable[[], float] = time.monotonic, host: str | None = None) -> None:
        """`path` None keeps everything in memory (a dry-run replay). `host`: what `hosts()` calls
        this host ([fleet] host; default the machine's host name).

        `degrade` (the daemon): when the database cannot be written for now, blocks and state
        records are kept in memory (and read back from there) and written with the next
        transaction that succeeds; `commit_batch` raises StoreUnavailable and the caller keeps
        its batch. Without it every failed write raises.
        """
        self.path = path
        self.degrade = degrade
        self.clock = clock
        self.host = host or socket.gethostname()
        self.unavailable: StoreUnavailable | None = None  # the fault while the store cannot be written
        self._retry_at = 0.0
        self._depth = 0
        self._on_commit: list[Callable[[], None]] = []
        self._unsaved_blocks: dict[tuple[str, str], BlockRow] = {}
        self._lock_fd: int | None = None
        self.db = sqlite_utils.Database(sqlite_file.open_connection(path))
        self.meta = Meta(self)
        self.days = DayArchive(self.meta)
        self.status = StatusRecord(self.meta)
        self.map_state = MapState(self.meta)
        self.notify_state = NotifyState(self.meta)
        self.alarms = EnforcementAlarms(self.meta)
        self.positions = Positions(self._position)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction, started as a writer (BEGIN IMMEDIATE: a transaction that read
        first would get SQLITE_BUSY_SNAPSHOT at once when another connection committed meanwhile).
        Nested calls join the outer one. What was kept in memory during an outage is written first.
        """
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if self.degrade and self.unavailable is not None and self.clock() < self._retry_at:
            raise self.unavailable  # no waiting on the lock again before OUTAGE_RETRY_S
        self._depth = 1
        conn = self.db.conn
        try:
            with sqlite_errors(self.path, "write"):
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    self._write_backlog()
                    yield
                    conn.commit()
                except BaseException:
                    if conn.in_transaction:
                        conn.rollback()
                    raise
        except BaseException as exc:
            self._on_commit.clear()
            if not isinstance(exc, StoreUnavailable):
                raise
            if self.unavailable is None and self.degrade:
                sqlite_file.busy(self.db.conn, _OUTAGE_BUSY_S)
            self.unavailable, self._retry_at = exc, self.clock() + OUTAGE_RETRY_S
            raise
        finally:
            self._depth = 0
        self._unsaved_blocks.clear()
        self.meta.saved()
        done, self._on_commit = self._on_commit, []
        for fn in done:
            fn()
        if self.unavailable is not None:
            self.unavailable = None
            sqlite_file.busy(self.db.conn, sqlite_file.BUSY_TIMEOUT_S)

    def on_commit(self, fn: Callable[[], None]) -> None:
        """Call `fn` once what was written so far is committed (at once outside a transaction);
        never when the transaction fails: the caller still holds what it wrote."""
        if self._depth:
            self._on_commit.append(fn)
        else:
            fn()

    def _write_backlog(self) -> None:
        for row in self._unsaved_blocks.values():
            self._insert_block(row)
        self.meta.write_unsaved()

    @contextlib.contextmanager
    def _kept_if_unavailable(self) -> Iterator[None]:
        """For writes that may wait (in degrade mode): a fault that passes is not an error here."""
        try:
            yield
        except StoreUnavailable:
            if not self.degrade:
                raise

    @property
    def backlog(self) -> int:
        """Blocks and state records waiting in memory for the store to be writable again."""
        return len(self._unsaved_blocks) + self.meta.unsaved_count()

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def lock_for_daemon(self) -> None:
        """One daemon per state database, for its whole life (see sqlite_file.lock_for_daemon)."""
        if self.path is not None:
            self._lock_fd = sqlite_file.lock_for_daemon(self.path)

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the daemon lock
            self._lock_fd = None

    def commit_batch(
        self,
        counts: Iterable[CountRow],
        decisions: Iterable[Decision] = (),
        position: tuple[str, JSONObject] | None = None,
        messages: tuple[Sequence[OpenMessage], Sequence[str]] = ((), ()),
        origins: tuple[Sequence[Origin], Sequence[str]] = ((), ()),
    ) -> None:
        """Counts, decisions, open messages (changed, and the keys gone), origins of queued mail
        (arrived, and the queue ids removed) and where the source (name, its position) stands:
        all or nothing."""
        rows, gone = messages
        arrived, departed = origins
        with self.transaction():
            self.db.conn.executemany("INSERT OR REPLACE INTO origins VALUES (?, ?, ?, ?)", arrived)
            self.db.conn.executemany("DELETE FROM origins WHERE qid = ?", [(qid,) for qid in departed])
            self.db.conn.executemany(
                "INSERT OR REPLACE INTO open_messages VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(*row[:7], json.dumps(row[7])) for row in rows],
            )
            self.db.conn.executemany("DELETE FROM open_messages WHERE qid = ?", [(qid,) for qid in gone])
            self.db.conn.executemany(_UPSERT, counts)
            self.db.conn.executemany(
                "INSERT INTO decisions (time, action, kind, target, rule, count, window_s, clients, evidence,"
                " sample_qids, hosts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (d.time, d.action, d.kind, d.target, d.rule, d.count, d.window_s, d.clients,
                     json.dumps(d.evidence), json.dumps(d.sample_qids), json.dumps(d.hosts))
                    for d in decisions
                ],
            )
            if position is not None:
                self.db.execute(
                    "INSERT INTO positions (source, value) VALUES (?, ?) "
                    "ON CONFLICT (source) DO UPDATE SET value = excluded.value",
                    [position[0], json.dumps(position[1], sort_keys=True)],
                )

    def counts_since(self, bucket: int, max_keys: int | None = None) -> Iterator[CountRow]:
        """Stored counts from `bucket` on, one dimension after the other, each oldest first (the
        order its windows are rebuilt in).

        With `max_keys`, a dimension holding more rows than that gives only the rows of its
        `max_keys` largest keys (a window holds no more: the rest is what its cap forgets first).
        A flood of distinct clients leaves a million keys behind; reading and parsing them all
        made a restart take minutes.
        """
        dims = self.db.execute("SELECT dim, count(*) FROM counts WHERE bucket >= ? GROUP BY dim", [bucket]).fetchall()
        for dim, rows in dims:
            if max_keys is None or rows <= max_keys:
                cursor = self.db.execute("SELECT dim, bucket, key, n FROM counts WHERE dim = ? AND bucket >= ?"
                                         " ORDER BY bucket, key", [dim, bucket])
                yield from map(CountRow._make, cursor)
                continue
            cursor = self.db.execute(
                "SELECT dim, bucket, key, n FROM counts WHERE dim = ? AND bucket >= ? AND key IN (SELECT key FROM"
                " counts WHERE dim = ? AND bucket >= ? GROUP BY key ORDER BY sum(n) DESC, max(bucket) DESC LIMIT ?)"
                " ORDER BY bucket, key", [dim, bucket, dim, bucket, max_keys])
            yield from map(CountRow._make, cursor)

    def queue_ids(self, client: str | None = None, sasl_user: str | None = None,
                  network: str | None = None) -> list[str]:
        """Queue ids of mail that came from this client, SASL user or network and is not yet removed."""
        if client is not None:
            rows = self.db.execute("SELECT qid FROM origins WHERE client = ?", [client])
        elif sasl_user is not None:
            rows = self.db.execute("SELECT qid FROM origins WHERE sasl_user = ?", [sasl_user])
        else:
            net = ipaddress.ip_network(network or "")
            return [qid for qid, c in self.db.execute("SELECT qid, client FROM origins")
                    if ipaddress.ip_address(c) in net]
        return [row[0] for row in rows]

    def prune_origins(self, before: float) -> int:
        """Forget origins older than Postfix keeps mail (maximal_queue_lifetime, 5 days by default)."""
        with self._kept_if_unavailable(), self.transaction():
            return self.db.execute("DELETE FROM origins WHERE time < ?", [before]).rowcount
        return 0

    def open_messages(self) -> list[OpenMessage]:
        """Messages a restarted daemon must still correlate, oldest first."""
        return [OpenMessage(key, first, last, client, sasl_user, sender, nrcpt, tuple(json.loads(seen)))
                for key, first, last, client, sasl_user, sender, nrcpt, seen in
                self.db.execute("SELECT * FROM open_messages ORDER BY last_seen")]

    def _position(self, source: str) -> JSONObject | None:
        row = self.db.execute("SELECT value FROM positions WHERE source = ?", [source]).fetchone()
        value: JSONObject | None = json.loads(row[0]) if row else None
        return value

    def decisions(self, since: float | None = None, until: float | None = None) -> list[Decision]:
        """Decisions in time order; with `since`/`until`, those in [since, until)."""
        sql, args = "SELECT * FROM decisions WHERE time >= ? AND time < ? ORDER BY time, id", [
            float("-inf") if since is None else since, float("inf") if until is None else until]
        return [
            Decision(r["time"], Action(r["action"]), Kind(r["kind"]), r["target"], r["rule"], r["count"], r["window_s"],
                     r["clients"], tuple(json.loads(r["evidence"])), tuple(json.loads(r["sample_qids"])),
                     tuple(json.loads(r["hosts"])))
            for r in self.db.query(sql, args)
        ]

    def prune(self, before_bucket: int) -> int:
        """Forget counts older than every window and give the space back; returns how many rows went."""
        with self._kept_if_unavailable(), self.transaction():
            gone = self.db.execute("DELETE FROM counts WHERE bucket < ?", [before_bucket]).rowcount
        if self.unavailable is not None:
            return 0
        with self._kept_if_unavailable(), sqlite_errors(self.path, "write"):
            self.db.conn.executescript("PRAGMA incremental_vacuum;")  # executescript runs every step
        return gone

    # --- blocks -------------------------------------------------------------------

    def offences(self, kind: str, target: str) -> int:
        row = self.db.execute("SELECT count FROM offences WHERE kind = ? AND target = ?", [kind, target]).fetchone()
        return row[0] if row else 0

    def add_block(self, row: BlockRow) -> None:
        """Record a block (replacing an earlier one of the same target) and count the offence.
        In degrade mode a block that cannot be written now is kept in memory, in force for
        `blocks()` (so the maps keep it), and written with the next transaction."""
        self._unsaved_blocks[(row.kind, row.target)] = row
        nested = self._depth > 0
        try:
            with self.transaction():
                if nested:  # else the backlog, this block included, was written as the transaction began
                    self._insert_block(row)
        except StoreUnavailable:
            if not self.degrade:
                del self._unsaved_blocks[(row.kind, row.target)]
                raise

    def _insert_block(self, row: BlockRow) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO blocks (kind, target, reason, rule, since, until) VALUES (?, ?, ?, ?, ?, ?)",
            [row.kind, row.target, row.reason, row.rule, row.since, row.until],
        )
        self.db.execute(
            "INSERT INTO offences (kind, target, count, last) VALUES (?, ?, 1, ?) "
            "ON CONFLICT (kind, target) DO UPDATE SET count = count + 1, last = excluded.last",
            [row.kind, row.target, row.since],
        )

    def remove_block(self, kind: str, target: str) -> bool:
        with self.transaction():
            return self.db.execute("DELETE FROM blocks WHERE kind = ? AND target = ?", [kind, target]).rowcount > 0

    def blocks(self, now: float | None = None) -> list[BlockRow]:
        """Blocks in force at `now` (all remembered ones when None), oldest first; with those
        still waiting in memory for the store."""
        sql = (
            "SELECT b.kind, b.target, b.reason, b.rule, b.since, b.until, COALESCE(o.count, 1) FROM blocks b "
            "LEFT JOIN offences o ON o.kind = b.kind AND o.target = b.target"
        )
        args: list[float] = []
        if now is not None:
            sql += " WHERE b.until IS NULL OR b.until > ?"
            args.append(now)
        rows = {(r[0], r[1]): BlockRow(*r) for r in self.db.execute(sql, args)}
        unsaved = self._unsaved_blocks if not self._depth else {}  # inside a transaction they are written
        for key, row in unsaved.items():
            if now is None or row.until is None or row.until > now:
                rows[key] = BlockRow(row.kind, row.target, row.reason, row.rule, row.since, row.until,
                                     rows[key].offences + 1 if key in rows else self.offences(*key) + 1)
        return sorted(rows.values(), key=lambda b: (b.since, b.kind, b.target))

    def expire_blocks(self, now: float) -> list[BlockRow]:
        """Forget blocks whose time is up; returns them (none while the store cannot be written:
        they are lifted once it can)."""
        with self._kept_if_unavailable(), self.transaction():
            gone = [b for b in self.blocks() if b.until is not None and b.until <= now]
            self.db.execute("DELETE FROM blocks WHERE until IS NOT NULL AND until <= ?", [now])
            return gone
        return []

    def hosts(self) -> list[HostRow]:
        """This host alone (a SQLite store is one host's), from its daemon's status record and read position."""
        return own_host(self.host, self.status.get(), self.positions)

    def busiest(self, since_bucket: int, per_dim: int = 5) -> dict[str, list[tuple[str, int]]]:
        """The largest window totals per dimension since `since_bucket`."""
        out: dict[str, list[tuple[str, int]]] = {}
        rows = self.db.execute(
            "SELECT dim, key, SUM(n) AS total FROM counts WHERE bucket >= ? GROUP BY dim, key "
            "ORDER BY dim, total DESC, key", [since_bucket])
        for dim, key, total in rows:
            top = out.setdefault(dim, [])
            if len(top) < per_dim:
                top.append((key, total))
        return out

    # --- the fleet: one host alone -------------------------------------------------

    def claim(self, decisions: Sequence[Decision]) -> list[Decision]:
        return list(decisions)

    def fleet_news(self, since_bucket: int) -> FleetNews:
        return FleetNews([], [], [])

    def block_changes(self) -> None:
        return None

