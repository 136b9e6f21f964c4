"""Typed repositories for the daemon's small state records, over any key/value table.

They keep the keys an older relaywatch used in its `meta` table (`daemon`, `day:YYYY-MM-DD`,
`day_current`, `digest_sent`, `map_pending`, `notify_state`, `enforcement_alarms`), so an
upgraded daemon reads its old state. A second backend supplies a `KeyValue` and gets them all.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from relaywatch.model import JSONObject
from relaywatch.store.records import (
    DaemonStatus,
    EnforcementAlarm,
    HostRow,
    MapPending,
)


class KeyValue(Protocol):
    """JSON values by key; writes go into the store's current transaction (or one of their own)."""

    def get(self, key: str) -> Any: ...

    def put(self, key: str, value: Any) -> None: ...

    def keys(self, prefix: str) -> list[str]: ...

    def prune(self, prefix: str, before: str) -> int:
        """Forget the keys `prefix` + x for every x sorting before `before`; returns how many went."""
        ...


class DayArchive:
    """Each day's statistics (the digest's and `report`'s input, as `DayStats.to_dict()` gives
    them): finished days by date, the day in progress, and the last day whose digest was sent."""

    _PREFIX = "day:"

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    def get(self, day: str) -> JSONObject | None:
        value: JSONObject | None = self._kv.get(self._PREFIX + day)
        return value

    def put(self, day: str, record: JSONObject) -> None:
        self._kv.put(self._PREFIX + day, record)

    def days(self) -> list[str]:
        """The finished days kept, oldest first."""
        return [k.removeprefix(self._PREFIX) for k in self._kv.keys(self._PREFIX)]

    def prune(self, before: str) -> int:
        """Forget finished days before `before` (YYYY-MM-DD)."""
        return self._kv.prune(self._PREFIX, before)

    def current(self) -> JSONObject | None:
        value: JSONObject | None = self._kv.get("day_current")
        return value

    def put_current(self, record: JSONObject) -> None:
        self._kv.put("day_current", record)

    def digest_sent(self) -> str:
        """The last day whose digest went out ("" before the first)."""
        return str(self._kv.get("digest_sent") or "")

    def mark_digest_sent(self, day: str) -> None:
        self._kv.put("digest_sent", day)


class StatusRecord:
    """The daemon's last report of itself (`status` reads it from another process)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    def get(self) -> DaemonStatus | None:
        data = self._kv.get("daemon")
        return DaemonStatus.from_json(data) if isinstance(data, dict) else None

    def put(self, status: DaemonStatus) -> None:
        self._kv.put("daemon", status.to_json())

    def stopped(self, at: float) -> None:
        """The daemon ends: keep its last counters, without a pid."""
        data = self._kv.get("daemon")
        self._kv.put("daemon", {**(data if isinstance(data, dict) else {}), "pid": None, "stopped": at})


class MapState:
    """Whether blocks wait to be written into the access maps (survives a restart: the next start writes them)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    def pending(self) -> MapPending | None:
        data = self._kv.get("map_pending")
        return MapPending.from_json(data) if isinstance(data, dict) else None

    def set_pending(self, pending: MapPending | None) -> None:
        self._kv.put("map_pending", None if pending is None else pending.to_json())


class NotifyState:
    """The notifier's cooldowns and keyed notices sent (its own format): a restart neither resets nor repeats them."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    def get(self) -> JSONObject | None:
        data = self._kv.get("notify_state")
        return data if isinstance(data, dict) else None

    def put(self, state: JSONObject) -> None:
        self._kv.put("notify_state", state)


class EnforcementAlarms:
    """Blocks not enforced (their mail still queued after they took effect), by `kind target`."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    def get(self) -> dict[str, EnforcementAlarm]:
        data = self._kv.get("enforcement_alarms")
        if not isinstance(data, dict):
            return {}
        return {key: EnforcementAlarm.from_json(a) for key, a in data.items()}

    def put(self, alarms: dict[str, EnforcementAlarm]) -> None:
        self._kv.put("enforcement_alarms", {key: a.to_json() for key, a in alarms.items()})


class Positions:
    """Where each source stopped reading (its own JSON: a file's inode, offset and first-line hash, a
    journal cursor). Written only with the batch read up to it (`commit_batch`), never alone."""

    def __init__(self, read: Callable[[str], JSONObject | None]) -> None:
        self._read = read

    def get(self, source: str) -> JSONObject | None:
        return self._read(source)


def own_host(host: str, status: DaemonStatus | None, positions: Positions) -> list[HostRow]:
    """The row `hosts()` gives for the daemon whose status record this is ([] before it ever ran): its
    heartbeat is its last contact; its lag is 0 once caught up, else at most the age of its last line."""
    if status is None:
        return []
    position = positions.get(status.source) if status.source else None
    lag: float | None = None
    if status.caught_up:
        lag = 0.0
    elif status.last_log_time is not None and status.heartbeat:
        lag = round(max(0.0, status.heartbeat - status.last_log_time), 1)
    return [HostRow(host, status.heartbeat or None, lag,
                    {"source": status.source, **(position or {})} if status.source else None)]
