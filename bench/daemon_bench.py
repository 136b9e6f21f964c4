#!/usr/bin/env python3
"""The daemon under a sustained relay flood: CPU share of one core, lag, block latency.

    .venv/bin/python bench/daemon_bench.py                       # needs root and Debian's postfix
    .venv/bin/python bench/daemon_bench.py --rate 10000 --seconds 30 --trials 40
    .venv/bin/python bench/daemon_bench.py --code /tmp/old-tree  # the daemon from another source tree
    .venv/bin/python bench/daemon_bench.py --flood /tmp/rotate16.log   # a flood log made beforehand
    .venv/bin/python bench/daemon_bench.py --keep                # keep its work dir (removed by default)

A real `relaywatch run` (default rules) follows a log file; a private Postfix (tests/support/
postfix_rig.py, hash: client access map) is the one it blocks in.

- block latency: a client relaying 60 recipients (the default client rule's threshold) is written to
  the log in one write; the clock starts when the write returns. "map" is when Postfix's compiled
  map answers REJECT for it (`postmap -q IP hash:MAP`, asked each time the .db file changes, which is
  polled every millisecond); "refused" is when a new SMTP session to the running Postfix (XCLIENT
  ADDR=IP from 127.0.0.1) is refused at RCPT, probed every 5 ms once the map holds it. Measured
  idle (--trials, one at a time) and during the flood (one every --every seconds).
- sustained: --rate lines/s of bench/gen_flood.py's rotate16 relay flood (a /16 rotating, about a
  third of the lines relayed), restamped with the wall clock as written, for --seconds. CPU is the
  daemon's user+system time over the flood and its catch-up, divided by that time (% of one core);
  its children (postmap, postfix reload) are shown apart. Lag: how far the committed read position
  trails the file, sampled every 0.25 s (as seconds of input at --rate), and how long after the
  writer stopped the committed position reached the end of the file. On a loaded machine the
  daemon may lag: its share of a core is then spread over the catch-up too, while its CPU per
  line is not; compare runs made one after the other by that.
- idle: CPU over 5 s with nothing to read.
Absolute figures depend on the machine's load; compare runs made one after the other (--code).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import smtplib
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support.postfix_rig import POSTMAP, REMOTE_RCPT, PostfixRig, postfix_installed  # noqa: E402

THRESHOLD = 60  # [rules.client]'s default threshold: the 60th recipient is the crossing line


def cpu(pid: int) -> tuple[float, float]:
    """(own user+system, waited-for children's) CPU seconds of `pid`."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def committed(db: Path, source: str) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as conn:
            row = conn.execute("SELECT value FROM positions WHERE source = ?", [source]).fetchone()
    except sqlite3.Error:
        return 0
    return int(json.loads(row[0]).get("offset", 0)) if row else 0


def wait(predicate: Callable[[], bool], timeout: float, step: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def syslog_stamp() -> bytes:
    t = time.localtime()
    return f"{time.strftime('%b', t)} {t.tm_mday:>2} {time.strftime('%H:%M:%S', t)}".encode()


def crossing(i: int, ip: str) -> bytes:
    """One message of `ip` with THRESHOLD relayed recipients: its last line crosses the client rule."""
    s, qid = syslog_stamp().decode(), f"{0xC0000000 + i:X}"
    out = [f"{s} mx postfix/smtpd[100]: {qid}: client=unknown[{ip}]",
           f"{s} mx postfix/qmgr[101]: {qid}: from=<spam{i}@x.example>, size=700, nrcpt={THRESHOLD} (queue active)"]
    out += [f"{s} mx postfix/smtp[102]: {qid}: to=<v{i}.{r}@far.example>, relay=mx.far.example[192.0.2.1]:25, "
            f"delay=1, delays=0.1/0/0.4/0.5, dsn=2.0.0, status=sent (250 ok)" for r in range(THRESHOLD)]
    return ("\n".join(out) + "\n").encode()


def trial_ip(i: int) -> str:
    """A global address in a /16 of its own: no subnet rule ever groups two trials."""
    return f"{81 + i // 200}.{i % 200}.7.9"


class Watcher:
    """Times trials: the compiled map answering REJECT (one thread), then a new SMTP session refused
    (another, so that a slow session never delays the map's figure)."""

    def __init__(self, rig: PostfixRig) -> None:
        self.rig = rig
        self.db = Path(rig.reject_list.path + ".db")
        self.pending: dict[str, float] = {}  # ip -> t0, until the map holds it
        self.probing: queue.Queue[tuple[str, float]] = queue.Queue()
        self.mapped: list[float] = []
        self.refused: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._maps, daemon=True),
                        threading.Thread(target=self._sessions, daemon=True)]
        for t in self.threads:
            t.start()

    def start(self, ip: str, t0: float) -> None:
        with self.lock:
            self.pending[ip] = t0

    def _stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.db)
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _holds(self, ip: str) -> bool:
        done = subprocess.run([POSTMAP, "-c", self.rig.config_directory, "-q", ip, str(self.rig.reject_list)],
                              capture_output=True, text=True, check=False)
        return done.stdout.startswith("REJECT")

    def _refuses(self, ip: str) -> bool:
        with smtplib.SMTP("127.0.0.1", self.rig.port, timeout=10) as smtp:
            smtp.ehlo("probe.relaywatch.test")
            smtp.docmd("XCLIENT", f"ADDR={ip} NAME=[UNAVAILABLE]")
            smtp.ehlo("probe.relaywatch.test")
            smtp.mail("probe@relaywatch.test")
            code, _ = smtp.rcpt(REMOTE_RCPT)
            return code >= 500

    def _maps(self) -> None:
        seen = self._stamp()
        while not self.stop.is_set():
            time.sleep(0.001)
            with self.lock:
                todo = dict(self.pending)
            stamp = self._stamp()
            if stamp == seen:
                continue
            now, seen = time.perf_counter(), stamp
            for ip, t0 in todo.items():
                if self._holds(ip):
                    self.mapped.append(now - t0)
                    with self.lock:
                        del self.pending[ip]
                    self.probing.put((ip, t0))

    def _sessions(self) -> None:
        while not self.stop.is_set():
            try:
                ip, t0 = self.probing.get(timeout=0.1)
            except queue.Empty:
                continue
            while not self._refuses(ip):
                time.sleep(0.005)
            self.refused.append(time.perf_counter() - t0)

    def drain(self, timeout: float) -> int:
        """Wait for the pending trials; how many the map never held."""
        wait(lambda: not self.pending and self.probing.empty() and len(self.refused) == len(self.mapped), timeout)
        with self.lock:
            lost, self.pending = len(self.pending), {}
        return lost

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)


