"""Reading whole logs for replay: compression by magic bytes, stdin, bad bytes."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import sys

import pytest

from relaywatch.model import RelaywatchError
from relaywatch.sources import files as sources

LINES = ["Mar 16 01:59:38 zebra postfix/smtpd[29327]: connect from unknown[218.144.108.161]", "second \u00e9"]
DATA = ("\n".join(LINES) + "\n").encode()


@pytest.mark.parametrize("name, compress", [
    ("plain.log", lambda b: b), ("mail.log.1.gz", gzip.compress), ("renamed.1", gzip.compress),
    ("x.bz2", bz2.compress), ("x.xz", lzma.compress)])
def test_every_compression_reads_the_same(tmp_path, name, compress):
    path = tmp_path / name
    path.write_bytes(compress(DATA))
    assert list(sources.read_lines(str(path))) == LINES


def test_stdin(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(DATA)))
    assert list(sources.read_lines("-")) == LINES


def test_bad_bytes_nuls_and_a_missing_final_newline(tmp_path):
    path = tmp_path / "bad.log"
    path.write_bytes(b"ok\n\xff\xfe\x00broken\nlast without newline")
    assert list(sources.read_lines(str(path))) == ["ok", "\ufffd\ufffd\x00broken", "last without newline"]


def test_overlong_lines_are_cut(tmp_path):
    path = tmp_path / "long.log"
    path.write_text("x" * 100_000 + "\nnext\n")
    lines = list(sources.read_lines(str(path)))
    assert [len(line) for line in lines] == [sources.MAX_LINE, 4]


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(RelaywatchError, match="No such file"):
        list(sources.read_lines(str(tmp_path / "nope.log")))


def test_a_truncated_gzip_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(DATA * 100)[:60])
    with pytest.raises(RelaywatchError, match="cannot read further"):
        list(sources.read_lines(str(path)))


@pytest.mark.parametrize("block", [1, 3, 7, 64, 1 << 17])
def test_blocks_cut_anywhere_read_as_whole_lines(tmp_path, monkeypatch, block):
    """A replay reads a block of bytes at a time: a character, a line or an over-long line cut by a
    block's end reads as if the file were read line by line."""
    path = tmp_path / "blocks.log"
    path.write_bytes("é€😀\n".encode() + b"\xff\xc3\n" + b"x" * (sources.MAX_LINE + 5) + b"\n\nlast \xc3\xa9")
    monkeypatch.setattr(sources, "BLOCK", block)
    assert list(sources.read_lines(str(path))) == ["é€😀", "\ufffd\ufffd", "x" * sources.MAX_LINE, "", "last é"]


def test_a_block_parses_as_its_lines_do_and_a_line_cut_at_max_line_is_not_read():
    from relaywatch.core.parse import LineParser, YearResolver
    from relaywatch.replay import parse_block

    client = "Mar 16 01:59:39 zebra postfix/smtpd[29327]: 1A2B3C4D5E: client=unknown[218.144.108.161]"
    cut = client + "x" * sources.MAX_LINE
    block = [LINES[0], client, cut[:sources.MAX_LINE], "garbage"]
    parser = LineParser(YearResolver(2003))
    events = parse_block(block, parser)
    assert events == [sources.parse_line(line, LineParser(YearResolver(2003))) for line in block]
    assert events[1] is not None and events[1].qid == "1A2B3C4D5E"
    assert events[2] is not None and events[2].reason == sources.TOO_LONG
