"""Several hosts' logs replayed as one fleet: which files are one log cut by rotation, and the merge by time.

The rule (README, "Several mail hosts"):

- A file's hosts are the syslog host names of its first `SNIFF_LINES` Postfix lines: one for a host's own
  log, several for a central syslog file.
- Files that name the same hosts are one log cut by rotation (mail.log.2.gz, mail.log.1, mail.log): they
  are read one after the other, oldest first by the time of their first line (in the order given when
  that is unknown or equal).
- A file whose first lines name no host (empty, no Postfix line yet) joins the files of its rotation
  base name (mail.log.2.gz -> mail.log, same directory) when there are any, else it stands alone.
- The groups are merged by each line's timestamp (a k-way merge; on equal times the group given
  first goes first); a line without a time (not Postfix's) stays after the line before it in its file.

One group is read exactly as before, line by line: a one-host replay pays nothing for the merge.
"""

from __future__ import annotations

import heapq
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from relaywatch.core.parse import LineParser
from relaywatch.model import Event, Forged, Unparsed
from relaywatch.sources import files as sources
from relaywatch.sources.files import parse_line

SNIFF_LINES = 2000  # lines read from the start of each file to learn its hosts
MERGE_BLOCK = 1024  # merged lines handed to the replay loop at once

ParserFor = Callable[[str], LineParser]  # a fresh parser for the file at this path (its year, its syslog names)


@dataclass(frozen=True, slots=True)
class LogFile:
    """What a file's first lines say: the hosts it logs for, and the time of its first Postfix line."""

    path: str
    hosts: frozenset[str]
    first_time: float | None


def sniff(path: str, parser: LineParser, lines: int = SNIFF_LINES) -> LogFile:
    """The hosts and first time of `path`, from its first `lines` lines (stdin is not sniffed: it
    cannot be read twice)."""
    if path == "-":
        return LogFile(path, frozenset(), None)
    hosts: set[str] = set()
    first: float | None = None
    for n, line in enumerate(sources.read_lines(path)):
        if n >= lines:
            break
        event = parse_line(line, parser)
        if event is None or type(event) in (Unparsed, Forged) and not event.time:
            continue
        hosts.add(event.host)
        if first is None and event.time:
            first = event.time
    return LogFile(path, frozenset(hosts), first)


def rotation_base(path: str) -> str:
    """`mail.log` for mail.log.2.gz, mail.log-20251201 or mail.log.1; the path itself otherwise."""
    from relaywatch.sources.rotation import _ROTATED_NAME  # several files only: one log's replay starts without it

    directory, name = os.path.split(path)
    for i in range(len(name) - 1, 0, -1):
        if name[i] in ".-_" and _ROTATED_NAME.fullmatch(name, i):
            return os.path.join(directory, name[:i])
    return path


def group(logs: Sequence[LogFile]) -> list[list[str]]:
    """The files of each log, oldest first; the groups in the order their first file was given."""
    keyed: dict[object, list[tuple[int, LogFile]]] = {}
    by_base = {rotation_base(f.path): f.hosts for f in logs if f.hosts}
    for i, f in enumerate(logs):
        key: object = f.hosts or by_base.get(rotation_base(f.path)) or ("file", rotation_base(f.path))
        keyed.setdefault(key, []).append((i, f))
    out = []
    for members in keyed.values():
        members.sort(key=lambda m: (m[1].first_time if m[1].first_time is not None else float("inf"), m[0]))
        out.append([f.path for _, f in members])
    return out


def plan(paths: Sequence[str], parser_for: ParserFor) -> list[list[str]]:
    """The groups of `paths` (see the module's rule); one file, or stdin, is one group without reading it."""
    if len(paths) < 2 or "-" in paths:
        return [list(paths)]
    return group([sniff(path, parser_for(path)) for path in paths])


def _timed(paths: Sequence[str], parser_for: ParserFor) -> Iterator[tuple[float, Event | None, str]]:
    """The lines of one group's files in turn, each with its event and the time it is merged at."""
    t = 0.0
    for path in paths:
        parser = parser_for(path)
        for line in sources.read_lines(path):
            event = parse_line(line, parser)
            if event is not None and event.time:
                t = event.time
            yield t, event, line


def merged(groups: Sequence[Sequence[str]], parser_for: ParserFor) -> Iterator[tuple[Event | None, str]]:
    """Every line of every group, merged by time: (its event, the line)."""
    for _, event, line in heapq.merge(*(_timed(g, parser_for) for g in groups), key=lambda x: x[0]):
        yield event, line


def merged_blocks(groups: Sequence[Sequence[str]], parser_for: ParserFor,
                  size: int = MERGE_BLOCK) -> Iterator[tuple[list[Event | None], list[str]]]:
    """`merged` in blocks of `size` lines, (their events, the lines): the replay loop's shape."""
    events: list[Event | None] = []
    lines: list[str] = []
    for event, line in merged(groups, parser_for):
        events.append(event)
        lines.append(line)
        if len(lines) == size:
            yield events, lines
            events, lines = [], []
    if lines:
        yield events, lines
