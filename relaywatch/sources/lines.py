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
        self._cap_unfinished()
        return out, used

    def _cap_unfinished(self) -> None:
        if len(self.buf) > self.cap and b"\n" not in self.buf:
            self.dropped += len(self.buf) - self.cap
            del self.buf[self.cap:]

    def take_text(self, n: int, max_chars: int) -> tuple[list[str], int]:
        """`take`, decoded (UTF-8, bad bytes replaced) and cut to `max_chars` characters. Lines that
        fit `cap` are decoded and split as one block (a newline is never part of a UTF-8 sequence,
        so this is what decoding each line gives): the file follower's per-line work."""
        buf = self.buf
        last = buf.rfind(b"\n")
        if last < 0 or buf.count(b"\n", 0, last) >= n:
            return self._decoded(n, max_chars)
        region = bytes(buf[:last])
        out = region.decode("utf-8", "replace").split("\n")
        longest = max(map(len, out))  # characters; a line of more than `cap` bytes has more than cap / 4
        if longest * 4 > self.cap and max(map(len, region.split(b"\n"))) > self.cap:
            return self._decoded(n, max_chars)
        if longest > max_chars:
            out = [line[:max_chars] for line in out]
        used = last + 1 + self.dropped
        self.dropped = 0
        del buf[:last + 1]
        self._cap_unfinished()
        return out, used

    def _decoded(self, n: int, max_chars: int) -> tuple[list[str], int]:
        raw, used = self.take(n)
        return [line.decode("utf-8", "replace")[:max_chars] for line in raw], used

