#!/usr/bin/env python3
"""The fleet's figures: N host processes sharing one PostgreSQL (a private one in a temp dir).

    .venv/bin/python bench/fleet_bench.py                       # 1, 2, 4 and 8 hosts (needs root, postgresql-15)
    .venv/bin/python bench/fleet_bench.py --hosts 1 2 --lines 40000 --abusers 20

Each host is a process running what `relaywatch run` runs per batch of 2,000 lines (the fleet pull
into the windows, Pipeline.feed, the decision claim, one commit of counts, decisions and position)
on the shared store, without Postfix:
- throughput: --lines lines of a flood of distinct clients (nothing crosses), as fast as it goes:
  lines/s per host and in total;
- latency: --abusers clients each sending 3x the client threshold, their messages dealt round-robin
  over the hosts at --rate messages/s per host (so no host alone crosses), each host reading a batch
  every 0.1 s as a following daemon does. From the moment the fleet's threshold-th message of an
  abuser is fed (on whichever host) to its row in relaywatch_blocks being seen by a LISTENing
  watcher: p50/p99.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from relaywatch.build import block_keys  # noqa: E402
from relaywatch.config import from_dict  # noqa: E402
from relaywatch.core.parse import LineParser, YearResolver  # noqa: E402
from relaywatch.engine import Pipeline  # noqa: E402
from relaywatch.store.postgres import Store  # noqa: E402
from relaywatch.store.records import BlockRow  # noqa: E402
from support.postgres import PostgresServer, postgres_installed  # noqa: E402  (the test rig's PostgreSQL)

THRESHOLD = 30
BATCH = 2000


def message(i: int, client: str) -> list[str]:
    stamp = datetime.now().astimezone().isoformat()
    qid = f"{0xB00000 + i:X}"
    return [f"{stamp} mx postfix/smtpd[10]: {qid}: client=unknown[{client}]",
            f"{stamp} mx postfix/qmgr[11]: {qid}: from=<news@woodelf.org>, size=900, nrcpt=1 (queue active)",
            f"{stamp} mx postfix/smtp[12]: {qid}: to=<u{i}@victim.example>, relay=mx.victim.example[192.0.2.25]:25,"
            " delay=1, status=sent (250 ok)",
            f"{stamp} mx postfix/qmgr[11]: {qid}: removed"]


class Host:
    def __init__(self, url: str, name: str) -> None:
        cfg = from_dict({"postfix": {"local_domains": ["woodelf.org"]}, "allow": {"networks": []},
                         "rules": {"client": {"threshold": THRESHOLD}}, "fleet": {"host": name}})
        self.store = Store(url, host=name, block_keys=block_keys)
        self.pipeline = Pipeline(cfg, self.store, persist_messages=True)
        self.pipeline.restore(time.time())
        self.parser = LineParser(YearResolver(), ("postfix",))
        self.read = 0

    def batch(self, lines: list[str]) -> None:
        """What the daemon does with one batch: pull, feed, claim, record the blocks, commit."""
        self.pipeline.absorb(time.time())
        decisions = []
        for line in lines:
            decisions += self.pipeline.feed(line, self.parser)
        self.read += len(lines)
        with self.store.transaction():
            for d in self.store.claim(decisions):
                if d.action == "block":
                    self.store.add_block(BlockRow(d.kind, d.target, "bench", d.rule, d.time, d.time + 3600))
            self.pipeline.flush(("bench", {"offset": self.read}))


def throughput(url: str, name: str, index: int, lines: int, out: Any) -> None:
    host = Host(url, name)
    clients = [f"198.18.{(index * 37 + i) % 250}.{i % 250 + 1}" for i in range(lines // 4)]
    log = [line for i, c in enumerate(clients) for line in message(i, c)]
    start = time.perf_counter()
    for at in range(0, len(log), BATCH):
        host.batch(log[at:at + BATCH])
    out.put((name, len(log) / (time.perf_counter() - start)))


def paced(url: str, name: str, index: int, hosts: int, abusers: int, rate: float, out: Any) -> None:
    """This host's share of the abusers' messages, at `rate` messages/s, a batch every 0.1 s."""
    host = Host(url, name)
    total = abusers * THRESHOLD * 3
    mine = [(k, abuser) for k in range(total) if k % hosts == index for abuser in [k % abusers]]
    fed: list[tuple[int, int, float]] = []  # (abuser, its message number fleet-wide, wall time fed)
    start, sent = time.time(), 0
    while sent < len(mine):
        due = min(len(mine), int((time.time() - start) * rate) + 1)
        lines = []
        for k, abuser in mine[sent:due]:
            lines += message(k, f"198.19.255.{abuser + 1}")
        now = time.time()
        host.batch(lines)
        fed += [(abuser, k // abusers, now) for k, abuser in mine[sent:due]]
        sent = due
        time.sleep(0.1)
    out.put((name, fed))


def watch(url: str, abusers: int, out: Any, stop: Any) -> None:
    import psycopg
    seen: dict[str, float] = {}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("LISTEN relaywatch_blocks")
        while len(seen) < abusers and not stop.is_set():
            for target, in conn.execute("SELECT target FROM relaywatch_blocks").fetchall():
                seen.setdefault(target, time.time())
            for _ in conn.notifies(timeout=0.5, stop_after=1):
                pass
    out.put(seen)


def collect(out: Any, procs: list[Any]) -> list[Any]:
    """One result per host process; one that died without its result ends the bench (not a wait forever)."""
    got: list[Any] = []
    while len(got) < len(procs):
        try:
            got.append(out.get(timeout=1.0))
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise SystemExit(f"fleet bench: host process {dead[0].name} died (exit {dead[0].exitcode})") from None
    return got


def run(pg: PostgresServer, n: int, lines: int, abusers: int, rate: float) -> None:
    url = pg.createdb(f"fleet_{n}_{int(time.time())}")
    Store(url, host="setup").close()
    out: Any = mp.Queue()
    procs = [mp.Process(target=throughput, args=(url, f"h{i}", i, lines, out)) for i in range(n)]
    for p in procs:
        p.start()
    rates = collect(out, procs)
    for p in procs:
        p.join()
    url = pg.createdb(f"fleet_{n}_lat_{int(time.time())}")
    Store(url, host="setup").close()
    stop = mp.Event()
    seen_q: Any = mp.Queue()
    watcher = mp.Process(target=watch, args=(url, abusers, seen_q, stop))
    watcher.start()
    procs = [mp.Process(target=paced, args=(url, f"h{i}", i, n, abusers, rate, out)) for i in range(n)]
    for p in procs:
        p.start()
    fed = [row for result in collect(out, procs) for row in result[1]]
    for p in procs:
        p.join()
    time.sleep(1.0)
    stop.set()
    seen = seen_q.get()
    watcher.join()
    crossing = {a: t for a, number, t in fed if number == THRESHOLD - 1}
    delays = sorted(seen[f"198.19.255.{a + 1}"] - t for a, t in crossing.items() if f"198.19.255.{a + 1}" in seen)
    missing = abusers - len(delays)
    total = sum(r for _, r in rates)
    p50 = statistics.median(delays) * 1000 if delays else float("nan")
    p99 = delays[min(len(delays) - 1, int(len(delays) * 0.99))] * 1000 if delays else float("nan")
    per = ", ".join(f"{r:,.0f}" for _, r in sorted(rates))
    print(f"{n} host(s): {total:,.0f} lines/s in total ({per} per host); crossing line -> block row"
          f" visible: p50 {p50:.0f} ms, p99 {p99:.0f} ms over {len(delays)} abusers"
          f"{f' ({missing} never blocked)' if missing else ''}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--lines", type=int, default=40_000, help="lines per host for the throughput")
    parser.add_argument("--abusers", type=int, default=20)
    parser.add_argument("--rate", type=float, default=100.0, help="abusers' messages/s per host")
    args = parser.parse_args()
    if not postgres_installed():
        sys.exit("needs Debian's postgresql-15 (/usr/lib/postgresql/15/bin) and root")
    pg = PostgresServer.start()
    try:
        for n in args.hosts:
            run(pg, n, args.lines, args.abusers, args.rate)
    finally:
        pg.stop()


if __name__ == "__main__":
    main()
