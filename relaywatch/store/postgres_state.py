"""The PostgreSQL store's parts that need no driver: the decision claims of one transaction, the
commits whose answer was lost, the host's state records (store.state's KeyValue over relaywatch_meta)
and the row conversions.

`conn` below is the store's psycopg connection (only store.postgres imports psycopg)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from relaywatch.core.rules import BUCKET_S
from relaywatch.model import Action, CountRow, Decision, Kind, RelaywatchError
from relaywatch.store import postgres_schema as sql
from relaywatch.store.sqlite_file import StoreUnavailable

log = logging.getLogger("relaywatch.store")
T = TypeVar("T")
# (kind, target, rule, reason) -> (lookup_key, action): what Postfix's pgsql: query gets for a block
BlockKeys = Callable[[str, str, str, str], tuple[str, str]]
_Key = tuple[str, str, str, float, str]


def decision_from_row(r: Any) -> Decision:
    """A Decision from sql.DECISION_COLUMNS."""
    return Decision(r[0], Action(r[1]), Kind(r[2]), r[3], r[4], r[5], r[6], r[7], tuple(json.loads(r[8])),
                    tuple(json.loads(r[9])), tuple(json.loads(r[10])))


def decision_row(host: str, seq: int, d: Decision) -> tuple[Any, ...]:
    """sql.INSERT_DECISION's arguments."""
    return (host, seq, d.time, d.action, d.kind, d.target, d.rule, d.count, d.window_s, d.clients,
            json.dumps(d.evidence), json.dumps(d.sample_qids), json.dumps(d.hosts))


def cursor_arrays(cursor: dict[str, int]) -> tuple[list[str], list[int]]:
    return list(cursor), list(cursor.values())


class Claims:
    """Which decisions this host won in the current transaction (claimed once, however often asked).

    A claim is (action, kind, target) for the decision's window: a second host deciding the same
    within it loses, and records nothing (it adopts the winner's block). Unblocks are not claimed:
    the one host whose DELETE took a block records its end. A decision won names the fleet hosts
    whose counts of its target are in its window (one query per decision, none per line)."""

    def __init__(self) -> None:
        self._won: dict[_Key, Decision | None] = {}

    def claim(self, conn: Any, host: str, d: Decision) -> Decision | None:
        """`d` as recorded (with its hosts) when this host won it, else None."""
        if d.action == Action.UNBLOCK:
            return d
        key = (d.action, d.kind, d.target, d.time, d.rule)
        if key not in self._won:
            row = conn.execute(sql.CLAIM, [d.action, d.kind, d.target, d.time, d.time + max(d.window_s, 1),
                                           host]).fetchone()
            self._won[key] = None if row is None else replace(d, hosts=contributors(conn, host, d))
        return self._won[key]

    def end(self) -> None:
        """The transaction ended: its claims were committed or rolled back with it."""
        self._won.clear()


class Unheard:
    """A commit whose answer was lost (the connection died after the server committed, before the client
    heard) is settled on the next transaction: the host's row shows whether its number landed, and if it
    did, the counts of that batch are dropped from the batch the pipeline sends again (no double count)."""

    def __init__(self) -> None:
        self._sent: dict[tuple[str, int, str], int] = {}  # the counts this transaction wrote
        self._doubt: tuple[int, dict[tuple[str, int, str], int]] | None = None  # a commit not heard: (seq, counts)
        self._landed: dict[tuple[str, int, str], int] = {}  # counts of a batch that landed unheard: not again
        self._dropped = False  # this transaction left out the landed counts

    def sent(self, dim: str, bucket: int, key: str, n: int) -> None:
        self._sent[(dim, bucket, key)] = self._sent.get((dim, bucket, key), 0) + n

    def not_heard(self, seq: int) -> None:
        """The commit of the transaction numbered `seq` failed unheard: it may have landed."""
        self._doubt = (seq, self._sent)

    def settle(self, conn: Any, host: str, name: str) -> None:
        """A commit that was not heard: if the host's row shows its number, it landed, and its counts
        are left out of the batch sent again (the pipeline still holds them)."""
        if self._doubt is None:
            return
        seq, counts = self._doubt
        row = conn.execute(sql.HOST_SEQ, [host]).fetchone()
        self._doubt = None
        if row is not None and int(row[0]) >= seq:
            log.warning("state database %s: the batch %d committed though its answer was lost: it is not"
                        " written again", name, seq)
            for key, n in counts.items():
                self._landed[key] = self._landed.get(key, 0) + n

    def unlanded(self, counts: Iterable[CountRow]) -> list[CountRow]:
        """`counts` without those of a batch that landed unheard (`settle`)."""
        if not self._landed:
            return list(counts)
        self._dropped = True
        out = []
        for dim, bucket, key, n in counts:
            n -= self._landed.get((dim, bucket, key), 0)
            if n > 0:
                out.append(CountRow(dim, bucket, key, n))
        return out

    def end(self, *, committed: bool) -> None:
        """The transaction is over. Committed without the landed counts: the pipeline's batch no longer
        holds them."""
        if committed and self._dropped:
            self._landed = {}
        self._sent, self._dropped = {}, False


_DIMS_OF_KIND = {Kind.CLIENT: ["client", "relay_denied"], Kind.SUBNET: ["client", "relay_denied"],
                 Kind.SASL_USER: ["sasl_user"], Kind.SENDER: ["sender"], Kind.DESTINATION: ["domain"],
                 Kind.UID: ["uid"]}


