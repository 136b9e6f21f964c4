"""Rotated copies of a log: find them in every naming style, tell which one was the file we read
(first-line hash, inode) and open them, plain or compressed, for a catch-up after a restart or a
copytruncate. Nothing here watches: the follower loop decides when to look."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import logging
import lzma
import os
import re
from dataclasses import dataclass
from typing import BinaryIO

from relaywatch.model import RelaywatchError
from relaywatch.sources import files as sources
from relaywatch.sources.lines import LineSplitter

log = logging.getLogger("relaywatch.follow")

HEAD_BYTES = 1024  # the identity of a log: a hash of its first line, or of its first KiB
# The names rotated copies of `maillog` get: numbered (logrotate: maillog.1, maillog.2.gz), dated
# (logrotate dateext: maillog-20251201[.gz], with dateformat maillog-2025120123 or -20251201-1764633600),
# and `postfix logrotate` (maillog_file): maillog.20251201-235959.gz.
_ROTATED_NAME = re.compile(r"[.\-_](?:(?P<n>\d{1,4})|(?P<date>\d{8}(?:[-_T]?\d{2,10})?))(?:\.(?:gz|xz|bz2))?")
ROTATED_STYLES = "maillog.1, maillog.2.gz, maillog-20251201(.gz), maillog.20251201-235959.gz"
COMPRESSED_ERRORS = (OSError, EOFError, lzma.LZMAError)


def head_hash(data: bytes) -> str | None:
    """Hash of the first line (or first KiB); None while that is still being written."""
    end = data.find(b"\n")
    if end >= 0:
        data = data[:end + 1]
    elif len(data) < HEAD_BYTES:
        return None
    return hashlib.sha256(data[:HEAD_BYTES]).hexdigest()


def stat_or_none(path: str) -> os.stat_result | None:
    """`path`'s stat, or None when it does not exist."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


@dataclass
class OpenLog:
    """A log file being read: its identity, and the offset where its next line starts."""

    f: BinaryIO
    dev: int
    ino: int
    head: str | None
    offset: int
    lines: LineSplitter
    plain: bool  # False: a compressed rotated file, which cannot grow any more
    live: bool  # True while it is the file at `path`


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
        st = stat_or_none(full) if m else None
        if m is None or st is None:
            continue
        key = (-int(m["n"]), "") if m["n"] else (0, re.sub(r"\D", "", m["date"]))
        found.append((key, full, st))
    if len({key[1] == "" for key, _, _ in found}) > 1:  # numbered and dated names side by side
        found.sort(key=lambda x: (x[2].st_mtime, x[0]))
    else:
        found.sort(key=lambda x: x[0])
    return [(full, st) for _, full, st in found]


def find_rotated(path: str, ident: tuple[int, int], head: str | None, offset: int,
                 cap: int) -> tuple[OpenLog | None, list[str]]:
    """The rotated file that was `path` when we stopped (by first-line hash, or by inode when the hash
    is unknown), newest first, and the rotated files newer than it, to be read, oldest first, before
    `path`. The file found is identified by its own inode from then on."""
    rotated = rotated_files(path)
    for i in range(len(rotated) - 1, -1, -1):
        name, st = rotated[i]
        if head is None and (st.st_dev, st.st_ino) != ident:
            continue
        # the first line's hash too when known: a deleted file's inode number is soon reused
        cur = open_rotated(name, st, offset, head, cap)
        if cur is None:
            continue
        pending = [n for n, _ in rotated[i + 1:]]
        log.info("%s: finishing the rotated file %s from offset %d, then %d newer rotated file(s), before"
                 " going on", path, name, offset, len(pending))
        return cur, pending
    return None, []


def open_rotated(name: str, st: os.stat_result, offset: int, head: str | None, cap: int) -> OpenLog | None:
    """A rotated file (plain or compressed) from `offset`; None if it cannot be read, or if `head`
    is given and its first line's hash is not that."""
    try:
        f = sources._open_binary(name)
        found = head_hash(f.read(HEAD_BYTES))
        if head is not None and found != head:
            f.close()
            return None
        f.seek(offset)
    except (RelaywatchError, *COMPRESSED_ERRORS) as exc:
        log.warning("%s: cannot read it: %s", name, exc)
        return None
    plain = not isinstance(f, (gzip.GzipFile, lzma.LZMAFile, bz2.BZ2File))
    return OpenLog(f, st.st_dev, st.st_ino, found, offset, LineSplitter(cap), plain=plain, live=False)
