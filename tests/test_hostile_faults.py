"""Faults: a full disk under the map or the database, the database locked or damaged, Postfix stopped.

relaywatch must say what happened, keep the last good map in force, lose nothing it had
committed, and recover by itself once the fault clears. The disks are real (a tiny tmpfs,
mounted as root), the database is real SQLite held by a second real connection, and Postfix
is a private instance (tests/support/postfix_rig.py).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaywatch.cli import main
from relaywatch.model import RelaywatchError
from relaywatch.postfix.commands import Postfix
from relaywatch.respond.blocking import Blocker, maps_from_config
from relaywatch.store import sqlite_file
from relaywatch.store.records import DaemonStatus
from relaywatch.store.sqlite import Store
from support.configs import sections, write_config
from support.postfix_rig import POSTFIX, PostfixRig


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tiny_disk(tmp_path) -> Iterator[Path]:
    """A 256 KiB tmpfs: a disk that can really be filled."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "relaywatch-test", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Write until the disk is full; the file to delete to free it."""
    path = disk / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return path


def postfix_cmd(rig: PostfixRig, *args: str) -> None:
    subprocess.run([POSTFIX, "-c", rig.config_directory, *args], capture_output=True, timeout=60, check=True)


def use_map(rig: PostfixRig, spec: str) -> None:
    """Point the private Postfix's check_client_access at `spec` and reload it."""
    subprocess.run(["postconf", "-c", rig.config_directory, "-e",
                    f"smtpd_client_restrictions = check_client_access {spec}"], check=True)
    past = time.time() - 60  # see PostfixRig._start: a fresh main.cf makes commands wait
    os.utime(Path(rig.config_directory) / "main.cf", (past, past))
    postfix_cmd(rig, "reload")
    time.sleep(0.5)


# --- the map --------------------------------------------------------------------------------------


@pytest.mark.postfix
def test_disk_full_under_the_map_keeps_the_old_map_in_force_and_recovers(postfix_instance, tiny_disk, tmp_path,
                                                                          caplog):
    rig = postfix_instance
    spec = f"hash:{tiny_disk}/reject_list"
    (tiny_disk / "reject_list").write_text("")
    maps = maps_from_config(spec, "", "hash", config_directory=rig.config_directory, map_directories=[str(tiny_disk)])
    Postfix(rig.config_directory).postmap(maps["client"].spec)
    use_map(rig, spec)
    clock = Clock()
    try:
        blocker = Blocker(Store(tmp_path / "state.db"), Postfix(rig.config_directory),
                          maps, 3600, clock)
        blocker.block("client", "127.0.0.9", "test")
        assert blocker.sync()
        assert rig.send("127.0.0.9")[0] == 554
        in_force = {p.name: p.read_bytes() for p in tiny_disk.iterdir()}
        filler = fill(tiny_disk)
        blocker.block("client", "127.0.0.10", "test")
        assert not blocker.sync()
        assert "No space left on device" in blocker.last_error
        assert "the map files Postfix reads were not changed" in blocker.last_error
        assert "blocks are not in force (map not written)" in caplog.text
        assert {p.name: p.read_bytes() for p in tiny_disk.iterdir() if p != filler} == in_force  # no staging left
        assert rig.send("127.0.0.9")[0] == 554 and rig.send("127.0.0.10")[0] == 250

        filler.unlink()  # the fault clears: the retry comes by itself, after its backoff
        assert not blocker.due()
        clock.now += 5
        assert blocker.due() and blocker.sync()
        assert rig.send("127.0.0.10")[0] == 554 and rig.send("127.0.0.9")[0] == 554
        assert blocker.last_error is None
    finally:
        use_map(rig, str(rig.reject_list))


@pytest.mark.postfix
def test_postfix_stopped_keeps_the_block_pending_until_it_is_back(postfix_instance, tmp_path):
    rig = postfix_instance
    clock = Clock()
    blocker = Blocker(Store(tmp_path / "state.db"), Postfix(rig.config_directory),
                      maps_from_config(str(rig.reject_list), "", "hash", config_directory=rig.config_directory),
                      3600, clock)
    postfix_cmd(rig, "stop")
    try:
        blocker.block("client", "127.0.0.11", "test")
        assert not blocker.sync()
        assert ("Postfix is not running. The map file holds the new blocks; Postfix reads it when it starts"
                in blocker.last_error)
        assert "127.0.0.11 REJECT" in Path(rig.reject_list.path).read_text()
    finally:
        postfix_cmd(rig, "start")
        rig._wait_for_banner(rig.port)
    assert rig.send("127.0.0.11")[0] == 554  # the map written while it was down is read at start
    clock.now += 5
    assert blocker.sync() and blocker.last_error is None  # and the pending reload is done


