"""The timeline collector: counts per bin, bounded memory, thresholds, markers, the terminal chart."""

from __future__ import annotations

from functools import partial

import pytest

from relaywatch.core.grouping import network_of
from relaywatch.core.rules import DEFAULT_RULES
from relaywatch.model import Decision, RelayDenied
from relaywatch.reports import timeline as tl_mod
from relaywatch.reports.sparks import sparkline, text_block
from relaywatch.reports.timeline import Timeline
from support.facts import relayed as fact

T0 = 1_047_772_800.0  # 2003-03-16 00:00:00 UTC, a whole minute and hour

# This module's mail: one spammer's, deferred at hanmail.net.
relayed = partial(fact, sender="journeypark@hananet.net", domain="hanmail.net", status="deferred")


def test_counts_per_minute_overall_and_per_key():
    tl = Timeline()
    for t, client in [(0, "218.144.1.1"), (30, "218.144.1.1"), (59.9, "218.144.2.2"), (60, "218.144.1.1"),
                      (180, "192.168.0.10")]:
        tl.observe(relayed(T0 + t, client))
    tl.observe(RelayDenied(T0 + 125, "211.72.97.40", None))
    assert tl.span() == (T0, T0 + 240)
    assert tl.relayed() == [3, 1, 0, 1]
    assert tl.refused() == [0, 0, 1, 0]
    top = {s.label: s.values for s in tl.top("client")}
    assert top == {"218.144.1.1": [2, 1, 0, 0], "218.144.2.2": [1, 0, 0, 0], "192.168.0.10": [0, 0, 0, 1]}
    assert [(s.label, s.values) for s in tl.top("net:16/48")] == [("218.144.0.0/16", [3, 1, 0, 0])]
    assert [s.label for s in tl.top("net:24/64")] == ["218.144.1.0/24", "218.144.2.0/24"]
    assert tl.top("sender")[0].total == 5
    assert tl.top("relay_denied")[0].label == "211.72.97.40"


def test_networks_are_grouped_as_the_rules_group_them():
    tl = Timeline()
    ips = ["218.144.119.1", "2a00:1450:4001:82a::1b", "10.1.2.3", "fe80::1", "2001:db8::5"]
    for ip in ips:
        tl.observe(relayed(T0, ip))
    for p4, p6 in [(24, 64), (16, 48)]:
        group = network_of(p4, p6)
        expected = sorted(g for g in (group(ip) for ip in ips) if g)
        assert sorted(s.label for s in tl.top(f"net:{p4}/{p6}", 10)) == expected


@pytest.mark.slow
def test_a_flood_of_distinct_ipv6_clients_keeps_memory_bounded_and_the_heavy_hitter():
    tl = Timeline()
    heavy = "2a01:4f8:1:2::99"
    for i in range(200_000):
        client = heavy if i % 10 == 0 else f"2a02:{i >> 12 & 0xfff:x}:{i & 0xfff:x}:{i % 97:x}::1"
        tl.observe(relayed(T0 + i * 0.1, client, sender=f"s{i}@x{i}.example", domain=f"d{i}.example"))
    dims = len(tl.dims())
    cap = dims * (tl_mod.RANK_CAP + tl_mod.SERIES_KEYS) + tl_mod.STATUS_CAP
    assert tl.tracked_keys() <= cap
    top = tl.top("client", 1)[0]
    assert top.label == heavy and top.total >= 19_900
    assert sum(tl.relayed()) == 200_000


def test_a_long_span_switches_to_hourly_bins_and_keeps_the_counts():
    tl = Timeline()
    for i in range(4 * 24 * 6):  # four days, one every 10 minutes
        tl.observe(relayed(T0 + i * 600, "218.144.1.1"))
    assert tl.bin_s == 3600
    assert tl.relayed() == [6] * 96
    assert tl.top("client")[0].values == [6] * 96
    assert len(tl.relayed()) <= tl_mod.MAX_BINS


