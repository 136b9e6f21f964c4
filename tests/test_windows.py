import ipaddress
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaywatch.core.grouping import network_of, networks_of
from relaywatch.core.windowcap import fewest
from relaywatch.core.windows import WindowCounter
from support.window_model import counted_live


def test_counts_slide_out_of_the_window():
    c = WindowCounter(nbuckets=3)
    assert c.add(10, "a") == 1
    assert c.add(11, "a") == 2
    assert c.add(12, "a") == 3
    assert c.add(13, "a") == 3  # bucket 10 left the window
    assert c.add(20, "b") == 1
    assert c.totals == {"b": 1}


def test_an_event_older_than_the_window_is_not_counted():
    c = WindowCounter(nbuckets=2)
    c.add(10, "a")
    assert c.add(5, "a") == 1


def test_a_late_event_inside_the_window_counts_in_the_newest_bucket():
    c = WindowCounter(nbuckets=3)
    c.add(10, "a")
    c.add(11, "b")
    assert c.add(10, "a") == 2
    c.add(13, "x")  # bucket 10 leaves; the late "a" was counted in bucket 11
    assert c.totals.get("a") == 1


def test_groups_keep_totals_and_distinct_keys():
    c = WindowCounter(nbuckets=2, group=lambda ip: ip.rsplit(".", 1)[0])
    for bucket, ip in [(1, "10.0.0.1"), (1, "10.0.0.1"), (1, "10.0.0.2"), (2, "10.0.0.3"), (2, "10.0.1.1")]:
        c.add(bucket, ip)
    assert c.group_totals == {"10.0.0": 4, "10.0.1": 1}
    assert c.group_keys == {"10.0.0": 3, "10.0.1": 1}
    c.add(3, "10.0.0.3")  # bucket 1 leaves
    assert c.group_totals == {"10.0.0": 2, "10.0.1": 1}
    assert c.group_keys == {"10.0.0": 1, "10.0.1": 1}
    c.add(5, "10.9.9.9")
    assert c.group_totals == {"10.9.9": 1} and c.group_keys == {"10.9.9": 1} and len(c) == 1


def test_keys_without_a_group_are_counted_but_not_grouped():
    c = WindowCounter(nbuckets=2, group=lambda ip: None)
    assert c.add(1, "192.168.0.10") == 1
    assert c.group_totals == {} and c.group_keys == {}


# --- one window, several groupings: what the rules of one dimension and length share ----------------

events = st.lists(st.tuples(st.integers(0, 30), st.integers(0, 60), st.integers(1, 3)), max_size=300)


def narrow(k: str) -> str | None:
    return None if int(k) % 7 == 0 else f"n{int(k) % 12}"


def wide(k: str) -> str | None:
    return None if int(k) % 7 == 0 else f"w{int(k) % 12 % 3}"  # every narrow group inside one wide group


def shared(nbuckets: int, cap: int) -> WindowCounter:
    return WindowCounter(nbuckets, max_keys=cap, groups=lambda k: (narrow(k), wide(k)), ngroups=2, spreads=[(0, 1)])


@settings(max_examples=300, deadline=None)
@given(events, st.integers(1, 8))
def test_a_shared_window_counts_what_one_counter_per_grouping_counted(evs, nbuckets):
    """Below the cap, the shared window answers exactly what the counters it replaced answered: one per
    grouping, and one of narrow networks grouped by wide ones (distinct /24s per /16). That one only saw
    grouped keys, so its clock lagged behind a log that went back in time after an ungrouped key (a
    private client): compared while the log's time runs forward, when the rules read it."""
    c = shared(nbuckets, 10_000)
    plain, by_narrow, by_wide = WindowCounter(nbuckets), WindowCounter(nbuckets, narrow), WindowCounter(nbuckets, wide)
    spread = WindowCounter(nbuckets, lambda n: f"w{int(n[1:]) % 3}")
    forward = True
    for bucket, k, n in evs:
        forward = forward and bucket >= c.latest
        key = str(k)
        if narrow(key) is not None:
            spread.add(bucket, narrow(key) or "", n)
        assert c.add(bucket, key, n) == plain.add(bucket, key, n) == by_narrow.add(bucket, key, n) \
            == by_wide.add(bucket, key, n) == c.last_total
        assert c.last_groups == (by_narrow.last_group, by_wide.last_group)
        assert c.totals == plain.totals
        assert (c.groupings[0].totals, c.groupings[0].keys) == (by_narrow.group_totals, by_narrow.group_keys)
        assert (c.groupings[1].totals, c.groupings[1].keys) == (by_wide.group_totals, by_wide.group_keys)
        if forward and narrow(key) is not None:
            assert c.spread(0, 1).counts == spread.group_keys


