"""The daily digest: one local calendar day of relayed mail, as one notification.

`DayStats` counts what the pipeline saw during one day of log time in bounded
tables (a flood of distinct clients cannot grow it); the daemon keeps each
finished day in the store's meta table as `day:YYYY-MM-DD`. `digest_text`
turns a day, its decisions and its held messages into a message that reads well
as a push: the volume, what was blocked, and anything unusual. Pure, stdlib only.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as clock_time

from relaywatch.core.rules import DEFAULT_RULES, Rule, blocked_by
from relaywatch.model import ENFORCEMENT, Decision, JSONObject, RelayDenied, Relayed, Totals
from relaywatch.reports.report import BoundedCounter, ReplayResult, Tally
from relaywatch.reports.timeline import Timeline
from relaywatch.wording import clean, describe, hm

CAP = 5_000  # distinct keys per table in memory
KEEP = 500  # rows per table kept in the store
TOP = 5  # rows per table in the digest
MIN_ATTEMPTS = 20  # a destination needs this many first attempts ...
BAD_RATIO = 0.5  # ... of which this share deferred or bounced, to be unusual
DENIED_NOTABLE = 100  # refused relay attempts in a day worth a line of their own
GRACE_S = 120  # after a block: the map is written and sessions already open may finish
MAX_BLOCKS = 100  # blocks of one day watched for mail that still came in
MAX_DECISION_LINES = 15
TABLES = {
    "clients": "Top relaying clients",
    "senders": "Top senders of relayed mail",
    "domains": "Top destination domains",
    "sasl_users": "Top SASL users (relayed)",
    "relay_denied": "Top clients refused relay",
}
_STATUS_INDEX = {"sent": 0, "deferred": 1, "bounced": 2, "expired": 2, "undeliverable": 2}
_WATCHED_KINDS = tuple(ENFORCEMENT)


def _late(b: WatchedBlock, queued: float) -> None:
    if queued <= b.since + GRACE_S or (b.until is not None and queued >= b.until):
        return
    b.late += 1
    b.first_late = queued if b.first_late is None else min(b.first_late, queued)


def top(counts: dict[str, int], keep: int) -> list[tuple[str, int]]:
    """The `keep` largest counts, largest first, ties by key: what sorting them all gives, without
    sorting them all with a Python key (the daemon stores its day at every commit, tables of 5,000
    keys during a flood of distinct clients): the keep-th count from the plain counts, then the
    rows above it by key and the ties at it by name."""
    if len(counts) <= keep:
        return sorted(counts.items(), key=_rank)
    least = sorted(counts.values(), reverse=True)[keep - 1]
    above = sorted(((k, n) for k, n in counts.items() if n > least), key=_rank)
    ties = sorted(k for k, n in counts.items() if n == least)[:keep - len(above)]
    return above + [(k, least) for k in ties]


def _rank(kv: tuple[str, int]) -> tuple[int, str]:
    return -kv[1], kv[0]


def day_of(t: float) -> str:
    """The local calendar day of `t`, as YYYY-MM-DD."""
    return datetime.fromtimestamp(t).date().isoformat()


def day_bounds(day: str) -> tuple[float, float]:
    """Local midnight at the start of `day` and of the next day (23 or 25 h apart at DST changes)."""
    d = date.fromisoformat(day)
    return (datetime.combine(d, clock_time()).timestamp(),
            datetime.combine(d + timedelta(days=1), clock_time()).timestamp())


class StatusTable:
    """First delivery attempt per destination domain: [sent, deferred, bounced].

    Bounded like `BoundedCounter`: past `cap` domains, the half with the fewest
    attempts is dropped.
    """

    __slots__ = ("approximate", "cap", "rows")

    def __init__(self, cap: int = CAP) -> None:
        self.cap = cap
        self.rows: dict[str, list[int]] = {}
        self.approximate = False

    def add(self, domain: str, status: str) -> None:
        i = _STATUS_INDEX.get(status)
        if i is None:
            return
        row = self.rows.get(domain)
        if row is None:
            row = self.rows[domain] = [0, 0, 0]
        row[i] += 1
        if len(self.rows) > self.cap:
            self.rows = dict(self._by_attempts()[: self.cap // 2])
            self.approximate = True

    def _by_attempts(self) -> list[tuple[str, list[int]]]:
        return sorted(self.rows.items(), key=lambda kv: (-sum(kv[1]), kv[0]))

    def totals(self) -> tuple[int, int, int]:
        sent = deferred = bounced = 0
        for s, d, b in self.rows.values():
            sent, deferred, bounced = sent + s, deferred + d, bounced + b
        return sent, deferred, bounced

    def failing(self) -> list[tuple[str, int, int]]:
        """(domain, failed, attempts) of the destinations deferring or bouncing most of our mail."""
        out = [(k, d + b, s + d + b) for k, (s, d, b) in self.rows.items()
               if s + d + b >= MIN_ATTEMPTS and d + b >= BAD_RATIO * (s + d + b)]
        return sorted(out, key=lambda r: (-r[1], r[0]))


@dataclass(slots=True)
class WatchedBlock:
    """A block made today, and the relayed recipients queued after it (it did not hold)."""

    kind: str
    since: float
    until: float | None  # None: unknown
    late: int = 0
    first_late: float | None = None  # the first of them; set whenever `late` > 0


class DayStats:
    """What one local calendar day of log brought: volume, top tables, blocks that did not hold."""

    def __init__(self, day: str, cap: int = CAP) -> None:
        self.day = day
        self.start, self.end = day_bounds(day)
        self.relayed = 0
        self.relay_denied = 0
        self.held = 0
        self.first: float | None = None
        self.last: float | None = None
        self.tables = {name: BoundedCounter(cap) for name in TABLES}
        # per hour since local midnight (a 25-hour DST day counts its last hour into 23);
        # None when restored from a day stored before relaywatch counted hours
        self.hourly_relayed: list[int] | None = [0] * 24
        self.hourly_denied: list[int] | None = [0] * 24
        self.status = StatusTable(cap)
        self.blocks: dict[str, WatchedBlock] = {}
        self._nets: dict[str, ipaddress.IPv4Network | ipaddress.IPv6Network] = {}

    @classmethod
    def for_time(cls, t: float, cap: int = CAP) -> DayStats:
        return cls(day_of(t), cap)

    @property
    def approximate(self) -> bool:
        return self.status.approximate or any(c.approximate for c in self.tables.values())

    def add(self, fact: Relayed | RelayDenied) -> None:
        t = fact.time
        if self.first is None or t < self.first:
            self.first = t
        if self.last is None or t > self.last:
            self.last = t
        tables = self.tables
        hour = min(23, max(0, int((t - self.start) // 3600)))
        if isinstance(fact, RelayDenied):
            self.relay_denied += 1
            if self.hourly_denied is not None:
                self.hourly_denied[hour] += 1
            tables["relay_denied"].add(fact.client)
            return
        self.relayed += 1
        if self.hourly_relayed is not None:
            self.hourly_relayed[hour] += 1
        tables["clients"].add(fact.client)
        tables["senders"].add(fact.sender or "<>")
        if fact.domain:
            tables["domains"].add(fact.domain)
            self.status.add(fact.domain, fact.status)
        if fact.sasl_user:
            tables["sasl_users"].add(fact.sasl_user)
        if self.blocks and fact.queued is not None:
            self._after_block(fact, fact.queued)

    def block(self, kind: str, target: str, t: float, until: float | None = None) -> None:
        """Watch a block made today: relayed mail queued after it means Postfix does not enforce it."""
        if kind not in _WATCHED_KINDS or (len(self.blocks) >= MAX_BLOCKS and target not in self.blocks):
            return
        if kind == "subnet":
            try:
                self._nets[target] = ipaddress.ip_network(target, strict=False)
            except ValueError:
                return
        self.blocks[target] = WatchedBlock(kind, t, until)

    def _after_block(self, fact: Relayed, queued: float) -> None:
        """The blocks this fact's mail came through: looked up by client and user, only subnets
        are tried one by one (a day of a hundred blocks is no longer a hundred checks a fact)."""
        blocks = self.blocks
        b = blocks.get(fact.client)
        if b is not None and b.kind == "client":
            _late(b, queued)
        if fact.sasl_user:
            b = blocks.get(fact.sasl_user)
            if b is not None and b.kind == "sasl_user":
                _late(b, queued)
        for target, net in self._nets.items():
            b = blocks[target]
            if b.kind == "subnet" and blocked_by("subnet", target, net, fact.client, fact.sasl_user):
                _late(b, queued)

    def to_dict(self, keep: int = KEEP) -> JSONObject:
        """A JSON-able copy for the store; each table keeps its `keep` largest rows."""
        trimmed = any(len(c.counts) > keep for c in self.tables.values()) or len(self.status.rows) > keep
        return {
            "day": self.day,
            "relayed": self.relayed,
            "relay_denied": self.relay_denied,
            "held": self.held,
            "first": self.first,
            "last": self.last,
            "approximate": self.approximate or trimmed,
            "tables": {name: top(c.counts, keep) for name, c in self.tables.items()},
            "status": [[k, *row] for k, row in self.status._by_attempts()[:keep]],
            "blocks": [[target, b.kind, b.since, b.until, b.late, b.first_late] for target, b in self.blocks.items()],
            "hourly": None if self.hourly_relayed is None or self.hourly_denied is None else
            {"relayed": list(self.hourly_relayed), "relay_denied": list(self.hourly_denied)},
        }

    @classmethod
    def from_dict(cls, data: JSONObject, cap: int = CAP) -> DayStats:
        stats = cls(data["day"], cap)
        stats.relayed, stats.relay_denied = data.get("relayed", 0), data.get("relay_denied", 0)
        stats.held, stats.first, stats.last = data.get("held", 0), data.get("first"), data.get("last")
        for name, rows in data.get("tables", {}).items():
            if name in stats.tables:
                counter = stats.tables[name]
                counter.counts = {k: n for k, n in rows}
                counter.approximate = bool(data.get("approximate"))
        stats.status.rows = {k: [s, d, b] for k, s, d, b in data.get("status", [])}
        stats.status.approximate = bool(data.get("approximate"))
        hourly = data.get("hourly")
        if isinstance(hourly, dict):
            stats.hourly_relayed = _hours(hourly.get("relayed"))
            stats.hourly_denied = _hours(hourly.get("relay_denied"))
        else:  # stored before relaywatch counted hours
            stats.hourly_relayed = stats.hourly_denied = None
        for target, kind, since, until, late, first_late in data.get("blocks", []):
            stats.block(kind, target, since, until)
            if target in stats.blocks:
                stats.blocks[target].late, stats.blocks[target].first_late = late, first_late
        return stats


def _hours(values: object) -> list[int] | None:
    if not isinstance(values, list) or len(values) != 24:
        return None
    return [int(v) for v in values]


def _pct(part: int, whole: int) -> str:
    return f"{100 * part // whole}%" if whole else "0%"


def unusual(stats: DayStats) -> list[str]:
    """What an admin should look at: destinations refusing our mail, blocks that did not hold, probing."""
    out = []
    for domain, failed, attempts in stats.status.failing()[:TOP]:
        d = clean(domain)
        out.append(f"{d} deferred or bounced {failed:,} of {attempts:,} first delivery attempts "
                   f"({_pct(failed, attempts)}): we may be on a blocklist: check {d}'s replies")
    for target, b in stats.blocks.items():
        if b.late:
            assert b.first_late is not None  # set with the first late recipient
            out.append(f"the block of {b.kind} {clean(target)} at {hm(b.since)} did not stop it: {b.late:,} relayed "
                       f"recipients were queued after it (from {hm(b.first_late)}): Postfix does not enforce it "
                       "unless it was lifted; run relaywatch audit (is the map consulted before permit_mynetworks?)")
    if stats.relay_denied >= DENIED_NOTABLE:
        [(client, n)] = stats.tables["relay_denied"].top(1) or [("?", 0)]
        out.append(f"{stats.relay_denied:,} relay attempts refused ({n:,} from {clean(client)}): "
                   "someone is testing whether this server relays")
    return out


def headline(stats: DayStats, decisions: Sequence[Decision] = ()) -> str:
    """The day's worst event in a few words, to lead the digest's title on a lock screen."""
    for target, b in stats.blocks.items():
        if b.late:
            return f"block of {b.kind} {clean(target, 40)} did not hold"
    failing = stats.status.failing()
    if failing:
        domain, failed, attempts = failing[0]
        return f"{clean(domain, 40)} refused {_pct(failed, attempts)} of our mail"
    blocked = [d for d in decisions if d.action == "block"]
    if blocked:
        more = f" (+{len(blocked) - 1} more)" if len(blocked) > 1 else ""
        return f"blocked {blocked[0].kind} {clean(blocked[0].target, 40)}{more}"
    if stats.relay_denied >= DENIED_NOTABLE:
        return f"{stats.relay_denied:,} relay attempts refused"
    alerts = [d for d in decisions if d.action == "alert"]
    if alerts:
        return f"alert {alerts[0].kind} {clean(alerts[0].target, 40)}"
    return "a quiet day"


def digest_text(stats: DayStats, decisions: Sequence[Decision] = (), held: int | None = None) -> tuple[str, str]:
    """(title, body) of the day's digest. `decisions`: the day's blocks and alerts (the store's);
    `held`: queued messages held after blocks (default: what `stats` counted)."""
    held = stats.held if held is None else held
    blocks = sum(d.action == "block" for d in decisions)
    alerts = sum(d.action == "alert" for d in decisions)
    odd = unusual(stats)
    title = (f"relaywatch: {headline(stats, decisions)} - digest {stats.day}: {stats.relayed:,} relayed, "
             f"{blocks} block{'s' * (blocks != 1)}" + (f", {len(odd)} unusual" if odd else ""))
    span = f", {hm(stats.first)}..{hm(stats.last)}" if stats.first is not None and stats.last is not None else ""
    sent, deferred, bounced = stats.status.totals()
    lines = [
        f"{date.fromisoformat(stats.day):%A} {stats.day} (log time{span})",
        f"Relayed: {stats.relayed:,} recipients (first attempt: {sent:,} sent, {deferred:,} deferred, "
        f"{bounced:,} bounced).",
        f"Relay refused: {stats.relay_denied:,} attempts.",
        f"Blocks: {blocks}, alerts: {alerts}, queued messages held: {held:,}.",
    ]
    if odd:
        lines += ["", "Unusual:", *(f"- {line}" for line in odd)]
    if decisions:
        lines += ["", "Blocks and alerts:"]
        lines += [f"  {hm(d.time)} {d.action} {d.kind} {clean(d.target)}: {describe(d)}"
                  for d in decisions[:MAX_DECISION_LINES]]
        if len(decisions) > MAX_DECISION_LINES:
            lines.append(f"  ... and {len(decisions) - MAX_DECISION_LINES} more (relaywatch blocks)")
    for name, heading in TABLES.items():
        rows = stats.tables[name].top(TOP)
        if not rows:
            continue
        lines += ["", f"{heading}:"]
        for key, n in rows:
            row = stats.status.rows.get(key) if name == "domains" else None
            failed = f"  ({_pct(row[1] + row[2], sum(row))} deferred/bounced)" if row and row[1] + row[2] else ""
            lines.append(f"  {n:>8,}  {clean(key)}{failed}")
    if stats.approximate:
        lines += ["", "(More distinct keys than relaywatch keeps: the smallest counts are approximate.)"]
    return title, "\n".join(lines)


# --- a period of the daemon's days, as a replay-like report ---------------------------

PERIOD_NOTE = ("relaywatch report over the daemon's state: counts are per hour, from its daily records (no "
               f"per-minute series, no panels per client), and the top tables merge each day's {KEEP} largest rows, "
               "so counts past those caps are approximate.")


def period_result(days: Sequence[DayStats], decisions: Sequence[Decision], rules: Iterable[Rule] = DEFAULT_RULES,
                  now: float | None = None) -> tuple[ReplayResult, list[str]]:
    """Merge stored days (oldest first) into a `report.ReplayResult` with an hourly `Timeline`; also
    the days that lack an hourly record (stored by an older relaywatch). `now` ends a running day's series."""
    totals = Totals()
    tally = Tally()
    timeline = Timeline(rules, bin_s=3600)
    status: dict[str, list[int]] = {}
    no_hours = []
    for stats in days:
        totals.relayed += stats.relayed
        totals.relay_denied += stats.relay_denied
        if stats.first is not None:
            totals.first_time = stats.first if totals.first_time is None else min(totals.first_time, stats.first)
        if stats.last is not None:
            totals.last_time = stats.last if totals.last_time is None else max(totals.last_time, stats.last)
        for name in TABLES:
            counter: BoundedCounter = getattr(tally, name)
            for key, n in stats.tables[name].counts.items():
                counter.add(key, n)
            counter.approximate = counter.approximate or stats.tables[name].approximate
        for domain, row in stats.status.rows.items():
            merged = status.setdefault(domain, [0, 0, 0])
            for i in range(3):
                merged[i] += row[i]
        if stats.hourly_relayed is None or stats.hourly_denied is None:
            no_hours.append(stats.day)
            continue
        hours = 24
        if now is not None and stats.start <= now < stats.end:  # today: up to the current hour
            hours = min(24, int((now - stats.start) // 3600) + 1)
        for h in range(hours):
            timeline.add_counts(stats.start + h * 3600, stats.hourly_relayed[h], stats.hourly_denied[h])
    for domain, (sent, deferred, bounced) in status.items():
        timeline.add_status(domain, tally.domains.counts.get(domain, sent + deferred + bounced), deferred, bounced)
    for d in decisions:
        timeline.decision(d)
    return ReplayResult(totals, 0, list(decisions), tally, timeline), no_hours
