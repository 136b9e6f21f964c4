"""Decisions from facts: thresholds, subnets, allowlists, quiet periods, evidence."""

from __future__ import annotations

import ipaddress
from functools import partial

import pytest

from relaywatch import config
from relaywatch.core.policy import Detector
from relaywatch.core.rules import DEFAULT_RULES, Rule, counted
from relaywatch.model import ConfigError, LocalRelayed, RelayDenied
from support.facts import relayed as fact

# This module's mail: deferred at hanmail.net, from one spammer's address.
relayed = partial(fact, sender="spam@x.example", domain="hanmail.net", status="deferred")


def feed(detector: Detector, facts) -> list:
    out = []
    for f in facts:
        out.extend(detector.observe(f, f"line for {f.qid}").decisions)
    return out


def test_a_single_client_over_threshold_is_blocked_once_with_evidence():
    d = Detector()
    decisions = feed(d, [relayed(1000 + i, "203.0.113.5", qid=f"Q{i:08X}") for i in range(200)])
    blocks = [x for x in decisions if x.action == "block"]
    assert [(x.kind, x.target, x.count) for x in blocks] == [("client", "203.0.113.5", 60)]
    assert blocks[0].time == 1059 and blocks[0].window_s == 600
    assert blocks[0].evidence[-1] == "line for Q0000003B" and len(blocks[0].evidence) == 5
    assert blocks[0].sample_qids[-1] == "Q0000003B"


def test_below_threshold_in_every_window_is_never_blocked():
    d = Detector()
    # 50 per 10 minutes, for a day: a LAN host or a small newsletter
    decisions = feed(d, [relayed(i * 12.0, "192.168.0.10", qid=f"Q{i:08X}") for i in range(7200)])
    assert [x for x in decisions if x.kind == "client"] == []


def test_rotation_inside_a_16_is_blocked_as_a_subnet():
    d = Detector()
    facts = [relayed(1000 + i * 1.5, f"218.144.{100 + i % 20}.{(i * 37) % 250 + 1}", qid=f"Q{i:08X}")
             for i in range(400)]
    decisions = feed(d, facts)
    blocks = [x for x in decisions if x.action == "block"]
    assert blocks[0].kind == "subnet" and blocks[0].target == "218.144.0.0/16"
    assert blocks[0].clients >= 8 and blocks[0].count == 30
    assert blocks[0].time - 1000 < 120
    assert all(ipaddress.ip_address(f.client) in ipaddress.ip_network("218.144.0.0/16") for f in facts)
    # once the /16 is blocked, nothing inside it needs a block of its own
    assert [x.target for x in blocks] == ["218.144.0.0/16"]


def test_a_private_lan_is_never_blocked_as_a_subnet():
    d = Detector()
    decisions = feed(d, [relayed(1000 + i, f"192.168.0.{i % 50 + 1}", qid=f"Q{i:08X}") for i in range(200)])
    assert [x.kind for x in decisions if x.action == "block"] == []


def test_allowlisted_networks_are_never_blocked():
    d = Detector(allow_networks=[ipaddress.ip_network("203.0.113.0/24")])
    decisions = feed(d, [relayed(1000 + i, "203.0.113.5", qid=f"Q{i:08X}") for i in range(200)])
    assert [x for x in decisions if x.action == "block"] == []


def test_loopback_is_allowlisted_by_default():
    d = Detector()
    decisions = feed(d, [relayed(1000 + i, "127.0.0.1", qid=f"Q{i:08X}") for i in range(200)])
    assert [x for x in decisions if x.action == "block"] == []


def test_a_compromised_sasl_account_is_blocked_but_an_allowlisted_one_is_not():
    facts = [relayed(1000 + i * 5, f"198.51.100.{i % 200}", qid=f"Q{i:08X}", sasl="alice", domain=f"d{i}.example")
             for i in range(400)]
    blocks = [x for x in feed(Detector(), facts) if x.action == "block"]
    assert [(x.kind, x.target, x.count) for x in blocks] == [("sasl_user", "alice", 150)]
    assert [x for x in feed(Detector(allow_sasl_users=["alice"]), facts) if x.action == "block"] == []


def test_sender_and_destination_floods_are_alerts_not_blocks():
    facts = [relayed(1000 + i, f"10.{i % 250}.{i // 250}.1", qid=f"Q{i:08X}") for i in range(150)]
    decisions = feed(Detector(), facts)
    assert sorted((x.action, x.kind, x.target) for x in decisions) == [
        ("alert", "destination", "hanmail.net"), ("alert", "sender", "spam@x.example")]


