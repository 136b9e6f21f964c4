"""Where log lines come from: whole files for replay (plain or compressed) and stdin.

Compression is recognised by the file's magic bytes, not its name: rotated
logs are often renamed. Bytes that are not UTF-8 become U+FFFD, never an error.
"""

from __future__ import annotations

import codecs
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from relaywatch.core.parse import LineParser
from relaywatch.model import Event, RelaywatchError, Unparsed

_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "lzma"))  # imported for such a file only
MAX_LINE = 8192  # Postfix cuts records at 2,000 bytes; anything longer is not Postfix's
TOO_LONG = "line too long"  # the Unparsed reason of a line cut at MAX_LINE
BLOCK = 1 << 17  # bytes read at once: a third of the cost of reading line by line, and a few KiB of memory


def _open_binary(path: str) -> BinaryIO:
    if path == "-":
        return sys.stdin.buffer
    try:
        with open(path, "rb") as f:
            head = f.read(6)
        for magic, name in _MAGIC:
            if head.startswith(magic):
                # GzipFile, BZ2File and LZMAFile read bytes like a BinaryIO but do not subclass typing's
                return importlib.import_module(name).open(path, "rb")  # type: ignore[no-any-return]
        return open(path, "rb")
    except OSError as exc:
        raise RelaywatchError(f"{path}: {exc.strerror or exc}") from exc


def read_lines(path: str) -> Iterator[str]:
    """Each line of a log without its newline; over-long lines are cut to MAX_LINE while
    reading, so a line without end costs no more memory than MAX_LINE."""
    for lines in read_blocks(path):
        yield from lines


def read_blocks(path: str) -> Iterator[list[str]]:
    """The lines of a log (as `read_lines`) a block of bytes at a time: what a replay loops over.

    Decoded as one stream (a character cut by a block's end is whole in the next; bytes that are
    not UTF-8 become U+FFFD), split at "\\n" only, each line cut to MAX_LINE characters; the start
    of a line still without end is kept up to MAX_LINE characters, the rest of it read past."""
    raw = _open_binary(path)
    decode = codecs.getincrementaldecoder("utf-8")("replace").decode
    carry = ""  # the start of the line the last block ended in
    try:
        while True:
            data = raw.read(BLOCK)
            lines = decode(data, not data).split("\n")
            if len(lines) > 1:
                lines[0] = carry + lines[0]
                carry = lines.pop()[:MAX_LINE]
                if max(map(len, lines)) > MAX_LINE:
                    lines = [line[:MAX_LINE] for line in lines]
                yield lines
            else:
                carry = (carry + lines[0])[:MAX_LINE]
            if not data:
                break
        if carry:
            yield [carry]
    except _read_errors() as exc:
        raise RelaywatchError(f"{path}: cannot read further: {exc}") from exc
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


def _read_errors() -> tuple[type[Exception], ...]:
    """What a damaged file raises: OSError, EOFError, and an .xz its own (lzma is loaded only for one)."""
    if "lzma" not in sys.modules:
        return (OSError, EOFError)
    import lzma

    return (OSError, EOFError, lzma.LZMAError)


def parse_line(line: str, parser: LineParser) -> Event | None:
    """The event of one line; a line cut at MAX_LINE (longer than any of Postfix's) is not read."""
    return parser.parse(line) if len(line) < MAX_LINE else Unparsed(0.0, TOO_LONG)


def mtime(path: str) -> float | None:
    """When the file was last written: the latest moment its lines can be from."""
    if path == "-":
        return None
    try:
        return Path(path).stat().st_mtime
    except OSError:
        return None
