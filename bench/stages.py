#!/usr/bin/env python3
"""Where a replay spends its CPU: the pipeline's stages added one at a time on the same log.

    python bench/stages.py /tmp/bench-logs/rotate16.log           # read, parse, correlate, detect, replay
    python bench/stages.py LOG --stages parse,detect --rounds 3

Each stage runs in a child process of the Python running this script (so with the relaywatch that
Python imports: a compiled install, or a checkout with PYTHONPATH) and includes the stages before it:
  read      the lines of the file (sources.files.read_lines)
  parse     + LineParser.parse
  correlate + Correlator.feed (default local domains: none known, inferred from the log)
  detect    + Detector.observe of every fact (default rules)
  replay    the whole `relaywatch replay --format json LOG`, process start and report included
A stage's own cost is its figure minus the one before. CPU time is user + sys (os.wait4, children
included), the median of the rounds: on a shared machine only CPU time and ratios are worth reading.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

STAGES = ("read", "parse", "correlate", "detect", "replay")

CHILD = r"""
import sys
from relaywatch.core.correlate import Correlator
from relaywatch.core.destinations import LocalDomains
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.core.policy import Detector
from relaywatch.sources.files import read_lines

path, stage = sys.argv[1], sys.argv[2]
parser, correlator, detector = LineParser(YearResolver(2026)), Correlator(LocalDomains()), Detector()
n = events = facts = 0
for line in read_lines(path):
    n += 1
    if stage == "read":
        continue
    event = parser.parse(line)
    if event is None or stage == "parse":
        continue
    events += 1
    fact = correlator.feed(event)
    if fact is None or stage == "correlate":
        continue
    facts += 1
    detector.observe(fact, line)
print(n, events, facts)
"""


def run(cmd: list[str]) -> tuple[float, float, str]:
    """(CPU seconds, peak RSS MiB, stdout) of one child."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    out = proc.stdout.read().decode() if proc.stdout else ""
    _, status, ru = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--stages", default=",".join(STAGES), help="default: %(default)s")
    ap.add_argument("--rounds", type=int, default=1)
    args = ap.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown or args.rounds < 1:
        ap.error(f"unknown stages {sorted(unknown)}" if unknown else "--rounds must be >= 1")
    form = subprocess.run([sys.executable, "-c", "import relaywatch.core.parse as m; print(m.__file__)"],
                          capture_output=True, text=True, check=True).stdout.strip()
    print(f"relaywatch: {form} ({'compiled' if form.endswith('.so') else 'pure Python'})")
    before = 0.0
    for stage in stages:
        if stage == "replay":
            cmd = [sys.executable, "-m", "relaywatch", "replay", "--year", "2026", "--format", "json", args.log]
        else:
            cmd = [sys.executable, "-c", CHILD, args.log, stage]
        runs = [run(cmd) for _ in range(args.rounds)]
        cpu = statistics.median(r[0] for r in runs)
        rss = max(r[1] for r in runs)
        counts = runs[0][2].split() if stage != "replay" else []
        what = f"  lines {counts[0]} events {counts[1]} facts {counts[2]}" if len(counts) == 3 else ""
        print(f"{stage:<10} {cpu:7.2f} s CPU  (+{cpu - before:5.2f})  peak {rss:5.1f} MiB{what}")
        before = cpu
    return 0


if __name__ == "__main__":
    sys.exit(main())
