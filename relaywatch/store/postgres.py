"""The state in PostgreSQL, shared by a fleet of mail hosts (psycopg 3 lives here and nowhere else).

Each host adds its own counts (tagged with its name) and decides on the fleet's sum: every batch
it pulls what the other hosts counted since its last pull (`fleet_news`) into its windows, which
count without deciding. A decision is claimed before it is recorded (postgres_schema.CLAIM, a
unique key, no leader): a host that loses the race adopts the block the winner recorded. A host's
counts, decisions and read position commit in one transaction, numbered in its host row.

When PostgreSQL cannot be reached the store degrades like the SQLite one (store.base): writes raise
StoreUnavailable and wait in memory, reads answer from what was last read, and everything is
written with the first transaction that succeeds. The URL's password never reaches a message.

A commit whose answer was lost is settled on the next transaction (store.postgres_state.Unheard).
The reads are store.postgres_reads's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import psycopg

from relaywatch.config import redact_database
from relaywatch.model import CountRow, Decision, JSONObject, OpenMessage, Origin, RelaywatchError
from relaywatch.store import postgres_schema as sql
from relaywatch.store.postgres_reads import BlockChanges, Reads
from relaywatch.store.postgres_state import BlockKeys, Claims, Meta, Unheard, decision_row, make_schema
from relaywatch.store.records import BlockRow
from relaywatch.store.sqlite_file import StoreUnavailable
from relaywatch.store.state import DayArchive, EnforcementAlarms, MapState, NotifyState, Positions, StatusRecord

OUTAGE_RETRY_S = 5.0  # while PostgreSQL cannot be reached, a write is tried again this often
CONNECT_TIMEOUT_S = 5
AT_OPEN = ("PostgreSQL cannot be reached, or refused this host: check that it runs, that [state] database names"
           " its host, port and database, pg_hba.conf lets this host in, and the password ([state] password_file,"
           " PGPASSFILE or ~/.pgpass)")
# The daemon (degrade) starting without the state: refused (exit 1; systemd starts it again), never guessed
# (where to read the log from, the fleet's counts and blocks are in the database). Not said by a command
# such as `status`, whose daemon may well be running on through the outage.
AT_START = (AT_OPEN + "; relaywatch does not start without its state (systemd tries again, and the log is read"
            " from where it stopped)")
T = TypeVar("T")
redact = redact_database


def check_url(url: str) -> None:
    """ValueError saying what is wrong with a libpq URL (without its password)."""
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ValueError(f"{redact(url)}: {exc}") from None


class Store(Reads):
    """The PostgreSQL backend of store.base.StateStore, for the fleet member `host`."""

    def __init__(self, url: str, *, host: str, password: str | None = None, degrade: bool = False,
                 block_keys: BlockKeys | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """`block_keys`: (kind, target, rule, reason) -> (lookup_key, action) as Postfix's pgsql: table
        answers them (postfix.mapkeys; given by the caller: the store does not import postfix).
        `degrade`: as store.sqlite.Store's (the daemon)."""
        check_url(url)
        self.url, self.name, self.host = url, redact(url), host
        self.path = self.name  # what messages call the database
        self._password = password
        self._secrets = [str(s) for s in (password, psycopg.conninfo.conninfo_to_dict(url).get("password")) if s]
        self.degrade, self.clock = degrade, clock
        self.block_keys = block_keys
        self.unavailable: StoreUnavailable | None = None
        self._retry_at = 0.0
        self._depth = 0
        self._conn: psycopg.Connection[Any] | None = None
        self._locked = False
        self._seq: int | None = None  # this transaction's number in the host's row
        self.unheard = Unheard()
        self._on_commit: list[Callable[[], None]] = []
        self._unsaved_blocks: dict[tuple[str, str], BlockRow] = {}
        self._blocks_read: dict[tuple[str, str], BlockRow] = {}  # the last blocks read: answered during an outage
        self._cursor: dict[str, int] | None = None  # host -> the last of its numbers pulled
        self.claims = Claims()
        self.meta = Meta(self)
        self.days, self.status = DayArchive(self.meta), StatusRecord(self.meta)
        self.map_state, self.notify_state = MapState(self.meta), NotifyState(self.meta)
        self.alarms, self.positions = EnforcementAlarms(self.meta), Positions(self._position)
        with self._errors("open"):
            make_schema(self._connection(), self.name)

    # --- the connection ---------------------------------------------------------------

    def _scrub(self, exc: BaseException) -> str:
        text = " ".join(str(exc).split())
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """psycopg's errors as what happened: a connection lost, refused or a database restarting is a fault
        that passes (StoreUnavailable); anything else a RelaywatchError. Never with the password."""
        try:
            yield
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop()
            why = ((AT_START if self.degrade else AT_OPEN) if doing == "open"
                   else "PostgreSQL cannot be reached or is restarting")
            raise StoreUnavailable(f"state database {self.name}: cannot {doing} ({self._scrub(exc)}): {why}") from None
        except psycopg.Error as exc:
            raise RelaywatchError(f"state database {self.name}: cannot {doing} ({self._scrub(exc)})") from None

    def _drop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None

    def _connect(self) -> psycopg.Connection[Any]:
        extra: dict[str, Any] = {"password": self._password} if self._password is not None else {}
        conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S, keepalives=1,
                               keepalives_idle=10, keepalives_interval=3, keepalives_count=3,
                               application_name=f"relaywatch {self.host}"[:63], **extra)
        conn.execute("SET lock_timeout = '10s'")
        return conn

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            if self._locked:
                self._take_lock(self._conn)
        return self._conn

    def lock_for_daemon(self) -> None:
        """One daemon per host name and database, for its whole life: a session advisory lock."""
        with self._errors("lock"):
            self._take_lock(self._connection())
        self._locked = True

    def _take_lock(self, conn: psycopg.Connection[Any]) -> None:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [f"relaywatch host {self.host}"]).fetchone()
        if not row or not row[0]:
            raise RelaywatchError(f"another relaywatch run already uses the state database {self.name} as host"
                                  f" {self.host!r}: one daemon per host; stop it, or give this one its own"
                                  " [fleet] host")

    def close(self) -> None:
        self._drop()

    # --- transactions and the outage --------------------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction; nested calls join the outer one. What waited in memory during an
        outage is written first. A fault while degraded is retried after OUTAGE_RETRY_S, not before."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if self.degrade and self.unavailable is not None and self.clock() < self._retry_at:
            raise self.unavailable
        self._depth, committing = 1, False
        try:
            with self._errors("write"):
                conn = self._connection()
                with conn.transaction():
                    self.unheard.settle(conn, self.host, self.name)
                    self._write_backlog(conn)
                    yield
                    committing = True
        except BaseException as exc:
            self._on_commit.clear()
            if isinstance(exc, StoreUnavailable):
                self.unavailable, self._retry_at = exc, self.clock() + OUTAGE_RETRY_S
                if committing and self._seq is not None:  # it may have landed: the next transaction asks
                    self.unheard.not_heard(self._seq)
            self.unheard.end(committed=False)
            raise
        finally:
            self._depth, self._seq = 0, None
            self.claims.end()
        self.unheard.end(committed=True)
        self._unsaved_blocks.clear()
        self.meta.saved()
        done, self._on_commit = self._on_commit, []
        for fn in done:
            fn()
        self.unavailable = None

    def on_commit(self, fn: Callable[[], None]) -> None:
        if self._depth:
            self._on_commit.append(fn)
        else:
            fn()

    @property
    def backlog(self) -> int:
        return len(self._unsaved_blocks) + self.meta.unsaved_count()

    def _write_backlog(self, conn: psycopg.Connection[Any]) -> None:
        """Blocks kept during an outage leave a block another host recorded meanwhile in force."""
        outage = self.unavailable is not None
        for row in self._unsaved_blocks.values():
            self._insert_block(conn, row, keep_active=outage)
        self.meta.write_unsaved(conn)

    @property
    def in_transaction(self) -> bool:
        return self._depth > 0

    def run(self, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        """`fn` on the connection, inside the current transaction."""
        assert self._depth, "inside transaction() only"
        with self._errors("write"):
            return fn(self._connection())

    def read(self, doing: str, fn: Callable[[psycopg.Connection[Any]], T], fallback: Callable[[], T]) -> T:
        """A read; in degrade mode during an outage, `fallback()` (what was read last) instead of an error."""
        if self._depth:
            with self._errors(doing):
                return fn(self._connection())
        if self.degrade and self.unavailable is not None and self.clock() < self._retry_at:
            return fallback()
        try:
            with self._errors(doing):
                return fn(self._connection())
        except StoreUnavailable as exc:
            if not self.degrade:
                raise
            if self.unavailable is None:
                self.unavailable, self._retry_at = exc, self.clock() + OUTAGE_RETRY_S
            return fallback()

    def read_now(self, doing: str, fn: Callable[[psycopg.Connection[Any]], T]) -> T:
        with self._errors(doing):
            return fn(self._connection())

    @contextlib.contextmanager
    def _kept_if_unavailable(self) -> Iterator[None]:
        try:
            yield
        except StoreUnavailable:
            if not self.degrade:
                raise

    def _next_seq(self, conn: psycopg.Connection[Any]) -> int:
        if self._seq is None:
            row = conn.execute(sql.NEXT_SEQ, [self.host]).fetchone()
            assert row is not None
            self._seq = int(row[0])
        return self._seq

    # --- the pipeline's batches -------------------------------------------------------

    def claim(self, decisions: Sequence[Decision]) -> list[Decision]:
        """The decisions this host records: those no other host recorded first (inside the caller's
        transaction: a lost race waits for the winner's commit, then loses), each naming the hosts
        whose counts are in its window."""
        with self.transaction():
            conn = self._connection()
            return self._claim_all(conn, self.host, decisions)

    def _claim_all(self, conn: psycopg.Connection[Any], me: str, decisions: Iterable[Decision]) -> list[Decision]:
        """The decisions this host wins, in the caller's order, claimed in one order shared by every host
        (action, kind, target): two hosts claiming the same targets in different orders would deadlock."""
        ordered = list(decisions)
        won = {}
        for i in sorted(range(len(ordered)), key=lambda i: (ordered[i].action, ordered[i].kind, ordered[i].target)):
            w = self.claims.claim(conn, me, ordered[i])
            if w is not None:
                won[i] = w
        return [won[i] for i in sorted(won)]

    def commit_batch(self, counts: Iterable[CountRow], decisions: Iterable[Decision] = (),
                     position: tuple[str, JSONObject] | None = None,
                     messages: tuple[Sequence[OpenMessage], Sequence[str]] = ((), ()),
                     origins: tuple[Sequence[Origin], Sequence[str]] = ((), ())) -> None:
        """Counts, decisions (those this host wins), open messages, origins and the read position: all
        or nothing, numbered in the host's row."""
        rows, gone = messages
        arrived, departed = origins
        me = self.host
        with self.transaction():
            conn = self._connection()
            with conn.cursor() as cur:
                if arrived:
                    cur.executemany(sql.UPSERT_ORIGIN, [(me, *o) for o in arrived])
                if departed:
                    cur.execute("DELETE FROM relaywatch_origins WHERE host = %s AND qid = ANY(%s)",
                                [me, list(departed)])
                if rows:
                    cur.executemany(sql.UPSERT_MESSAGE, [(me, *r[:7], json.dumps(r[7])) for r in rows])
                if gone:
                    cur.execute("DELETE FROM relaywatch_open_messages WHERE host = %s AND qid = ANY(%s)",
                                [me, list(gone)])
                won = self._claim_all(conn, me, decisions)
                counts = self.unheard.unlanded(counts)
                if counts or won:
                    seq = self._next_seq(conn)
                    with cur.copy(sql.COPY_COUNTS) as copy:
                        for dim, bucket, key, n in counts:
                            copy.write_row((me, seq, dim, bucket, key, n))
                            self.unheard.sent(dim, bucket, key, n)
                    cur.executemany(sql.INSERT_DECISION, [decision_row(me, seq, d) for d in won])
                if position is not None:
                    value = json.dumps(position[1], sort_keys=True)
                    cur.execute(sql.UPSERT_POSITION, [me, position[0], value])
                    # what `status` shows of this host: HostRow's shape, the source named (as SQLite's own row)
                    cur.execute(sql.HOST_POSITION, [me, json.dumps({"source": position[0], **position[1]},
                                                                   sort_keys=True)])

    def prune(self, before_bucket: int) -> int:
        """Forget counts older than every window (any host's: they are the fleet's windows)."""
        with self._kept_if_unavailable(), self.transaction():
            cur = self._connection().execute("DELETE FROM relaywatch_counts WHERE bucket < %s", [before_bucket])
            return cur.rowcount
        return 0

    def prune_origins(self, before: float) -> int:
        with self._kept_if_unavailable(), self.transaction():
            cur = self._connection().execute("DELETE FROM relaywatch_origins WHERE host = %s AND time < %s",
                                             [self.host, before])
            return cur.rowcount
        return 0

    # --- blocks -------------------------------------------------------------------------

    def add_block(self, row: BlockRow) -> None:
        """Record a block (replacing an earlier one of the same target), count the offence and announce
        it (NOTIFY relaywatch_blocks, in the same transaction). Degraded: kept in memory, in force."""
        if self.block_keys is None:
            raise RelaywatchError("this state store was opened without the access-map keys: it cannot record blocks")
        self._unsaved_blocks[(row.kind, row.target)] = row
        nested = self._depth > 0
        try:
            with self.transaction():
                if nested:
                    self._insert_block(self._connection(), row, keep_active=False)
        except StoreUnavailable:
            if not self.degrade:
                del self._unsaved_blocks[(row.kind, row.target)]
                raise

    def _insert_block(self, conn: psycopg.Connection[Any], row: BlockRow, keep_active: bool) -> None:
        assert self.block_keys is not None
        key, action = self.block_keys(row.kind, row.target, row.rule, row.reason)
        written = conn.execute(sql.UPSERT_BLOCK, {
            "kind": row.kind, "target": row.target, "key": key, "action": action, "reason": row.reason,
            "rule": row.rule, "since": row.since, "until": row.until, "host": self.host,
            "keep_active": keep_active}).fetchone()
        if written:
            conn.execute(sql.COUNT_OFFENCE, [row.kind, row.target, row.since])
            conn.execute(sql.NOTIFY, [self.host])
            known = self._blocks_read.get((row.kind, row.target))
            self._blocks_read[(row.kind, row.target)] = dataclasses.replace(
                row, offences=known.offences + 1 if known is not None else self.offences(row.kind, row.target))

    def remove_block(self, kind: str, target: str) -> bool:
        with self.transaction():
            conn = self._connection()
            gone = conn.execute("DELETE FROM relaywatch_blocks WHERE kind = %s AND target = %s", [kind, target])
            if gone.rowcount:
                conn.execute(sql.NOTIFY, [self.host])
            self._blocks_read.pop((kind, target), None)
            return gone.rowcount > 0

    def expire_blocks(self, now: float) -> list[BlockRow]:
        """Forget blocks whose time is up; each is returned to the one host whose delete took it."""
        with self._kept_if_unavailable(), self.transaction():
            conn = self._connection()
            gone = [BlockRow(*r) for r in conn.execute(
                "DELETE FROM relaywatch_blocks WHERE until IS NOT NULL AND until <= %s RETURNING kind, target,"
                " reason, rule, since, until, offences", [now])]
            if gone:
                conn.execute(sql.NOTIFY, [self.host])
            return gone
        return []

    def block_changes(self) -> BlockChanges:
        """A LISTEN on relaywatch_blocks through a connection of its own (the caller closes it)."""
        return BlockChanges(self._connect, self._listen_errors)

    @contextlib.contextmanager
    def _listen_errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise StoreUnavailable(f"state database {self.name}: cannot listen for block changes"
                                   f" ({self._scrub(exc)})") from None
