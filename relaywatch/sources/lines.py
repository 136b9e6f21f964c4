"""The common shape of live sources: batches of complete lines with the exact position after
the last one, and the splitter that cuts a byte stream into bounded lines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

CHUNK = 65536


@dataclass(frozen=True)
class Batch:
    """Complete lines, and where a new follower must start to read the next one."""

    lines: list[str]
    position: dict[str, Any]


class Follower(Protocol):
    """What the daemon loop reads: FileFollower or JournalFollower."""

    source_name: str  # the key of its position in the state database

    def read(self, max_lines: int, timeout: float) -> Batch: ...

    def close(self) -> None: ...


class LineSplitter:
    """Cuts a byte stream into lines, keeping at most `cap` bytes of any line so
    that a writer that never sends a newline cannot make us grow."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.dropped = 0  # bytes of the unfinished line beyond `cap`, read but not kept

    def pending(self) -> int:
        """Bytes read since the last complete line handed out."""
        return len(self.buf) + self.dropped

    def feed(self, data: bytes) -> None:
        self.buf += data

    def take(self, n: int) -> tuple[list[bytes], int]:
        """Up to n complete lines (without newline, cut to `cap`) and the bytes they used."""
        out: list[bytes] = []
        used = start = 0
        while len(out) < n:
            end = self.buf.find(b"\n", start)
            if end < 0:
                break
            out.append(bytes(self.buf[start:min(end, start + self.cap)]))
            used += end + 1 - start + self.dropped
            self.dropped = 0
            start = end + 1
        del self.buf[:start]
        if len(self.buf) > self.cap and b"\n" not in self.buf:
            self.dropped += len(self.buf) - self.cap
            del self.buf[self.cap:]
        return out, used
