#!/usr/bin/env python3
"""What the mypyc-compiled core buys: the same replay by the pure-Python and the compiled install.

    python bench/compiled_bench.py                       # builds both forms, generates a 300k-line busy day
    python bench/compiled_bench.py --log /tmp/flood.log --log /tmp/busy.log --rounds 7
    python bench/compiled_bench.py --pure .venv/bin/relaywatch --compiled /tmp/venv/bin/relaywatch

Both forms are built from the tracked files of this checkout (setup.py with RELAYWATCH_COMPILE=0 and
=1) and installed, each with its dependencies, into its own venv in a temp dir; or --pure/--compiled
name existing `relaywatch` commands. Each log is replayed (`relaywatch replay --format json LOG`) by
both in paired rounds, the order alternating, and the child's CPU time (user + sys, from os.wait4)
measured: on a shared machine only the ratio of a pair is worth reading. Prints lines/s of each form
(median CPU time), the median and range of the per-round ratios, and checks that both printed the same
bytes. Exit status: 0 ok, 1 a replay failed or the forms disagreed, 2 usage.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GEN = ROOT / "bench" / "gen_day.py"
FORM_CHECK = "import relaywatch.core.parse as m; print(m.__file__)"


def install(work: Path, form: str, compile_flag: str) -> Path:
    """Build the wheel of one form from the tracked files and install it into its own venv."""
    src, wheels, venv = work / f"src-{form}", work / f"wheels-{form}", work / f"venv-{form}"
    src.mkdir()
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["cp", "--parents", "-P", "-t", str(src), *files.decode().split("\0")[:-1]], cwd=ROOT,
                   check=True)
    env = {**os.environ, "RELAYWATCH_COMPILE": compile_flag}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(wheels), str(src)],
                   env=env, check=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    (wheel,) = wheels.glob("relaywatch-*.whl")
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True)
    return venv / "bin" / "relaywatch"


def module_file(cmd: Path) -> str:
    python = cmd.parent / "python"
    return subprocess.run([str(python), "-c", FORM_CHECK], capture_output=True, text=True, cwd="/",
                          check=True).stdout.strip()


def replay(cmd: Path, log: Path) -> tuple[float, int, bytes]:
    """(user + sys CPU seconds of the child, exit code, stdout)."""
    proc = subprocess.Popen([str(cmd), "replay", "--format", "json", str(log)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, cwd="/")
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.stdout.close()
    _, status, ru = os.wait4(proc.pid, 0)
    return ru.ru_utime + ru.ru_stime, os.waitstatus_to_exitcode(status), out


def count_lines(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Replay speed of the compiled core against the pure-Python one.")
    ap.add_argument("--log", action="append", type=Path, metavar="FILE", help="replay this log (repeatable; "
                    "default: a generated busy day of --lines lines)")
    ap.add_argument("--lines", type=int, default=300_000, help="lines of the generated busy day (%(default)s)")
    ap.add_argument("--rounds", type=int, default=5, help="paired rounds per log (%(default)s)")
    ap.add_argument("--pure", type=Path, metavar="CMD", help="an installed pure-Python relaywatch")
    ap.add_argument("--compiled", type=Path, metavar="CMD", help="an installed compiled relaywatch")
    a = ap.parse_args(argv)
    if a.rounds < 1:
        ap.error("--rounds must be at least 1")

    with tempfile.TemporaryDirectory(prefix="relaywatch-compiled-bench-") as tmp:
        work = Path(tmp)
        pure = a.pure or install(work, "pure", "0")
        compiled = a.compiled or install(work, "compiled", "1")
        pure_file, compiled_file = module_file(pure), module_file(compiled)
        print(f"pure:     {pure} ({pure_file})")
        print(f"compiled: {compiled} ({compiled_file})")
        if not pure_file.endswith(".py") or compiled_file.endswith(".py"):
            print("the two commands are not one pure and one compiled install", file=sys.stderr)
            return 2
        logs = a.log
        if not logs:
            logs = [work / f"busy-{a.lines}.log"]
            subprocess.run([sys.executable, str(GEN), "--profile", "busy", "--lines", str(a.lines),
                            "--out", str(logs[0])], check=True)
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {a.rounds} paired rounds, CPU time")
        print(f"{'log':<24} {'lines':>10} {'pure lines/s':>13} {'compiled lines/s':>17} {'ratio':>6}  range")
        failed = False
        for log in logs:
            lines = count_lines(log)
            times: dict[str, list[float]] = {"pure": [], "compiled": []}
            outputs: dict[str, bytes] = {}
            for r in range(a.rounds):
                order = (("pure", pure), ("compiled", compiled))
                for form, cmd in order if r % 2 == 0 else order[::-1]:
                    cpu, rc, out = replay(cmd, log)
                    if rc != 0:
                        print(f"{log}: the {form} replay exited {rc}", file=sys.stderr)
                        return 1
                    times[form].append(cpu)
                    outputs.setdefault(form, out)
            ratios = [p / c for p, c in zip(times["pure"], times["compiled"], strict=True)]
            same = outputs["pure"] == outputs["compiled"]
            failed |= not same
            print(f"{log.name:<24} {lines:>10,} {lines / statistics.median(times['pure']):>13,.0f} "
                  f"{lines / statistics.median(times['compiled']):>17,.0f} {statistics.median(ratios):>5.2f}x"
                  f"  {min(ratios):.2f}-{max(ratios):.2f}" + ("" if same else "  ! the outputs differ"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
