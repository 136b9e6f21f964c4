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
what their keys added to the other groupings stays there as leftovers, and they still
count among their wider network's distinct narrower ones until their last event slides out.
The cap's eviction lives in windowcap.py.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence

from relaywatch.core.windowcap import EVENTS, GONE, SPREAD, Residue, shrink

MAX_KEYS = 50_000  # per window; far above the distinct clients, senders or domains of real mail

# a group's name: what the groups function answers (grouping.Networks: a network's number)
GroupId = int | str
Groups = tuple[GroupId | None, ...]
_NO_GROUPS: list[Group | None] = []  # shared by the keys of an ungrouped window: never changed


class Group:
    """One network (or other group) of one grouping, in the window: its events and distinct keys."""

    __slots__ = ("gi", "name", "names", "nkeys", "text", "total")

    def __init__(self, gi: int, name: GroupId, names: Groups) -> None:
        self.gi = gi
        self.name = name
        self.names = names  # the groups of the key that opened it: its wider groups, for the spreads
        self.total = 0
        self.nkeys = 0
        self.text = ""  # its name as a rule's target writes it, once one asked (policy)


class Key:
    """One key in the window: its total, its groups, and where its newest count is (bucket, slot)."""

    __slots__ = ("bucket", "dead", "groups", "key", "names", "slot", "total")

    def __init__(self, key: str, names: Groups, groups: list[Group | None]) -> None:
        self.key = key
        self.names = names
        self.groups = groups
        self.total = 0
        self.bucket = -1
        self.slot = 0
        self.dead = False


class Bucket:
    """The counts of one bucket: parallel lists (key, events), and what evicted keys left (`residue`)."""

    __slots__ = ("keys", "ns", "number", "residue")

    def __init__(self, number: int) -> None:
        self.number = number
        self.keys: list[Key] = []
        self.ns: list[int] = []
        self.residue: dict[Residue, int] = {}

    def __len__(self) -> int:
        return len(self.keys) + len(self.residue)


class _Cell:
    """One wide group's count of distinct narrow groups: changed in place, one dict lookup per change."""

    __slots__ = ("n",)

    def __init__(self) -> None:
        self.n = 1


class Spread:
    """Distinct groups of the `narrow` grouping in each group of the `wide` one, in the window."""

    __slots__ = ("cells", "narrow", "wide")

    def __init__(self, narrow: int, wide: int) -> None:
        self.narrow = narrow
        self.wide = wide
        self.cells: dict[GroupId, _Cell] = {}  # wide group -> its count (never 0: gone at 0)

    @property
    def counts(self) -> dict[GroupId, int]:
        """Wide group -> distinct narrow groups in it."""
        return {name: cell.n for name, cell in self.cells.items()}

    def count(self, wide: GroupId) -> int:
        cell = self.cells.get(wide)
        return 0 if cell is None else cell.n

    def enter(self, names: Groups) -> None:
        wide = names[self.wide]
        if wide is not None:
            cell = self.cells.get(wide)
            if cell is None:
                self.cells[wide] = _Cell()
            else:
                cell.n += 1

    def leave(self, names: Groups) -> None:
        wide = names[self.wide]
        if wide is None:
            return
        cell = self.cells.get(wide)
        if cell is None:
            return
        if cell.n > 1:
            cell.n -= 1
        else:
            del self.cells[wide]


