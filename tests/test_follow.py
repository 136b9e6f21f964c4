"""Live sources on real files with real inotify and real rotations.

The journal has its own tests (test_journal.py).
"""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from relaywatch.model import RelaywatchError
from relaywatch.sources import files as sources
from relaywatch.sources import rotation
from relaywatch.sources.follow import FileFollower
from relaywatch.sources.lines import Batch, Follower, LineSplitter
from support.follow import collect


def append(path: Path, data: str | bytes) -> None:
    with open(path, "ab") as w:
        w.write(data.encode() if isinstance(data, str) else data)


@pytest.fixture
def log(tmp_path):
    return tmp_path / "mail.log"


@pytest.fixture
def follow():
    """Make followers that are closed after the test."""
    made: list[Follower] = []

    def make(path: Path, position: dict | None, **kwargs) -> FileFollower:
        f = FileFollower(str(path), position, **kwargs)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


# --- files: appends and the first start ---------------------------------------


def test_first_start_begins_at_the_end_and_a_partial_line_waits_for_its_newline(log, follow):
    log.write_text("before 1\nbefore 2\nunfini")
    f = follow(log, None)
    assert f.source_name == f"file:{log}"
    assert f.read(100, timeout=0).lines == []
    append(log, "shed\none\ntw")
    batch = f.read(100, timeout=5)
    assert batch.lines == ["unfinished", "one"]
    assert batch.position["offset"] == len("before 1\nbefore 2\nunfinished\none\n")
    append(log, "o\n")
    assert f.read(100, timeout=5).lines == ["two"]


def test_inotify_wakes_a_waiting_read(log, follow):
    log.write_text("")
    f = follow(log, None, poll_s=60)
    timer = threading.Timer(0.05, append, (log, "hello\n"))
    started = time.monotonic()
    timer.start()
    batch = f.read(10, timeout=30)
    timer.join()
    assert batch.lines == ["hello"]
    assert time.monotonic() - started < 15, "woken by the timeout, not by inotify"


def test_a_missing_file_is_waited_for_and_read_from_its_start(log, follow):
    f = follow(log, None)
    batch = f.read(10, timeout=0.2)
    assert batch == Batch([], {"device": None, "inode": None, "offset": 0, "head": None})
    log.write_text("a\nb\n")
    assert collect(f, 2)[0] == ["a", "b"]
    g = follow(log, batch.position)  # the empty position also means "from the start"
    assert collect(g, 2)[0] == ["a", "b"]


def test_a_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(RelaywatchError, match="does not exist"):
        FileFollower(str(tmp_path / "nope" / "mail.log"), None)


def test_overlong_line_is_cut_while_reading_and_bad_bytes_are_replaced(log, follow):
    log.write_text("")
    f = follow(log, None)
    for _ in range(20):  # 20 x MAX_LINE bytes without a newline must not pile up
        append(log, "x" * sources.MAX_LINE)
        assert f.read(10, timeout=0).lines == []
        assert len(f._cur.lines.buf) <= 4 * sources.MAX_LINE
    append(log, b"\nnext \xff\n")
    batch = f.read(10, timeout=5)
    assert batch.lines == ["x" * sources.MAX_LINE, "next \ufffd"]
    assert batch.position["offset"] == 20 * sources.MAX_LINE + len(b"\nnext \xff\n")


# --- files: rotations while following -----------------------------------------


def test_rename_rotation_drains_late_writes_to_the_old_file(log, follow):
    log.write_text("")
    f = follow(log, None)
    writer = open(log, "ab", buffering=0)  # noqa: SIM115 - held open across the rotation, like a logger
    writer.write(b"1\n2\n")
    assert collect(f, 2)[0] == ["1", "2"]
    old_inode = log.stat().st_ino
    os.rename(log, f"{log}.1")
    log.write_text("")  # logrotate's "create"
    writer.write(b"3\n")  # the writer has not reopened yet
    batch = f.read(10, timeout=5)
    assert batch.lines == ["3"]
    assert f.read(10, timeout=0.2).lines == []  # the new file is empty: stay on the old one
    assert f.position["inode"] == old_inode
    writer.write(b"4\n")
    writer.close()
    with open(log, "ab", buffering=0) as writer:  # reopened after SIGHUP
        writer.write(b"5\n")
    lines, position = collect(f, 2)
    assert lines == ["4", "5"]
    assert position["inode"] == log.stat().st_ino


def test_delete_and_recreate(log, follow):
    log.write_text("")
    f = follow(log, None)
    writer = open(log, "ab", buffering=0)  # noqa: SIM115 - held open across the rotation, like a logger
    writer.write(b"1\n")
    assert collect(f, 1)[0] == ["1"]
    log.unlink()
    writer.write(b"2\n")  # into the deleted file, still open
    writer.close()
    log.write_text("3\n")
    assert collect(f, 2)[0] == ["2", "3"]


