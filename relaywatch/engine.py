"""The one place the pipeline is wired: parse -> correlate -> windows -> detect -> store.

The daemon and `replay` both run `Pipeline.feed`; they differ only in where
lines come from, whose clock the windows follow (log time either way, which
is wall time for a live log) and whether decisions are acted on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from relaywatch.config import Config
from relaywatch.core.correlate import Correlator
from relaywatch.core.destinations import Destinations, LocalDomains
from relaywatch.core.parse import FORGED, LineParser, YearResolver
from relaywatch.core.policy import Detector, Fact, Network
from relaywatch.model import Decision, LocalRelayed, RelayDenied, Unparsed
from relaywatch.postfix.postconf import local_destinations
from relaywatch.reports.digest import DayStats
from relaywatch.reports.report import ReplayResult, Tally, Totals
from relaywatch.reports.timeline import Timeline
from relaywatch.sources import files as sources
from relaywatch.store.sqlite import Store

log = logging.getLogger("relaywatch.engine")

_NOTHING: Sequence[Decision] = ()
FLUSH_EVERY = 20_000


class Pipeline:
    def __init__(self, config: Config, store: Store, local_domains: Destinations | None = None,
                 persist_messages: bool = False, persist_counts: bool = True, day: DayStats | None = None,
                 tally: Tally | None = None, timeline: Timeline | None = None,
                 own_addresses: Iterable[Network] = ()) -> None:
        """`persist_messages`: keep open messages in the store too, so that a restarted
        daemon still correlates a delivery whose client= line it read before.
        `persist_counts` False: window counts stay in memory only (a replay never restores them,
        and a flood of distinct clients would grow its in-memory database by every key).
        `day`: the daily digest's counts (the daemon's); at local midnight of log time it moves
        to `finished_days` and a new day begins.
        `tally`, `timeline`: the report's tables and plot, fed when given (replay; the daemon renders neither).
        `own_addresses`: the mail host's own addresses (hostaddrs) besides [allow] own_addresses: never blocked."""
        self.config = config
        self.store = store
        self.persist_counts = persist_counts
        self._warned: set[str] = set()
        self.correlator = Correlator(LocalDomains(config.local_domains) if local_domains is None else local_domains,
                                     track_changes=persist_messages)
        self.detector = Detector(config.rules, config.allow_networks, config.allow_sasl_users, config.block_s,
                                 never_block=(*config.own_addresses, *own_addresses))
        self.totals = Totals()
        self.tally = tally
        self.timeline = timeline
        self._counts: dict[tuple[str, int, str], int] = {}
        self._decisions: list[Decision] = []
        # open messages and origins taken from the correlator but not yet committed (a store fault)
        self._unsaved: tuple[list, list, list, list] = ([], [], [], [])
        self.day = day
        self.finished_days: list[DayStats] = []
        self.day_limit = float("inf")  # the daemon: a line stamped later than this (a forged date) ends no day
        # each fact also goes to these (the daemon's enforcement check, the inline policy service)
        self.fact_observers: list[Callable[[Fact], None]] = []

    def roll_day(self, t: float) -> None:
        """Finish the current day if `t` is past its end (log time, or wall time when the log is idle)."""
        if self.day is not None and t >= self.day.end:
            self.finished_days.append(self.day)
            self.day = DayStats.for_time(t)

    def restore(self, now: float) -> None:
        """Rebuild the windows from the store (a restarted daemon resumes them)."""
        since = self.detector.bucket(now - self.config.longest_window_s)
        for dim, bucket, key, n in self.store.counts_since(since, max_keys=self.detector.max_keys):
            self.detector.restore(dim, bucket, key, n)
        for b in self.store.blocks(now):
            self.detector.remember_block(b.kind, b.target, float("inf") if b.until is None else b.until)
        quiet = self.detector.alert_quiet_s
        for d in self.store.decisions(since=now - max(self.config.longest_window_s, quiet)):
            if d.action == "alert":  # the alert quiet period outlives a restart: no second push
                self.detector.remember_alert(d.kind, d.target, d.time + max(d.window_s, quiet))
        self.correlator.load(self.store.open_messages())

    def feed(self, line: str, parser: LineParser) -> Sequence[Decision]:
        totals = self.totals
        totals.lines += 1
        event = parser.parse(line) if len(line) < sources.MAX_LINE else Unparsed(0.0, "line too long")
        if event is None:
            return _NOTHING
        if type(event) is Unparsed:
            if event.reason == FORGED:
                totals.forged += 1
                if totals.forged == 1 or totals.forged % 100_000 == 0:
                    log.warning("%d journal records claiming to be Postfix's were written by another program"
                                " (logger -t postfix/...?) and ignored", totals.forged)
                return _NOTHING
            totals.unparsed += 1
            if len(totals.unparsed_samples) < 5 and line.strip():
                totals.unparsed_samples.append(line[:300])
            return _NOTHING
        t = event.time
        if totals.first_time is None:
            totals.first_time = t
        totals.last_time = t
        day = self.day
        if day is not None and t >= day.end and t <= self.day_limit:
            self.roll_day(t)
            day = self.day
        correlator = self.correlator
        fact = correlator.feed(event)
        if correlator.released:  # a filter's re-injected copy, credited late to its origin
            due: list[Fact] = list(correlator.take_released())
            if fact is not None:
                due.append(fact)
            return [d for f in due for d in self._observe(f, line, day)]
        if fact is None:
            return _NOTHING
        return self._observe(fact, line, day)

    def _observe(self, fact: Fact, line: str, day: DayStats | None) -> Sequence[Decision]:
        self._count(fact)
        for observe in self.fact_observers:
            observe(fact)
        timeline = self.timeline
        if not isinstance(fact, LocalRelayed):  # no client: the timeline's panels and the digest are about clients
            if timeline is not None:
                timeline.observe(fact)
            if day is not None:
                day.add(fact)
        decisions = self.detector.observe(fact, line)
        if decisions:
            self._decisions.extend(decisions)
            for d in decisions:
                if timeline is not None:
                    timeline.decision(d)
                if day is not None and d.action == "block":
                    day.block(d.kind, d.target, d.time, d.time + self.config.block_s)
        return decisions

    def _count(self, fact: Fact) -> None:
        if isinstance(fact, RelayDenied):
            self.totals.relay_denied += 1
            if self.tally is not None:
                self.tally.relay_denied.add(fact.client)
        elif isinstance(fact, LocalRelayed):
            self.totals.local_relayed += 1
        else:
            self.totals.relayed += 1
            if self.tally is not None:
                self.tally.add_relayed(fact)
        if not self.persist_counts:
            return
        # the keys the detector's windows count, so that a restart rebuilds exactly those windows
        bucket = self.detector.bucket(fact.time)
        counts = self._counts
        for dim, value in self.detector.counted(fact):
            key = (dim, bucket, value)
            counts[key] = counts.get(key, 0) + 1

    def flush(self, position: tuple[str, dict] | None = None) -> None:
        """Write pending counts and decisions (and the source position) in one transaction."""
        rows = [(dim, bucket, key, n) for (dim, bucket, key), n in self._counts.items()]
        (changed, gone), (arrived, departed) = self.correlator.changes(), self.correlator.origins()
        old = self._unsaved
        self._unsaved = (old[0] + changed, old[1] + gone, old[2] + arrived, old[3] + departed)
        changed, gone, arrived, departed = self._unsaved
        self.store.commit_batch(rows, self._decisions, position, (changed, gone), (arrived, departed))
        self.store.on_commit(self._committed)  # inside the daemon's batch transaction: once that commits

    def _committed(self) -> None:
        self._unsaved = ([], [], [], [])
        self._counts.clear()
        self._decisions.clear()
        self._warn_at_caps()

    def _warn_at_caps(self) -> None:
        """Say once when a memory cap starts to bite: detection goes on, approximately."""
        capped = [(name, n) for name, n in self.detector.evictions().items() if n and name not in self._warned]
        for name, n in capped:
            self._warned.add(name)
            log.warning("rule %s: more than %d distinct keys in its window (a flood of distinct clients?): the"
                        " %d with the fewest events so far are forgotten (subnet rules keep their networks' totals);"
                        " detection goes on", name, self.detector.max_keys, n)
        if len(self.correlator) >= self.correlator.max_messages and "messages" not in self._warned:
            self._warned.add("messages")
            log.warning("%d messages open at once (queue ids that never finish?): the oldest are forgotten;"
                        " their later delivery lines count as not relayed", self.correlator.max_messages)

    def prune(self) -> None:
        """Drop stored counts that no window can reach any more."""
        if self.totals.last_time is not None:
            self.store.prune(self.detector.bucket(self.totals.last_time - self.config.longest_window_s) - 1)

    def finish(self) -> None:
        """The end of a log: facts the correlator still holds are counted as they stand."""
        self.correlator.finish()
        day = self.day
        for fact in self.correlator.take_released():
            self._observe(fact, "", day)

    @property
    def messages(self) -> int:
        return self.correlator.messages


