"""Resource exhaustion: distinct clients, senders and queue ids without end, and enormous lines.

Memory must stay bounded, the caps must say so in the log once, and detection must keep
working: the subnet rules still see a /64 or /48 flood, and a heavy client is still blocked.
bench/flood.py runs the same floods with a million clients.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaywatch.config import Config
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.core.windows import WindowCounter
from relaywatch.engine import Pipeline
from relaywatch.sources import files as sources
from relaywatch.sources.follow import FileFollower
from relaywatch.store.sqlite import Store
from support.window_model import counted_live

BENCH = Path(__file__).parent.parent / "bench" / "flood.py"
_spec = importlib.util.spec_from_file_location("flood", BENCH)
flood = sys.modules["flood"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flood)  # type: ignore[union-attr]


# --- the million-client flood, at 100,000 -------------------------------------------------


@pytest.mark.slow
def test_100k_distinct_ipv6_clients_in_a_48_stay_bounded_and_are_caught():
    """Every client new, 65,536 /64s, no queue id ever finishes; caps at 20,000 so they bite hard."""
    out = subprocess.run([sys.executable, str(BENCH), "--child", "--clients", "100000", "--scenario", "relay-48",
                          "--max-keys", "20000", "--max-messages", "20000"],
                         capture_output=True, text=True, check=True, timeout=300)
    r = json.loads(out.stdout)
    print(f"\n100k distinct IPv6 clients: {r['lines']:,} lines in {r['seconds']} s, peak RSS {r['peak_rss_mib']} MiB"
          f" (halfway {r['rss_half_mib']}), largest window {max(r['windows'].values()):,} keys,"
          f" {sum(r['evicted'].values()):,} keys forgotten, {r['open_messages']:,} open messages")
    assert flood.check(r, 20_000, 20_000) == []
    assert r["peak_rss_mib"] < 300  # measured ~110 MiB; the uncapped pipeline took ~130 MiB at 100k, 670 at 1M
    assert r["messages_forgotten"] >= 80_000
    capped = [w for w in r["warnings"] if "distinct keys in its window" in w]
    assert sorted(w.split()[1].rstrip(":") for w in capped) == sorted(
        name for name, n in r["evicted"].items() if n)  # each rule says it once
    assert sum("messages open at once" in w for w in r["warnings"]) == 1


def run_in_process(n: int, scenario: str, max_keys: int) -> dict:
    return flood.run(n, scenario, max_keys=max_keys, max_messages=max_keys)


@pytest.mark.slow
def test_distinct_senders_and_destinations_are_capped_and_the_64_is_caught():
    r = run_in_process(20_000, "relay-64", 5_000)
    assert flood.check(r, 5_000, 5_000) == []
    assert r["evicted"]["sender"] > 0 and r["evicted"]["destination"] > 0
    assert r["windows"]["sender"] <= 5_000 and r["windows"]["destination"] <= 5_000


@pytest.mark.slow
def test_relay_probes_from_distinct_clients_are_capped():
    r = run_in_process(20_000, "probe", 5_000)
    assert flood.check(r, 5_000, 5_000) == []
    assert r["windows"]["relay_probe"] <= 5_000 and r["evicted"]["relay_probe"] >= 15_000


def test_queue_ids_that_never_finish_are_forgotten_in_the_database_too(tmp_path):
    store = Store(tmp_path / "state.db")
    pipeline = Pipeline(Config(), store, persist_messages=True)
    pipeline.correlator.max_messages = 1000
    parser = LineParser(YearResolver(2026))
    for i, line in enumerate(flood.lines(5000, "relay-48")):
        if "client=" in line:  # only the client= line: the message never gets further
            pipeline.feed(line, parser)
        if i % 500 == 0:
            pipeline.flush()
    pipeline.flush()
    assert len(pipeline.correlator) == 1000
    assert store.db.execute("SELECT count(*) FROM open_messages").fetchone()[0] == 1000
    store.close()


# --- the window cap -------------------------------------------------------------------------


def test_the_cap_forgets_the_smallest_keys_and_keeps_the_heavy_ones():
    c = WindowCounter(nbuckets=60, max_keys=100)
    for i in range(30):
        for _ in range(5):
            c.add(1, f"heavy{i}")
    for i in range(1000):
        c.add(2, f"light{i}")
    assert len(c) <= 100 and c.evicted >= 900
    assert all(c.totals[f"heavy{i}"] == 5 for i in range(30))
    assert "light999" in c.totals  # the newest of equals stays
    c.add(100, "x")
    assert c.totals == {"x": 1} and len(c.buckets) == 1


def test_a_network_keeps_its_events_and_clients_when_its_addresses_are_forgotten():
    c = WindowCounter(nbuckets=3, group=lambda ip: ip.rsplit(":", 1)[0], max_keys=10)
    for i in range(100):
        c.add(1 + i // 50, f"net:{i}")
    assert len(c) <= 10
    assert c.group_totals == {"net": 100} and c.group_keys == {"net": 100}
    c.add(4, "other:1")  # bucket 1 leaves the window
    assert c.group_totals == {"net": 50, "other": 1} and c.group_keys["net"] == 50
    c.add(9, "other:1")  # everything leaves: nothing is left behind
    assert c.group_totals == {"other": 1} and c.group_keys == {"other": 1}
    assert c.bucket_sizes() == [1]


def test_too_many_networks_forget_the_smallest_networks_whole():
    c = WindowCounter(nbuckets=10, group=lambda ip: ip.rsplit(":", 1)[0], max_keys=50)
    for i in range(80):
        c.add(1, "big:" + str(i))
    for i in range(500):
        c.add(2, f"n{i}:1")
    assert len(c.group_keys) <= 50 and len(c.group_totals) <= 50 and len(c) <= 50
    assert c.group_totals["big"] == 80
    c.add(50, "z:1")
    assert c.group_totals == {"z": 1} and c.group_keys == {"z": 1} and c.totals == {"z:1": 1}


events = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 40), st.integers(1, 3)), max_size=300)


@pytest.mark.slow
@settings(max_examples=1000, deadline=None)
@given(events, st.integers(4, 20), st.integers(1, 8), st.integers(1, 12))
def test_window_cap_invariants(evs, cap, nbuckets, ngroups):
    """Against a model without a cap (late events included): sizes stay under the cap; a network's
    events are never overcounted and, until a network had to be forgotten whole, exact, with its
    distinct clients never undercounted; a key's total is never overcounted; nothing outlives the
    window."""
    c = WindowCounter(nbuckets, group=lambda k: str(int(k) % ngroups), max_keys=cap)
    for live in counted_live(c, evs, nbuckets):
        assert len(c) <= cap and len(c.group_keys) <= cap and len(c.group_totals) <= cap
        true_totals: dict[str, int] = defaultdict(int)
        true_keys: dict[str, set[str]] = defaultdict(set)
        for _, key, m in live:
            true_totals[str(int(key) % ngroups)] += m
            true_keys[str(int(key) % ngroups)].add(key)
        for g, total in c.group_totals.items():
            assert total <= true_totals[g]
        if not c.groups_evicted:  # whole networks forgotten: their counts are no longer exact
            assert c.group_totals == dict(true_totals)
            for g, ks in true_keys.items():
                assert len(ks) <= c.group_keys[g] <= len(ks) + c.evicted
        for key, total in c.totals.items():
            assert 0 < total <= sum(m for _, k2, m in live if k2 == key)
    c.add(c.latest + nbuckets + 1, "0")
    assert c.totals == {"0": 1} and c.group_totals == {"0": 1} and c.group_keys == {"0": 1}
    assert c.bucket_sizes() == [1]


# --- enormous lines -------------------------------------------------------------------------


def test_an_enormous_line_is_refused_at_once():
    pipeline = Pipeline(Config(), Store(None), persist_counts=False)
    line = "Nov 27 06:40:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: " + "<" * 10_000_000
    assert pipeline.feed(line, LineParser(YearResolver(2026))) == ()
    assert pipeline.totals.unparsed == 1 and pipeline.totals.unparsed_samples == [line[:300]]


def test_the_live_file_source_keeps_at_most_a_few_kib_of_a_line_without_end(tmp_path):
    """A crashed host leaves megabytes of NUL bytes with no newline in the log (or a writer never ends a line)."""
    log = tmp_path / "mail.log"
    log.write_bytes(b"")
    follower = FileFollower(str(log), None, poll_s=0.1)
    try:
        with open(log, "ab") as f:
            f.writelines(b"\0" * (1 << 20) for _ in range(32))
            f.write(b"\nNov 27 06:40:00 mx postfix/qmgr[2]: 4F1C52A0B3: removed\n")
        tracemalloc.start()
        lines: list[str] = []
        deadline = time.monotonic() + 10
        while len(lines) < 2 and time.monotonic() < deadline:
            lines += follower.read(100, timeout=0.2).lines
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    finally:
        follower.close()
    assert [len(line) <= sources.MAX_LINE for line in lines] == [True, True]
    assert lines[1].endswith("4F1C52A0B3: removed")
    print(f"\n32 MiB line without a newline: follower peak {peak / 2**20:.2f} MiB")
    assert peak < 4 << 20


def test_replay_keeps_at_most_a_few_kib_of_a_line_without_end(tmp_path):
    log = tmp_path / "mail.log"
    with open(log, "wb") as f:
        f.write(b"\0" * (32 << 20) + b"\nNov 27 06:40:00 mx postfix/qmgr[2]: 4F1C52A0B3: removed\n")
    tracemalloc.start()
    lines = list(sources.read_lines(str(log)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    os.unlink(log)
    assert len(lines) == 2 and lines[1].endswith("removed")
    assert peak < 4 << 20, f"peak {peak / 2**20:.0f} MiB"


def test_engine_warns_once_per_cap():
    r = flood.run(3000, "probe", max_keys=500, max_messages=500)
    assert sum("rule relay_probe: more than 500 distinct keys" in w for w in r["warnings"]) == 1
    assert r["windows"]["relay_probe"] <= 500
