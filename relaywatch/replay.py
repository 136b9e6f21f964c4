"""`relaywatch replay`: a whole log through the daemon's pipeline on log time, with the report's sinks.

The pipeline is the daemon's; a replay only differs in its lines (files, oldest first; several
hosts' logs merged by time, sources.fleet), its store
(a scratch in-memory one: log-time windows must never mix with the daemon's) and its sinks (the
report's tables and timeline instead of the daily record).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING

from relaywatch.config import Config
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.core.rules import Network
from relaywatch.engine import FLUSH_EVERY, Pipeline
from relaywatch.model import CountRow, Decision, Event, JSONObject, OpenMessage, Origin, Unparsed
from relaywatch.postfix.postconf import local_destinations
from relaywatch.reports.report import ReplayResult, Tally
from relaywatch.reports.timeline import Timeline
from relaywatch.sources import files as sources
from relaywatch.sources import fleet

if TYPE_CHECKING:
    from relaywatch.store.records import BlockRow, FleetNews

log = logging.getLogger("relaywatch.replay")
# Python's collector, run every 700 allocations, walked every window key and open message again and
# again during a replay (14 % of a compiled replay of an IPv6 flood, perf), and the pipeline makes no
# reference cycles per line: it stays off while the replay reads. A full collection runs only when the
# container objects made since the last one, net of those freed, pass this count: never on the bench
# logs (their live set peaks at 171k on the IPv6 flood), but a leak of cycles stays bounded.
CYCLES_AFTER = 500_000


def replay(
    paths: Iterable[str],
    config: Config,
    year: int | None = None,
    on_decisions: Callable[[Sequence[Decision]], None] | None = None,
    on_progress: Callable[[int], None] | None = None,
    local_domains: tuple[str, ...] = (),
    own_addresses: Iterable[Network] = (),
    panels: bool = True,
) -> ReplayResult:
    """Run a whole log (a rotated set), or several hosts' logs merged by time, through the pipeline on log time.

    Which files are one log and how several are merged: sources.fleet.

    The local domains: `local_domains` (--local-domain), else the config's, else
    Postfix's own (config_directory), else inferred from the log.
    `panels` False: the timeline counts only what blocks would have stopped (a JSON report).
    """
    store = ReplayStore()
    tally, timeline = Tally(), Timeline(config.rules, panels=panels)
    destinations, source, detail = local_destinations(local_domains, config.local_domains, config.config_directory)
    pipeline = Pipeline(config, store, destinations, persist_counts=False, sinks=(tally, timeline),
                        own_addresses=own_addresses)
    paths = list(paths)
    groups = fleet.plan(paths, lambda path: LineParser(_years(year, path), config.syslog_names))
    years: dict[str, YearResolver] = {}  # with --year, each log's files share one year, as one log's always did
    for g in groups:
        if year is not None:
            years.update(dict.fromkeys(g, YearResolver(year)))
    other_names: dict[str, int] = {}

    def parser_for(path: str) -> LineParser:
        parser = LineParser(years.get(path) or _years(None, path), config.syslog_names)
        parser.other_names = other_names
        return parser

    hosts: dict[str, int] = {}
    # the lines of the host read last, counted into `hosts` when another host's line comes (or at the end):
    # one comparison a line instead of a dict lookup and store (the same counts, in the same order)
    last_host, run = "", 0
    batches = _one_log(groups[0], parser_for) if len(groups) == 1 else fleet.merged_blocks(groups, parser_for)
    totals, flush_every = pipeline.totals, FLUSH_EVERY
    collecting = gc.isenabled()
    gc.disable()
    try:
        for events, lines in batches:
            for event, line in zip(events, lines, strict=True):
                if event is not None and (host := event.host):
                    if host == last_host:
                        run += 1
                    else:
                        if run:
                            hosts[last_host] = hosts.get(last_host, 0) + run
                        last_host, run = host, 1
                decisions = pipeline.feed_event(event, line)  # a native call, compiled: not a bound method's
                if decisions and on_decisions is not None:
                    on_decisions(decisions)
                if totals.lines % flush_every == 0:
                    pipeline.flush()
                    pipeline.prune()
                    if on_progress is not None:
                        on_progress(totals.lines)
                    if collecting and gc.get_count()[0] > CYCLES_AFTER:
                        gc.collect()
    finally:
        if collecting:
            _promote()
            gc.enable()
    if run:
        hosts[last_host] = hosts.get(last_host, 0) + run
    pipeline.finish()
    pipeline.flush()
    if other_names:
        warn_other_syslog_names(other_names, config.syslog_names, none_read=pipeline.totals.first_time is None)
    result = ReplayResult(pipeline.totals, pipeline.messages, store.decisions(), tally, timeline, source.value,
                          detail, pipeline.correlator.inferred(), pipeline.correlator.declined(), hosts)
    return result


class ReplayStore:
    """A replay's scratch store: the decisions it made, in memory. A replay restores nothing, keeps
    no counts (`persist_counts` False), no open messages and no origins, so SQLite would only cost
    its start and its writes (engine.PipelineStore is what the pipeline asks of it)."""

    def __init__(self) -> None:
        self._decisions: list[Decision] = []

    def commit_batch(self, counts: Iterable[CountRow], decisions: Iterable[Decision] = (),
                     position: tuple[str, JSONObject] | None = None,
                     messages: tuple[Sequence[OpenMessage], Sequence[str]] = ((), ()),
                     origins: tuple[Sequence[Origin], Sequence[str]] = ((), ())) -> None:
        self._decisions.extend(decisions)

    def on_commit(self, fn: Callable[[], None]) -> None:
        fn()

    def prune(self, before_bucket: int) -> int:
        return 0

    def counts_since(self, bucket: int, max_keys: int | None = None) -> Iterator[CountRow]:
        return iter(())

    def blocks(self, now: float | None = None) -> list[BlockRow]:
        return []

    def decisions(self, since: float | None = None, until: float | None = None) -> list[Decision]:
        """In time order (those made at one time in the order made), as the SQLite store returns them."""
        lo = float("-inf") if since is None else since
        hi = float("inf") if until is None else until
        return sorted((d for d in self._decisions if lo <= d.time < hi), key=lambda d: d.time)

    def open_messages(self) -> list[OpenMessage]:
        return []

    def fleet_news(self, since_bucket: int) -> FleetNews:
        from relaywatch.store.records import FleetNews  # never asked in a replay (no fleet shares its store)

        return FleetNews([], [], [])


def _promote() -> None:
    """Move what the replay built to the collector's oldest generation without walking it: with the
    collector off, all of it waits in the youngest, whose next collection would walk a flood's windows
    once more for nothing. Not when the caller froze objects of its own: unfreezing would move theirs."""
    if gc.get_freeze_count() == 0:
        gc.freeze()
        gc.unfreeze()


def _years(year: int | None, path: str) -> YearResolver:
    """Classic syslog's missing year: --year, else the file's modification time."""
    return YearResolver(year) if year is not None else YearResolver(reference=sources.mtime(path))


def _one_log(paths: Sequence[str], parser_for: fleet.ParserFor) -> Iterator[tuple[list[Event | None], list[str]]]:
    """The lines of one host's (or one central) log, its files in turn, a block at a time with their
    events: no merge to pay for, and no function call per line but the parser's."""
    for path in paths:
        parser = parser_for(path)
        for lines in sources.read_blocks(path):
            yield parse_block(lines, parser), lines


def parse_block(lines: list[str], parser: LineParser) -> list[Event | None]:
    """`sources.parse_line` of each line of a block from `sources.read_blocks`, in one call rather than one
    per line. Here, compiled, rather than in sources (plain Python): the loop and the parser's call are
    native (the interpreted loop was 2 % of a replay of rotate16)."""
    max_line, too_long = sources.MAX_LINE, sources.TOO_LONG
    return [parser.parse(line) if len(line) < max_line else Unparsed(0.0, too_long) for line in lines]


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