def replay(
    paths: Iterable[str],
    config: Config,
    year: int | None = None,
    on_decisions: Callable[[Sequence[Decision]], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    local_domains: tuple[str, ...] = (),
    own_addresses: Iterable[Network] = (),
) -> ReplayResult:
    """Run a whole log (a rotated set in order) through the pipeline on log time.

    Windows live in a scratch in-memory database: log-time windows must never
    mix with the daemon's. The local domains: `local_domains` (--local-domain), else
    the config's, else Postfix's own (config_directory), else inferred from the log.
    """
    store = Store(None)
    tally, timeline = Tally(), Timeline(config.rules)
    destinations, source, detail = local_destinations(local_domains, config.local_domains, config.config_directory)
    pipeline = Pipeline(config, store, destinations, persist_counts=False, tally=tally, timeline=timeline,
                        own_addresses=own_addresses)
    years = YearResolver(year) if year is not None else None
    other_names: dict[str, int] = {}
    for path in paths:
        parser = LineParser(years or YearResolver(reference=sources.mtime(path)), config.syslog_names)
        parser.other_names = other_names
        for line in sources.read_lines(path):
            decisions = pipeline.feed(line, parser)
            if decisions and on_decisions is not None:
                on_decisions(decisions)
            if pipeline.totals.lines % FLUSH_EVERY == 0:
                pipeline.flush()
                pipeline.prune()
                if on_progress is not None:
                    on_progress(pipeline.totals.lines)
    pipeline.finish()
    pipeline.flush()
    if other_names:
        warn_other_syslog_names(other_names, config.syslog_names, none_read=pipeline.totals.first_time is None)
    result = ReplayResult(pipeline.totals, pipeline.messages, store.decisions(), tally, timeline, source.value,
                          detail, pipeline.correlator.inferred())
    store.close()
    return result


def warn_other_syslog_names(names: dict[str, int], syslog_names: tuple[str, ...], none_read: bool) -> None:
    """Say that lines shaped like Postfix's were skipped for their syslog name (`mail/smtpd`,
    a master.cf `-o syslog_name=`): otherwise a replay of such a log finds nothing, silently."""
    seen = ", ".join(f"{name} ({n:,} lines)" for name, n in sorted(names.items(), key=lambda x: -x[1])[:8])
    wanted = ", ".join(f'"{n}"' for n in syslog_names)
    first = sorted({name.split("/", 1)[0] for name in names})
    log.warning("%s; lines shaped like Postfix's were logged under other syslog names: %s. If that is Postfix"
                " (a second instance, or syslog_name set in main.cf/master.cf), add their first part to"
                " [postfix] syslog_names in the configuration, e.g. syslog_names = [%s]",
                f"no line of this log was Postfix's under syslog_names [{wanted}]" if none_read
                else f"only some lines were Postfix's under syslog_names [{wanted}]",
                seen, ", ".join(f'"{n}"' for n in (*syslog_names, *first)))
