"""The daemon's days in the state store: each finished day kept (the last DAYS_KEPT), the current
one saved with every commit, and yesterday's digest sent once at [notify] digest_at (local time)."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from relaywatch.notify.notices import notice_for_text
from relaywatch.notify.notifier import Notifier
from relaywatch.reports.daily import DailyRecord
from relaywatch.reports.digest import DayStats, day_of, digest_text, unusual
from relaywatch.store.base import StateStore

log = logging.getLogger("relaywatch.daemon")

DAYS_KEPT = 35  # finished days kept in meta as day:YYYY-MM-DD


def save_days(store: StateStore, daily: DailyRecord) -> None:
    """Keep finished days as day:YYYY-MM-DD (the last DAYS_KEPT) and the current one as day_current."""
    finished = daily.take_finished()
    for day in finished:
        store.days.put(day.day, day.to_dict())
    if finished:
        oldest = day_of(datetime.fromisoformat(finished[-1].day).timestamp() - DAYS_KEPT * 86400)
        store.days.prune(oldest)
    store.days.put_current(daily.day.to_dict())


def send_digest(now: float, digest_at: str, store: StateStore, daily: DailyRecord, notifier: Notifier | None) -> None:
    """At `digest_at` (local time, "HH:MM"; empty: never), send yesterday's digest once."""
    if not digest_at or notifier is None:
        return
    local = datetime.fromtimestamp(now)
    if local.strftime("%H:%M") < digest_at:
        return
    day = (local.date() - timedelta(days=1)).isoformat()
    if store.days.digest_sent() >= day:
        return
    if daily.day.day <= day:
        return  # still reading yesterday's log (a backlog): wait until it is finished
    store.days.mark_digest_sent(day)  # before submitting: a crash loses it rather than repeat it
    saved = store.days.get(day)
    if saved is None:
        log.info("no digest for %s: relaywatch did not watch the log that day", day)
        return
    stats = DayStats.from_dict(saved)
    title, body = digest_text(stats, store.decisions(stats.start, stats.end))
    severity = "warning" if unusual(stats) else "info"
    notifier.submit(notice_for_text(severity, title, body, ("digest", severity)))
    log.info("daily digest of %s submitted", day)
