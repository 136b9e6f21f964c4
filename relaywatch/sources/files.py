"""Where log lines come from: whole files for replay (plain or compressed) and stdin.

Compression is recognised by the file's magic bytes, not its name: rotated
logs are often renamed. Bytes that are not UTF-8 become U+FFFD, never an error.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from relaywatch.core.parse import LineParser
from relaywatch.model import Event, RelaywatchError, Unparsed

_MAGIC = ((b"\x1f\x8b", gzip.open), (b"BZh", bz2.open), (b"\xfd7zXZ\x00", lzma.open))
MAX_LINE = 8192  # Postfix cuts records at 2,000 bytes; anything longer is not Postfix's


def _open_binary(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        for magic, opener in _MAGIC:
            if head.startswith(magic):
                # GzipFile, BZ2File and LZMAFile read bytes like a BinaryIO but do not subclass typing's
                return opener(path, "rb")  # type: ignore[return-value]
        return open(path, "rb")
    except OSError as exc:
        raise RelaywatchError(f"{path}: {exc.strerror or exc}") from exc


def read_lines(path: str) -> Iterator[str]:
    """Each line of a log without its newline; over-long lines are cut to MAX_LINE while
    reading, so a line without end costs no more memory than MAX_LINE."""
    raw = _open_binary(path)
    text = io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="\n")
    try:
        while line := text.readline(MAX_LINE):
            if not line.endswith("\n") and len(line) == MAX_LINE:
                while (rest := text.readline(MAX_LINE)) and not rest.endswith("\n"):
                    pass  # a line longer than any of Postfix's: keep its start, read past the rest
            yield line.rstrip("\n")
    except (OSError, EOFError, lzma.LZMAError) as exc:
        raise RelaywatchError(f"{path}: cannot read further: {exc}") from exc
    finally:
        if raw is not sys.stdin.buffer:
            text.close()


def parse_line(line: str, parser: LineParser) -> Event | None:
    """The event of one line; a line cut at MAX_LINE (longer than any of Postfix's) is not read."""
    return parser.parse(line) if len(line) < MAX_LINE else Unparsed(0.0, "line too long")


def mtime(path: str) -> float | None:
    """When the file was last written: the latest moment its lines can be from."""
    if path == "-":
        return None
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return None
