"""The PostgreSQL store's reads: the fleet's sums, what other hosts committed since the last pull,
the host rows, decisions, blocks and this host's own records (no driver here: store.postgres runs
them on its connection, and during an outage answers from what was last read).

`conn` below is the store's psycopg connection (only store.postgres imports psycopg)."""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, TypeVar

from relaywatch.model import CountRow, Decision, JSONObject, OpenMessage
from relaywatch.store import postgres_schema as sql
from relaywatch.store.postgres_state import cursor_arrays, decision_from_row
from relaywatch.store.records import BlockRow, FleetNews, HostRow
from relaywatch.store.sqlite_file import StoreUnavailable

T = TypeVar("T")


class Reads(abc.ABC):
    """The reads of store.postgres.Store, which provides the connection (`read`, `read_now`)."""

    host: str
    _depth: int
    _cursor: dict[str, int] | None  # host -> the last of its numbers pulled
    _unsaved_blocks: dict[tuple[str, str], BlockRow]
    _blocks_read: dict[tuple[str, str], BlockRow]  # the last blocks read: answered during an outage

    @abc.abstractmethod
    def read(self, doing: str, fn: Callable[[Any], T], fallback: Callable[[], T]) -> T:
        """`fn` on the connection; in degrade mode during an outage, `fallback()` instead of an error."""

    @abc.abstractmethod
    def read_now(self, doing: str, fn: Callable[[Any], T]) -> T:
        """`fn` on the connection; StoreUnavailable during an outage (what must not be guessed)."""

    def _cursor_now(self, conn: Any) -> dict[str, int]:
        if self._cursor is None:
            rows = conn.execute("SELECT host, seq FROM relaywatch_hosts WHERE host <> %s", [self.host])
            self._cursor = {h: int(s) for h, s in rows}
        return self._cursor

    def counts_since(self, bucket: int, max_keys: int | None = None) -> Iterator[CountRow]:
        """The fleet's counts from `bucket` on (summed over hosts), one dimension after the other, each
        oldest first; other hosts' only up to what this store pulled (the rest comes by `fleet_news`)."""
        def fetch(conn: Any) -> list[CountRow]:
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
        def fetch(conn: Any) -> FleetNews:
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
        def fetch(conn: Any) -> list[HostRow]:
            rows = conn.execute("SELECT host, last_contact, lag_s, position FROM relaywatch_hosts ORDER BY host")
            return [HostRow(h, t, lag, json.loads(p) if p else None) for h, t, lag, p in rows]
        return self.read("read", fetch, list)

    def busiest(self, since_bucket: int, per_dim: int = 5) -> dict[str, list[tuple[str, int]]]:
        def fetch(conn: Any) -> dict[str, list[tuple[str, int]]]:
            out: dict[str, list[tuple[str, int]]] = {}
            for dim, key, total in conn.execute(sql.BUSIEST, [since_bucket]):
                top = out.setdefault(dim, [])
                if len(top) < per_dim:
                    top.append((key, int(total)))
            return out
        return self.read("read", fetch, dict)

    def open_messages(self) -> list[OpenMessage]:
        def fetch(conn: Any) -> list[OpenMessage]:
            rows = conn.execute("SELECT qid, first_seen, last_seen, client, sasl_user, sender, nrcpt, seen FROM"
                                " relaywatch_open_messages WHERE host = %s ORDER BY last_seen", [self.host])
            return [OpenMessage(qid, first, last, client, sasl_user, sender, nrcpt, tuple(json.loads(seen)))
                    for qid, first, last, client, sasl_user, sender, nrcpt, seen in rows]
        return self.read_now("read", fetch)

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

    def _position(self, source: str) -> JSONObject | None:
        def fetch(conn: Any) -> JSONObject | None:
            row = conn.execute("SELECT value FROM relaywatch_positions WHERE host = %s AND source = %s",
                               [self.host, source]).fetchone()
            value: JSONObject | None = json.loads(row[0]) if row else None
            return value
        return self.read_now("read", fetch)

    def decisions(self, since: float | None = None, until: float | None = None) -> list[Decision]:
        """The fleet's decisions in time order; with `since`/`until`, those in [since, until)."""
        query = (f"SELECT {sql.DECISION_COLUMNS} FROM relaywatch_decisions WHERE time >= %s AND time < %s"
                 " ORDER BY time, id")
        args = [float("-inf") if since is None else since, float("inf") if until is None else until]
        return self.read("read", lambda conn: [decision_from_row(r) for r in conn.execute(query, args)], list)

    def offences(self, kind: str, target: str) -> int:
        def fetch(conn: Any) -> int:
            row = conn.execute("SELECT count FROM relaywatch_offences WHERE kind = %s AND target = %s",
                               [kind, target]).fetchone()
            return int(row[0]) if row else 0
        known = self._blocks_read.get((kind, target))
        return self.read("read", fetch, lambda: known.offences if known is not None else 0)

    def blocks(self, now: float | None = None) -> list[BlockRow]:
        """The fleet's blocks in force at `now` (all when None), oldest first, with those waiting in
        memory; during an outage, those last read."""
        def fetch(conn: Any) -> dict[tuple[str, str], BlockRow]:
            self._blocks_read = {(r[0], r[1]): BlockRow(*r) for r in conn.execute(sql.SELECT_BLOCKS)}
            return self._blocks_read
        rows = dict(self.read("read", fetch, lambda: self._blocks_read))
        for key, row in (self._unsaved_blocks if not self._depth else {}).items():
            known = rows.get(key)
            rows[key] = dataclasses.replace(row, offences=known.offences + 1 if known is not None else 1)
        return sorted((b for b in rows.values() if now is None or b.until is None or b.until > now),
                      key=lambda b: (b.since, b.kind, b.target))


class BlockChanges:
    """store.base.BlockChanges for PostgreSQL: LISTEN relaywatch_blocks on a connection of its own
    (`connect`); `errors` turns the driver's errors into StoreUnavailable."""

    def __init__(self, connect: Callable[[], Any], errors: Callable[[], AbstractContextManager[None]]) -> None:
        self._connect, self._errors = connect, errors
        self._conn: Any = None

    def wait(self, timeout: float) -> bool:
        """True when blocks changed within `timeout` s, or may have: the LISTEN was (re)started, so a
        change meanwhile would not have been heard. StoreUnavailable while PostgreSQL is away."""
        try:
            with self._errors():
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                    self._conn.execute(sql.LISTEN)
                    return True
                heard = any(True for _ in self._conn.notifies(timeout=timeout, stop_after=1))
                if heard:
                    for _ in self._conn.notifies(timeout=0.0):
                        pass
                return heard
        except StoreUnavailable:
            self.close()
            raise

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
            self._conn = None
