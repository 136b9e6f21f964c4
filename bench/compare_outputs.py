#!/usr/bin/env python3
"""Byte-for-byte: does this branch's `relaywatch replay` print what another build prints?

    python bench/compare_outputs.py --base main                       # against main's code, this Python
    python bench/compare_outputs.py --before "/opt/old/bin/relaywatch" --formats json,text,html
    python bench/compare_outputs.py --base HEAD~3 --big /tmp/bench-logs  # also the replay_bench logs there

`--base REV` exports that revision of this repository (git archive) into a temp dir and runs it
with this Python (PYTHONPATH first): the reference is exactly that commit's code, whatever is
installed.

Replays, with both commands, every log under tests/data (golden, deployments, corpus, the seed
and proxy logs), the public corpus (/work/shared/corpus/public, when present) and generated days
(bench/gen_day.py and bench/gen_flood.py variants, fixed seeds, written to a temp dir), in each
format asked for, and compares stdout and the exit code byte for byte. A speed change must change
no decision, count or report. Prints one line per difference and a summary; exit status 1 when
anything differed, 2 usage.
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS = Path("/work/shared/corpus/public")
GENERATED = {  # name -> generator arguments (a --year is given to every replay of these)
    "seed-day.log": ["gen_day.py", "--profile", "seed-day"],
    "seed-rfc3339.log": ["gen_day.py", "--profile", "seed-day", "--format", "rfc3339", "--seed", "7"],
    "seed-multi-rcpt.log": ["gen_day.py", "--profile", "seed-day", "--flood", "multi-rcpt", "--seed", "8"],
    "seed-rotate-modern.log": ["gen_day.py", "--profile", "seed-day", "--flood", "rotate", "--style", "modern"],
    "busy-200k.log": ["gen_day.py", "--profile", "busy", "--lines", "200000", "--seed", "9"],
    "rotate16-150k.log": ["gen_flood.py", "--shape", "rotate16", "--lines", "150000", "--seed", "11"],
    "ipv6-48-80k.log": ["gen_flood.py", "--shape", "ipv6-48", "--clients", "80000", "--seed", "12"],
}
YEAR = "2026"


def logs_under(data: Path) -> list[Path]:
    found = [p for p in sorted(data.rglob("*")) if p.is_file() and (p.suffix in (".log", ".gz", ".export")
                                                                     or p.name.endswith(".json"))]
    return [p for p in found if p.suffix != ".db"]


def replay(cmd: list[str], log: Path, fmt: str, year: str | None) -> tuple[int, bytes]:
    args = [*cmd, "replay", "--format", fmt, *(["--year", year] if year else []), str(log)]
    proc = subprocess.run(args, capture_output=True, stdin=subprocess.DEVNULL, check=False)
    return proc.returncode, proc.stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ref = ap.add_mutually_exclusive_group(required=True)
    ref.add_argument("--base", metavar="REV", help="the reference: this repository's code at REV")
    ref.add_argument("--before", metavar="CMD", help="the reference: this relaywatch command")
    ap.add_argument("--after", default=str(Path(sys.executable).parent / "relaywatch"), help="the command tested")
    ap.add_argument("--formats", default="json,text", help="report formats to compare (default: %(default)s)")
    ap.add_argument("--big", metavar="DIR", help="also every *.log in DIR (replay_bench.py --keep DIR)")
    ap.add_argument("--no-generated", action="store_true", help="skip the generated days")
    a = ap.parse_args(argv)
    formats = [f for f in a.formats.split(",") if f]
    tmp = tempfile.TemporaryDirectory(prefix="relaywatch-compare-")
    if a.base:
        base = Path(tmp.name) / "base"
        base.mkdir()
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", a.base], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(base)], input=tar, check=True)
        # -P: not the current directory first (it may be a checkout of other code)
        before = ["env", f"PYTHONPATH={base}", sys.executable, "-P", "-m", "relaywatch"]
    else:
        before = shlex.split(a.before)
    after = shlex.split(a.after)

    cases: list[tuple[Path, str | None]] = [(p, None) for p in logs_under(ROOT / "tests" / "data")]
    if CORPUS.is_dir():
        cases += [(p, None) for p in sorted(CORPUS.iterdir()) if p.suffix in (".log", ".gz")]
    if not a.no_generated:
        for name, gen in GENERATED.items():
            out = Path(tmp.name) / name
            subprocess.run([sys.executable, str(HERE / gen[0]), *gen[1:], "--out", str(out)], check=True,
                           stdout=subprocess.DEVNULL)
            cases.append((out, YEAR))
    if a.big:
        cases += [(p, YEAR) for p in sorted(Path(a.big).glob("*.log"))]

    differ = 0
    for log, year in cases:
        for fmt in formats:
            old, new = replay(before, log, fmt, year), replay(after, log, fmt, year)
            if old != new:
                differ += 1
                where = next((i for i, (x, y) in enumerate(zip(old[1], new[1], strict=False)) if x != y),
                             min(len(old[1]), len(new[1])))
                print(f"DIFFERS {log} --format {fmt}: exit {old[0]} vs {new[0]}, {len(old[1])} vs {len(new[1])}"
                      f" bytes, first difference at byte {where}: {old[1][where - 40:where + 80]!r}"
                      f" vs {new[1][where - 40:where + 80]!r}")
            else:
                print(f"same    {log} --format {fmt} ({len(new[1]):,} bytes, exit {new[0]})")
    tmp.cleanup()
    print(f"{len(cases)} logs x {len(formats)} formats, {' '.join(before)} vs {' '.join(after)}: {differ} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
