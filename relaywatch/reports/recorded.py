"""What the daemon recorded, read back: one day for `relaywatch digest`, a period for `relaywatch report`.

The daemon keeps a record per day (the last 35) and the running day; these turn them into a digest or a
replay-like report. Reading only: nothing here writes the state database.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from relaywatch.core.rules import Rule
from relaywatch.model import RelaywatchError
from relaywatch.reports import report
from relaywatch.reports.digest import (
    PERIOD_NOTE,
    DayStats,
    day_bounds,
    digest_text,
    period_result,
)
from relaywatch.reports.report import ReplayResult
from relaywatch.store.base import StateStore

KEPT = "(relaywatch run keeps the last 35)"


def day_digest(store: StateStore, wanted: str) -> tuple[DayStats, str, str]:
    """The record of day `wanted` (YYYY-MM-DD; the running day so far) and its digest's title and body."""
    saved = store.days.get(wanted)
    current = store.days.current() or {}
    partial = saved is None and current.get("day") == wanted
    if partial:
        saved = current
    if saved is None:
        days = store.days.days() + ([current["day"]] if current else [])
        raise RelaywatchError(f"no record of {wanted}; recorded days: {', '.join(days) or 'none'} {KEPT}")
    stats = DayStats.from_dict(saved)
    title, body = digest_text(stats, store.decisions(stats.start, stats.end))
    if partial:
        title += " (so far)"
    return stats, title, body


@dataclass(frozen=True)
class Period:
    """The recorded days from `first` to `last` merged into one replay-like result."""

    first: date
    last: date
    result: ReplayResult
    days: list[str]  # recorded, oldest first
    missing: list[str]  # in the period, not recorded
    no_hours: list[str]  # recorded without hourly counts
    partial: bool  # the last day is still running

    def notes(self) -> list[str]:
        partial = " (so far)" if self.partial else ""
        notes = [PERIOD_NOTE, f"Days recorded: {', '.join(self.days)}{partial}."]
        if self.missing:
            notes.append(f"No record of: {', '.join(self.missing)}.")
        if self.no_hours:
            notes.append(f"Stored without hourly counts (not in the timeline): {', '.join(self.no_hours)}.")
        return notes


def period(store: StateStore, first: date, last: date, rules: Iterable[Rule], now: float) -> Period:
    recorded = {d: r for d in store.days.days() if (r := store.days.get(d)) is not None}
    current = store.days.current() or {}
    in_progress = current.get("day") if current.get("day") not in recorded else None
    if in_progress:
        recorded[in_progress] = current
    wanted = sorted(d for d in recorded if first.isoformat() <= d <= last.isoformat())
    if not wanted:
        raise RelaywatchError(f"no record of {first} .. {last}; recorded days: "
                              f"{', '.join(sorted(recorded)) or 'none'} {KEPT}")
    days = [DayStats.from_dict(recorded[d]) for d in wanted]
    start, end = day_bounds(first.isoformat())[0], day_bounds(last.isoformat())[1]
    result, no_hours = period_result(days, store.decisions(start, end), rules, now=now)
    missing = sorted(set(_days_between(first, last)) - set(wanted))
    return Period(first, last, result, wanted, missing, no_hours, wanted[-1] == in_progress)


def render(p: Period, fmt: str) -> str:
    """The period as `text`, `json` or `html`, shaped like replay's report of the same format."""
    result, notes = p.result, p.notes()
    if fmt == "json":
        doc = json.loads(report.to_json(result))
        doc.update(lines=None, unparsed=None, messages=None, source="daemon state", bin_s=3600,
                   period={"since": p.first.isoformat(), "until": p.last.isoformat()}, days=p.days,
                   missing_days=p.missing, days_without_hours=p.no_hours, partial=p.partial,
                   approximate=result.tally.approximate, note=" ".join(notes))
        return json.dumps(doc, indent=2)
    if fmt == "html":
        from relaywatch.reports.html import render_html

        return render_html(result, result.timeline, notes=notes, uncounted=("lines", "messages"))
    body = report.to_text(result, dry_run=False).split("\n", 2)[2]  # after replay's two header lines
    t = result.totals
    head = [f"relaywatch report: {p.first} .. {p.last}{' (so far)' if p.partial else ''} (daemon state)",
            f"  {t.relayed:,} relayed recipients, {t.relay_denied:,} relay attempts refused",
            *(f"  {n}" for n in notes)]
    return "\n".join(head) + "\n" + body


def _days_between(first: date, last: date) -> list[str]:
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]
