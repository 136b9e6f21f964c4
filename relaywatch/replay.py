"""`relaywatch replay`: a whole log through the daemon's pipeline on log time, with the report's sinks.

The pipeline is the daemon's; a replay only differs in its lines (files, oldest first; several
hosts' logs merged by time, sources.fleet), its store
(a scratch in-memory one: log-time windows must never mix with the daemon's) and its sinks (the
report's tables and timeline instead of the daily record).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

from relaywatch.config import Config
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.core.policy import Network
from relaywatch.engine import FLUSH_EVERY, Pipeline
from relaywatch.model import Decision, Event
from relaywatch.postfix.postconf import local_destinations
from relaywatch.reports.report import ReplayResult, Tally
from relaywatch.reports.timeline import Timeline
from relaywatch.sources import files as sources
from relaywatch.sources import fleet
from relaywatch.store.sqlite import Store

log = logging.getLogger("relaywatch.replay")


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
    store = Store(None)
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
    lines = _one_log(groups[0], parser_for) if len(groups) == 1 else fleet.merged(groups, parser_for)
    for event, line in lines:
        if event is not None and event.host:
            hosts[event.host] = hosts.get(event.host, 0) + 1
        decisions = pipeline.feed_event(event, line)
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
                          detail, pipeline.correlator.inferred(), pipeline.correlator.declined(), hosts)
    store.close()
    return result


def _years(year: int | None, path: str) -> YearResolver:
    """Classic syslog's missing year: --year, else the file's modification time."""
    return YearResolver(year) if year is not None else YearResolver(reference=sources.mtime(path))


def _one_log(paths: Sequence[str], parser_for: fleet.ParserFor) -> Iterator[tuple[Event | None, str]]:
    """The lines of one host's (or one central) log, its files in turn: no merge to pay for."""
    for path in paths:
        parser = parser_for(path)
        for line in sources.read_lines(path):
            yield sources.parse_line(line, parser), line


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
