"""The state database: window counts, decisions and read positions, in SQLite.

Counts are written in batches, each batch in one transaction together with
the read position that produced it, so a crash loses or repeats nothing.
WAL with synchronous=FULL: relaywatch must remember what it blocked.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

from relaywatch.model import Decision, RelaywatchError
from relaywatch.store import permissions

BUSY_TIMEOUT_S = 20.0  # how long a write waits for another process's lock (systemd's watchdog allows 60 s)

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
CREATE TABLE IF NOT EXISTS blocks (
    kind TEXT NOT NULL, target TEXT NOT NULL, reason TEXT NOT NULL, rule TEXT NOT NULL,
    since REAL NOT NULL, until REAL,
    PRIMARY KEY (kind, target)
);
CREATE TABLE IF NOT EXISTS offences (
    kind TEXT NOT NULL, target TEXT NOT NULL, count INTEGER NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (kind, target)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS origins (
    qid TEXT PRIMARY KEY, client TEXT NOT NULL, sasl_user TEXT, time REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS origins_client ON origins (client);
CREATE TABLE IF NOT EXISTS open_messages (
    qid TEXT PRIMARY KEY, first_seen REAL NOT NULL, last_seen REAL NOT NULL, client TEXT, sasl_user TEXT,
    sender TEXT NOT NULL, nrcpt INTEGER NOT NULL, seen TEXT NOT NULL
) WITHOUT ROWID;
"""
_UPSERT = (
    "INSERT INTO counts (dim, bucket, key, n) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (dim, bucket, key) DO UPDATE SET n = n + excluded.n"
)


@dataclass(frozen=True, slots=True)
class BlockRow:
    """A block as remembered: `until` None is permanent; `offences` counts every block ever."""

    kind: str
    target: str
    reason: str
    rule: str
    since: float
    until: float | None
    offences: int = 1


class StoreUnavailable(RelaywatchError):
    """The database cannot be written for now (locked past the busy timeout, disk full): a fault that
    passes. The daemon keeps working in memory and writes the backlog once it has passed."""


APPLICATION_ID = 0x52574442  # "RWDB" in SQLite's header: this file was made by relaywatch
OUTAGE_RETRY_S = 5.0  # while the store is unavailable, a write is tried again this often
_OUTAGE_BUSY_S = 0.5  # ... waiting this long for a lock, so the daemon never stalls on it


def made_by_relaywatch(header: bytes) -> bool:
    return len(header) >= 72 and int.from_bytes(header[68:72], "big") == APPLICATION_ID


