#!/usr/bin/env python3
"""Benchmark `relaywatch replay` on generated busy days: lines/s, peak RSS, and how flat RSS stays.

    python bench/replay_bench.py                      # generate 250k- and 1M-line busy days into a temp dir
    python bench/replay_bench.py --log /var/log/mail.log --log other.log
    python bench/replay_bench.py --relaywatch ".venv/bin/relaywatch" --no-fail2ban

Each log is replayed by `relaywatch replay --format json LOG` in a child process.  Wall time gives
lines/s; the child's peak RSS is the ru_maxrss that os.wait4() returns for that one child (the same
figure resource.getrusage(RUSAGE_CHILDREN) reports, but per run instead of a maximum over every child
this script ever started, the generator included).  With the two generated sizes the table shows
whether RSS stays flat as the log grows (target: <= 64 MiB).  Where `fail2ban-regex` is installed,
`fail2ban-regex LOG postfix` is timed on the largest log and the speed ratio printed.
Exit status: 0 ok, 1 a replay failed or printed no JSON "lines", 2 usage.
"""

import argparse
import gzip
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GEN = HERE / "gen_day.py"


def relaywatch_cmd(arg):
    if arg:
        return shlex.split(arg)
    beside = Path(sys.executable).parent / "relaywatch"  # the venv this script runs in
    if beside.exists():
        return [str(beside)]
    found = shutil.which("relaywatch")
    if found:
        return [found]
    return [sys.executable, "-m", "relaywatch.cli"]


def count_lines(path):
    opener = gzip.open if str(path).endswith(".gz") else open
    n = 0
    with opener(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            n += block.count(b"\n")
    return n


def run_measured(cmd, stderr_path):
    """Run cmd, return (wall seconds, exit code, stdout bytes, ru_maxrss KiB, user+sys seconds)."""
    with open(stderr_path, "wb") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, proc.returncode, out, ru.ru_maxrss, ru.ru_utime + ru.ru_stime


def generate(workdir, lines, seed):
    path = Path(workdir) / f"busy-{lines}.log"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, str(GEN), "--profile", "busy", "--lines", str(lines), "--seed", str(seed),
                    "--out", str(path)], check=True)
    return path, time.perf_counter() - t0


def label(n):
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Time `relaywatch replay --format json` on big Postfix logs.")
    ap.add_argument("--log", action="append", metavar="FILE", help="replay this log instead of generated "
                    "ones (repeatable; plain or .gz)")
    ap.add_argument("--sizes", default="250000,1000000", help="line counts of the generated busy days "
                    "(default: %(default)s)")
    ap.add_argument("--seed", type=int, default=20030316, help="generator seed (default: %(default)s)")
    ap.add_argument("--relaywatch", metavar="CMD", help="command to run (default: relaywatch next to this "
                    "Python, else on PATH, else python -m relaywatch.cli)")
    ap.add_argument("--extra-args", default="", metavar="ARGS", help="more arguments for `relaywatch replay`")
    ap.add_argument("--no-fail2ban", action="store_true", help="skip fail2ban-regex even if installed")
    ap.add_argument("--keep", metavar="DIR", help="generate into DIR and keep the logs")
    a = ap.parse_args(argv)

    tmp = None
    gen_rows = []
    if a.log:
        logs = [(Path(p).name, Path(p)) for p in a.log]
        for _, p in logs:
            if not p.exists():
                ap.error(f"no such log: {p}")
    else:
        try:
            sizes = [int(x) for x in a.sizes.split(",") if x.strip()]
        except ValueError:
            ap.error("--sizes takes comma-separated integers")
        if a.keep:
            workdir = Path(a.keep)
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            tmp = tempfile.TemporaryDirectory(prefix="relaywatch-bench-")
            workdir = Path(tmp.name)
        logs = []
        for n in sizes:
            path, secs = generate(workdir, n, a.seed)
            logs.append((f"busy-{label(n)}", path))
            gen_rows.append((f"busy-{label(n)}", secs))

    cmd = relaywatch_cmd(a.relaywatch)
    extra = shlex.split(a.extra_args)
    results, failed = [], False
    for name, path in logs:
        lines = count_lines(path)
        errf = Path(tempfile.gettempdir()) / f"relaywatch-bench-{os.getpid()}.stderr"
        wall, rc, out, maxrss, cpu = run_measured(cmd + ["replay", "--format", "json", *extra, str(path)], errf)
        reported, note = None, ""
        try:
            reported = json.loads(out)["lines"]
            if reported != lines:
                note = f"reported lines={reported:,}"
        except (ValueError, KeyError, TypeError):
            note = "no JSON with \"lines\" on stdout"
        if rc != 0 or reported is None:
            failed = True
            tail = errf.read_text(errors="replace").strip().splitlines()[-3:]
            note = "; ".join(x for x in [note, f"exit {rc}", *tail] if x)
        errf.unlink(missing_ok=True)
        results.append((name, path, lines, wall, cpu, maxrss / 1024, rc, note))

    print(f"relaywatch replay benchmark -- {' '.join(cmd + ['replay', '--format', 'json', *extra, 'LOG'])}")
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    for name, secs in gen_rows:
        print(f"generated {name} in {secs:.1f} s")
    head = ("log", "lines", "wall s", "lines/s", "cpu s", "peak RSS MiB", "exit")
    rows = [(n, f"{ln:,}", f"{w:.2f}", f"{ln / w:,.0f}" if w > 0 else "-", f"{c:.2f}", f"{r:.1f}", str(rc))
            for n, _, ln, w, c, r, rc, _ in results]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    fmt = "  ".join([f"{{:<{widths[0]}}}"] + [f"{{:>{w}}}" for w in widths[1:]])
    print(fmt.format(*head))
    for row, res in zip(rows, results, strict=True):
        print(fmt.format(*row) + (f"  ! {res[7]}" if res[7] else ""))
    ok = [r for r in results if r[6] == 0]
    if len(ok) >= 2:
        small, big = min(ok, key=lambda r: r[2]), max(ok, key=lambda r: r[2])
        if big[2] > small[2]:
            print(f"RSS {small[0]} -> {big[0]} ({big[2] / small[2]:.1f}x the lines): "
                  f"{small[5]:.1f} -> {big[5]:.1f} MiB "
                  f"({big[5] - small[5]:+.1f} MiB, x{big[5] / small[5]:.2f}); target <= 64 MiB and flat")

    if a.no_fail2ban:
        print("fail2ban-regex: skipped")
    elif not shutil.which("fail2ban-regex"):
        print("fail2ban-regex: not installed")
    elif results:
        name, path, lines = max(results, key=lambda r: r[2])[:3]
        wall, rc, _, maxrss, _ = run_measured(["fail2ban-regex", str(path), "postfix"], os.devnull)
        rw = max(results, key=lambda r: r[2])
        f2b_rate = lines / wall if wall > 0 else 0
        rw_rate = rw[2] / rw[3] if rw[3] > 0 else 0
        ratio = f"relaywatch is {rw_rate / f2b_rate:.1f}x as fast" if f2b_rate and rw[6] == 0 else "no ratio"
        print(f"fail2ban-regex {name} postfix: {wall:.1f} s, {f2b_rate:,.0f} lines/s, "
              f"peak RSS {maxrss / 1024:.1f} MiB, "
              f"exit {rc}; {ratio}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