def contributors(conn: Any, host: str, d: Decision) -> tuple[str, ...]:
    """This host and every other whose counts of `d`'s target are in its window; the syslog hosts of
    its own evidence too when its log mixes several (a central log)."""
    names = {host, *(d.hosts if len(d.hosts) > 1 else ())}
    args = {"bucket": int((d.time - d.window_s) // BUCKET_S), "dims": _DIMS_OF_KIND.get(d.kind, []),
            "target": d.target, "subnet": d.kind == Kind.SUBNET}
    try:
        with conn.transaction():  # a savepoint: a key that is no address fails the cast, not the batch
            names.update(r[0] for r in conn.execute(sql.CONTRIBUTORS, args))
    except Exception as exc:  # the driver's DataError (only store.postgres imports it)
        log.warning("cannot tell which hosts counted %s %s: %s", d.kind, d.target, exc)
    return tuple(sorted(names))


class _Store(Protocol):
    host: str
    degrade: bool

    @property
    def in_transaction(self) -> bool: ...

    def transaction(self) -> Any: ...

    def run(self, fn: Callable[[Any], T]) -> T: ...

    def read(self, doing: str, fn: Callable[[Any], T], fallback: Callable[[], T]) -> T: ...


class Meta:
    """relaywatch_meta for this host as store.state's KeyValue. Values are kept as read or written, so
    that during an outage they are answered from memory; writes then wait for the next transaction.
    The daemon's status record also updates the host's row (last contact, lag) for the fleet view."""

    def __init__(self, store: _Store) -> None:
        self._store = store
        self._known: dict[str, Any] = {}
        self._unsaved: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        if key in self._unsaved:
            return self._unsaved[key]

        def fetch(conn: Any) -> Any:
            row = conn.execute("SELECT value FROM relaywatch_meta WHERE host = %s AND key = %s",
                               [self._store.host, key]).fetchone()
            self._known[key] = json.loads(row[0]) if row else None
            return self._known[key]
        return self._store.read("read", fetch, lambda: self._known.get(key))

    def put(self, key: str, value: Any) -> None:
        store = self._store
        self._unsaved[key] = value
        nested = store.in_transaction
        try:
            with store.transaction():
                if nested:  # else the backlog, this value included, was written as the transaction began
                    store.run(lambda conn: self._write(conn, key, value))
        except StoreUnavailable:
            if not store.degrade:
                del self._unsaved[key]
                raise

    def _write(self, conn: Any, key: str, value: Any) -> None:
        conn.execute(sql.UPSERT_META, [self._store.host, key, json.dumps(value, sort_keys=True)])
        self._known[key] = value
        if key == "daemon" and isinstance(value, dict) and value.get("pid"):
            last, beat = value.get("last_log_time"), value.get("heartbeat") or 0.0
            lag = 0.0 if value.get("caught_up") or last is None else max(0.0, beat - last)
            conn.execute(sql.HOST_STATUS, [self._store.host, lag])

    def write_unsaved(self, conn: Any) -> None:
        for key, value in self._unsaved.items():
            self._write(conn, key, value)

    def saved(self) -> None:
        self._unsaved.clear()

    def unsaved_count(self) -> int:
        return len(self._unsaved)

    def keys(self, prefix: str) -> list[str]:
        def fetch(conn: Any) -> list[str]:
            rows = conn.execute("SELECT key FROM relaywatch_meta WHERE host = %s AND starts_with(key, %s)",
                                [self._store.host, prefix])
            return [r[0] for r in rows]
        stored = self._store.read("read", fetch, lambda: [k for k, v in self._known.items() if v is not None])
        return sorted({k for k in stored if k.startswith(prefix)} | {k for k in self._unsaved if k.startswith(prefix)})

    def prune(self, prefix: str, before: str) -> int:
        store = self._store
        try:
            with store.transaction():
                return int(store.run(lambda conn: conn.execute(
                    "DELETE FROM relaywatch_meta WHERE host = %s AND starts_with(key, %s) AND key < %s",
                    [store.host, prefix, prefix + before]).rowcount))
        except StoreUnavailable:
            if not store.degrade:
                raise
        return 0


def make_schema(conn: Any, name: str) -> None:
    """The tables, made once and upgraded from an older version; a host opening a database already at
    this version runs no DDL (CREATE INDEX IF NOT EXISTS takes its table's lock even when the index is
    there: it would deadlock with busy hosts). A schema a newer relaywatch made is refused."""
    if conn.execute("SELECT to_regclass('relaywatch_schema') IS NOT NULL").fetchone() == (True,):
        row = conn.execute("SELECT max(version) FROM relaywatch_schema").fetchone()
        if row is not None and row[0] == sql.VERSION:
            return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", [sql.LOCK_KEY])
        conn.execute(sql.SCHEMA)
        row = conn.execute("SELECT max(version) FROM relaywatch_schema").fetchone()
        version = row[0] if row else None
        if version is not None and version > sql.VERSION:
            raise RelaywatchError(f"state database {name}: schema version {version} was made by a newer"
                                  f" relaywatch (this one knows {sql.VERSION}): upgrade this host")
        if version is None:
            conn.execute("INSERT INTO relaywatch_schema (version) VALUES (%s)", [sql.VERSION])
        elif version < sql.VERSION:
            conn.execute(sql.UPGRADE)
            conn.execute("UPDATE relaywatch_schema SET version = %s", [sql.VERSION])
