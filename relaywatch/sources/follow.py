"""Follow a growing log file for `relaywatch run`: the reader loop, woken by inotify.

Every follower hands out batches of complete lines with the exact position after
the last one. The daemon commits that position in the same transaction as the
counts the lines produced, so a restart from it neither loses nor repeats a line.
Finding and opening rotated copies is `rotation.py`; the journal follower lives in
`journal.py`; watchdog only here.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

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
from relaywatch.sources.lines import CHUNK, Batch, LineSplitter
from relaywatch.sources.rotation import (
    COMPRESSED_ERRORS,
    HEAD_BYTES,
    ROTATED_STYLES,
    OpenLog,
    find_rotated,
    head_hash,
    open_rotated,
    stat_or_none,
)

log = logging.getLogger("relaywatch.follow")


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

    def __init__(self, path: str, position: dict[str, Any] | None, poll_s: float = 5.0) -> None:
        self.source_name = f"file:{path}"
        self.path = os.path.abspath(path)
        self.poll_s = poll_s
        self._cap = 4 * sources.MAX_LINE  # bytes: enough for MAX_LINE characters
        self._cur: OpenLog | None = None
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

    def _start(self, position: dict[str, Any] | None) -> None:
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
        self._cur, self._pending = find_rotated(self.path, ident, head, offset, self._cap)
        if self._cur is None:
            log.warning("%s: the file read before (inode %s, offset %d) is gone and no rotated file (%s) matches it;"
                        " lines written to it after that point may have been missed. Reading %s from the start.",
                        self.path, ident[1], offset, ROTATED_STYLES, self.path)
            self._cur = self._open_live()

    def _open_live(self, offset: int = 0, at_end: bool = False) -> OpenLog | None:
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
        head = head_hash(os.pread(f.fileno(), HEAD_BYTES, 0))
        return OpenLog(f, st.st_dev, st.st_ino, head, offset, LineSplitter(self._cap), plain=True, live=True)

    def _next_rotated(self, cur: OpenLog) -> None:
        """Done with `cur`: go on with the next rotated file of a catch-up, from its start."""
        cur.f.close()
        if cur.lines.pending():
            log.warning("%s: the rotated file ended with an unfinished line of %d bytes; dropped",
                        self.path, cur.lines.pending())
        self._cur = None
        while self._pending and self._cur is None:
            name = self._pending.pop(0)
            st = stat_or_none(name)
            if st is None:
                log.warning("%s: the rotated file %s vanished before it was read; its lines are missed",
                            self.path, name)
                continue
            log.info("%s: catching up with the rotated file %s", self.path, name)
            self._cur = open_rotated(name, st, 0, None, self._cap)
        if self._cur is None:
            self._cur = self._open_live()


    @property
    def position(self) -> dict[str, Any]:
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
                lines, used = cur.lines.take_text(max_lines - len(out), sources.MAX_LINE)
                cur.offset += used
                out.extend(lines)
                if len(out) >= max_lines or self._fill(cur):
                    continue
            if out or not self._check():
                break
        return out

    def _fill(self, cur: OpenLog) -> bool:
        try:
            data = cur.f.read(CHUNK)
        except COMPRESSED_ERRORS as exc:
            log.warning("%s: cannot read further (inode %d): %s", self.path, cur.ino, exc)
            return False
        if not data:
            return False
        cur.lines.feed(data)
        if cur.head is None and cur.offset == 0:  # from what we read, not from what the file holds later
            cur.head = head_hash(bytes(cur.lines.buf[:HEAD_BYTES]))
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
        st = stat_or_none(self.path)
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

    def _truncated(self, cur: OpenLog) -> bool:
        """copytruncate: the file shrank below what we read, or its first line changed."""
        fd = cur.f.fileno()
        shrunk = os.fstat(fd).st_size < cur.offset + cur.lines.pending()
        if not shrunk and (cur.head is None or head_hash(os.pread(fd, HEAD_BYTES, 0)) == cur.head):
            return False
        log.info("%s: truncated (copytruncate?); reading it again from the start", self.path)
        cur.f.close()
        self._cur = find_rotated(self.path, (cur.dev, cur.ino), cur.head, cur.offset, self._cap)[0]
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
