"""Sliding-window counts in fixed buckets. Pure, O(1) amortised per event.

The store keeps the same buckets in SQLite, so a restarted daemon rebuilds
these counters from disk and resumes its windows where it stopped.

One window counts each key once for every grouping of it (an address's /24 and /16, say): the rules
that share a dimension and a window length share its per-key counts, and a grouping can also count
how many distinct groups of a narrower grouping each of its groups holds (/24s per /16).

Memory is bounded: a flood of distinct keys (IPv6 gives endless client
addresses) leaves at most `max_keys` keys, and leftovers, in a window. Past the
cap the keys with the fewest events go first; every grouping keeps what they
added to their network (events and distinct clients) until it slides out of the
window, so a /64 or /48 flood is still seen however many addresses it uses. When
the leftovers are too many (a flood spread over many networks), the networks
with the fewest events are forgotten whole, those of the narrowest grouping first;
what their keys added to the other groupings stays there as leftovers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

MAX_KEYS = 50_000  # per window; far above the distinct clients, senders or domains of real mail

# A bucket also holds, under these tuple keys (never a str key), what evicted keys left in a group:
# (_EVENTS, grouping, group, wides) -> events, (_GONE, grouping, group, wides) -> keys whose last event
# was in this bucket; `wides`: the group's group in each grouping its spreads count it into.
_EVENTS, _GONE = 0, 1
Groups = tuple[str | None, ...]
_Residue = tuple[int, int, str, Groups]
_Counts = dict[str | _Residue, int]
_EMPTY: dict[str, int] = {}


class Spread:
    """Distinct groups of the `narrow` grouping in each group of the `wide` one, in the window."""

    __slots__ = ("counts", "narrow", "wide")

    def __init__(self, narrow: int, wide: int) -> None:
        self.narrow = narrow
        self.wide = wide
        self.counts: dict[str, int] = {}


class Grouping:
    """Per group: events (`totals`) and distinct keys (`keys`) in the window; `spreads`: where it is the narrow one."""

    __slots__ = ("groups_evicted", "keys", "spreads", "totals")

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.keys: dict[str, int] = {}
        self.spreads: list[Spread] = []
        self.groups_evicted = 0

    def wides(self, groups: Groups) -> Groups:
        return tuple(groups[s.wide] for s in self.spreads)


class WindowCounter:
    """Counts per key over the last `nbuckets` buckets.

    With `group` (for example ip -> its /24), it also keeps per-group totals
    and how many distinct keys of each group are in the window: rotating
    abuse spreads thin over many addresses of one network. With `groups` (key ->
    one group per grouping, `ngroups` of them) it keeps that for each grouping, and
    `spreads` ((narrow, wide) grouping indexes) count distinct narrow groups per wide group.
    `evicted` counts keys dropped at the cap; once it is > 0, per-key totals are lower
    bounds and distinct keys per group upper bounds. A grouping's `groups_evicted` counts
    its groups forgotten whole: until then, its group totals are exact.
    """

    __slots__ = (
        "buckets",
        "evicted",
        "group_of",
        "groupings",
        "groups_fn",
        "last_groups",
        "last_total",
        "latest",
        "max_keys",
        "nbuckets",
        "residue",
        "totals",
    )

    def __init__(self, nbuckets: int, group: Callable[[str], str | None] | None = None,
                 max_keys: int = MAX_KEYS, groups: Callable[[str], Groups] | None = None, ngroups: int = 0,
                 spreads: Sequence[tuple[int, int]] = ()) -> None:
        self.nbuckets = max(1, nbuckets)
        self.buckets: deque[tuple[int, _Counts]] = deque()
        self.totals: dict[str, int] = {}
        if group is not None:
            one = group
            groups, ngroups = (lambda key: (one(key),)), 1
        self.groups_fn = groups
        self.groupings = tuple(Grouping() for _ in range(ngroups if groups is not None else 0))
        for narrow, wide in spreads:
            self.groupings[narrow].spreads.append(Spread(narrow, wide))
        # each key in the window -> its groups, found once when it entered (a flood's addresses are read
        # again nowhere: expiry and eviction of a key hours later would re-read it)
        self.group_of: dict[str, Groups] = {}
        self.latest = 0
        self.max_keys = max(4, max_keys)
        self.evicted = 0
        self.residue = 0  # residue entries in the buckets
        self.last_groups: Groups = ()  # the groups of the key add() counted last
        self.last_total = 0  # what add() returned last

    # the first grouping, for a counter built with `group`
    @property
    def group_totals(self) -> dict[str, int]:
        return self.groupings[0].totals if self.groupings else _EMPTY

    @property
    def group_keys(self) -> dict[str, int]:
        return self.groupings[0].keys if self.groupings else _EMPTY

    @property
    def groups_evicted(self) -> int:
        return sum(g.groups_evicted for g in self.groupings)

    @property
    def last_group(self) -> str | None:
        return self.last_groups[0] if self.last_groups else None

    def spread(self, narrow: int, wide: int) -> Spread:
        return next(s for s in self.groupings[narrow].spreads if s.wide == wide)

    def add(self, bucket: int, key: str, n: int = 1) -> int:
        """Count `n` for `key`; returns the key's total in the window."""
        totals = self.totals
        groupings = self.groupings
        groups: Groups = ()
        if groupings:
            groups = self.group_of[key] if key in totals else self.groups_fn(key)  # type: ignore[misc]
        self.last_groups = groups
        latest = self.latest
        if bucket > latest:
            self.latest = bucket
            self._expire(bucket)
        elif bucket <= latest - self.nbuckets:
            total = totals.get(key, 0)  # older than the window: nothing to count
            self.last_total = total
            return total
        buckets = self.buckets
        if not buckets or buckets[-1][0] < bucket:
            counts: _Counts = {}
            buckets.append((bucket, counts))
        else:
            counts = buckets[-1][1]
        counts[key] = counts.get(key, 0) + n
        total = totals.get(key, 0)
        if groupings:
            if not total:
                self.group_of[key] = groups
            for i in range(len(groups)):
                g = groups[i]
                if g is None:
                    continue
                grouping = groupings[i]
                group_totals = grouping.totals
                before = group_totals.get(g, 0)
                group_totals[g] = before + n
                if not before:
                    for s in grouping.spreads:
                        wide = groups[s.wide]
                        if wide is not None:
                            s.counts[wide] = s.counts.get(wide, 0) + 1
                if not total:
                    group_keys = grouping.keys
                    group_keys[g] = group_keys.get(g, 0) + 1
        total += n
        totals[key] = total
        self.last_total = total
        if total == n and len(totals) + self.residue > self.max_keys:
            self._shrink(key)
        return total

    def _expire(self, now: int) -> None:
        oldest = now - self.nbuckets
        buckets, totals, group_of = self.buckets, self.totals, self.group_of
        grouped = bool(self.groupings)
        while buckets and buckets[0][0] <= oldest:
            _, counts = buckets.popleft()
            for key, n in counts.items():
                if isinstance(key, tuple):  # what evicted keys left in their group
                    self.residue -= 1
                    if key[0] == _EVENTS:
                        self._drop(key[1], key[2], n, key[3])
                    else:
                        self._drop_keys(key[1], key[2], n)
                    continue
                left = totals[key] - n
                if left:
                    totals[key] = left
                    if grouped:
                        self._drop_all(group_of[key], n, False)
                else:
                    del totals[key]
                    if grouped:
                        self._drop_all(group_of.pop(key), n, True)

    def _drop_all(self, groups: Groups, n: int, gone: bool) -> None:
        groupings = self.groupings
        for i in range(len(groups)):
            g = groups[i]
            if g is None:
                continue
            grouping = groupings[i]
            group_totals = grouping.totals
            left = group_totals[g] - n
            if left:
                group_totals[g] = left
            else:
                del group_totals[g]
                for s in grouping.spreads:
                    self._unspread(s, groups[s.wide])
            if gone:
                self._drop_keys(i, g, 1)

    def _drop(self, i: int, g: str, n: int, wides: Groups) -> None:
        grouping = self.groupings[i]
        left = grouping.totals[g] - n
        if left:
            grouping.totals[g] = left
            return
        del grouping.totals[g]
        for s, wide in zip(grouping.spreads, wides, strict=True):
            self._unspread(s, wide)

    @staticmethod
    def _unspread(s: Spread, wide: str | None) -> None:
        if wide is None:
            return
        left = s.counts.get(wide, 0) - 1
        if left > 0:
            s.counts[wide] = left
        else:
            s.counts.pop(wide, None)

    def _drop_keys(self, i: int, g: str, n: int) -> None:
        group_keys = self.groupings[i].keys
        keys = group_keys[g] - n
        if keys:
            group_keys[g] = keys
        else:
            del group_keys[g]

    # --- the cap: at most max_keys keys and leftovers of evicted keys ----------------------

    def _shrink(self, keep: str) -> None:
        """Back to 3/4 of the cap: first the quarter of keys with the fewest events (every grouping keeps
        their share in their group), then, if the leftovers are still too many (a flood spread over many
        networks), the networks with the fewest events, whole."""
        target = self.max_keys * 3 // 4
        self._evict_keys(fewest(self.totals, max(1, len(self.totals) // 4), keep), -1)
        for i in range(len(self.groupings)):
            excess = len(self.totals) + self.residue - target
            if excess <= 0:
                break
            self._evict_groups(i, excess, keep)

    def _evict_keys(self, victims: list[str], forget: int) -> None:
        """Drop `victims`, leaving what they counted as residue in every grouping but `forget`."""
        group_of, groupings = self.group_of, self.groupings
        chosen = set(victims)
        last: dict[str, tuple[_Counts, Groups]] = {}
        shrunk = []
        for i, (_, counts) in enumerate(self.buckets):
            hit = [k for k in counts if isinstance(k, str) and k in chosen] if len(counts) < len(chosen) else \
                [k for k in victims if k in counts]
            for k in hit:
                n = counts.pop(k)
                if groupings:
                    groups = group_of[k]
                    for gi in range(len(groups)):
                        g = groups[gi]
                        if g is not None and gi != forget:
                            self._leave(counts, (_EVENTS, gi, g, groupings[gi].wides(groups)), n)
                    last[k] = (counts, groups)
            if len(hit) > len(counts):
                shrunk.append(i)
        for counts, groups in last.values():
            for gi in range(len(groups)):
                g = groups[gi]
                if g is not None and gi != forget:
                    self._leave(counts, (_GONE, gi, g, groupings[gi].wides(groups)), 1)
        for k in victims:
            del self.totals[k]
            group_of.pop(k, None)
        self.evicted += len(victims)
        self._compact(shrunk)

    def _compact(self, indexes: list[int]) -> None:
        """A dict keeps the room of its largest size: copy the buckets that lost most of theirs."""
        for i in indexes:
            b, counts = self.buckets[i]
            self.buckets[i] = (b, dict(counts))

    def _leave(self, counts: _Counts, residue_key: _Residue, n: int) -> None:
        old = counts.get(residue_key)
        if old is None:
            self.residue += 1
            counts[residue_key] = n
        else:
            counts[residue_key] = old + n

    def _evict_groups(self, i: int, excess: int, keep: str) -> None:
        """Forget whole groups of grouping `i`, fewest events first, until `excess` entries are gone."""
        grouping = self.groupings[i]
        group_of = self.group_of
        kept = group_of.get(keep)
        keep_group = kept[i] if kept is not None else None
        members: dict[str, list[str]] = {}
        wides: dict[str, Groups] = {}
        for k, groups in group_of.items():
            g = groups[i]
            if g is not None:
                members.setdefault(g, []).append(k)
                if g not in wides:
                    wides[g] = grouping.wides(groups)
        leftovers: dict[str, int] = {}
        for _, counts in self.buckets:
            for key in counts:
                if isinstance(key, tuple) and key[1] == i:
                    leftovers[key[2]] = leftovers.get(key[2], 0) + 1
                    wides.setdefault(key[2], key[3])
        victims: set[str] = set()
        for g in sorted(grouping.totals, key=grouping.totals.__getitem__):
            if excess <= 0:
                break
            if g != keep_group:
                victims.add(g)
                excess -= len(members.get(g, ())) + leftovers.get(g, 0)
        self._evict_keys([k for g in victims for k in members.get(g, ())], i)
        shrunk = []
        for b, (_, counts) in enumerate(self.buckets):
            hit = [key for key in counts if isinstance(key, tuple) and key[1] == i and key[2] in victims]
            for key in hit:
                self.residue -= 1
                del counts[key]
            if len(hit) > len(counts):
                shrunk.append(b)
        self._compact(shrunk)
        for g in victims:
            grouping.totals.pop(g, None)
            grouping.keys.pop(g, None)
            for s, wide in zip(grouping.spreads, wides.get(g, ()), strict=False):
                self._unspread(s, wide)
        grouping.groups_evicted += len(victims)

    def __len__(self) -> int:
        return len(self.totals)


def fewest(totals: dict[str, int], n: int, keep: str) -> list[str]:
    """The first `n` keys but `keep` of `sorted(totals, key=totals.get)` (stable: oldest first among equals),
    found in linear time: the cap evicts a quarter of 50,000 keys at a time."""
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
