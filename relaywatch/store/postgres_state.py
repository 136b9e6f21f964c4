"""The PostgreSQL store's parts that need no driver: the decision claims of one transaction, the
host's state records (store.state's KeyValue over relaywatch_meta) and the row conversions.

`conn` below is the store's psycopg connection (only store.postgres imports psycopg)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from relaywatch.model import Action, Decision, Kind
from relaywatch.store import postgres_schema as sql
from relaywatch.store.sqlite_file import StoreUnavailable

T = TypeVar("T")
# (kind, target, rule, reason) -> (lookup_key, action): what Postfix's pgsql: query gets for a block
BlockKeys = Callable[[str, str, str, str], tuple[str, str]]
_Key = tuple[str, str, str, float, str]


def decision_from_row(r: Any) -> Decision:
    """A Decision from sql.DECISION_COLUMNS."""
    return Decision(r[0], Action(r[1]), Kind(r[2]), r[3], r[4], r[5], r[6], r[7], tuple(json.loads(r[8])),
                    tuple(json.loads(r[9])))


def cursor_arrays(cursor: dict[str, int]) -> tuple[list[str], list[int]]:
    return list(cursor), list(cursor.values())


class Claims:
    """Which decisions this host won in the current transaction (claimed once, however often asked).

    A claim is (action, kind, target) for the decision's window: a second host deciding the same
    within it loses, and records nothing (it adopts the winner's block). Unblocks are not claimed:
    the one host whose DELETE took a block records its end."""

    def __init__(self) -> None:
        self._won: dict[_Key, bool] = {}

    def claim(self, conn: Any, host: str, d: Decision) -> bool:
        if d.action == Action.UNBLOCK:
            return True
        key = (d.action, d.kind, d.target, d.time, d.rule)
        won = self._won.get(key)
        if won is None:
            row = conn.execute(sql.CLAIM, [d.action, d.kind, d.target, d.time, d.time + max(d.window_s, 1),
                                           host]).fetchone()
            won = self._won[key] = row is not None
        return won

    def end(self) -> None:
        """The transaction ended: its claims were committed or rolled back with it."""
        self._won.clear()


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
