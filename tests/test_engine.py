"""The pipeline on its own: lines in, decisions out, counts and days kept, and windows that survive
a restart through the store. Replay and the daemon both run it (test_scenario, test_daemon)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from relaywatch.config import Config
from relaywatch.core.parse import LineParser
from relaywatch.core.rules import Rule
from relaywatch.engine import Pipeline
from relaywatch.reports.daily import DailyRecord
from relaywatch.reports.digest import DayStats
from relaywatch.sources import files as sources
from relaywatch.store.sqlite import Store
from support.maillog import T0, Log

CLIENT = "81.2.69.160"  # a global address: the rules skip documentation ranges
CONFIG = Config(rules=(Rule("client", "client", "block", threshold=10, window_s=600),),
                local_domains=("example.org",))


def flood(n: int, start: float = T0, client: str = CLIENT, step: float = 5.0) -> list[str]:
    log = Log()
    for i in range(n):
        log.smtp(start + i * step, client, [f"r{i}@gmail.com"])
    return log.text().splitlines()


def feed(pipeline: Pipeline, lines: list[str]) -> list:
    parser = LineParser()
    return [d for line in lines for d in pipeline.feed(line, parser)]


def test_a_flood_is_blocked_on_the_recipient_that_reaches_the_threshold_with_that_line_as_evidence():
    pipeline = Pipeline(CONFIG, Store(None))
    lines = flood(12)
    decisions = feed(pipeline, lines)
    assert [(d.action, d.kind, d.target, d.count) for d in decisions] == [("block", "client", CLIENT, 10)]
    tenth = [line for line in lines if "to=<r9@gmail.com>" in line]
    assert decisions[0].evidence[-1] == tenth[0]
    assert pipeline.totals.relayed == 12 and pipeline.totals.lines == len(lines)
    assert pipeline.totals.first_time is not None and pipeline.totals.last_time > pipeline.totals.first_time


def test_a_restarted_pipeline_resumes_its_windows_and_blocks_from_the_store(tmp_path: Path):
    db = tmp_path / "state.db"
    lines = flood(10)  # a message every 5 s, each logged within 1.2 s
    cut = next(i for i, line in enumerate(lines) if datetime.fromisoformat(line.split()[0]).timestamp() >= T0 + 29)
    store = Store(db)
    before = Pipeline(CONFIG, store)
    assert feed(before, lines[:cut]) == []  # six recipients: below the threshold
    before.flush()
    store.close()

    store = Store(db)
    resumed = Pipeline(CONFIG, store)
    resumed.restore(before.totals.last_time)
    decisions = feed(resumed, lines[cut:])
    assert [(d.kind, d.target, d.count) for d in decisions] == [("client", CLIENT, 10)]
    store.close()

    forgetful = Pipeline(CONFIG, Store(None))  # the same four recipients without the stored windows
    assert feed(forgetful, lines[cut:]) == []


def test_a_window_count_kept_only_in_memory_is_never_written():
    store = Store(None)
    pipeline = Pipeline(CONFIG, store, persist_counts=False)
    feed(pipeline, flood(5))
    pipeline.flush()
    assert list(store.counts_since(0)) == []


def test_lines_it_cannot_read_are_counted_with_the_first_samples_and_an_endless_line_is_one_of_them():
    pipeline = Pipeline(CONFIG, Store(None))
    cut_short = [f"2025-06-02T09:00:{i:02d}.000000+00:00 mail postfix/smtp[1]: 3A1B{i}C2: to=<a@b>, relay="
                 for i in range(6)]
    endless = "2025-06-02T09:01:00.000000+00:00 mail postfix/smtp[1]: " + "x" * sources.MAX_LINE
    ignored = ["2025-06-02T09:01:00.000000+00:00 mail kernel: eth0 link up",  # not Postfix's: not its business
               "2025-06-02T09:01:00.000000+00:00 mail postfix/smtpd[1]: lost connection after EHLO from x[1.2.3.4]"]
    assert feed(pipeline, [*cut_short, endless, "no syslog envelope at all", *ignored]) == []
    totals = pipeline.totals
    assert totals.lines == 10 and totals.relayed == 0
    assert totals.unparsed == 8
    assert totals.unparsed_samples == cut_short[:5]  # the first five, as they were


def test_the_day_ends_at_midnight_of_log_time_and_a_forged_future_date_ends_no_day():
    day = DayStats.for_time(T0)
    daily = DailyRecord(day, CONFIG.block_s)
    pipeline = Pipeline(CONFIG, Store(None), sinks=(daily,))
    feed(pipeline, flood(2, start=day.end - 120, step=30))
    assert daily.finished == [] and daily.day.relayed == 2
    feed(pipeline, flood(1, start=day.end + 60, client="81.2.69.161"))
    [finished] = daily.finished
    assert (finished.day, finished.relayed) == (day.day, 2)
    assert daily.day.relayed == 1 and daily.day.start == day.end

    today = daily.day
    daily.limit = today.end - 3600  # the daemon: lines stamped beyond an hour from now are not believed
    feed(pipeline, flood(1, start=today.end + 10, client="81.2.69.162"))
    assert daily.day is today and len(daily.finished) == 1 and today.relayed == 2


def test_every_fact_reaches_the_observers_before_the_detector_decides():
    pipeline = Pipeline(CONFIG, Store(None))
    seen: list = []
    pipeline.fact_observers.append(seen.append)
    feed(pipeline, flood(3))
    assert [(f.client, f.recipient) for f in seen] == [(CLIENT, f"r{i}@gmail.com") for i in range(3)]
