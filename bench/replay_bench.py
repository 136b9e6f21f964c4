#!/usr/bin/env python3
"""`relaywatch replay --format json` against `fail2ban-regex LOG postfix` on the same logs.

    python bench/replay_bench.py                          # the four log shapes, 3 paired rounds each
    python bench/replay_bench.py --shapes rotate16,ipv6 --rounds 5
    python bench/replay_bench.py --log /var/log/mail.log  # your own log (plain or .gz)
    python bench/replay_bench.py --before "env PYTHONPATH=/tmp/old python3 -m relaywatch"   # a before/after table

The log shapes, generated into a temp dir (or --keep DIR) with fixed seeds, equal bytes every run:
  busy      bench/gen_day.py --profile busy, 1,000,000 lines (about 5 % relayed)
  seed      bench/gen_day.py --profile seed-day --lines 100000 (the 2003 open-relay day, grown)
  rotate16  bench/gen_flood.py --shape rotate16: 400,000 lines, a /16 relay flood (about 32 % relayed)
  ipv6      bench/gen_flood.py --shape ipv6-48: 300,000 distinct IPv6 clients in one /48 (1.5M lines)

Speed is whole-process CPU time (user + system, from os.wait4, the children a tool reaps
included), not wall time: the machine is shared. Each round runs the tools back to back in
alternating order; the table shows medians over the rounds, and the ratio is the median of the
rounds' paired ratios (fail2ban-regex CPU / relaywatch CPU: above 1, relaywatch is faster).
Peak RSS is each child's ru_maxrss. Exit status: 0 ok, 1 a replay failed or miscounted, 2 usage.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHAPES = {
    "busy": [str(HERE / "gen_day.py"), "--profile", "busy", "--lines", "1000000", "--seed", "20030316"],
    "seed": [str(HERE / "gen_day.py"), "--profile", "seed-day", "--lines", "100000", "--seed", "20030316"],
    "rotate16": [str(HERE / "gen_flood.py"), "--shape", "rotate16", "--lines", "400000", "--seed", "20261127"],
    "ipv6": [str(HERE / "gen_flood.py"), "--shape", "ipv6-48", "--clients", "300000", "--seed", "20261127"],
}
YEAR = "2026"  # --year for every replay: the result must not depend on the files' mtime


def relaywatch_cmd(arg: str | None) -> list[str]:
    if arg:
        return shlex.split(arg)
    beside = Path(sys.executable).parent / "relaywatch"  # the venv this script runs in
    if beside.exists():
        return [str(beside)]
    found = shutil.which("relaywatch")
    return [found] if found else [sys.executable, "-m", "relaywatch"]


def count_lines(path: Path) -> int:
    opener = gzip.open if str(path).endswith(".gz") else open
    n = 0
    with opener(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


def run(cmd: list[str], cwd: str) -> tuple[float, float, int, bytes]:
    """(CPU seconds, peak RSS MiB, exit code, stdout) of one child."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd=cwd)
    out = proc.stdout.read() if proc.stdout else b""
    _, status, ru = os.wait4(proc.pid, 0)
    return ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024, os.waitstatus_to_exitcode(status), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", default=",".join(SHAPES), help="generated logs to run (default: %(default)s)")
    ap.add_argument("--log", action="append", metavar="FILE", help="run this log instead (repeatable)")
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds per log (default: %(default)s)")
    ap.add_argument("--relaywatch", metavar="CMD", help="relaywatch command (default: the one beside this Python)")
    ap.add_argument("--before", metavar="CMD", help="another relaywatch command, run in the same rounds: before/after")
    ap.add_argument("--no-fail2ban", action="store_true", help="skip fail2ban-regex even if installed")
    ap.add_argument("--keep", metavar="DIR", help="generate into DIR and keep the logs (reused when present)")
    a = ap.parse_args(argv)
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")

    tmp = tempfile.TemporaryDirectory(prefix="relaywatch-bench-")
    workdir = Path(a.keep) if a.keep else Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    if a.log:
        logs = [(Path(p).name, Path(p)) for p in a.log]
        missing = [str(p) for _, p in logs if not p.exists()]
        if missing:
            ap.error(f"no such log: {', '.join(missing)}")
    else:
        names = [s.strip() for s in a.shapes.split(",") if s.strip()]
        unknown = [s for s in names if s not in SHAPES]
        if unknown:
            ap.error(f"unknown shape(s) {', '.join(unknown)}; known: {', '.join(SHAPES)}")
        logs = []
        for name in names:
            path = workdir / f"{name}.log"
            if not path.exists():
                subprocess.run([sys.executable, *SHAPES[name], "--out", str(path)], check=True,
                               stdout=subprocess.DEVNULL)
            logs.append((name, path))

    tools: list[tuple[str, list[str]]] = [("relaywatch", relaywatch_cmd(a.relaywatch))]
    if a.before:
        tools.append(("before", shlex.split(a.before)))
    f2b = None if a.no_fail2ban else shutil.which("fail2ban-regex")
    print(f"relaywatch replay benchmark -- python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {a.rounds} rounds")
    for label, cmd in tools:
        print(f"  {label}: {' '.join(cmd)} replay --format json --year {YEAR} LOG")
    print(f"  fail2ban-regex: {'fail2ban-regex LOG postfix' if f2b else 'not installed (or --no-fail2ban)'}")

    rows, failed = [], False
    for name, path in logs:
        lines = count_lines(path)
        cpu: dict[str, list[float]] = {label: [] for label, _ in tools}
        rss: dict[str, list[float]] = {label: [] for label, _ in tools}
        cpu["fail2ban"], rss["fail2ban"] = [], []
        for r in range(a.rounds):
            order: list[tuple[str, list[str]]] = [(label, [*cmd, "replay", "--format", "json", "--year", YEAR,
                                                           str(path)]) for label, cmd in tools]
            if f2b:
                order.append(("fail2ban", [f2b, str(path), "postfix"]))
            if r % 2:
                order.reverse()
            for label, cmd in order:
                secs, mib, code, out = run(cmd, str(workdir))
                if label != "fail2ban":
                    try:
                        reported = json.loads(out)["lines"]
                    except (ValueError, KeyError, TypeError):
                        reported = None
                    if code != 0 or reported != lines:
                        failed = True
                        print(f"! {label} on {name}: exit {code}, reported lines {reported}, expected {lines}")
                cpu[label].append(secs)
                rss[label].append(mib)
        rows.append((name, lines, cpu, rss))

    head = ["log", "lines"]
    for label, _ in tools:
        head += [f"{label} lines/s", "RSS MiB"]
    if f2b:
        head += ["fail2ban lines/s", "RSS MiB", "ratio"]
        if a.before:
            head += ["before ratio"]
    table = []
    for name, lines, cpu, rss in rows:
        row = [name, f"{lines:,}"]
        for label, _ in tools:
            row += [f"{lines / statistics.median(cpu[label]):,.0f}", f"{max(rss[label]):.1f}"]
        if f2b:
            row += [f"{lines / statistics.median(cpu['fail2ban']):,.0f}", f"{max(rss['fail2ban']):.1f}"]
            for label in ["relaywatch", *(["before"] if a.before else [])]:
                ratio = statistics.median(f / r for f, r in zip(cpu["fail2ban"], cpu[label], strict=False))
                row.append(f"{ratio:.2f}x")
        table.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *table, strict=False)]
    print("  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                    for i, (h, w) in enumerate(zip(head, widths, strict=False))))
    for row in table:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=False))))
    print("lines/s: lines / median CPU seconds of the whole process; RSS: the largest peak of the rounds; "
          "ratio: median of fail2ban-regex CPU / relaywatch CPU per round (target >= 4x, RSS <= 64 MiB)")
    tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
