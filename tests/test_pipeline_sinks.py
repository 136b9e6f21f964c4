"""Issue 14 item 1: the pipeline feeds sinks and imports no report; the store counts exactly the window
increments the detector made; item 4/6: one wording of a decision, wherever it is written."""

from __future__ import annotations

import dataclasses

from relaywatch.config import Config
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.core.policy import Detector
from relaywatch.core.rules import Fact
from relaywatch.engine import Pipeline
from relaywatch.model import Decision, LocalRelayed, RelayDenied, Relayed, Totals
from relaywatch.notify.notices import notice_for_decision
from relaywatch.reports.digest import DayStats, digest_text
from relaywatch.reports.report import ReplayResult, Tally, to_text
from relaywatch.reports.timeline import Timeline
from relaywatch.store.sqlite import Store
from relaywatch.wording import describe
from support.maillog import T0, Log, rcpts


class Recorder:
    """A sink that writes down what it was given, in order."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []

    def fact(self, fact: Relayed | LocalRelayed) -> None:
        self.seen.append(("fact", fact))

    def denied(self, fact: RelayDenied) -> None:
        self.seen.append(("denied", fact))

    def decision(self, d: Decision) -> None:
        self.seen.append(("decision", d))


class Recording:
    """A second detector, made as the pipeline's and fed the same facts before it (a fact observer), that
    writes down each window increment it made: the pipeline's own detector cannot be wrapped (in the
    compiled form, Pipeline's attributes take only what they are declared as)."""

    def __init__(self, config: Config) -> None:
        self.detector = Detector(config.rules, config.allow_networks, config.allow_sasl_users, config.block_s,
                                 never_block=config.own_addresses)
        self.made: dict[tuple[str, int, str], int] = {}

    def observe(self, fact: Fact) -> None:
        observed = self.detector.observe(fact, "")
        for dim, key in observed.counted:
            made = (dim, observed.bucket, key)
            self.made[made] = self.made.get(made, 0) + 1


def _feed(pipeline: Pipeline, log: Log) -> list[Decision]:
    parser = LineParser(YearResolver())
    return [d for line in log.text().splitlines() for d in pipeline.feed(line, parser)]


def test_every_sink_gets_each_fact_and_then_the_decisions_it_caused():
    log = Log()
    for i in range(70):
        log.smtp(T0 + i * 5, "61.2.2.2", rcpts(1, tag=f"m{i}-"))
    log.pickup(T0 + 400, 33, "www-data@shop.example.org", ["lead@web.de"])
    first, second = Recorder(), Recorder()
    decisions = _feed(Pipeline(Config(), Store(None), persist_counts=False, sinks=(first, second)), log)
    assert first.seen == second.seen
    kinds = [kind for kind, _ in first.seen]
    assert kinds.count("fact") == 71 and kinds.count("denied") == 0
    assert [d for kind, d in first.seen if kind == "decision"] == decisions != []
    block = kinds.index("decision")
    trigger = first.seen[block - 1][1]  # the 60th recipient crossed the client rule
    assert isinstance(trigger, Relayed) and trigger.time == decisions[0].time
    assert any(isinstance(f, LocalRelayed) for kind, f in first.seen if kind == "fact")


def test_the_store_counts_exactly_the_increments_the_windows_made():
    config = dataclasses.replace(Config(), allow_sasl_users=("teacher",))
    log = Log()
    for i in range(20):
        log.smtp(T0 + i, "61.2.2.2", rcpts(2, domain="web.de", tag=f"a{i}-"))
        log.smtp(T0 + i, "84.160.33.7", rcpts(1, tag=f"b{i}-"), sasl="teacher")  # allow-listed: feeds nothing
        log.smtp(T0 + i, "84.160.33.8", rcpts(1, tag=f"c{i}-"), sasl="pupil")
    store = Store(None)
    pipeline = Pipeline(config, store)
    recording = Recording(config)
    pipeline.fact_observers.append(recording.observe)
    _feed(pipeline, log)
    pipeline.flush()
    stored = {(dim, bucket, key): n for dim, bucket, key, n in store.counts_since(0)}
    assert stored == recording.made
    keys = {(dim, key) for dim, _, key in stored}
    assert ("sasl_user", "pupil") in keys and ("sasl_user", "teacher") not in keys
    assert sum(n for (dim, _, _), n in stored.items() if dim == "client") == 40
    assert sum(n for (dim, _, _), n in stored.items() if dim == "sender") == 60  # the allow-listed login's 20: none


def test_a_decision_reads_the_same_in_the_report_the_digest_the_notice_and_the_map():
    d = Decision(T0, "block", "sasl_user", "pupil", "sasl_user", 150, 3600)
    why = "150 relayed recipients in 1 h (rule sasl_user)"
    assert describe(d) == why  # the reason written next to the block in the access map
    result = ReplayResult(Totals(), 0, [d], Tally(), Timeline())
    assert why in to_text(result)
    assert why in digest_text(DayStats.for_time(T0), [d])[1]
    assert f": {why}." in notice_for_decision(d).body
