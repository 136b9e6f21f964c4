"""Resource exhaustion: floods of distinct clients, senders and queue ids through the real pipeline.

    python bench/flood.py                                   # 1,000,000 distinct IPv6 clients, each scenario
    python bench/flood.py --clients 100000 --scenario relay-48
    python bench/flood.py --store disk                      # the daemon's way: counts in an on-disk database

Each scenario runs in a child process (its own peak RSS, from getrusage) and feeds generated
lines (never stored) to `engine.Pipeline` on log time, ten minutes of flood whatever the size:

  relay-48   every client in one /48, spread over 65,536 /64s; 2 lines a message (client=, smtp
             to=), no qmgr `removed`: queue ids that never finish
  relay-64   every client in one /64, 3 lines a message (with qmgr from=: a distinct sender each)
  probe      `Relay access denied` from distinct clients of one /64 (1 line each)

A heavy IPv4 client (203.0.113.77) relays 100 messages among the flood's: it must still be
blocked. Prints lines, time, lines/s, peak RSS, RSS halfway and at the end (flat = bounded), the
largest window, keys forgotten at the caps, open messages, and the decisions. Exit status 1 when a
cap did not hold or the flood / heavy client went undetected.
Tests import `lines` and `run` (tests/test_hostile_exhaustion.py).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Appended, not prepended: an installed relaywatch (the compiled one that .ci/compiled tests) wins over
# this checkout, which is still found when nothing is installed.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from relaywatch.config import Config  # noqa: E402 - after the sys.path line
from relaywatch.core.parse import LineParser, YearResolver  # noqa: E402 - after the sys.path line
from relaywatch.core.policy import Detector  # noqa: E402 - after the sys.path line
from relaywatch.engine import FLUSH_EVERY, Pipeline  # noqa: E402 - after the sys.path line
from relaywatch.store.sqlite import Store  # noqa: E402 - after the sys.path line

T0 = 1795773600  # 2026-11-27 06:40:00 UTC
SPAN_S = 600.0
HEAVY = "203.0.113.77"
HEAVY_MESSAGES = 100  # in the ten minutes: the client rule blocks at 60
SCENARIOS = ("relay-48", "relay-64", "probe")
EXPECTED = {  # what must be decided (kind, target); the heavy client is expected in the relay scenarios
    "relay-48": ("subnet", "2a0b:4000:48::/48"),
    "relay-64": ("subnet", "2a0b:4000:64:1::/64"),
    "probe": None,  # relay_denied has no subnet rule: probes from a /64 are alerted per client only
}


def _stamp(t: float, cache: dict[int, str]) -> str:
    sec = int(t)
    head = cache.get(sec)
    if head is None:
        cache.clear()
        head = cache[sec] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
    return f"{head}.{int((t - sec) * 1e6):06d}+00:00"


def client(scenario: str, i: int) -> str:
    if scenario == "relay-48":
        return f"2a0b:4000:48:{i & 0xffff:x}:{i >> 16:x}::1"
    return f"2a0b:4000:64:1:{(i >> 32) & 0xffff:x}:{(i >> 16) & 0xffff:x}:{i & 0xffff:x}:1"


def lines(n: int, scenario: str) -> Iterator[str]:
    """The flood of `n` distinct clients, as log lines, generated on the fly."""
    cache: dict[int, str] = {}
    heavy_every = max(1, n // HEAVY_MESSAGES)
    for i in range(n):
        stamp = _stamp(T0 + i * SPAN_S / n, cache)
        ip = client(scenario, i)
        if scenario == "probe":
            yield (f"{stamp} mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 "
                   f"<v{i}@victim.example>: Relay access denied; from=<s{i}@spam.example> "
                   f"to=<v{i}@victim.example> proto=ESMTP helo=<x>")
            continue
        peers = [(f"{0x1000000 + i:X}", ip)]
        if i % heavy_every == 0:
            peers.append((f"{0x9000000 + i:X}", HEAVY))
        for qid, peer in peers:
            yield f"{stamp} mx postfix/smtpd[1]: {qid}: client=unknown[{peer}]"
            if scenario == "relay-64":
                yield (f"{stamp} mx postfix/qmgr[2]: {qid}: from=<s{i}@spam{i}.example>, size=900, nrcpt=1 "
                       "(queue active)")
            yield (f"{stamp} mx postfix/smtp[3]: {qid}: to=<v{i}@d{i}.example>, relay=mx.example[192.0.2.1]:25, "
                   "delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 ok)")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run(n: int, scenario: str, max_keys: int | None = None, max_messages: int | None = None,
        database: str | None = None) -> dict:
    """Feed the flood; figures as a dict (JSON-able)."""
    logs = io.StringIO()
    handler = logging.StreamHandler(logs)
    handler.setLevel(logging.WARNING)
    logging.getLogger("relaywatch").addHandler(handler)
    config = Config()
    store = Store(database)
    pipeline = Pipeline(config, store, persist_counts=database is not None)
    if max_keys is not None:
        pipeline.detector = Detector(config.rules, config.allow_networks, config.allow_sasl_users,
                                     config.block_s, max_keys=max_keys)
    if max_messages is not None:
        pipeline.correlator.max_messages = max_messages
    parser = LineParser(YearResolver(2026))
    flush_every = 2000 if database else FLUSH_EVERY  # the daemon commits a batch of 2,000 lines
    decisions = []
    half = None
    start = time.perf_counter()
    for count, line in enumerate(lines(n, scenario), 1):
        decisions += pipeline.feed(line, parser)
        if count % flush_every == 0:
            pipeline.flush()
            if count % (flush_every * 10) == 0:
                pipeline.prune()
        if half is None and pipeline.totals.lines * 2 >= n * (1 if scenario == "probe" else 2):
            half = _rss_mib()
    pipeline.flush()
    seconds = time.perf_counter() - start
    logging.getLogger("relaywatch").removeHandler(handler)
    sizes = pipeline.detector.sizes()
    windows = {name: keys for name, (keys, _) in sizes.items()}
    groups = {name: networks for name, (_, networks) in sizes.items()}
    db_mib = None
    if database:
        store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db_mib = os.path.getsize(database) / 2**20
    store.close()
    return {
        "scenario": scenario, "clients": n, "lines": pipeline.totals.lines, "seconds": round(seconds, 1),
        "lines_per_s": round(pipeline.totals.lines / seconds), "rss_half_mib": round(half or 0, 1),
        "rss_end_mib": round(_rss_mib(), 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "windows": windows, "groups": groups, "evicted": pipeline.detector.evictions(),
        "open_messages": len(pipeline.correlator), "messages_forgotten": pipeline.correlator.evicted,
        "decisions": [(d.action, d.kind, d.target, d.rule) for d in decisions],
        "warnings": [w for w in logs.getvalue().splitlines() if w], "db_mib": db_mib,
    }


def check(r: dict, max_keys: int, max_messages: int) -> list[str]:
    """What is wrong with a run's figures (empty: the caps held and the flood was caught)."""
    problems = []
    if max(r["windows"].values()) > max_keys or max(r["groups"].values()) > max_keys:
        problems.append(f"a window holds more than {max_keys} keys or networks")
    if r["open_messages"] > max_messages:
        problems.append(f"{r['open_messages']} open messages, more than {max_messages}")
    decided = {(kind, target) for _, kind, target, _ in r["decisions"]}
    want = EXPECTED[r["scenario"]]
    if want and want not in decided:
        problems.append(f"the flood was not caught: no {want}")
    if r["scenario"] != "probe" and ("client", HEAVY) not in decided:
        problems.append(f"the heavy client {HEAVY} was not blocked")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=1_000_000)
    ap.add_argument("--scenario", choices=SCENARIOS, action="append")
    ap.add_argument("--max-keys", type=int, help="window cap (default: relaywatch's)")
    ap.add_argument("--max-messages", type=int, help="open messages cap (default: relaywatch's)")
    ap.add_argument("--store", choices=("memory", "disk"), default="memory",
                    help="disk: window counts go to a database file too, like the daemon's")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        database = None
        with tempfile.TemporaryDirectory() as tmp:
            if args.store == "disk":
                database = os.path.join(tmp, "state.db")
            r = run(args.clients, args.scenario[0], args.max_keys, args.max_messages, database)
        print(json.dumps(r))
        return 0
    from relaywatch.core.correlate import Correlator
    from relaywatch.core.windows import MAX_KEYS

    max_keys = args.max_keys or MAX_KEYS
    max_messages = args.max_messages or Correlator().max_messages
    failed = False
    print(f"{'scenario':<10} {'clients':>9} {'lines':>9} {'s':>6} {'lines/s':>8} {'peak RSS':>9} {'RSS 1/2':>8} "
          f"{'RSS end':>8} {'window':>7} {'forgotten':>9} {'open msgs':>9}"
          + ("  db MiB" if args.store == "disk" else ""))
    for scenario in args.scenario or SCENARIOS:
        cmd = [sys.executable, __file__, "--child", "--clients", str(args.clients), "--scenario", scenario,
               "--store", args.store, *(["--max-keys", str(args.max_keys)] if args.max_keys else []),
               *(["--max-messages", str(args.max_messages)] if args.max_messages else [])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"{scenario}: failed\n{out.stderr}")
            failed = True
            continue
        r = json.loads(out.stdout)
        print(f"{scenario:<10} {r['clients']:>9,} {r['lines']:>9,} {r['seconds']:>6} {r['lines_per_s']:>8,} "
              f"{r['peak_rss_mib']:>7} M {r['rss_half_mib']:>6} M {r['rss_end_mib']:>6} M "
              f"{max(r['windows'].values()):>7,} {sum(r['evicted'].values()):>9,} {r['open_messages']:>9,}"
              + (f"  {r['db_mib']:.0f}" if r["db_mib"] is not None else ""))
        for d in r["decisions"]:
            print(f"    {' '.join(d)}")
        for w in r["warnings"]:
            print(f"    log: {w[:150]}")
        for p in check(r, max_keys, max_messages):
            print(f"    PROBLEM: {p}")
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