class Grouping:
    """The groups of one grouping in the window; `spreads`: where it is the narrow one."""

    __slots__ = ("groups", "groups_evicted", "spreads")

    def __init__(self) -> None:
        self.groups: dict[GroupId, Group] = {}
        self.spreads: list[Spread] = []
        self.groups_evicted = 0

    @property
    def totals(self) -> dict[GroupId, int]:
        """Group -> events in the window."""
        return {name: g.total for name, g in self.groups.items()}

    @property
    def keys(self) -> dict[GroupId, int]:
        """Group -> distinct keys in the window."""
        return {name: g.nkeys for name, g in self.groups.items() if g.nkeys}


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
        "groupings",
        "groups_fn",
        "keys",
        "last",
        "last_groups",
        "last_total",
        "latest",
        "max_keys",
        "nbuckets",
        "newest",
        "peers",
        "residue",
    )

    def __init__(self, nbuckets: int, group: Callable[[str], str | None] | None = None,
                 max_keys: int = MAX_KEYS, groups: Callable[[str], Groups] | None = None, ngroups: int = 0,
                 spreads: Sequence[tuple[int, int]] = ()) -> None:
        self.nbuckets = max(1, nbuckets)
        self.buckets: deque[Bucket] = deque()
        self.newest: Bucket | None = None  # buckets[-1]
        # windows of other lengths grouping their keys the same way: a key entering this one is often
        # in one of them already, its groups read
        self.peers: list[WindowCounter] = []
        # each key in the window, with its groups found once when it entered (a flood's addresses are read
        # again nowhere: expiry and eviction of a key hours later would re-read them)
        self.keys: dict[str, Key] = {}
        if group is not None:
            one = group
            groups, ngroups = (lambda key: (one(key),)), 1
        self.groups_fn = groups
        self.groupings = tuple(Grouping() for _ in range(ngroups if groups is not None else 0))
        for narrow, wide in spreads:
            self.groupings[narrow].spreads.append(Spread(narrow, wide))
        self.latest = 0
        self.max_keys = max(4, max_keys)
        self.evicted = 0
        self.residue = 0  # residue entries in the buckets
        self.last: Key | None = None  # the key add() counted last (None: it was not in the window)
        self.last_groups: Groups = ()  # its groups
        self.last_total = 0  # what add() returned last

    @property
    def totals(self) -> dict[str, int]:
        """Key -> events in the window."""
        return {key: k.total for key, k in self.keys.items()}

    # the first grouping, for a counter built with `group`
    @property
    def group_totals(self) -> dict[GroupId, int]:
        return self.groupings[0].totals if self.groupings else {}

    @property
    def group_keys(self) -> dict[GroupId, int]:
        return self.groupings[0].keys if self.groupings else {}

    @property
    def groups_evicted(self) -> int:
        return sum(g.groups_evicted for g in self.groupings)

    @property
    def last_group(self) -> GroupId | None:
        return self.last_groups[0] if self.last_groups else None

    def spread(self, narrow: int, wide: int) -> Spread:
        return next(s for s in self.groupings[narrow].spreads if s.wide == wide)

    def add(self, bucket: int, key: str, n: int = 1) -> int:
        """Count `n` for `key`; returns the key's total in the window."""
        latest = self.latest
        if bucket > latest:
            self.latest = bucket
            self._expire(bucket)
        elif bucket <= latest - self.nbuckets:  # older than the window: nothing to count
            rec = self.keys.get(key)
            self.last = rec
            if rec is not None:
                self.last_groups = rec.names
                self.last_total = rec.total
            else:
                self.last_groups = self.groups_fn(key) if self.groups_fn is not None else ()
                self.last_total = 0
            return self.last_total
        newest = self.newest
        if newest is None or newest.number < bucket:
            newest = self.newest = Bucket(bucket)
            self.buckets.append(newest)
        rec = self.keys.get(key)
        if rec is None:
            rec = self._enter(key, n)
            fresh = True
        else:
            fresh = False
            for g in rec.groups:
                if g is not None:
                    g.total += n
        self.last = rec
        self.last_groups = rec.names
        if rec.bucket == newest.number:
            newest.ns[rec.slot] += n
        else:
            rec.bucket = newest.number
            rec.slot = len(newest.keys)
            newest.keys.append(rec)
            newest.ns.append(n)
        total = rec.total + n
        rec.total = total
        self.last_total = total
        if fresh and len(self.keys) + self.residue > self.max_keys:
            shrink(self, key)
        return total

    def _enter(self, key: str, n: int) -> Key:
        """A key new in the window, `n` counted into its groups (the caller counts the key's own total)."""
        groupings = self.groupings
        if not groupings:
            rec = Key(key, (), _NO_GROUPS)
        else:
            names: Groups | None = None
            for peer in self.peers:
                known = peer.last  # the detector counts a key into every window of its dimension in turn
                if known is None or known.key is not key:
                    known = peer.keys.get(key)
                if known is not None:
                    names = known.names
                    break
            if names is None:
                names = self.groups_fn(key) if self.groups_fn is not None else ()
            found: list[Group | None] = []
            for i in range(len(names)):
                name = names[i]
                if name is None:
                    found.append(None)
                    continue
                grouping = groupings[i]
                g = grouping.groups.get(name)
                if g is None:
                    g = Group(i, name, names)
                    grouping.groups[name] = g
                    for s in grouping.spreads:
                        s.enter(names)
                g.nkeys += 1
                g.total += n
                found.append(g)
            rec = Key(key, names, found)
        self.keys[key] = rec
        return rec

    def _expire(self, now: int) -> None:
        oldest = now - self.nbuckets
        buckets, keys = self.buckets, self.keys
        while buckets and buckets[0].number <= oldest:
            b = buckets.popleft()
            if not buckets:
                self.newest = None
            ns = b.ns
            for i, rec in enumerate(b.keys):
                n = ns[i]
                left = rec.total - n
                rec.total = left
                for g in rec.groups:
                    if g is not None:
                        g.total -= n
                        if not left:
                            g.nkeys -= 1
                        if not g.total:
                            self._vanish(g)
                if not left:
                    del keys[rec.key]
            for (kind, g), n in b.residue.items():  # what evicted keys left in their group
                self.residue -= 1
                if kind == EVENTS:
                    g.total -= n
                    if not g.total:
                        self._vanish(g)
                elif kind == GONE:
                    g.nkeys -= n
                else:
                    self.spread_leave(kind - SPREAD, g, n)

    def spread_leave(self, narrow: int, wide: Group, n: int) -> None:
        for s in self.groupings[narrow].spreads:
            if s.wide == wide.gi:
                for _ in range(n):
                    s.leave(wide.names)

    def _vanish(self, g: Group) -> None:
        grouping = self.groupings[g.gi]
        del grouping.groups[g.name]
        for s in grouping.spreads:
            s.leave(g.names)
    def bucket_sizes(self) -> list[int]:
        """Entries (keys and leftovers) in each bucket, oldest first."""
        return [len(b) for b in self.buckets]

    def __len__(self) -> int:
        return len(self.keys)
