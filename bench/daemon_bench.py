#!/usr/bin/env python3
"""The daemon's figures: block latency, sustained rate, idle CPU, state database size.

    .venv/bin/python bench/daemon_bench.py                 # everything (needs root and Debian's postfix)
    .venv/bin/python bench/daemon_bench.py --trials 100 --rate 10000 --seconds 20

- latency: a relayed line appended to the log -> the access map holds the client and postmap is
  done (relaywatch renames the map source into place only after postmap succeeded, so the key
  showing in the source means the compiled map is in place too); p50/p99 over --trials blocks,
  against a private Postfix started in a temp dir (tests/support/postfix_rig.py).
- sustained: --rate lines/s of a generated busy day appended for --seconds; how far behind the
  daemon is when the writer stops, and its CPU.
- idle: CPU used over 10 s with nothing to read.
- size: the state database after a whole generated 1,000,000-line day (pruned windows).
"""

from __future__ import annotations

import argparse
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.postfix_rig import PostfixRig, postfix_installed  # noqa: E402  (the test rig is the bench's Postfix)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def offset(db: Path, source: str) -> int:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT value FROM positions WHERE source = ?", [source]).fetchone()
    import json

    return json.loads(row[0]).get("offset", 0) if row else 0


def wait(predicate, timeout: float, step: float = 0.001) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def relayed_lines(i: int, ip: str) -> str:
    stamp = time.strftime("%b %d %H:%M:%S")
    qid = f"{0xA0000000 + i:X}"
    return (f"{stamp} mx postfix/smtpd[100]: {qid}: client=unknown[{ip}]\n"
            f"{stamp} mx postfix/qmgr[101]: {qid}: from=<spam@x.example>, size=700, nrcpt=1 (queue active)\n"
            f"{stamp} mx postfix/smtp[102]: {qid}: to=<victim{i}@far.example>, relay=none, delay=1, "
            f"status=deferred (connect to mx.far.example[192.0.2.1]:25: Connection refused)\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--day-lines", type=int, default=1_000_000)
    args = ap.parse_args()
    if not postfix_installed() or os.geteuid() != 0:
        print("needs root and Debian's postfix (a private instance is started in a temp dir)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="rw-bench-"))
    rig = PostfixRig.start("hash")
    daemon = None
    try:
        log, db = work / "mail.log", work / "state.db"
        log.write_text("")
        cfg = work / "relaywatch.toml"
        cfg.write_text(
            f'[source]\npath = "{log}"\n[state]\ndatabase = "{db}"\n'
            f'[postfix]\nconfig_directory = "{rig.config_directory}"\nclient_access_map = "{rig.reject_list}"\n'
            'sasl_access_map = ""\n[allow]\nnetworks = []\n'
            '[rules.client]\nthreshold = 1\nwindow = "1m"\n')
        err = open(work / "daemon.err", "wb")
        daemon = subprocess.Popen([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)], stderr=err)
        assert wait(lambda: b"following" in (work / "daemon.err").read_bytes(), 30, 0.05), "daemon did not start"
        source = f"file:{log}"
        print(f"relaywatch daemon benchmark -- python {sys.version.split()[0]}, {os.cpu_count()} CPUs")

        latencies = []
        map_source = Path(rig.reject_list.path)
        for i in range(args.trials):
            ip = f"198.{18 + i // 250}.{i % 250}.7"
            with open(log, "a") as f:
                f.write(relayed_lines(i, ip))
                f.flush()
                t0 = time.perf_counter()
            key = f"\n{ip} REJECT".encode()
            ok = wait(lambda key=key: key in map_source.read_bytes(), 10)
            latencies.append(time.perf_counter() - t0 if ok else float("inf"))
            time.sleep(0.05)
        latencies.sort()
        p50 = statistics.median(latencies) * 1000
        p99 = latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000
        print(f"latency line -> map updated, postmap done: p50 {p50:.0f} ms, p99 {p99:.0f} ms, "
              f"max {latencies[-1] * 1000:.0f} ms over {len(latencies)} blocks (target p99 < 250 ms)")

        day = work / "day.log"
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_day.py"), "--profile", "busy", "--lines",
                        str(args.day_lines), "--out", str(day)], check=True, stdout=subprocess.DEVNULL)
        lines = day.read_bytes().splitlines(keepends=True)
        chunk = max(1, args.rate // 100)
        cpu0, start = cpu_seconds(daemon.pid), time.monotonic()
        sent = 0
        with open(log, "ab") as f:
            while time.monotonic() - start < args.seconds and sent < len(lines):
                f.write(b"".join(lines[sent:sent + chunk]))
                f.flush()
                sent += chunk
                time.sleep(max(0.0, start + sent / args.rate - time.monotonic()))
        wrote = time.monotonic() - start
        end = log.stat().st_size
        behind_bytes = end - offset(db, source)
        wait(lambda: offset(db, source) >= end, 600, 0.01)
        caught_up = time.monotonic() - start - wrote
        cpu = cpu_seconds(daemon.pid) - cpu0
        print(f"sustained: {sent:,} lines at {sent / wrote:,.0f} lines/s for {wrote:.0f} s; behind by "
              f"{behind_bytes:,} bytes when the writer stopped, caught up {caught_up:.2f} s later; "
              f"daemon CPU {cpu / (wrote + caught_up) * 100:.0f}% of one core")

        cpu0 = cpu_seconds(daemon.pid)
        time.sleep(10)
        print(f"idle: {(cpu_seconds(daemon.pid) - cpu0) / 10 * 100:.2f}% of one core")

        with open(log, "ab") as f:
            f.write(b"".join(lines[sent:]))
        end = log.stat().st_size
        t0 = time.monotonic()
        wait(lambda: offset(db, source) >= end, 900, 0.05)
        rest = len(lines) - sent
        print(f"the rest of the day: {rest:,} lines in {time.monotonic() - t0:.1f} s "
              f"({rest / max(time.monotonic() - t0, 1e-9):,.0f} lines/s through the daemon)")
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=30)
        daemon = None
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            rows = conn.execute("SELECT COUNT(*) FROM counts").fetchone()[0]
        print(f"state database after a {len(lines):,}-line day: {db.stat().st_size / 2**20:.1f} MiB "
              f"({rows:,} count rows), SIGTERM exit {code}")
        return 0
    finally:
        if daemon is not None:
            daemon.kill()
        rig.stop()


if __name__ == "__main__":
    sys.exit(main())
