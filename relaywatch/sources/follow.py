"""Live sources for `relaywatch run`: the common shape, and a growing log file.

Every follower hands out batches of complete lines with the exact position after
the last one. The daemon commits that position in the same transaction as the
counts the lines produced, so a restart from it neither loses nor repeats a line.
The journal follower lives in relaywatch.journal; watchdog only here.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import logging
import lzma
import os
import re
import threading
import time
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from watchdog.events import (
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from relaywatch.model import RelaywatchError
from relaywatch.sources import files as sources

log = logging.getLogger("relaywatch.follow")

CHUNK = 65536
HEAD_BYTES = 1024  # the identity of a log: a hash of its first line, or of its first KiB
# The names rotated copies of `maillog` get: numbered (logrotate: maillog.1, maillog.2.gz), dated
# (logrotate dateext: maillog-20251201[.gz], with dateformat maillog-2025120123 or -20251201-1764633600),
# and `postfix logrotate` (maillog_file): maillog.20251201-235959.gz.
_ROTATED_NAME = re.compile(r"[.\-_](?:(?P<n>\d{1,4})|(?P<date>\d{8}(?:[-_T]?\d{2,10})?))(?:\.(?:gz|xz|bz2))?")
ROTATED_STYLES = "maillog.1, maillog.2.gz, maillog-20251201(.gz), maillog.20251201-235959.gz"
_COMPRESSED_ERRORS = (OSError, EOFError, lzma.LZMAError)


@dataclass(frozen=True)
class Batch:
    """Complete lines, and where a new follower must start to read the next one."""

    lines: list[str]
    position: dict


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


def _text(line: bytes) -> str:
    return line.decode("utf-8", "replace")[:sources.MAX_LINE]


def _head(data: bytes) -> str | None:
    """Hash of the first line (or first KiB); None while that is still being written."""
    end = data.find(b"\n")
    if end >= 0:
        data = data[:end + 1]
    elif len(data) < HEAD_BYTES:
        return None
    return hashlib.sha256(data[:HEAD_BYTES]).hexdigest()


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


@dataclass
class _Open:
    """A log file being read: its identity, and the offset where its next line starts."""

    f: BinaryIO
    dev: int
    ino: int
    head: str | None
    offset: int
    lines: LineSplitter
    plain: bool  # False: a compressed rotated file, which cannot grow any more
    live: bool  # True while it is the file at `path`


class _Wake(FileSystemEventHandler):
    """inotify only says "look now": any change to a name starting with the log's wakes the reader."""

    def __init__(self, name: str, event: threading.Event) -> None:
        self.name = name
        self.event = event

    def on_any_event(self, event: FileSystemEvent) -> None:
        for p in (event.src_path, event.dest_path):
            if p and os.path.basename(os.fsdecode(p)).startswith(self.name):
                self.event.set()
                return