def test_relay_probes_raise_an_alert_for_the_client():
    decisions = feed(Detector(), [RelayDenied(1000 + i, "192.0.2.66", None) for i in range(25)])
    assert [(x.action, x.kind, x.target, x.rule, x.count) for x in decisions] == [
        ("alert", "client", "192.0.2.66", "relay_probe", 20)]


def test_a_decided_target_stays_quiet_until_its_block_ends():
    d = Detector(block_s=3600)
    first = feed(d, [relayed(1000 + i, "203.0.113.5", qid=f"Q{i:08X}") for i in range(100)])
    again = feed(d, [relayed(5000 + i, "203.0.113.5", qid=f"Q{i:08X}") for i in range(100)])
    assert [x.time for x in first + again if x.kind == "client"] == [1059, 5059]


def test_restored_counts_continue_the_window():
    d = Detector()
    for bucket in range(100, 105):
        d.restore("client", bucket, "203.0.113.5", 11)
    decisions = feed(d, [relayed(1049 + i, "203.0.113.5", qid=f"Q{i:08X}") for i in range(10)])
    assert [(x.kind, x.count) for x in decisions if x.action == "block"] == [("client", 60)]


def test_rules_can_be_replaced():
    d = Detector(rules=[Rule("tiny", "client", "block", threshold=3, window_s=60)])
    decisions = feed(d, [relayed(1000 + i, "203.0.113.5", qid=f"Q{i:08X}") for i in range(5)])
    assert [(x.rule, x.count) for x in decisions] == [("tiny", 3)]
    assert {r.name for r in DEFAULT_RULES} >= {"client", "subnet", "wide_subnet", "sasl_user"}


def test_ipv6_rotation_inside_a_48_is_seen():
    facts = [relayed(1000 + i, f"2a02:8109:b240:{i}::1", qid=f"Q{i:08X}") for i in range(100)]
    blocks = [x for x in feed(Detector(), facts) if x.action == "block"]
    assert [(x.kind, x.target) for x in blocks] == [("subnet", "2a02:8109:b240::/48")]


def test_a_remembered_subnet_block_covers_its_clients():
    d = Detector()
    d.remember_block("subnet", "203.0.113.0/24", until=10_000)
    decisions = feed(d, [relayed(1000 + i, "203.0.113.5", qid=f"Q{i:08X}") for i in range(100)])
    assert [x for x in decisions if x.action == "block"] == []


def test_an_event_older_than_the_window_is_ignored_without_error():
    d = Detector()
    feed(d, [relayed(100_000 + i, "203.0.113.5", qid=f"Q{i:08X}") for i in range(3)])
    assert feed(d, [relayed(1000, "218.144.1.1", qid="Q00000063")]) == []  # a log that jumps back in time


# --- issue 12: who feeds which rule, the narrowest network, the host's own addresses ----------

def test_what_each_fact_counts_under():
    unauth = relayed(1, "203.0.113.5", qid="Q00000001")
    auth = relayed(1, "203.0.113.5", qid="Q00000002", sasl="alice")
    local = LocalRelayed(1, "Q1", 33, "www-data@shop.example.org", "a@gmail.com", "gmail.com", "sent")
    assert counted(unauth) == [("client", "203.0.113.5"), ("sender", "spam@x.example"), ("domain", "hanmail.net")]
    assert counted(auth) == [("sasl_user", "alice"), ("sender", "spam@x.example"), ("domain", "hanmail.net")]
    assert counted(auth, frozenset({"alice"})) == []
    assert counted(local) == [("uid", "33"), ("sender", "www-data@shop.example.org"), ("domain", "gmail.com")]
    assert counted(RelayDenied(1, "192.0.2.66", None)) == [("relay_denied", "192.0.2.66")]


def test_authenticated_relaying_never_feeds_the_client_and_subnet_rules():
    facts = [relayed(1000 + i, f"80.187.{i % 40}.{i % 7 + 1}", qid=f"Q{i:08X}", sasl=f"user{i % 30}",
                     domain=f"d{i % 50}.example")
             for i in range(1000)]
    assert [x for x in feed(Detector(), facts) if x.action == "block"] == []


