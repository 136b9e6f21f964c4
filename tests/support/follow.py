"""Reading a live source (support for test_follow and test_journal)."""

from __future__ import annotations

import time

from relaywatch.sources.lines import Follower


def collect(f: Follower, n: int, max_lines: int = 1000, deadline_s: float = 10.0) -> tuple[list[str], dict]:
    """Read until n lines came (or the deadline passed); the lines and the last position."""
    lines: list[str] = []
    position: dict = {}
    deadline = time.monotonic() + deadline_s
    while len(lines) < n and time.monotonic() < deadline:
        batch = f.read(max_lines, timeout=0.5)
        lines += batch.lines
        position = batch.position
    return lines, position
