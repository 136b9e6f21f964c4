"""The one place the pipeline is wired: parse -> correlate -> windows -> detect -> store, and out to its sinks.

The daemon and `replay` both run `Pipeline.feed`; they differ only in where
lines come from, whose clock the windows follow (log time either way, which
is wall time for a live log), which sinks they plug in (the report's tables and
timeline, the daily record) and whether decisions are acted on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Final, Protocol

from relaywatch.config import Config
from relaywatch.core.correlate import Correlator
from relaywatch.core.destinations import Destinations, LocalDomains
from relaywatch.core.parse import LineParser
from relaywatch.core.policy import Detector
from relaywatch.core.rules import Fact, Network
from relaywatch.model import (
    CountRow,
    Decision,
    Event,
    Forged,
    JSONObject,
    LocalRelayed,
    OpenMessage,
    Origin,
    RelayDenied,
    Relayed,
    Totals,
    Unparsed,
)
from relaywatch.sources import files as sources

if TYPE_CHECKING:  # the store's records, named in annotations only: a replay starts without them
    from relaywatch.store.records import BlockRow, FleetNews

log = logging.getLogger("relaywatch.engine")

_NOTHING: Final[Sequence[Decision]] = ()  # Final: compiled, a C global (returned for most lines)
FLUSH_EVERY = 20_000


class Sink(Protocol):
    """Where the pipeline sends what it saw: each relayed recipient (also mail submitted on the host,
    `LocalRelayed`), each refused relay attempt, and each decision, in the order they happen. The
    report's tally and timeline and the daemon's daily record are sinks; they never feed back."""

    def fact(self, fact: Relayed | LocalRelayed) -> None: ...

    def denied(self, fact: RelayDenied) -> None: ...

    def decision(self, d: Decision) -> None: ...


class PipelineStore(Protocol):
    """What the pipeline asks of its store: the part of store.base.StateStore it uses (the daemon's
    SQLite or PostgreSQL store; a replay's scratch store in memory, replay.ReplayStore)."""

    def commit_batch(self, counts: Iterable[CountRow], decisions: Iterable[Decision] = (),
                     position: tuple[str, JSONObject] | None = None,
                     messages: tuple[Sequence[OpenMessage], Sequence[str]] = ((), ()),
                     origins: tuple[Sequence[Origin], Sequence[str]] = ((), ())) -> None: ...

    def on_commit(self, fn: Callable[[], None]) -> None: ...

    def prune(self, before_bucket: int) -> int: ...

    def counts_since(self, bucket: int, max_keys: int | None = None) -> Iterator[CountRow]: ...

    def blocks(self, now: float | None = None) -> list[BlockRow]: ...

    def decisions(self, since: float | None = None, until: float | None = None) -> list[Decision]: ...

    def open_messages(self) -> list[OpenMessage]: ...

    def fleet_news(self, since_bucket: int) -> FleetNews: ...


class Pipeline:
    def __init__(self, config: Config, store: PipelineStore, local_domains: Destinations | None = None,
                 persist_messages: bool = False, persist_counts: bool = True, sinks: Iterable[Sink] = (),
                 own_addresses: Iterable[Network] = ()) -> None:
        """`persist_messages`: keep open messages in the store too, so that a restarted
        daemon still correlates a delivery whose client= line it read before.
        `persist_counts` False: window counts stay in memory only (a replay never restores them,
        and a flood of distinct clients would grow its in-memory database by every key).
        `sinks`: fed every fact and decision (see `Sink`).
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
        self.sinks = tuple(sinks)
        self._counts: dict[tuple[str, int, str], int] = {}
        self._decisions: list[Decision] = []
        # open messages and origins taken from the correlator but not yet committed (a store fault)
        self._unsaved: tuple[list[OpenMessage], list[str], list[Origin], list[str]] = ([], [], [], [])
        # each fact also goes to these (the daemon's enforcement check, the inline policy service)
        self.fact_observers: list[Callable[[Fact], None]] = []

    def restore(self, now: float) -> None:
        """Rebuild the windows from the store (a restarted daemon resumes them)."""
        since = self.detector.bucket(now - self.config.longest_window_s)
        for dim, bucket, key, n in self.store.counts_since(since, max_keys=self.detector.max_keys):
            self.detector.restore(dim, bucket, key, n)
        quiet = self.detector.alert_quiet_s
        self._remember(self.store.blocks(now),
                       self.store.decisions(since=now - max(self.config.longest_window_s, quiet)))
        self.correlator.load(self.store.open_messages())

    def _remember(self, blocks: Iterable[BlockRow], decisions: Iterable[Decision]) -> None:
        """Blocks in force and recent alerts quiet the detector: no second decision for what is blocked, no
        second push of an alert in its quiet period (after a restart, or made by another fleet host)."""
        for b in blocks:
            self.detector.remember_block(b.kind, b.target, float("inf") if b.until is None else b.until)
        quiet = self.detector.alert_quiet_s
        for d in decisions:
            if d.action == "alert":
                self.detector.remember_alert(d.kind, d.target, d.time + max(d.window_s, quiet))

    def absorb(self, now: float) -> None:
        """A fleet sharing the store: what the other hosts counted since the last call goes into the windows
        (restored: counted, not decided; the next line of the same key decides on the fleet's sum), and
        their blocks and alerts quiet this host's detector as its own do."""
        news = self.store.fleet_news(self.detector.bucket(now - self.config.longest_window_s))
        for dim, bucket, key, n in news.counts:
            self.detector.restore(dim, bucket, key, n)
        self._remember(news.blocks, news.decisions)

    def feed(self, line: str, parser: LineParser) -> Sequence[Decision]:
        return self.feed_event(sources.parse_line(line, parser), line)

    def feed_event(self, event: Event | None, line: str) -> Sequence[Decision]:
        """`feed` of a line already parsed: a replay of several hosts' logs parses each line to merge them by time."""
        totals = self.totals
        totals.lines += 1
        if event is None:
            return _NOTHING
        cls = type(event)
        if cls is Unparsed:
            totals.unparsed += 1
            if len(totals.unparsed_samples) < 5 and line.strip():
                totals.unparsed_samples.append(line[:300])
            return _NOTHING
        if cls is Forged:
            totals.forged += 1
            if totals.forged == 1 or totals.forged % 100_000 == 0:
                log.warning("%d journal records claiming to be Postfix's were written by another program"
                            " (logger -t postfix/...?) and ignored", totals.forged)
            return _NOTHING
        t = event.time
        if totals.first_time is None:
            totals.first_time = t
        totals.last_time = t
        correlator = self.correlator
        fact = correlator.feed(event)
        if correlator.released:  # a filter's re-injected copy, credited late to its origin
            due: list[Fact] = list(correlator.take_released())
            if fact is not None:
                due.append(fact)
            return [d for f in due for d in self._observe(f, line)]
        if fact is None:
            return _NOTHING
        return self._observe(fact, line)

    def _observe(self, fact: Fact, line: str) -> Sequence[Decision]:
        totals, sinks = self.totals, self.sinks
        for observe in self.fact_observers:
            observe(fact)
        bucket, counted, decisions = self.detector.observe(fact, line)
        # the sinks see the fact after the detector (which never reads them): the address it just read
        # is still in netaddr's cache when the timeline asks which blocks the fact's client is under
        if isinstance(fact, RelayDenied):
            totals.relay_denied += 1
            for sink in sinks:
                sink.denied(fact)
        else:
            if type(fact) is LocalRelayed:
                totals.local_relayed += 1
            else:
                totals.relayed += 1
            for sink in sinks:
                sink.fact(fact)
        if self.persist_counts:  # exactly what the windows counted, so that a restart rebuilds those windows
            counts = self._counts
            for dim, value in counted:
                key = (dim, bucket, value)
                counts[key] = counts.get(key, 0) + 1
        if decisions:
            self._decisions.extend(decisions)
            for d in decisions:
                for sink in sinks:
                    sink.decision(d)
        return decisions

    def flush(self, position: tuple[str, JSONObject] | None = None) -> None:
        """Write pending counts and decisions (and the source position) in one transaction."""
        rows = [CountRow(dim, bucket, key, n) for (dim, bucket, key), n in self._counts.items()]
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
        for fact in self.correlator.take_released():
            self._observe(fact, "")

    @property
    def messages(self) -> int:
        return self.correlator.messages

