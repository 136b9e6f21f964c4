"""The state in PostgreSQL, shared by a fleet of mail hosts (psycopg 3 lives here and nowhere else).

Each host adds its own counts (tagged with its name) and decides on the fleet's sum: every batch
it pulls what the other hosts counted since its last pull (`fleet_news`) into its windows, which
count without deciding. A decision is claimed before it is recorded (postgres_schema.CLAIM, a
unique key, no leader): a host that loses the race adopts the block the winner recorded. A host's
counts, decisions and read position commit in one transaction, numbered in its host row.

When PostgreSQL cannot be reached the store degrades like the SQLite one (store.base): writes raise
StoreUnavailable and wait in memory, reads answer from what was last read, and everything is
written with the first transaction that succeeds. The URL's password never reaches a message.
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
from relaywatch.store.postgres_state import BlockKeys, Claims, Meta, cursor_arrays, decision_from_row
from relaywatch.store.records import BlockRow, FleetNews, HostRow
from relaywatch.store.sqlite_file import StoreUnavailable
from relaywatch.store.state import DayArchive, EnforcementAlarms, MapState, NotifyState, Positions, StatusRecord

OUTAGE_RETRY_S = 5.0  # while PostgreSQL cannot be reached, a write is tried again this often
CONNECT_TIMEOUT_S = 5
T = TypeVar("T")
redact = redact_database


def check_url(url: str) -> None:
    """ValueError saying what is wrong with a libpq URL (without its password)."""
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as exc:
        raise ValueError(f"{redact(url)}: {exc}") from None


class Store:
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
            self._make_schema(self._connection())

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
            raise StoreUnavailable(f"state database {self.name}: cannot {doing} ({self._scrub(exc)}): PostgreSQL"
                                   " cannot be reached or is restarting; nothing was written") from None
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

    def _make_schema(self, conn: psycopg.Connection[Any]) -> None:
        """Made once; a host opening a database already at this version runs no DDL (CREATE INDEX IF NOT
        EXISTS takes its table's lock even when the index is there: it would deadlock with busy hosts)."""
        if conn.execute("SELECT to_regclass('relaywatch_schema') IS NOT NULL").fetchone() == (True,):
            row = conn.execute("SELECT max(version) FROM relaywatch_schema").fetchone()
            if row is not None and row[0] == sql.VERSION:
                return
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [sql.LOCK_KEY])
            conn.execute(sql.SCHEMA)
            row = conn.execute("SELECT max(version) FROM relaywatch_schema").fetchone()
            version = row[0] if row else None
            if version is None:
                conn.execute("INSERT INTO relaywatch_schema (version) VALUES (%s)", [sql.VERSION])
            elif version > sql.VERSION:
                raise RelaywatchError(f"state database {self.name}: schema version {version} was made by a newer"
                                      f" relaywatch (this one knows {sql.VERSION}): upgrade this host")

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
        self._depth = 1
        try:
            with self._errors("write"):
                conn = self._connection()
                with conn.transaction():
                    self._write_backlog(conn)
                    yield
        except BaseException as exc:
            self._on_commit.clear()
            if isinstance(exc, StoreUnavailable):
                self.unavailable, self._retry_at = exc, self.clock() + OUTAGE_RETRY_S
            raise
        finally:
            self._depth, self._seq = 0, None
            self.claims.end()
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
        transaction: a lost race waits for the winner's commit, then loses)."""
        with self.transaction():
            conn = self._connection()
            return [d for d in decisions if self.claims.claim(conn, self.host, d)]

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
                won = [d for d in decisions if self.claims.claim(conn, me, d)]
                counts = list(counts)
                if counts or won:
                    seq = self._next_seq(conn)
                    with cur.copy(sql.COPY_COUNTS) as copy:
                        for dim, bucket, key, n in counts:
                            copy.write_row((me, seq, dim, bucket, key, n))
                    cur.executemany(sql.INSERT_DECISION, [
                        (me, seq, d.time, d.action, d.kind, d.target, d.rule, d.count, d.window_s, d.clients,
                         json.dumps(d.evidence), json.dumps(d.sample_qids)) for d in won])
                if position is not None:
                    value = json.dumps(position[1], sort_keys=True)
                    cur.execute(sql.UPSERT_POSITION, [me, position[0], value])
                    cur.execute(sql.HOST_POSITION, [me, value])

    def _cursor_now(self, conn: psycopg.Connection[Any]) -> dict[str, int]:
        if self._cursor is None:
            rows = conn.execute("SELECT host, seq FROM relaywatch_hosts WHERE host <> %s", [self.host])
            self._cursor = {h: int(s) for h, s in rows}
        return self._cursor

    def counts_since(self, bucket: int, max_keys: int | None = None) -> Iterator[CountRow]:
        """The fleet's counts from `bucket` on (summed over hosts), one dimension after the other, each
        oldest first; other hosts' only up to what this store pulled (the rest comes by `fleet_news`)."""
        def fetch(conn: psycopg.Connection[Any]) -> list[CountRow]:
            hosts, seqs = cursor_arrays(self._cursor_now(conn))
            args = {"hosts": hosts, "seqs": seqs, "bucket": bucket, "me": self.host}
            if max_keys is None:
                return [CountRow(*r) for r in conn.execute(sql.FLEET_SUM, args)]
            out: list[CountRow] = []
            for dim, keys in conn.execute(sql.FLEET_DIMS, args).fetchall():
                query = sql.FLEET_SUM.replace("WHERE c.bucket", "WHERE c.dim = %(dim)s AND c.bucket")
                if keys > max_keys:
                    query = sql.FLEET_TOP
                out += [CountRow(*r) for r in conn.execute(query, {**args, "dim": dim, "max": max_keys})]
            return out
        return iter(self.read("read", fetch, list))

    def fleet_news(self, since_bucket: int) -> FleetNews:
        """What the other hosts committed since the last call: their counts from `since_bucket` on (to be
        restored into the windows: counted, not decided), their decisions, and the blocks those made."""
        def fetch(conn: psycopg.Connection[Any]) -> FleetNews:
            if self._cursor is None:  # no restore before: everything in the windows is news
                self._cursor = {}
            cursor = self._cursor
            rows = conn.execute("SELECT host, seq FROM relaywatch_hosts WHERE host <> %s", [self.host]).fetchall()
            new = [(h, cursor.get(h, 0), int(s)) for h, s in rows if int(s) > cursor.get(h, 0)]
            if not new:
                return FleetNews([], [], [])
            args = {"hosts": [h for h, _, _ in new], "lo": [lo for _, lo, _ in new],
                    "hi": [hi for _, _, hi in new], "bucket": since_bucket}
            counts = [CountRow(*r) for r in conn.execute(sql.PULL_COUNTS, args)]
            decisions = [decision_from_row(r[1:]) for r in conn.execute(sql.PULL_DECISIONS, args)]
            blocked = {(d.kind, d.target) for d in decisions if d.action == "block"}
            blocks = [b for b in self.blocks() if (b.kind, b.target) in blocked] if blocked else []
            cursor.update({h: hi for h, _, hi in new})
            return FleetNews(counts, decisions, blocks)
        return self.read("read", fetch, lambda: FleetNews([], [], []))

    def hosts(self) -> list[HostRow]:
        """Every fleet member the database has heard of, by name."""
        def fetch(conn: psycopg.Connection[Any]) -> list[HostRow]:
            rows = conn.execute("SELECT host, last_contact, lag_s, position FROM relaywatch_hosts ORDER BY host")
            return [HostRow(h, t, lag, json.loads(p) if p else None) for h, t, lag, p in rows]
        return self.read("read", fetch, list)

    def busiest(self, since_bucket: int, per_dim: int = 5) -> dict[str, list[tuple[str, int]]]:
        def fetch(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[str, int]]]:
            out: dict[str, list[tuple[str, int]]] = {}
            for dim, key, total in conn.execute(sql.BUSIEST, [since_bucket]):
                top = out.setdefault(dim, [])
                if len(top) < per_dim:
                    top.append((key, int(total)))
            return out
        return self.read("read", fetch, dict)

    def prune(self, before_bucket: int) -> int:
        """Forget counts older than every window (any host's: they are the fleet's windows)."""
        with self._kept_if_unavailable(), self.transaction():
            cur = self._connection().execute("DELETE FROM relaywatch_counts WHERE bucket < %s", [before_bucket])
            return cur.rowcount
        return 0

    def open_messages(self) -> list[OpenMessage]:
        def fetch(conn: psycopg.Connection[Any]) -> list[OpenMessage]:
            rows = conn.execute("SELECT qid, first_seen, last_seen, client, sasl_user, sender, nrcpt, seen FROM"
                                " relaywatch_open_messages WHERE host = %s ORDER BY last_seen", [self.host])
            return [OpenMessage(qid, first, last, client, sasl_user, sender, nrcpt, tuple(json.loads(seen)))
                    for qid, first, last, client, sasl_user, sender, nrcpt, seen in rows]
        with self._errors("read"):
            return fetch(self._connection())

    def queue_ids(self, client: str | None = None, sasl_user: str | None = None,
                  network: str | None = None) -> list[str]:
        """Queue ids of this host's queued mail from the client, SASL user or network."""
        if client is not None:
            where, arg = "client = %s", client
        elif sasl_user is not None:
            where, arg = "sasl_user = %s", sasl_user
        else:
            where, arg = "client::inet <<= %s::cidr", network or ""
        query = f"SELECT qid FROM relaywatch_origins WHERE host = %s AND {where}"
        return self.read("read", lambda conn: [r[0] for r in conn.execute(query, [self.host, arg])], list)

    def prune_origins(self, before: float) -> int:
        with self._kept_if_unavailable(), self.transaction():
            cur = self._connection().execute("DELETE FROM relaywatch_origins WHERE host = %s AND time < %s",
                                             [self.host, before])
            return cur.rowcount
        return 0

    def _position(self, source: str) -> JSONObject | None:
        def fetch(conn: psycopg.Connection[Any]) -> JSONObject | None:
            row = conn.execute("SELECT value FROM relaywatch_positions WHERE host = %s AND source = %s",
                               [self.host, source]).fetchone()
            value: JSONObject | None = json.loads(row[0]) if row else None
            return value
        with self._errors("read"):
            return fetch(self._connection())

    def decisions(self, since: float | None = None, until: float | None = None) -> list[Decision]:
        """The fleet's decisions in time order; with `since`/`until`, those in [since, until)."""
        query = (f"SELECT {sql.DECISION_COLUMNS} FROM relaywatch_decisions WHERE time >= %s AND time < %s"
                 " ORDER BY time, id")
        args = [float("-inf") if since is None else since, float("inf") if until is None else until]
        return self.read("read", lambda conn: [decision_from_row(r) for r in conn.execute(query, args)], list)

    # --- blocks -------------------------------------------------------------------------

    def offences(self, kind: str, target: str) -> int:
        def fetch(conn: psycopg.Connection[Any]) -> int:
            row = conn.execute("SELECT count FROM relaywatch_offences WHERE kind = %s AND target = %s",
                               [kind, target]).fetchone()
            return int(row[0]) if row else 0
        known = self._blocks_read.get((kind, target))
        return self.read("read", fetch, lambda: known.offences if known is not None else 0)

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

    def blocks(self, now: float | None = None) -> list[BlockRow]:
        """The fleet's blocks in force at `now` (all when None), oldest first, with those waiting in
        memory; during an outage, those last read."""
        def fetch(conn: psycopg.Connection[Any]) -> dict[tuple[str, str], BlockRow]:
            self._blocks_read = {(r[0], r[1]): BlockRow(*r) for r in conn.execute(sql.SELECT_BLOCKS)}
            return self._blocks_read
        rows = dict(self.read("read", fetch, lambda: self._blocks_read))
        for key, row in (self._unsaved_blocks if not self._depth else {}).items():
            known = rows.get(key)
            rows[key] = dataclasses.replace(row, offences=known.offences + 1 if known is not None else 1)
        return sorted((b for b in rows.values() if now is None or b.until is None or b.until > now),
                      key=lambda b: (b.since, b.kind, b.target))

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
        return BlockChanges(self._connect, self.name, self._scrub)


class BlockChanges:
    """Waits for NOTIFY relaywatch_blocks: blocks changed on some host (hash: maps re-sync then)."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], name: str,
                 scrub: Callable[[BaseException], str]) -> None:
        self._connect, self._name, self._scrub = connect, name, scrub
        self._conn: psycopg.Connection[Any] | None = None

    def wait(self, timeout: float) -> bool:
        """True when blocks changed within `timeout` s, or may have: the LISTEN was (re)started, so a
        change meanwhile would not have been heard. StoreUnavailable while PostgreSQL is away."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = self._connect()
                self._conn.execute(f"LISTEN {sql.CHANNEL}")
                return True
            heard = any(True for _ in self._conn.notifies(timeout=timeout, stop_after=1))
            if heard:
                for _ in self._conn.notifies(timeout=0.0):
                    pass
            return heard
        except psycopg.Error as exc:
            self.close()
            raise StoreUnavailable(f"state database {self._name}: cannot listen for block changes"
                                   f" ({self._scrub(exc)})") from None

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
            self._conn = None