def test_thresholds_are_per_window_scaled_to_the_bin():
    tl = Timeline(DEFAULT_RULES)
    assert [(t.rule, t.action, t.per_bin) for t in tl.thresholds("client")] == [("client", "block", 6.0)]
    wide = tl.thresholds("net:16/48")
    assert [(t.rule, t.threshold, t.window_s, t.min_clients) for t in wide] == [
        ("wide_subnet", 30, 600, 8), ("slow_wide_subnet", 200, 10800, 12)]
    assert [t.rule for t in tl.thresholds("net:24/64")] == ["subnet", "slow_subnet"]
    assert tl.thresholds("sasl_user")[0].per_bin == 150 * 60 / 3600
    assert tl.thresholds("relay_denied")[0].rule == "relay_probe"
    for i in range(3 * 24):
        tl.observe(relayed(T0 + i * 3600, "218.144.1.1"))
    assert tl.bin_s == 3600 and tl.thresholds("sender")[0].per_bin == 600.0


def test_decisions_and_notes_become_markers_in_time_order():
    tl = Timeline()
    tl.observe(relayed(T0, "218.144.1.1"))
    tl.decision(Decision(T0 + 7200, "unblock", "subnet", "218.144.0.0/16", "manual", 0, 0))
    tl.decision(Decision(T0 + 92, "block", "subnet", "218.144.0.0/16", "wide_subnet", 60, 600, clients=26))
    markers = tl.markers()
    assert [(m.time, m.action, m.target) for m in markers] == [
        (T0 + 92, "block", "218.144.0.0/16"), (T0 + 7200, "unblock", "218.144.0.0/16")]
    assert markers[0].detail == "60 relayed recipients from 26 clients in 10 min"
    assert tl.span() == (T0, T0 + 7260)  # the axis reaches the unblock


def test_delivery_status_per_destination_domain():
    tl = Timeline()
    for i, status in enumerate(["deferred"] * 6 + ["sent"] * 3 + ["bounced"]):
        tl.observe(relayed(T0 + i, "218.144.1.1", domain="hanmail.net", status=status))
    for i in range(12):
        tl.observe(relayed(T0 + i, "192.168.0.10", domain="gmail.com", status="sent"))
    rows = {r.domain: r for r in tl.delivery()}
    assert (rows["hanmail.net"].relayed, rows["hanmail.net"].deferred, rows["hanmail.net"].bounced) == (10, 6, 1)
    assert rows["hanmail.net"].deferred_ratio == 0.6
    assert [r.domain for r in tl.most_deferred()] == ["hanmail.net"]


def test_sparkline_scales_to_the_peak_and_keeps_peaks_when_squeezed():
    assert sparkline([0, 1, 2, 4, 8], 10) == " ▁▂▄█"
    assert sparkline([0, 0, 9, 0, 0, 0], 3) == " █ "  # the busiest bin of each column
    assert sparkline([], 5) == "" and sparkline([0, 0], 5) == "  "
    assert len(sparkline(list(range(1000)), 40)) == 40


def test_text_block_shows_the_leaders_and_strips_terminal_escapes():
    tl = Timeline()
    for i in range(300):
        tl.observe(relayed(T0 + i * 12, f"218.144.{i % 20}.{i}", sender="\x1b[2Jevil@x.example"))
    tl.decision(Decision(T0 + 600, "block", "subnet", "218.144.0.0/16", "wide_subnet", 60, 600, clients=26))
    text = text_block(tl, width=30)
    assert "Relayed recipients per minute" in text
    assert "218.144.0.0/16" in text and "\x1b" not in text and "?[2Jevil@x.example" in text
    marks = next(line for line in text.splitlines() if "B block" in line)
    assert marks.rstrip().endswith("B") and marks.count("B") == 2  # the legend's and the block's
    assert text_block(Timeline()) == "Timeline: nothing relayed\n"
