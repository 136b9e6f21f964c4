"""What a window counter is checked against: every event it counted, with the bucket it went into."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from relaywatch.core.windows import WindowCounter

Live = list[tuple[int, str, int]]  # (bucket counted in, key, n)


def counted_live(c: WindowCounter, evs: Iterable[tuple[int, int, int]], nbuckets: int) -> Iterator[Live]:
    """Feed (bucket, key, n) events to `c` one at a time; after each, yield every event still in its
    window (one older than the window is not counted; a late one goes into the newest bucket)."""
    model: list[tuple[int, str, int]] = []
    for bucket, k, n in evs:
        latest = c.latest
        c.add(bucket, str(k), n)
        if bucket > latest - nbuckets:
            model.append((max(bucket, latest), str(k), n))
        yield [(b, key, m) for b, key, m in model if b > c.latest - c.nbuckets]