def quantiles(xs: list[float]) -> str:
    if not xs:
        return "no samples"
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return f"p50 {statistics.median(xs) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, max {xs[-1] * 1000:.0f} ms"


def flood_lines(args: argparse.Namespace, work: Path) -> list[bytes]:
    path = Path(args.flood) if args.flood else work / "flood.log"
    if not args.flood:
        gen = ROOT / "bench" / "gen_flood.py"
        if not gen.exists():
            raise SystemExit("bench/gen_flood.py (t15-core) is missing: pass --flood LOG, a rotate16 flood log")
        need = args.rate * args.seconds + 10_000
        subprocess.run([sys.executable, str(gen), "--shape", "rotate16", "--lines", str(need), "--out", str(path)],
                       check=True, stdout=subprocess.DEVNULL)
    return [line[15:] for line in path.read_bytes().splitlines(keepends=True)]  # without the BSD stamp


def report(label: str, w: Watcher, lost: int) -> None:
    print(f"block latency {label}: line written -> compiled map answers REJECT: {quantiles(w.mapped)}; "
          f"-> running Postfix refuses a new session: {quantiles(w.refused)} ({len(w.refused)} blocks"
          f"{f', {lost} never in force' if lost else ''}; target p99 <= 100 ms)")
    w.mapped.clear()
    w.refused.clear()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=30, help="idle latency trials")
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--every", type=float, default=0.5, help="a crossing client every this many s of the flood")
    ap.add_argument("--flood", help="a rotate16 flood log to use instead of generating one")
    ap.add_argument("--code", help="run the daemon from this source tree (PYTHONPATH)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (log, state, daemon.err) and say where")
    args = ap.parse_args()
    if not postfix_installed() or os.geteuid() != 0:
        print("needs root and Debian's postfix (a private instance is started in a temp dir)")
        return 1
    work = Path(tempfile.mkdtemp(prefix="rw-bench-"))  # 34-125 MB a run: removed unless --keep
    try:
        return bench(args, work)
    finally:
        if args.keep:
            print(f"work dir kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, work: Path) -> int:
    lines = flood_lines(args, work)
    rig = PostfixRig.start("hash")
    daemon = None
    watcher = Watcher(rig)
    try:
        log, db = work / "mail.log", work / "state.db"
        log.write_text("")
        cfg = work / "relaywatch.toml"
        cfg.write_text(
            f'[source]\npath = "{log}"\n[state]\ndatabase = "{db}"\n'
            f'[postfix]\nconfig_directory = "{rig.config_directory}"\nclient_access_map = "{rig.reject_list}"\n'
            'sasl_access_map = ""\nlocal_domains = ["woodelf.org"]\n[allow]\nnetworks = []\n')
        cfg.chmod(0o600)
        env = {**os.environ, "PYTHONPATH": args.code or str(ROOT)}
        err = open(work / "daemon.err", "wb")  # noqa: SIM115 - closed with the process
        daemon = subprocess.Popen([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)], stderr=err, env=env,
                                  cwd=work)
        assert wait(lambda: b"following" in (work / "daemon.err").read_bytes(), 60), "daemon did not start"
        source = f"file:{log}"
        wait(lambda: committed(db, source) >= 0 and db.exists(), 10)
        print(f"relaywatch daemon benchmark -- python {sys.version.split()[0]}, {os.cpu_count()} CPUs, "
              f"code {args.code or ROOT}")

        trial = 0
        for trial in range(args.trials):
            with open(log, "ab") as f:
                f.write(crossing(trial, trial_ip(trial)))
            watcher.start(trial_ip(trial), time.perf_counter())
            watcher.drain(10)
            time.sleep(0.1)
        report("idle", watcher, 0)

        chunk = max(1, args.rate // 100)
        behind: list[float] = []
        bytes_per_line = sum(map(len, lines[:10_000])) / min(len(lines), 10_000) + 15
        own0, kids0 = cpu(daemon.pid)
        start = time.monotonic()
        next_sample, next_trial = start, start + args.every
        sent = 0
        with open(log, "ab") as f:
            while time.monotonic() - start < args.seconds and sent < len(lines):
                stamp = syslog_stamp()
                f.write(b"".join(stamp + line for line in lines[sent:sent + chunk]))
                f.flush()
                sent += chunk
                now = time.monotonic()
                if now >= next_trial:
                    trial += 1
                    f.write(crossing(trial, trial_ip(trial)))
                    f.flush()
                    watcher.start(trial_ip(trial), time.perf_counter())
                    next_trial += args.every
                if now >= next_sample:
                    behind.append((f.tell() - committed(db, source)) / bytes_per_line / args.rate)
                    next_sample += 0.25
                time.sleep(max(0.0, start + sent / args.rate - time.monotonic()))
        wrote = time.monotonic() - start
        end = log.stat().st_size
        wait(lambda: committed(db, source) >= end, 600, 0.01)
        caught_up = time.monotonic() - start - wrote
        own1, kids1 = cpu(daemon.pid)
        lost = watcher.drain(10)
        span = wrote + caught_up
        print(f"sustained: {sent:,} flood lines at {sent / wrote:,.0f} lines/s for {wrote:.1f} s; committed position "
              f"behind by p50 {statistics.median(behind):.2f} s, max {max(behind):.2f} s of input; caught up "
              f"{caught_up:.2f} s after the writer stopped; daemon CPU {(own1 - own0) / span * 100:.1f}% of one core "
              f"(target <= 25 %; {(own1 - own0) / sent * 1e6:.1f} us a line, which a lag does not dilute), its "
              f"children (postmap, reload) {(kids1 - kids0) / span * 100:.1f}%")
        report("during the flood", watcher, lost)

        own0, _ = cpu(daemon.pid)
        time.sleep(5)
        print(f"idle: {(cpu(daemon.pid)[0] - own0) / 5 * 100:.2f}% of one core")
        daemon.send_signal(signal.SIGTERM)
        code = daemon.wait(timeout=60)
        daemon = None
        blocks = sqlite3.connect(db).execute("SELECT kind, count(*) FROM blocks GROUP BY kind").fetchall()
        print(f"SIGTERM exit {code}; blocks recorded: {dict(blocks)}")
        return 0
    finally:
        watcher.close()
        if daemon is not None:
            daemon.kill()
            daemon.wait()
        rig.stop()


if __name__ == "__main__":
    sys.exit(main())