class FileFollower:
    """`tail -F` with exact positions: follows `path` through appends, rename
    rotation (draining the old file until the writer has moved to the new one),
    copytruncate and delete + recreate.

    position: {"device", "inode", "offset", "head"} of the file the next line
    comes from; inode None means "read `path` from its start when it appears".
    """

    def __init__(self, path: str, position: dict | None, poll_s: float = 5.0) -> None:
        self.source_name = f"file:{path}"
        self.path = os.path.abspath(path)
        self.poll_s = poll_s
        self._cap = 4 * sources.MAX_LINE  # bytes: enough for MAX_LINE characters
        self._cur: _Open | None = None
        self._pending: list[str] = []  # after a restart: rotated files newer than `_cur`, oldest first
        self._wake = threading.Event()
        directory = os.path.dirname(self.path)
        if not os.path.isdir(directory):
            raise RelaywatchError(f"{path}: directory {directory} does not exist")
        self._observer = Observer()
        try:  # our own opens and reads must not wake us: no open/close events
            self._observer.schedule(_Wake(os.path.basename(self.path), self._wake), directory, event_filter=[
                FileModifiedEvent, FileCreatedEvent, FileMovedEvent, FileDeletedEvent])
            self._observer.start()
        except OSError as exc:  # e.g. fs.inotify.max_user_watches reached
            log.warning("%s: no inotify (%s); looking for new lines every %.1f s only", path, exc, poll_s)
        try:
            self._start(position)
        except BaseException:
            self.close()
            raise

    def _start(self, position: dict | None) -> None:
        if position is None:  # first start: like tail -f, from the end (but a file created later from 0)
            self._cur = self._open_live(at_end=True)
            return
        if position.get("inode") is None:
            return
        ident = (position["device"], position["inode"])
        offset, head = position["offset"], position.get("head")
        cur = self._open_live(offset=offset)
        if cur is not None:
            same = (cur.dev, cur.ino) == ident
            if same and os.fstat(cur.f.fileno()).st_size >= offset and head in (None, cur.head):
                self._cur = cur
                return
            cur.f.close()  # rotated, or copytruncated while we were down
        self._cur = self._find_rotated(ident, head, offset)
        if self._cur is None:
            log.warning("%s: the file read before (inode %s, offset %d) is gone and no rotated file (%s) matches it;"
                        " lines written to it after that point may have been missed. Reading %s from the start.",
                        self.path, ident[1], offset, ROTATED_STYLES, self.path)
            self._cur = self._open_live()

    def _open_live(self, offset: int = 0, at_end: bool = False) -> _Open | None:
        """`path` as it is now (None if it does not exist), its next line at `offset`."""
        try:
            f = open(self.path, "rb", buffering=0)  # noqa: SIM115 - kept open across calls, closed in close()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RelaywatchError(f"{self.path}: {exc.strerror or exc}") from exc
        st = os.fstat(f.fileno())
        if at_end:  # after the last complete line, so that an unfinished one is read whole; inside
            # an over-long line (no newline in the last CHUNK), its tail comes out as a line of its own
            n = min(st.st_size, CHUNK)
            nl = os.pread(f.fileno(), n, st.st_size - n).rfind(b"\n")
            offset = st.st_size - n + nl + 1 if nl >= 0 or n == st.st_size else st.st_size
        f.seek(offset)
        head = _head(os.pread(f.fileno(), HEAD_BYTES, 0))
        return _Open(f, st.st_dev, st.st_ino, head, offset, LineSplitter(self._cap), plain=True, live=True)

    def _find_rotated(self, ident: tuple[int, int], head: str | None, offset: int) -> _Open | None:
        """The rotated file that was `path` when we stopped (by first-line hash, or by inode when the hash
        is unknown), newest first; the rotated files newer than it become `_pending`, to be read, oldest
        first, before `path`. The file found is identified by its own inode from then on."""
        rotated = rotated_files(self.path)
        for i in range(len(rotated) - 1, -1, -1):
            name, st = rotated[i]
            if head is None and (st.st_dev, st.st_ino) != ident:
                continue
            # the first line's hash too when known: a deleted file's inode number is soon reused
            cur = self._open_rotated(name, st, offset, head)
            if cur is None:
                continue
            self._pending = [n for n, _ in rotated[i + 1:]]
            log.info("%s: finishing the rotated file %s from offset %d, then %d newer rotated file(s), before"
                     " going on", self.path, name, offset, len(self._pending))
            return cur
        return None

    def _open_rotated(self, name: str, st: os.stat_result, offset: int, head: str | None) -> _Open | None:
        """A rotated file (plain or compressed) from `offset`; None if it cannot be read, or if `head`
        is given and its first line's hash is not that."""
        try:
            f = sources._open_binary(name)
            found = _head(f.read(HEAD_BYTES))
            if head is not None and found != head:
                f.close()
                return None
            f.seek(offset)
        except (RelaywatchError, *_COMPRESSED_ERRORS) as exc:
            log.warning("%s: cannot read it: %s", name, exc)
            return None
        plain = not isinstance(f, (gzip.GzipFile, lzma.LZMAFile, bz2.BZ2File))
        return _Open(f, st.st_dev, st.st_ino, found, offset, LineSplitter(self._cap), plain=plain, live=False)

    def _next_rotated(self, cur: _Open) -> None:
        """Done with `cur`: go on with the next rotated file of a catch-up, from its start."""
        cur.f.close()
        if cur.lines.pending():
            log.warning("%s: the rotated file ended with an unfinished line of %d bytes; dropped",
                        self.path, cur.lines.pending())
        self._cur = None
        while self._pending and self._cur is None:
            name = self._pending.pop(0)
            st = _stat(name)
            if st is None:
                log.warning("%s: the rotated file %s vanished before it was read; its lines are missed",
                            self.path, name)
                continue
            log.info("%s: catching up with the rotated file %s", self.path, name)
            self._cur = self._open_rotated(name, st, 0, None)
        if self._cur is None:
            self._cur = self._open_live()


    @property
    def position(self) -> dict:
        cur = self._cur
        if cur is None:
            return {"device": None, "inode": None, "offset": 0, "head": None}
        return {"device": cur.dev, "inode": cur.ino, "offset": cur.offset, "head": cur.head}

    def read(self, max_lines: int, timeout: float) -> Batch:
        """Up to max_lines lines, waiting up to `timeout` for the first. inotify wakes the wait;
        every call, and every `poll_s` within one, looks anyway (inotify can overflow)."""
        deadline = time.monotonic() + timeout
        while True:
            self._wake.clear()  # before reading, so a write during the read wakes the wait below
            lines = self._pump(max_lines)
            remaining = deadline - time.monotonic()
            if lines or remaining <= 0:
                return Batch(lines, self.position)
            self._wake.wait(min(remaining, self.poll_s))

    def _pump(self, max_lines: int) -> list[str]:
        out: list[str] = []
        if self._cur is not None and self._cur.live:  # copytruncate and a refill past our offset
            self._truncated(self._cur)
        while len(out) < max_lines:
            cur = self._cur
            if cur is not None:
                raw, used = cur.lines.take(max_lines - len(out))
                cur.offset += used
                out.extend(map(_text, raw))
                if len(out) >= max_lines or self._fill(cur):
                    continue
            if out or not self._check():
                break
        return out

    def _fill(self, cur: _Open) -> bool:
        try:
            data = cur.f.read(CHUNK)
        except _COMPRESSED_ERRORS as exc:
            log.warning("%s: cannot read further (inode %d): %s", self.path, cur.ino, exc)
            return False
        if not data:
            return False
        cur.lines.feed(data)
        if cur.head is None and cur.offset == 0:  # from what we read, not from what the file holds later
            cur.head = _head(bytes(cur.lines.buf[:HEAD_BYTES]))
        return True

    def _check(self) -> bool:
        """At the end of the current file: has `path` changed? True if there is more to read."""
        cur = self._cur
        if cur is None:
            self._cur = self._open_live()
            if self._cur is not None:
                log.info("%s: appeared; reading it from the start", self.path)
            return self._cur is not None
        if not cur.live and self._pending:  # catching up: the writer left this file for a newer one long ago
            if not self._fill(cur):
                self._next_rotated(cur)
            return True
        st = _stat(self.path)
        if cur.live:
            if st is not None and (st.st_dev, st.st_ino) == (cur.dev, cur.ino):
                return self._truncated(cur)
            cur.live = False
            log.info("%s: rotated or deleted; finishing the old file until the writer moves on", self.path)
        # A plain old file may still get late writes until the writer reopens `path`: switch
        # only once the new file has data, and after a last look at the old one (the writer
        # wrote its last line there before its first one here).
        if st is None or (cur.plain and st.st_size == 0):
            return False
        new = None if self._fill(cur) else self._open_live()
        if new is None:
            return True
        cur.f.close()
        if cur.lines.pending():
            log.warning("%s: the old file ended with an unfinished line of %d bytes; dropped",
                        self.path, cur.lines.pending())
        self._cur = new
        return True

    def _truncated(self, cur: _Open) -> bool:
        """copytruncate: the file shrank below what we read, or its first line changed."""
        fd = cur.f.fileno()
        shrunk = os.fstat(fd).st_size < cur.offset + cur.lines.pending()
        if not shrunk and (cur.head is None or _head(os.pread(fd, HEAD_BYTES, 0)) == cur.head):
            return False
        log.info("%s: truncated (copytruncate?); reading it again from the start", self.path)
        cur.f.close()
        self._cur = self._find_rotated((cur.dev, cur.ino), cur.head, cur.offset)
        self._pending = []  # the copy is the newest rotated file
        if self._cur is None:
            log.warning("%s: no copy of it in %s: lines written between our last read and the truncation may"
                        " have been missed", self.path, ROTATED_STYLES)
            self._cur = self._open_live()
        return True

    def close(self) -> None:
        self._observer.stop()
        if self._observer.is_alive():
            self._observer.join(timeout=5)
        if self._cur is not None:
            self._cur.f.close()


def rotated_files(path: str) -> list[tuple[str, os.stat_result]]:
    """The rotated copies of `path` in its directory, oldest first.

    Within one naming style the name orders them (maillog.3.gz before maillog.2.gz; dates ascending);
    a directory that mixes styles is ordered by modification time (rotation and compression keep it).
    """
    directory, base = os.path.split(path)
    found: list[tuple[tuple[int, str], str, os.stat_result]] = []  # ((-number, ""), or (0, date digits))
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    for name in names:
        m = _ROTATED_NAME.fullmatch(name, len(base)) if name.startswith(base) else None
        full = os.path.join(directory, name)
        st = _stat(full) if m else None
        if m is None or st is None:
            continue
        key = (-int(m["n"]), "") if m["n"] else (0, re.sub(r"\D", "", m["date"]))
        found.append((key, full, st))
    if len({key[1] == "" for key, _, _ in found}) > 1:  # numbered and dated names side by side
        found.sort(key=lambda x: (x[2].st_mtime, x[0]))
    else:
        found.sort(key=lambda x: x[0])
    return [(full, st) for _, full, st in found]