def test_a_wider_rule_needs_clients_in_several_narrower_networks():
    rule = Rule("wide", "client", "block", threshold=30, window_s=600, prefix_v4=16, prefix_v6=48, min_clients=10,
                min_subnets=3)
    one_24 = [relayed(1000 + i, f"91.208.77.{i % 20 + 1}", qid=f"Q{i:08X}") for i in range(100)]
    assert feed(Detector([rule]), one_24) == []
    two_24s = [relayed(1000 + i, f"91.208.{77 + i % 2}.{i % 20 + 1}", qid=f"Q{i:08X}") for i in range(100)]
    assert feed(Detector([rule]), two_24s) == []
    three = [relayed(1000 + i, f"91.208.{77 + i % 3}.{i % 20 + 1}", qid=f"Q{i:08X}") for i in range(100)]
    [block] = feed(Detector([rule]), three)
    assert (block.target, block.count, block.time) == ("91.208.0.0/16", 30, 1029)


def test_a_16_and_a_24_crossing_at_once_block_only_the_16():
    narrow = Rule("narrow", "client", "block", threshold=9, window_s=600, prefix_v4=24, prefix_v6=64, min_clients=2)
    wide = Rule("wide", "client", "block", threshold=10, window_s=600, prefix_v4=16, prefix_v6=48, min_clients=2,
                min_subnets=2)
    facts = [relayed(990, "91.208.78.200", qid="Q00000063")]
    facts += [relayed(1000 + i, f"91.208.77.{i + 1}", qid=f"Q{i:08X}") for i in range(9)]
    decisions = feed(Detector([narrow, wide]), facts)  # the last fact takes the /24 to 9 and the /16 to 10
    assert [(x.rule, x.target) for x in decisions] == [("wide", "91.208.0.0/16")]


def test_the_hosts_own_address_is_never_blocked_nor_a_subnet_around_it_but_still_alerted_on():
    own = [ipaddress.ip_network("144.76.10.20/32")]
    d = Detector(never_block=own)
    facts = [relayed(1000 + i, "144.76.10.20" if i % 2 else f"144.76.{10 + i // 2 % 4}.{i % 50 + 1}", qid=f"Q{i:08X}")
             for i in range(800)]
    decisions = feed(d, facts)
    targets = [x.target for x in decisions if x.action == "block"]
    assert sorted(targets) == ["144.76.11.0/24", "144.76.12.0/24", "144.76.13.0/24"]
    assert {x.kind for x in decisions if x.action == "alert"} == {"sender", "destination"}


def test_a_local_submission_flood_is_an_alert_per_uid():
    facts = [LocalRelayed(1000 + i, f"Q{i}", 33, f"s{i}@x.example", f"r{i}@gmail.com", "gmail.com", "sent")
             for i in range(150)]
    decisions = feed(Detector(), facts)
    uid_decisions = [(x.action, x.kind, x.target, x.count) for x in decisions if x.kind == "uid"]
    assert uid_decisions == [("alert", "uid", "33", 100)]
    assert all(x.action == "alert" for x in decisions)


@pytest.mark.parametrize(("text", "error"), [
    ("[rules.x]\ndim = 'uid'\naction = 'block'\nthreshold = 1\nwindow = 60", "[rules.x] action"),
    ("[rules.wide_subnet]\nsubnet_prefix_v4 = 16", "[rules.wide_subnet] min_subnets"),
    ("[rules.client]\nmin_subnets = 2", "[rules.client] min_subnets"),
    ("[allow]\nown_addresses = ['mail.example.org']", "[allow] own_addresses"),
])
def test_new_rule_keys_are_checked(text, error):
    with pytest.raises(ConfigError) as exc:
        config.from_dict(__import__("tomllib").loads(text))
    assert error in str(exc.value)


def test_new_rule_keys_are_read_and_overrides_keep_the_rest():
    cfg = config.from_dict({"rules": {"slow_wide_subnet": {"threshold": 500, "min_subnets": 8},
                                      "local_submission": {"enabled": False}},
                            "allow": {"own_addresses": ["144.76.10.20", "2a01:4f8:c0c:1234::/64"]}})
    rules = {r.name: r for r in cfg.rules}
    slow = rules["slow_wide_subnet"]
    slow_values = (slow.threshold, slow.min_subnets, slow.min_clients, slow.window_s, slow.prefix_v4)
    assert slow_values == (500, 8, 12, 10800, 16)
    assert "local_submission" not in rules
    assert [n.compressed for n in cfg.own_addresses] == ["144.76.10.20/32", "2a01:4f8:c0c:1234::/64"]
