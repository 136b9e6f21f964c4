"""The typed values the store keeps besides the pipeline's rows (model.CountRow, OpenMessage,
Origin, Decision): blocks and the daemon's small state records.

Each record reads the JSON an older relaywatch wrote (missing keys take their defaults, unknown
ones are ignored) and writes the same keys, so a database survives an upgrade in either direction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

from relaywatch.model import CountRow, Decision, JSONObject


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


@dataclass(frozen=True, slots=True)
class HostRow:
    """One host of the fleet as `status` shows it (`StateStore.hosts()`); a SQLite store knows its own host only.

    last_contact: epoch s of its daemon's last heartbeat or commit (None: it never ran).
    lag_s: how far behind its reader was then, in seconds of log (0: caught up; None: unknown).
    position: where its reader stands, `{"source": "file:/var/log/mail.log" | "journal", **that source's
    position}` as `Positions` keeps it (None: nothing read yet).
    """

    host: str
    last_contact: float | None
    lag_s: float | None
    position: JSONObject | None


def _known(cls: type, data: JSONObject) -> JSONObject:
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True, slots=True)
class DaemonStatus:
    """What the running daemon last reported (every heartbeat), for `status`; `pid` None once it stopped."""

    pid: int | None = None
    started: float | None = None
    heartbeat: float = 0.0
    source: str | None = None
    source_note: str | None = None
    caught_up: bool | None = None
    last_line_at: float | None = None
    lines: int | None = None
    unparsed: int | None = None
    failed_lines: int | None = None
    relayed: int | None = None
    last_log_time: float | None = None
    notify: JSONObject | None = None  # the notifier's own status
    policy: JSONObject | None = None  # the inline policy service's counters
    stopped: float | None = None

    @classmethod
    def from_json(cls, data: JSONObject) -> DaemonStatus:
        return cls(**_known(cls, data))

    def to_json(self) -> JSONObject:
        out = asdict(self)
        if self.stopped is None:
            del out["stopped"]  # as a running daemon always wrote it
        return out


@dataclass(frozen=True, slots=True)
class MapPending:
    """Blocks are recorded but not yet in the access maps: since when, and why (after a failure)."""

    since: float
    error: str | None = None
    state: str | None = None  # blocking.MapState's value
    fault: str | None = None  # what failed, to tell a new fault from the same one again
    retry_in_s: float | None = None

    @classmethod
    def from_json(cls, data: JSONObject) -> MapPending:
        return cls(**_known(cls, data))

    def to_json(self) -> JSONObject:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True, slots=True)
class EnforcementAlarm:
    """A block whose target's mail the log still shows being queued after it took effect."""

    kind: str
    target: str
    since: float
    first: float
    last: float
    messages: int
    sample_qids: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.kind} {self.target}"

    @classmethod
    def from_json(cls, data: JSONObject) -> EnforcementAlarm:
        known = _known(cls, data)
        return cls(**{**known, "sample_qids": tuple(known.get("sample_qids", ()))})

    def to_json(self) -> JSONObject:
        return {**asdict(self), "sample_qids": list(self.sample_qids)}


class FleetNews(NamedTuple):
    """What the other hosts of a fleet committed since the last pull: their window counts (restored into
    this host's windows: counted, not decided), their decisions, and the blocks those decisions made."""

    counts: list[CountRow]
    decisions: list[Decision]
    blocks: list[BlockRow]
