"""The replay report: bounded tables, what a block would have stopped, and the text and JSON an admin
(or a tool: the JSON shape is a contract) reads. The replays are real (tests/support/maillog.py)."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaywatch.config import Config
from relaywatch.replay import replay
from relaywatch.reports.report import BoundedCounter, Tally, stopped, to_json, to_text
from relaywatch.reports.timeline import keep_largest
from support.facts import relayed
from support.maillog import T0, Log, rcpts

FLOODER = "81.2.69.160"  # global addresses: the rules skip documentation ranges
NEIGHBOUR = "81.2.69.161"
CONFIG = Config(local_domains=("shop.example.org",))


@pytest.fixture
def flooded(tmp_path: Path):
    """A quiet customer, then a client relaying 90 recipients in 15 minutes (blocked at 60 in 10)."""
    log = Log()
    log.smtp(T0, "212.227.15.41", ["anna@web.de"], sender="shop@shop.example.org")
    for i in range(90):
        log.smtp(T0 + 60 + i * 10, FLOODER, [f"v{i}@hanmail.net"], sender="")
    log.smtp(T0 + 200, NEIGHBOUR, ["b@gmail.com"], sasl="journeypark")
    return log.replay(tmp_path, CONFIG)


def test_a_bounded_counter_is_exact_until_its_cap_then_keeps_the_heavy_hitters():
    c = BoundedCounter(cap=10)
    for i in range(10):
        c.add(f"k{i}", 1)
    assert len(c.counts) == 10 and not c.approximate
    c.add("heavy", 50)  # the 11th key: the smaller half goes
    assert c.approximate and len(c.counts) == 5 and c.counts["heavy"] == 50
    for i in range(100):
        c.add(f"spray{i}")
    assert len(c.counts) <= 10 and c.top(1) == [("heavy", 50)]
    exact = BoundedCounter()
    for key, n in (("b", 2), ("a", 2), ("c", 3)):
        exact.add(key, n)
    assert exact.top() == [("c", 3), ("a", 2), ("b", 2)] and not exact.approximate  # ties in key order


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(1, 4)), max_size=80), st.integers(0, 90))
def test_pruning_keeps_the_keys_and_the_order_the_stable_sort_kept(adds, keep):
    """Issue 15: the capped counters pruned by a full sort with a Python call per key. Their pruning
    now finds the floor instead; the survivors and their order (the next pruning's ties) stay the sort's."""
    counts: dict[str, int] = {}
    for key, n in adds:
        counts[f"k{key}"] = counts.get(f"k{key}", 0) + n
    expected = sorted(counts.items(), key=lambda kv: kv[1], reverse=True)[:keep]
    assert list(keep_largest(counts, keep).items()) == expected


def test_the_tally_names_the_null_sender_and_counts_sasl_users_only_when_there_are_some():
    tally = Tally()
    tally.add_relayed(relayed(T0, "81.2.69.160", sender=""))
    tally.add_relayed(relayed(T0, "81.2.69.160", sasl="journeypark", domain="hanmail.net"))
    tables = tally.tables()
    assert tables["senders"] == [("<>", 1), ("a@woodelf.org", 1)]
    assert tables["sasl_users"] == [("journeypark", 1)]
    assert tables["clients"] == [("81.2.69.160", 2)]
    assert tables["domains"] == [("hanmail.net", 1), ("x.example", 1)]
    assert tables["relay_denied"] == []


def test_a_block_says_how_much_of_its_targets_mail_came_after_it(flooded):
    [block] = [d for d in flooded.decisions if d.action == "block"]
    assert (block.kind, block.target, block.count) == ("client", FLOODER, 60)
    stop = stopped(flooded, block)
    assert stop is not None and stop.total == 90
    assert stop.after == 90 - 60  # the 60th was queued before its delivery line decided the block
    assert stop.text() == f"would have stopped {stop.after} of 90 relayed recipients, {100 * stop.after / 90:.1f} %"


def test_the_json_report_keeps_its_shape(flooded):
    doc = json.loads(to_json(flooded))
    assert {"lines", "unparsed", "messages", "relayed", "relay_denied", "local_relayed", "forged", "first_time",
            "last_time", "decisions", "top", "local_domains"} <= doc.keys()
    assert (doc["relayed"], doc["messages"], doc["unparsed"]) == (92, 92, 0)
    assert datetime.fromisoformat(doc["first_time"]).timestamp() == T0
    [block] = [d for d in doc["decisions"] if d["action"] == "block"]
    assert block["target"] == FLOODER and block["rule"] == "client" and block["count"] == 60
    assert block["stopped"] == {"after": 30, "of": 90}
    assert "to=<v59@hanmail.net>" in block["evidence"][-1]  # the line that reached the threshold
    assert doc["top"]["clients"][0] == {"key": FLOODER, "count": 90}
    assert doc["top"]["senders"][0] == {"key": "<>", "count": 90}
    assert doc["top"]["sasl_users"] == [{"key": "journeypark", "count": 1}]
    assert doc["local_domains"]["source"] == "config"


def test_the_text_report_says_would_on_a_dry_run_and_what_the_block_stopped_when_applied(flooded):
    dry = to_text(flooded)
    assert "Decisions (1) - dry run, nothing was changed:" in dry
    assert f"would block client      {FLOODER}" in dry
    assert "would have stopped 30 of 90 relayed recipients, 33.3 % (queued at or after the block, in this log)" in dry
    assert "Top relaying clients:\n        90  81.2.69.160\n         1  212.227.15.41\n         1  81.2.69.161" in dry
    assert "Top clients refused relay:\n  none" in dry
    applied = to_text(flooded, dry_run=False)
    assert "dry run" not in applied and "would" not in applied
    assert "      stopped 30 of 90 relayed recipients" in applied


def test_the_text_report_shows_the_first_unparsed_lines_and_cuts_long_evidence(tmp_path: Path):
    log = Log()
    for i in range(61):
        log.smtp(T0 + i, FLOODER, rcpts(1, "hanmail.net", tag=f"{'x' * 200}{i}"))
    path = tmp_path / "mail.log"
    path.write_text(log.text() + "not a syslog line at all\n")
    result = replay([str(path)], CONFIG)
    text = to_text(result)
    assert "First unparsed lines:\n  not a syslog line at all" in text
    evidence = [line for line in text.splitlines() if line.startswith("      | ")]
    assert evidence and all(len(line) == len("      | ") + 160 for line in evidence)


def test_within_sums_the_keys_in_a_network_as_in_network_does_and_follows_the_counts():
    import ipaddress

    from relaywatch.core.rules import in_network

    counter = BoundedCounter()
    for key, n in [("203.0.113.5", 3), ("203.0.113.77", 2), ("198.51.100.1", 4), ("2001:db8::1", 5),
                   ("2001:db8:1::9", 6), ("fe80::1%eth0", 1), ("unknown", 7)]:
        counter.add(key, n)
    nets = [ipaddress.ip_network(n) for n in ("203.0.113.0/24", "198.51.100.0/24", "2001:db8::/48", "2001:db8::/32",
                                              "fe80::/10", "0.0.0.0/0", "::/0", "192.0.2.0/24")]
    for net in nets:
        assert counter.within(net) == sum(n for key, n in counter.counts.items() if in_network(key, net)), net
    assert counter.within(nets[0]) == 5 and counter.within(nets[3]) == 11
    counter.add("203.0.113.9")  # a new count after a question: the next answer has it
    assert counter.within(nets[0]) == 6
    counter.counts = {"203.0.113.1": 1}  # replaced (a digest reading a stored day)
    assert counter.within(nets[0]) == 1
