"""Sliding-window counts in fixed buckets. Pure, O(1) amortised per event.

The store keeps the same buckets in SQLite, so a restarted daemon rebuilds
these counters from disk and resumes its windows where it stopped.

Memory is bounded: a flood of distinct keys (IPv6 gives endless client
addresses) leaves at most `max_keys` keys, and leftovers, in a window. Past the
cap the keys with the fewest events go first; a grouped counter keeps what they
added to their network (events and distinct clients) until it slides out of the
window, so a /64 or /48 flood is still seen however many addresses it uses. When
the leftovers are too many (a flood spread over many networks), the networks
with the fewest events are forgotten whole.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

MAX_KEYS = 50_000  # per window; far above the distinct clients, senders or domains of real mail

# In a grouped counter a bucket also holds, under these tuple keys (never a str key), what
# evicted keys left in a group: (_EVENTS, group) -> events, (_GONE, group) -> keys whose
# last event was in this bucket.
_EVENTS, _GONE = 0, 1
_Residue = tuple[int, str]  # (_EVENTS|_GONE, group)
_Counts = dict[str | _Residue, int]


class WindowCounter:
    """Counts per key over the last `nbuckets` buckets.

    With `group` (for example ip -> its /24), it also keeps per-group totals
    and how many distinct keys of each group are in the window: rotating
    abuse spreads thin over many addresses of one network.
    `evicted` counts keys and groups dropped at the cap; once it is > 0, per-key
    totals are lower bounds and distinct keys per group upper bounds. `groups_evicted`
    counts the groups forgotten whole: until then, group totals are exact.
    """

    __slots__ = (
        "buckets",
        "evicted",
        "group",
        "group_keys",
        "group_of",
        "group_totals",
        "groups_evicted",
        "last_group",
        "latest",
        "max_keys",
        "nbuckets",
        "residue",
        "totals",
    )

    def __init__(self, nbuckets: int, group: Callable[[str], str | None] | None = None,
                 max_keys: int = MAX_KEYS) -> None:
        self.nbuckets = max(1, nbuckets)
        self.buckets: deque[tuple[int, _Counts]] = deque()
        self.totals: dict[str, int] = {}
        self.group = group
        self.group_totals: dict[str, int] = {}
        self.group_keys: dict[str, int] = {}
        # each key in the window -> its group, found once when it entered (a flood's addresses are read
        # again nowhere: expiry and eviction of a key hours later would re-read it)
        self.group_of: dict[str, str | None] = {}
        self.latest = 0
        self.max_keys = max(4, max_keys)
        self.evicted = 0
        self.groups_evicted = 0
        self.residue = 0  # (_EVENTS|_GONE, group) entries in the buckets
        self.last_group: str | None = None  # the group of the key add() counted last (None: none, or ungrouped)

    def add(self, bucket: int, key: str, n: int = 1) -> int:
        """Count `n` for `key`; returns the key's total in the window."""
        totals = self.totals
        group = self.group
        if group is None:
            g = None
        else:
            g = self.group_of[key] if key in totals else group(key)
        self.last_group = g
        latest = self.latest
        if bucket > latest:
            self.latest = bucket
            self._expire(bucket)
        elif bucket <= latest - self.nbuckets:
            return totals.get(key, 0)  # older than the window: nothing to count
        buckets = self.buckets
        if not buckets or buckets[-1][0] < bucket:
            counts: _Counts = {}
            buckets.append((bucket, counts))
        else:
            counts = buckets[-1][1]
        counts[key] = counts.get(key, 0) + n
        total = totals.get(key, 0)
        if group is not None and not total:
            self.group_of[key] = g
        if g is not None:
            group_totals = self.group_totals
            group_totals[g] = group_totals.get(g, 0) + n
            if total == 0:
                self.group_keys[g] = self.group_keys.get(g, 0) + 1
        total += n
        totals[key] = total
        if total == n and len(totals) + self.residue > self.max_keys:
            self._shrink(key)
        return total

    def _expire(self, now: int) -> None:
        oldest = now - self.nbuckets
        while self.buckets and self.buckets[0][0] <= oldest:
            _, counts = self.buckets.popleft()
            for key, n in counts.items():
                if isinstance(key, tuple):  # what evicted keys left in their group
                    self.residue -= 1
                    if key[0] == _EVENTS:
                        self._drop_from_group(key[1], n, gone=False)
                    else:
                        self._drop_keys_from_group(key[1], n)
                    continue
                left = self.totals[key] - n
                if left:
                    self.totals[key] = left
                    g = self.group_of.get(key) if self.group is not None else None
                else:
                    del self.totals[key]
                    g = self.group_of.pop(key, None) if self.group is not None else None
                if g is not None:
                    self._drop_from_group(g, n, gone=not left)

    def _drop_from_group(self, g: str, n: int, gone: bool) -> None:
        left = self.group_totals[g] - n
        if left:
            self.group_totals[g] = left
        else:
            del self.group_totals[g]
        if gone:
            self._drop_keys_from_group(g, 1)

    def _drop_keys_from_group(self, g: str, n: int) -> None:
        keys = self.group_keys[g] - n
        if keys:
            self.group_keys[g] = keys
        else:
            del self.group_keys[g]

    # --- the cap: at most max_keys keys and leftovers of evicted keys ----------------------

    def _shrink(self, keep: str) -> None:
        """Back to 3/4 of the cap: first the quarter of keys with the fewest events (a grouped
        counter keeps their share in their group), then, if their leftovers are still too many
        (a flood spread over many networks), the networks with the fewest events, whole."""
        target = self.max_keys * 3 // 4
        ranked = sorted(self.totals, key=self.totals.__getitem__)  # stable: oldest first among equals
        n = max(1, len(ranked) // 4)
        victims = set(ranked[: n + 1])
        if keep in victims:
            victims.discard(keep)
        else:
            victims.discard(ranked[n])
        self._evict_keys(victims)
        if self.group is not None and len(self.totals) + self.residue > target:
            self._evict_groups(len(self.totals) + self.residue - target, self.group_of.get(keep))

    def _evict_keys(self, victims: set[str]) -> None:
        group, group_of = self.group, self.group_of
        last: dict[str, tuple[_Counts, str]] = {}
        shrunk = []
        for i, (_, counts) in enumerate(self.buckets):
            hit = [k for k in counts if k in victims] if len(counts) < len(victims) else \
                [k for k in victims if k in counts]
            for k in hit:
                n = counts.pop(k)
                g = group_of.get(k) if group is not None else None
                if g is not None:
                    self._leave(counts, (_EVENTS, g), n)
                    last[k] = (counts, g)
            if len(hit) > len(counts):
                shrunk.append(i)
        for counts, g in last.values():
            self._leave(counts, (_GONE, g), 1)
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

    def _evict_groups(self, excess: int, keep: str | None) -> None:
        """Forget whole groups, fewest events first, until `excess` entries are gone."""
        group_of = self.group_of
        members: dict[str, list[str]] = {}
        for k in self.totals:
            g = group_of[k]
            if g is not None:
                members.setdefault(g, []).append(k)
        leftovers: dict[str, int] = {}
        for _, counts in self.buckets:
            for key in counts:
                if isinstance(key, tuple):
                    leftovers[key[1]] = leftovers.get(key[1], 0) + 1
        victims: set[str] = set()
        for g in sorted(self.group_totals, key=self.group_totals.__getitem__):
            if excess <= 0:
                break
            if g != keep:
                victims.add(g)
                excess -= len(members.get(g, ())) + leftovers.get(g, 0)
        keys = {k for g in victims for k in members.get(g, ())}
        shrunk = []
        for i, (_, counts) in enumerate(self.buckets):
            hit = [key for key in counts if (key[1] in victims if isinstance(key, tuple) else key in keys)]
            for key in hit:
                if isinstance(key, tuple):
                    self.residue -= 1
                del counts[key]
            if len(hit) > len(counts):
                shrunk.append(i)
        self._compact(shrunk)
        for k in keys:
            del self.totals[k]
            del group_of[k]
        for g in victims:
            self.group_totals.pop(g, None)
            self.group_keys.pop(g, None)
        self.evicted += len(keys) + len(victims)
        self.groups_evicted += len(victims)

    def __len__(self) -> int:
        return len(self.totals)