@pytest.mark.slow
@settings(max_examples=500, deadline=None)
@given(events, st.integers(4, 20), st.integers(1, 8))
def test_shared_window_cap_invariants(evs, cap, nbuckets):
    """At the cap: sizes stay under it; a grouping's events are exact until one of its own networks was
    forgotten whole (a narrower grouping forgetting its networks leaves their events to the wider one),
    never overcounted after; distinct narrow networks per wide one are those the narrow grouping holds and
    those it forgot whole whose last event is still in the window."""
    c = shared(nbuckets, cap)
    for live in counted_live(c, evs, nbuckets):
        assert len(c) <= cap and all(len(g.totals) <= cap and len(g.keys) <= cap for g in c.groupings)
        for grouping, fn in zip(c.groupings, (narrow, wide), strict=True):
            true_totals: dict[str, int] = defaultdict(int)
            true_keys: dict[str, set[str]] = defaultdict(set)
            for _, key, m in live:
                g = fn(key)
                if g is not None:
                    true_totals[g] += m
                    true_keys[g].add(key)
            for g, total in grouping.totals.items():
                assert total <= true_totals[g]
            if not grouping.groups_evicted:
                assert grouping.totals == dict(true_totals)
                for g, ks in true_keys.items():
                    assert len(ks) <= grouping.keys[g] <= len(ks) + c.evicted
        present: dict[str, int] = defaultdict(int)  # narrow networks held, and those forgotten whole at the cap
        for g in c.groupings[0].totals:  # until their last event slides out: they still count for their wide one
            present[f"w{int(g[1:]) % 3}"] += 1
        for b in c.buckets:
            for (kind, wide_group), m in b.residue.items():
                if kind >= 2:
                    present[wide_group.name] += m
        assert c.spread(0, 1).counts == dict(present)
        for key, total in c.totals.items():
            assert 0 < total <= sum(m for _, k2, m in live if k2 == key)
    c.add(c.latest + nbuckets + 1, "1")
    assert c.totals == {"1": 1} and c.groupings[0].totals == {"n1": 1} and c.groupings[1].keys == {"w1": 1}
    assert c.spread(0, 1).counts == {"w1": 1} and c.residue == 0 and c.bucket_sizes() == [1]


@pytest.mark.parametrize("size", [10, 1000, 5000])
def test_the_cap_picks_the_keys_a_full_sort_would_pick(size):
    totals = {f"k{i}": (i * 7919) % 13 + 1 for i in range(size)}
    for keep in ("k0", f"k{size - 1}", "k3"):
        for n in (1, size // 4, size // 2):
            ranked = [k for k in sorted(totals, key=totals.__getitem__) if k != keep]
            assert sorted(fewest(totals, n, keep)) == sorted(ranked[:n])


def test_a_rotating_slash16_is_blocked_while_a_botnet_of_other_networks_fills_the_window_to_its_cap():
    """Rules sharing a window share its key cap; the /24s forgotten whole at the cap must still count
    among their /16's distinct /24s until they would have slid out (they were taken off at once, and a
    /16 sending one mail per /24 beside a flood of other networks was never blocked)."""
    from relaywatch.core.policy import Detector
    from relaywatch.model import Relayed

    d = Detector(max_keys=400, never_block=())
    wide: list[tuple[str, int, int]] = []
    t, i = 1_700_000_000.0, 0
    for step in range(100):
        t += 10
        client = f"61.10.{step % 256}.{1 + step // 256}"  # one new /24 of 61.10/16 each step, one mail each
        fact = Relayed(t, f"A{step}", client, None, "a@x.test", "r@y.test", f"y{step}.test", "sent")
        wide += [(x.target, x.count, x.clients) for x in d.observe(fact, "").decisions if x.rule == "wide_subnet"]
        for _ in range(50):  # noise: a new client in a /16 of its own
            i += 1
            noise = f"{11 + i % 200}.{(i // 200) % 256}.{i % 7}.{i % 250 + 1}"
            d.observe(Relayed(t, f"N{i}", noise, None, f"n{i}@x.test", "r@z.test", f"z{i}.test", "sent"), "")
    assert d.evictions()["wide_subnet"] > 0  # the cap did bite
    assert wide[:1] == [("61.10.0.0/16", 30, 30)]


_ADDRESSES = st.one_of(
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.integers(0, 2**128 - 1).map(lambda n: ipaddress.IPv6Address(n).compressed),
    st.sampled_from(["2a00::1%eth0", "fe80::1%eth0", "::ffff:81.2.69.160", "81.2.69.160", "2a0b:4000:48::1"]),
)


@settings(max_examples=2000, deadline=None)
@given(_ADDRESSES)
def test_networks_named_by_number_are_written_as_network_of_writes_them(ip):
    """The windows name networks by number (a flood's new /64s are never written out): `label` writes
    what `network_of` answers, scoped addresses included, and the next network has another number."""
    pairs = ((24, 64), (16, 48), (8, 32))
    networks = networks_of(pairs)
    numbers = networks(ip)
    for i, (p4, p6) in enumerate(pairs):
        text = network_of(p4, p6)(ip)
        assert (numbers[i] is None) == (text is None)
        if text is not None:
            net = ipaddress.ip_network(text)
            assert networks.label(i, numbers[i]) == text
            if int(net.broadcast_address) + 1 < 2**net.max_prefixlen:
                following = net.broadcast_address + 1
                if following.is_global:
                    assert networks(following.compressed)[i] not in (None, numbers[i])