@pytest.mark.parametrize("refill", [1, 200], ids=["shorter", "longer-than-before"])
def test_copytruncate_reads_the_unread_rest_from_the_copy(log, follow, refill):
    log.write_text("")
    f = follow(log, None)
    append(log, "old 1\nold 2\n")
    assert collect(f, 2)[0] == ["old 1", "old 2"]
    append(log, "old 3\n")  # not read yet when logrotate copies and truncates
    shutil.copyfile(log, f"{log}.1")
    os.truncate(log, 0)
    new = [f"new {i}" for i in range(refill)]
    append(log, "".join(line + "\n" for line in new))
    assert collect(f, 1 + refill)[0] == ["old 3", *new]


def test_truncation_without_a_copy_rereads_from_the_start_and_warns(log, follow, caplog):
    log.write_text("")
    f = follow(log, None)
    append(log, "a long first line\n")
    assert collect(f, 1)[0] == ["a long first line"]
    os.truncate(log, 0)
    append(log, "b\n")
    with caplog.at_level(logging.WARNING, "relaywatch.follow"):
        assert collect(f, 1)[0] == ["b"]
    assert "may have been missed" in caplog.text


# --- files: restarts -----------------------------------------------------------


def _write_numbered(path: Path, start: int, stop: int) -> list[str]:
    lines = [f"line {i}" for i in range(start, stop)]
    append(path, "".join(line + "\n" for line in lines))
    return lines


@pytest.mark.parametrize("rotate", ["plain", "gz", "xz", "copytruncate"])
def test_restart_finishes_the_file_rotated_while_down(log, follow, rotate, caplog):
    log.write_text("")
    f = follow(log, None)
    written = _write_numbered(log, 0, 10)
    first, position = collect(f, 4, max_lines=4)
    f.close()
    written += _write_numbered(log, 10, 12)  # written after our last commit, before the rotation
    if rotate == "copytruncate":
        shutil.copyfile(log, f"{log}.1")
        os.truncate(log, 0)
    else:
        os.rename(log, f"{log}.1")
        if rotate != "plain":
            data = Path(f"{log}.1").read_bytes()
            Path(f"{log}.1.{rotate}").write_bytes(gzip.compress(data) if rotate == "gz" else lzma.compress(data))
            os.unlink(f"{log}.1")
    written += _write_numbered(log, 12, 15)
    g = follow(log, position)
    with caplog.at_level(logging.WARNING, "relaywatch.follow"):
        rest, _ = collect(g, len(written) - 4)
    assert first + rest == written
    assert "missed" not in caplog.text


def _rotate(log: Path, style: str, n: int) -> None:
    """Rotation number `n` (1, 2, ...) of `log` in one naming style, as the tools do it: rename
    (numbered ones shift up first), compress where the style does, keep the modification time."""
    if style.startswith("numbered"):
        for k in range(n, 0, -1):  # maillog.1 -> maillog.2(.gz), ...
            for ext in ("", ".gz"):
                old = Path(f"{log}.{k}{ext}")
                if old.exists():
                    new = Path(f"{log}.{k + 1}{ext}")
                    if ext == "" and style == "numbered-delaycompress":  # .1 stays plain one round, then .gz
                        _gzip_to(old, Path(f"{new}.gz"))
                    else:
                        os.rename(old, new)
        target = Path(f"{log}.1")
    elif style == "dateext" or style == "dateext-gz":
        target = Path(f"{log}-2025120{n}")
    else:  # postfix logrotate (maillog_file): maillog.YYYYMMDD-HHMMSS, then gzip
        target = Path(f"{log}.2025120{n}-23595{n}")
    os.rename(log, target)
    if style in ("numbered-gz", "dateext-gz", "postfix"):
        _gzip_to(target, Path(f"{target}.gz"))
    log.write_text("")


def _gzip_to(src: Path, dst: Path) -> None:
    st = src.stat()
    dst.write_bytes(gzip.compress(src.read_bytes()))
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns))
    src.unlink()


ROTATION_STYLES = ["numbered", "numbered-gz", "numbered-delaycompress", "dateext", "dateext-gz", "postfix"]


@pytest.mark.parametrize("style", ROTATION_STYLES)
def test_two_rotations_while_stopped_lose_no_line(log, follow, style, caplog):
    """Issue 13 item 12: catch-up finds every rotated file newer than the saved position, in order."""
    log.write_text("")
    f = follow(log, None)
    written = _write_numbered(log, 0, 10)
    first, position = collect(f, 4, max_lines=4)
    f.close()
    written += _write_numbered(log, 10, 20)  # after our last commit
    _rotate(log, style, 1)
    written += _write_numbered(log, 20, 30)
    _rotate(log, style, 2)
    written += _write_numbered(log, 30, 40)
    with caplog.at_level(logging.INFO, "relaywatch.follow"):
        g = follow(log, position)
        rest, _ = collect(g, len(written) - 4, max_lines=7)
    assert first + rest == written
    assert "missed" not in caplog.text and "1 newer rotated file" in caplog.text


