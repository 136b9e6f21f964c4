"""Which clients relayed without authentication, on which days: the inline budget spares them.

One row per key (an IPv4 address or an IPv6 /64): the first and last day it relayed and its
strikes (over the budget, or blocked). A key is known once it relayed on an earlier day with no
strike, so a flood's clients never become known the next day. Its own table in the state
database, through its own connection (plain sqlite3): the store's schema is not touched.
"""

from __future__ import annotations

import logging
import sqlite3
from datetime import date
from pathlib import Path

log = logging.getLogger("relaywatch.relayers")

NEW_PER_DAY = 10_000  # new keys recorded per day at most: a flood of distinct clients stays small
KEPT_DAYS = 400

_SCHEMA = """
CREATE TABLE IF NOT EXISTS relay_history (
    key TEXT PRIMARY KEY, first_day INTEGER NOT NULL, last_day INTEGER NOT NULL, strikes INTEGER NOT NULL
) WITHOUT ROWID
"""
_SAW = ("INSERT INTO relay_history (key, first_day, last_day, strikes) VALUES (?, ?, ?, 0) "
        "ON CONFLICT (key) DO UPDATE SET last_day = max(last_day, excluded.last_day)")
_STRIKE = ("INSERT INTO relay_history (key, first_day, last_day, strikes) VALUES (?, ?, ?, 1) "
           "ON CONFLICT (key) DO UPDATE SET strikes = strikes + 1")


def day_number(t: float) -> int:
    """The local calendar day of `t`, as a day number (what the table stores)."""
    return date.fromtimestamp(t).toordinal()


class RelayHistory:
    def __init__(self, path: str | Path) -> None:
        self.conn = sqlite3.connect(str(path), isolation_level=None, timeout=20.0)
        self.conn.execute(_SCHEMA)
        self._today = 0
        self._seen_today: set[str] = set()
        self._saw: dict[str, int] = {}
        self._strikes: list[tuple[str, int]] = []
        self._capped = False

    def saw(self, key: str, t: float) -> None:
        """An unauthenticated relayed recipient of this key at log time `t` (buffered)."""
        day = day_number(t)
        if day != self._today:
            if day < self._today:
                return  # a line from an earlier day: its day was recorded then, or never mattered
            self._today, self._capped = day, False
            self._seen_today.clear()
        if key in self._seen_today:
            return
        if len(self._seen_today) >= NEW_PER_DAY:
            if not self._capped:
                self._capped = True
                log.warning("more than %d distinct unauthenticated relaying clients today: the rest are not "
                            "remembered as relayers (they stay unknown to the inline budget)", NEW_PER_DAY)
            return
        self._seen_today.add(key)
        self._saw[key] = day

    def strike(self, key: str, t: float) -> None:
        """This key went over the budget or was blocked: it does not become known."""
        self._strikes.append((key, day_number(t)))

    def flush(self) -> None:
        if not self._saw and not self._strikes:
            return
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(_SAW, [(k, d, d) for k, d in self._saw.items()])
            self.conn.executemany(_STRIKE, [(k, d, d) for k, d in self._strikes])
        self._saw.clear()
        self._strikes.clear()

    def known(self, today: int) -> frozenset[str]:
        """Keys that relayed before `today` and never struck."""
        rows = self.conn.execute("SELECT key FROM relay_history WHERE first_day < ? AND strikes = 0", [today])
        return frozenset(r[0] for r in rows)

    def prune(self, today: int) -> None:
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute("DELETE FROM relay_history WHERE last_day < ?", [today - KEPT_DAYS])

    def close(self) -> None:
        self.conn.close()