# --- the database ------------------------------------------------------------------------------------


@pytest.fixture
def short_lock_wait(monkeypatch):
    monkeypatch.setattr(sqlite_file, "BUSY_TIMEOUT_S", 0.2)


def test_a_locked_database_is_a_clear_error_that_loses_nothing(tmp_path, short_lock_wait):
    path = tmp_path / "state.db"
    store = Store(path)
    store.commit_batch([("client", 1, "192.0.2.1", 1)], position=("file:/var/log/mail.log", {"offset": 10}))
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # an admin's sqlite3 shell in the middle of a write
    try:
        with pytest.raises(RelaywatchError, match=r"held a write lock on it for more than 0.2 s .*nothing was "
                                                  r"written: retry once it lets go"):
            store.commit_batch([("client", 2, "192.0.2.1", 1)], position=("file:/var/log/mail.log", {"offset": 20}))
        with pytest.raises(RelaywatchError, match="locked"):
            store.status.put(DaemonStatus(pid=1))
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.positions.get("file:/var/log/mail.log") == {"offset": 10}  # the batch is read again, not lost
    store.commit_batch([("client", 2, "192.0.2.1", 1)], position=("file:/var/log/mail.log", {"offset": 20}))
    assert list(store.counts_since(0)) == [("client", 1, "192.0.2.1", 1), ("client", 2, "192.0.2.1", 1)]
    store.close()


def test_a_locked_database_makes_block_fail_cleanly(tmp_path, short_lock_wait):
    path = tmp_path / "state.db"
    cfg = tmp_path / "relaywatch.toml"
    write_config(cfg, sections(database=path, config_directory="", client_access_map=f"cidr:{tmp_path}/reject.cidr"))
    Store(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        result = CliRunner().invoke(main, ["block", "192.0.2.7", "-c", str(cfg)])
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert result.exit_code == 1 and "held a write lock" in result.output
    assert isinstance(result.exception, SystemExit)  # a message, not a traceback
    assert not (tmp_path / "reject.cidr").exists()
    result = CliRunner().invoke(main, ["blocks", "--json", "-c", str(cfg)])
    assert result.exit_code == 0 and '"blocks": []' in result.output


def test_a_damaged_database_is_a_clear_error_and_the_map_is_left_alone(tmp_path):
    path = tmp_path / "state.db"
    Store(path).close()
    path.write_bytes(path.read_bytes()[:100] + os.urandom(8192))  # SQLite's header, garbage after it
    cidr = tmp_path / "reject.cidr"
    cidr.write_text("# BEGIN relaywatch managed section: do not edit, use 'relaywatch unblock'\n"
                    "192.0.2.9 REJECT blocked by relaywatch: earlier\n# END relaywatch managed section\n")
    before = cidr.read_bytes()
    with pytest.raises(RelaywatchError, match=r"state database .*state.db: cannot open \((file is not a database|"
                                              r"database disk image is malformed)\): "
                                              r"it is damaged: restore it from a backup, or move it aside"):
        Store(path)
    cfg = tmp_path / "relaywatch.toml"
    write_config(cfg, sections(database=path, config_directory="", client_access_map=f"cidr:{cidr}"))
    for args in (["blocks"], ["block", "192.0.2.10"], ["status"]):
        result = CliRunner().invoke(main, [*args, "-c", str(cfg)])
        assert result.exit_code == 1 and "it is damaged" in result.output, (args, result.output)
    assert cidr.read_bytes() == before  # the blocks in force stay in force
    path.rename(tmp_path / "state.db.damaged")  # what the message says to do
    assert CliRunner().invoke(main, ["blocks", "-c", str(cfg)]).exit_code == 0


def test_disk_full_under_the_database_loses_nothing_and_recovers(tiny_disk):
    store = Store(tiny_disk / "state.db")
    store.commit_batch([("client", 1, "192.0.2.1", 1)], position=("journal", {"cursor": "a"}))
    filler = fill(tiny_disk)
    batch = [("client", 2, f"2001:db8::{i:x}", 1) for i in range(1000)]
    with pytest.raises(RelaywatchError, match="the disk is full; nothing was written: free some space"):
        store.commit_batch(batch, position=("journal", {"cursor": "b"}))
    assert store.positions.get("journal") == {"cursor": "a"}
    filler.unlink()
    store.commit_batch(batch, position=("journal", {"cursor": "b"}))
    assert store.positions.get("journal") == {"cursor": "b"}
    assert sum(1 for _ in store.counts_since(0)) == 1001
    store.close()
