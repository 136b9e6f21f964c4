"""The key cap of a window (windows.py): at most `max_keys` keys and leftovers of evicted keys in it.

Past the cap the quarter of keys with the fewest events goes; every grouping keeps what they added to
their group as leftovers ("residue") in the buckets they were counted in, until those slide out. When
the leftovers are too many, whole groups go, fewest events first, those of the narrowest grouping first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from relaywatch.core.windows import Bucket, Group, Key, WindowCounter

# What evicted keys left in a group, in the bucket they were counted in: (EVENTS, group) -> events,
# (GONE, group) -> keys whose last event was in this bucket; and (SPREAD + i, wide group) -> narrow
# groups of grouping i forgotten whole whose last event was in this bucket: they stay among the wide
# group's distinct narrow groups until then (a /24 evicted at the cap still counts for its /16).
EVENTS, GONE, SPREAD = 0, 1, 2
Residue = tuple[int, "Group"]


def shrink(c: WindowCounter, keep: str) -> None:
    """Back to 3/4 of the cap: first the quarter of keys with the fewest events (every grouping keeps
    their share in their group), then, if the leftovers are still too many (a flood spread over many
    networks), the networks with the fewest events, whole, those of the narrowest grouping first."""
    target = c.max_keys * 3 // 4
    totals = {key: k.total for key, k in c.keys.items()}
    _evict_keys(c, [c.keys[k] for k in fewest(totals, max(1, len(totals) // 4), keep)], -1)
    for i in range(len(c.groupings)):
        excess = len(c.keys) + c.residue - target
        if excess <= 0:
            break
        _evict_groups(c, i, excess, keep)


def _evict_keys(c: WindowCounter, victims: list[Key], forget: int) -> None:
    """Drop `victims`, leaving what they counted as residue in the groups of every grouping but `forget`."""
    for rec in victims:
        rec.dead = True
    last: dict[Key, Bucket] = {}
    for b in c.buckets:
        keys, ns = b.keys, b.ns
        kept: list[Key] = []
        kept_ns: list[int] = []
        for i, rec in enumerate(keys):
            if rec.dead:
                for g in rec.groups:
                    if g is not None and g.gi != forget:
                        _leave(c, b, (EVENTS, g), ns[i])
                last[rec] = b
            else:
                if rec.bucket == b.number:
                    rec.slot = len(kept)
                kept.append(rec)
                kept_ns.append(ns[i])
        if len(kept) < len(keys):
            b.keys, b.ns = kept, kept_ns  # new lists: a list keeps the room of its largest size
    for rec, b in last.items():
        for g in rec.groups:
            if g is not None and g.gi != forget:
                _leave(c, b, (GONE, g), 1)
    for rec in victims:
        del c.keys[rec.key]
    c.evicted += len(victims)


def _leave(c: WindowCounter, b: Bucket, residue_key: Residue, n: int) -> None:
    old = b.residue.get(residue_key)
    if old is None:
        c.residue += 1
        b.residue[residue_key] = n
    else:
        b.residue[residue_key] = old + n


def _evict_groups(c: WindowCounter, i: int, excess: int, keep: str) -> None:
    """Forget whole groups of grouping `i`, fewest events first, until `excess` entries are gone."""
    grouping = c.groupings[i]
    kept = c.keys.get(keep)
    keep_group = kept.groups[i] if kept is not None else None
    members: dict[Group, list[Key]] = {}
    for rec in c.keys.values():
        g = rec.groups[i]
        if g is not None:
            members.setdefault(g, []).append(rec)
    leftovers: dict[Group, int] = {}
    for b in c.buckets:
        for _, g in b.residue:
            if g.gi == i:
                leftovers[g] = leftovers.get(g, 0) + 1
    victims: list[Group] = []
    for g in sorted(grouping.groups.values(), key=lambda g: g.total):
        if excess <= 0:
            break
        if g is not keep_group:
            victims.append(g)
            excess -= len(members.get(g, ())) + leftovers.get(g, 0)
    gone = set(victims)
    newest: dict[Group, Bucket] = {}  # the bucket of each victim's last event or leftover, for the spreads
    if grouping.spreads:
        for b in c.buckets:
            for rec in b.keys:
                member = rec.groups[i]
                if member is not None and member in gone:
                    newest[member] = b
            for _, g in b.residue:
                if g in gone:
                    newest[g] = b
    _evict_keys(c, [rec for g in victims for rec in members.get(g, ())], i)
    for b in c.buckets:
        hit = [r for r in b.residue if r[1] in gone]
        for kind, g in hit:
            n = b.residue.pop((kind, g))
            c.residue -= 1
            if kind >= SPREAD:  # a wide group forgotten whole: its forgotten narrow groups go with it
                c.spread_leave(kind - SPREAD, g, n)
        if hit:
            b.residue = dict(b.residue)
    for g in victims:
        del grouping.groups[g.name]
        last = newest.get(g)
        for s in grouping.spreads:
            wide_name = g.names[s.wide]
            wide = None if wide_name is None else c.groupings[s.wide].groups.get(wide_name)
            if last is not None and wide is not None:
                _leave(c, last, (SPREAD + i, wide), 1)  # it leaves the spread when that bucket does
            else:
                s.leave(g.names)
    grouping.groups_evicted += len(victims)


def fewest(totals: dict[str, int], n: int, keep: str) -> list[str]:
    """The first `n` keys but `keep` of `sorted(totals, key=totals.get)` (stable: oldest first among equals),
    in the order of `totals`, found in linear time: the cap evicts a quarter of 50,000 keys at a time."""
    hist: dict[int, int] = {}
    for t in totals.values():
        hist[t] = hist.get(t, 0) + 1
    kept = totals.get(keep)
    if kept is not None:
        hist[kept] -= 1
    need = n
    cut = 0
    for v in sorted(hist):
        c = hist[v]
        if c >= need:
            cut = v
            break
        need -= c
    out = []
    for k, t in totals.items():
        if t < cut:
            if k != keep:
                out.append(k)
        elif t == cut and need and k != keep:
            out.append(k)
            need -= 1
    return out