@pytest.mark.parametrize("style", ["numbered-delaycompress", "postfix"])
def test_a_catch_up_stopped_anywhere_resumes_exactly(log, follow, style):
    log.write_text("")
    f = follow(log, None)
    written = _write_numbered(log, 0, 10)
    got, position = collect(f, 3, max_lines=3)
    f.close()
    for n in (1, 2, 3):
        written += _write_numbered(log, n * 10, n * 10 + 10)
        _rotate(log, style, n)
    written += _write_numbered(log, 40, 45)
    while len(got) < len(written):  # a restart after every batch of 4 lines
        g = follow(log, position)
        batch = g.read(4, timeout=1.0)
        g.close()
        assert batch.lines, (len(got), len(written))
        got += batch.lines
        position = batch.position
    assert got == written


def test_rotated_files_are_ordered_oldest_first(tmp_path):
    log = tmp_path / "maillog"
    names = ["maillog.10.gz", "maillog.9.gz", "maillog.2.gz", "maillog.1"]
    for name in names + ["maillog", "maillog.lock", "maillog.db", "maillog-old", "mail.log.1"]:
        (tmp_path / name).write_text("x\n")
    assert [Path(p).name for p, _ in rotation.rotated_files(str(log))] == names
    for name in names:
        (tmp_path / name).unlink()
    dated = ["maillog-20251130", "maillog-20251201.gz", "maillog-2025120123", "maillog.20251202-000001.gz"]
    for name in reversed(dated):
        (tmp_path / name).write_text("x\n")
    assert [Path(p).name for p, _ in rotation.rotated_files(str(log))] == dated


def test_restart_without_a_matching_rotated_file_warns_and_reads_from_the_start(log, follow, caplog):
    log.write_text("")
    f = follow(log, None)
    _write_numbered(log, 0, 3)
    position = collect(f, 3)[1]
    f.close()
    log.unlink()
    log.write_text("fresh\n")
    with caplog.at_level(logging.WARNING, "relaywatch.follow"):
        g = follow(log, position)
    assert "may have been missed" in caplog.text
    assert collect(g, 1)[0] == ["fresh"]


def test_resume_from_any_batch_position_loses_and_repeats_nothing(log, follow):
    log.write_text("")
    f = follow(log, None)
    written = [f"msg {i} " + "y" * (i % 37) for i in range(500)]
    data = "".join(line + "\n" for line in written).encode()
    seen: list[str] = []
    pieces = [data[i:i + 997] for i in range(0, len(data), 997)]  # many writes end mid-line
    for i, piece in enumerate(pieces):
        append(log, piece)
        batch = f.read(7 + i % 5, timeout=0)
        seen += batch.lines
        if i % 3 == 2:  # a restart from the committed position
            f.close()
            f = follow(log, batch.position)
    seen += collect(f, len(written) - len(seen), max_lines=13)[0]
    assert seen == written


WRITER = r"""
import os, sys, time
path, n = sys.argv[1], int(sys.argv[2])
w = open(path, "ab", buffering=0)
for i in range(n):
    line = b"concurrent %d %s\n" % (i, b"z" * (i % 50))
    w.write(line[:5]); w.write(line[5:])  # the reader may see half a line
    if i == n // 2:  # logrotate: rename, create; the writer reopens a few lines later
        os.rename(path, path + ".1")
        open(path, "ab").close()
    if i == n // 2 + 20:
        w.close()
        w = open(path, "ab", buffering=0)
    if i % 100 == 0:
        time.sleep(0.005)
w.close()
"""


def test_exact_resume_with_a_concurrent_writer_process(log, follow):
    n = 3000
    log.write_text("")
    f = follow(log, None)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(log), str(n)])
    seen: list[str] = []
    deadline = time.monotonic() + 30
    batches = 0
    while len(seen) < n and time.monotonic() < deadline:
        batch = f.read(50 + batches % 40, timeout=0.5)
        seen += batch.lines
        batches += 1
        if batches % 4 == 0:
            f.close()
            f = follow(log, batch.position)
    assert writer.wait(10) == 0
    assert seen == [f"concurrent {i} {'z' * (i % 50)}" for i in range(n)]


def test_lines_decoded_as_one_block_are_what_decoding_each_line_gives():
    """The follower decodes and splits what it read in one go: bad and cut UTF-8 next to a newline,
    over-long lines and their dropped tails must come out as decoding line by line gave them,
    with the same bytes used (the position) and the same unfinished rest."""
    rng = random.Random(15)
    pieces = [b"a", b"postfix/smtpd[1]: ", b"\n", b"\n\n", b"\xe2\x82\xac", b"\xe2\x82", b"\xff", b"\xc3", b"\xa9",
              b"\xf0\x9f\x98\x80", b"x" * 20]
    for _ in range(5000):
        cap = rng.choice([4, 8, 16, 64])
        max_chars = rng.choice([2, cap // 4, 100])
        one, block = LineSplitter(cap), LineSplitter(cap)
        for _ in range(rng.randint(1, 6)):
            data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
            one.feed(data)
            block.feed(data)
            n = rng.choice([1, 2, 1000])
            raw, used = one.take(n)
            assert block.take_text(n, max_chars) == ([r.decode("utf-8", "replace")[:max_chars] for r in raw], used)
            assert (block.buf, block.dropped) == (one.buf, one.dropped)
