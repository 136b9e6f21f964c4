"""The SQLite store's `meta` table as store.state's KeyValue: JSON values by key. In degrade mode a
value that cannot be written now is kept (and read back) from memory, and written first by the next
transaction store.sqlite begins (`write_unsaved`), as store.postgres_state.Meta does for PostgreSQL."""

from __future__ import annotations

import json
from contextlib import AbstractContextManager
from typing import Any, Protocol

from relaywatch.store.sqlite_file import StoreUnavailable


class _Store(Protocol):
    """What the meta table needs of store.sqlite.Store."""

    db: Any  # its sqlite_utils.Database (only store.sqlite imports sqlite_utils)
    degrade: bool

    @property
    def in_transaction(self) -> bool: ...

    def transaction(self) -> AbstractContextManager[None]: ...


class Meta:
    """The KeyValue store.state's records read and write (`Store.meta`, as on store.postgres.Store)."""

    def __init__(self, store: _Store) -> None:
        self._store = store
        self._unsaved: dict[str, Any] = {}

    def get(self, key: str) -> Any:
        if key in self._unsaved:
            return self._unsaved[key]
        row = self._store.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: Any) -> None:
        store = self._store
        self._unsaved[key] = value
        nested = store.in_transaction
        try:
            with store.transaction():
                if nested:  # else the backlog, this value included, was written as the transaction began
                    self._write(key, value)
        except StoreUnavailable:
            if not store.degrade:
                del self._unsaved[key]
                raise

    def _write(self, key: str, value: Any) -> None:
        self._store.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            [key, json.dumps(value, sort_keys=True)],
        )

    def write_unsaved(self) -> None:
        for key, value in self._unsaved.items():
            self._write(key, value)

    def saved(self) -> None:
        self._unsaved.clear()

    def unsaved_count(self) -> int:
        return len(self._unsaved)

    def keys(self, prefix: str) -> list[str]:
        rows = self._store.db.execute("SELECT key FROM meta WHERE substr(key, 1, ?) = ? ORDER BY key",
                                      [len(prefix), prefix])
        return sorted({r[0] for r in rows} | {k for k in self._unsaved if k.startswith(prefix)})

    def prune(self, prefix: str, before: str) -> int:
        store = self._store
        try:
            with store.transaction():
                return int(store.db.execute("DELETE FROM meta WHERE substr(key, 1, ?) = ? AND substr(key, ?) < ?",
                                            [len(prefix), prefix, len(prefix) + 1, before]).rowcount)
        except StoreUnavailable:
            if not store.degrade:
                raise
        return 0
