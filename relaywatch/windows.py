"""Sliding-window counts in fixed buckets. Pure, O(1) amortised per event.

The store keeps the same buckets in SQLite, so a restarted daemon rebuilds
these counters from disk and resumes its windows where it stopped.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable


class WindowCounter:
    """Counts per key over the last `nbuckets` buckets.

    With `group` (for example ip -> its /24), it also keeps per-group totals
    and how many distinct keys of each group are in the window: rotating
    abuse spreads thin over many addresses of one network.
    """

    __slots__ = ("nbuckets", "buckets", "totals", "group", "group_totals", "group_keys", "latest")

    def __init__(self, nbuckets: int, group: Callable[[str], str | None] | None = None) -> None:
        self.nbuckets = max(1, nbuckets)
        self.buckets: deque[tuple[int, dict[str, int]]] = deque()
        self.totals: dict[str, int] = {}
        self.group = group
        self.group_totals: dict[str, int] = {}
        self.group_keys: dict[str, int] = {}
        self.latest = 0

    def add(self, bucket: int, key: str, n: int = 1) -> int:
        """Count `n` for `key`; returns the key's total in the window."""
        if bucket > self.latest:
            self.latest = bucket
            self._expire(bucket)
        elif bucket <= self.latest - self.nbuckets:
            return self.totals.get(key, 0)  # older than the window: nothing to count
        if not self.buckets or self.buckets[-1][0] < bucket:
            self.buckets.append((bucket, {}))
        counts = self.buckets[-1][1]
        counts[key] = counts.get(key, 0) + n
        total = self.totals.get(key, 0)
        if self.group is not None:
            g = self.group(key)
            if g is not None:
                self.group_totals[g] = self.group_totals.get(g, 0) + n
                if total == 0:
                    self.group_keys[g] = self.group_keys.get(g, 0) + 1
        total += n
        self.totals[key] = total
        return total

    def _expire(self, now: int) -> None:
        oldest = now - self.nbuckets
        while self.buckets and self.buckets[0][0] <= oldest:
            _, counts = self.buckets.popleft()
            for key, n in counts.items():
                left = self.totals[key] - n
                if left:
                    self.totals[key] = left
                else:
                    del self.totals[key]
                if self.group is not None:
                    g = self.group(key)
                    if g is not None:
                        self._drop_from_group(g, n, gone=not left)

    def _drop_from_group(self, g: str, n: int, gone: bool) -> None:
        left = self.group_totals[g] - n
        if left:
            self.group_totals[g] = left
        else:
            del self.group_totals[g]
        if gone:
            keys = self.group_keys[g] - 1
            if keys:
                self.group_keys[g] = keys
            else:
                del self.group_keys[g]

    def __len__(self) -> int:
        return len(self.totals)