class Store:
    def __init__(self, path: str | Path | None = None, *, degrade: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """`path` None keeps everything in memory (a dry-run replay).

        `degrade` (the daemon): when the database cannot be written for now, blocks and meta
        values are kept in memory (and read back from there) and written with the next
        transaction that succeeds; `commit_batch` raises StoreUnavailable and the caller keeps
        its batch. Without it every failed write raises.
        """
        self.path = path
        self.degrade = degrade
        self.clock = clock
        self.unavailable: StoreUnavailable | None = None  # the fault while the store cannot be written
        self._retry_at = 0.0
        self._depth = 0
        self._on_commit: list[Callable[[], None]] = []
        self._unsaved_blocks: dict[tuple[str, str], BlockRow] = {}
        self._unsaved_meta: dict[str, object] = {}
        self._lock_fd: int | None = None
        if path is None:
            self.db = sqlite_utils.Database(memory=True)
            self.db.executescript(_SCHEMA)
            return
        # 0700 directory and 0600 file (its WAL and shm files get the same mode): it holds log
        # lines with addresses in them, and what relaywatch blocks. An existing file is checked
        # before anything opens it: another program's file is never touched.
        permissions.private_dir(Path(path).parent)
        created = permissions.state_file(path, made_by_relaywatch)
        with self._errors("open"):
            self.db = sqlite_utils.Database(path)
            self._busy(BUSY_TIMEOUT_S)
            self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new database only
            if created or self.db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                self.db.execute(f"PRAGMA application_id={APPLICATION_ID}")  # before WAL: lands in the header
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.executescript(_SCHEMA)

    def _busy(self, seconds: float) -> None:
        self.db.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")

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
            with self._errors("write"):
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
                self._busy(_OUTAGE_BUSY_S)
            self.unavailable, self._retry_at = exc, self.clock() + OUTAGE_RETRY_S
            raise
        finally:
            self._depth = 0
        self._unsaved_blocks.clear()
        self._unsaved_meta.clear()
        done, self._on_commit = self._on_commit, []
        for fn in done:
            fn()
        if self.unavailable is not None:
            self.unavailable = None
            self._busy(BUSY_TIMEOUT_S)

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
        for key, value in self._unsaved_meta.items():
            self._set_meta(key, value)

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
        """Blocks and meta values waiting in memory for the store to be writable again."""
        return len(self._unsaved_blocks) + len(self._unsaved_meta)

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """SQLite's errors as what happened and what to do; nothing of a failed write is kept."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            if type(exc) not in (sqlite3.OperationalError, sqlite3.DatabaseError):
                raise  # IntegrityError and the like: a bug, not the environment
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise StoreUnavailable(
                    f"state database {self.path}: cannot {doing} ({text}): another process has held a write lock"
                    f" on it for more than {BUSY_TIMEOUT_S:g} s (an open sqlite3 shell, a backup?); nothing was"
                    " written: retry once it lets go") from exc
            if "full" in text:
                raise StoreUnavailable(f"state database {self.path}: cannot {doing} ({text}): the disk is full;"
                                       " nothing was written: free some space") from exc
            if "not a database" in text or "malformed" in text or "corrupt" in text:
                hint = ("it is damaged: restore it from a backup, or move it aside to start a new one (relaywatch then"
                        " forgets its blocks; the access maps keep them until relaywatch next writes them)")
            elif "unable to open" in text or "readonly" in text or "read-only" in text:
                hint = "check that relaywatch runs as root and that its directory is writable"
            else:
                hint = "see the SQLite error"
            raise RelaywatchError(f"state database {self.path}: cannot {doing} ({text}): {hint}") from exc

    def lock_for_daemon(self) -> None:
        """One daemon per state database, for its whole life: an exclusive lock on `<database>.lock`
        (released by the kernel when the process ends, SIGKILL included)."""
        if self.path is None:
            return
        lock = Path(f"{self.path}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, permissions.DB_MODE)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise RelaywatchError(f"another relaywatch run (pid {holder}) already uses the state database"
                                  f" {self.path}: one daemon per database; stop it first") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the daemon lock
            self._lock_fd = None

    def commit_batch(
        self,
        counts: Iterable[tuple[str, int, str, int]],
        decisions: Iterable[Decision] = (),
        position: tuple[str, dict] | None = None,
        messages: tuple[list[tuple], list[str]] = ([], []),
        origins: tuple[list[tuple], list[str]] = ([], []),
    ) -> None:
        """Counts, decisions, open messages, origins of queued mail and where the source stands:
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

    def counts_since(self, bucket: int, max_keys: int | None = None) -> Iterator[tuple[str, int, str, int]]:
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
                yield from self.db.execute("SELECT dim, bucket, key, n FROM counts WHERE dim = ? AND bucket >= ?"
                                           " ORDER BY bucket, key", [dim, bucket])
                continue
            yield from self.db.execute(
                "SELECT dim, bucket, key, n FROM counts WHERE dim = ? AND bucket >= ? AND key IN (SELECT key FROM"
                " counts WHERE dim = ? AND bucket >= ? GROUP BY key ORDER BY sum(n) DESC, max(bucket) DESC LIMIT ?)"
                " ORDER BY bucket, key", [dim, bucket, dim, bucket, max_keys])

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

    def open_messages(self) -> list[tuple]:
        """Messages a restarted daemon must still correlate, oldest first."""
        return [(*row[:7], tuple(json.loads(row[7]))) for row in
                self.db.execute("SELECT * FROM open_messages ORDER BY last_seen")]

    def position(self, source: str) -> dict | None:
        row = self.db.execute("SELECT value FROM positions WHERE source = ?", [source]).fetchone()
        return json.loads(row[0]) if row else None

    def decisions(self, since: float | None = None, until: float | None = None) -> list[Decision]:
        """Decisions in time order; with `since`/`until`, those in [since, until)."""
        sql, args = "SELECT * FROM decisions WHERE time >= ? AND time < ? ORDER BY time, id", [
            float("-inf") if since is None else since, float("inf") if until is None else until]
        return [
            Decision(r["time"], r["action"], r["kind"], r["target"], r["rule"], r["count"], r["window_s"],
                     r["clients"], tuple(json.loads(r["evidence"])), tuple(json.loads(r["sample_qids"])))
            for r in self.db.query(sql, args)
        ]

    def prune(self, before_bucket: int) -> int:
        """Forget counts older than every window and give the space back; returns how many rows went."""
        with self._kept_if_unavailable(), self.transaction():
            gone = self.db.execute("DELETE FROM counts WHERE bucket < ?", [before_bucket]).rowcount
        if self.unavailable is not None:
            return 0
        with self._kept_if_unavailable(), self._errors("write"):
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
        args: list = []
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

    def set_meta(self, key: str, value: object) -> None:
        """In degrade mode a value that cannot be written now is kept (and read back) from memory."""
        self._unsaved_meta[key] = value
        nested = self._depth > 0
        try:
            with self.transaction():
                if nested:  # else the backlog, this value included, was written as the transaction began
                    self._set_meta(key, value)
        except StoreUnavailable:
            if not self.degrade:
                del self._unsaved_meta[key]
                raise

    def _set_meta(self, key: str, value: object) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, json.dumps(value, sort_keys=True)],
        )

    def meta(self, key: str, default: object = None) -> object:
        if key in self._unsaved_meta:
            return self._unsaved_meta[key]
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else default

    def meta_keys(self, prefix: str) -> list[str]:
        """Meta keys starting with `prefix`, sorted."""
        rows = self.db.execute("SELECT key FROM meta WHERE substr(key, 1, ?) = ? ORDER BY key", [len(prefix), prefix])
        return sorted({r[0] for r in rows} | {k for k in self._unsaved_meta if k.startswith(prefix)})

    def prune_meta(self, prefix: str, before: str) -> int:
        """Forget the meta keys `prefix` + x for every x sorting before `before` (old days)."""
        with self._kept_if_unavailable(), self.transaction():
            return self.db.execute("DELETE FROM meta WHERE substr(key, 1, ?) = ? AND substr(key, ?) < ?",
                                   [len(prefix), prefix, len(prefix) + 1, before]).rowcount
        return 0

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
