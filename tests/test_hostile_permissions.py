"""Permissions: who may change what relaywatch (running as root) trusts and writes, and secrets.

The state database is created 0600 in a 0700 directory; a config another user can change is
refused (exit 78); a map directory another user can write into is refused; notification
tokens never reach logs or `relaywatch status`.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaywatch import permissions
from relaywatch.cli import main
from relaywatch.config import load
from relaywatch.model import ConfigError
from relaywatch.notify.notices import notice_for_text
from relaywatch.notify.notifier import Notifier
from relaywatch.store.records import DaemonStatus
from relaywatch.store.sqlite import Store

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files to another user")
NOBODY = 65534
ADM = grp.getgrnam("adm").gr_gid
SECRET_URL = "json://relaywatch:S3CRETPASS@127.0.0.1:9/hook/S3CRETPATH?token=S3CRETTOKEN"
SECRETS = ("S3CRETPASS", "S3CRETTOKEN")


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# --- the state database ------------------------------------------------------------------------


def test_the_state_database_is_created_private_whatever_the_umask(tmp_path, umask022):
    path = tmp_path / "lib" / "relaywatch" / "state.db"
    store = Store(path)
    store.commit_batch([("client", 1, "192.0.2.1", 1)])
    assert mode(path.parent) == 0o700
    assert {p.name: mode(p) for p in path.parent.iterdir()} == {
        "state.db": 0o600, "state.db-wal": 0o600, "state.db-shm": 0o600}
    store.close()


def test_an_existing_database_of_ours_is_tightened(tmp_path, umask022):
    path = tmp_path / "state.db"
    Store(path).close()
    os.chmod(path, 0o644)
    Store(path).close()
    assert mode(path) == 0o600
    assert mode(tmp_path) == 0o700  # an existing directory is left as it was (pytest made it 0700)


def test_a_symlink_in_place_of_the_database_is_refused(tmp_path):
    target = tmp_path / "shadow"
    target.write_text("root's secret\n")
    (tmp_path / "state.db").symlink_to(target)
    with pytest.raises(ConfigError, match="not a regular file"):
        Store(tmp_path / "state.db")
    assert target.read_text() == "root's secret\n"


def test_a_state_directory_anyone_can_write_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    with pytest.raises(ConfigError, match="writable by every user"):
        Store(shared / "state.db")
    os.chmod(shared, 0o1777)  # sticky, like /tmp: nobody can replace our file
    Store(shared / "state.db").close()


def test_a_file_that_is_not_sqlite_is_left_exactly_as_it_was_even_by_status(tmp_path):
    passwd = tmp_path / "passwd"
    passwd.write_bytes(Path("/etc/passwd").read_bytes())  # an admin's typo: [state] database = "/etc/passwd"
    os.chmod(passwd, 0o644)
    os.utime(passwd, (1_000_000_000, 1_000_000_000))
    before = os.stat(passwd)
    cfg = write_config(tmp_path / "relaywatch.toml", f'[state]\ndatabase = "{passwd}"\n')
    for args in (["status"], ["status", "--json"], ["blocks"], ["run"]):
        done = subprocess.run([sys.executable, "-m", "relaywatch", *args, "-c", str(cfg)], capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 78, (args, done.stderr)
        assert f"[state] database: {passwd} is not a SQLite database (it starts with 'root:" in done.stderr
    after = os.stat(passwd)
    assert (after.st_mode, after.st_uid, after.st_size, after.st_mtime, after.st_atime) == (
        before.st_mode, before.st_uid, before.st_size, before.st_mtime, before.st_atime)
    assert passwd.read_bytes() == Path("/etc/passwd").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["passwd", "relaywatch.toml"]  # no -wal, -shm, .lock


def test_a_sqlite_file_relaywatch_did_not_make_is_never_chmodded(tmp_path):
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as conn:  # another program's database, shared on purpose
        conn.execute("CREATE TABLE t (x)")
    for bits in (0o666, 0o664, 0o644):
        os.chmod(other, bits)
        with pytest.raises(ConfigError, match=rf"\[state\] database: .*other.db .*mode 0{bits:o}.*relaywatch did not"
                                              " create it and will not change it"):
            Store(other)
        assert mode(other) == bits


def test_a_database_of_ours_that_others_can_write_is_fixed(tmp_path):
    path = tmp_path / "state.db"
    Store(path).close()
    os.chmod(path, 0o666)
    Store(path).close()
    assert mode(path) == 0o600


@needs_root
def test_a_database_owned_by_another_user_is_refused(tmp_path):
    path = tmp_path / "state.db"
    Store(path).close()
    os.chown(path, NOBODY, -1)
    os.chmod(path, 0o666)
    with pytest.raises(ConfigError, match=r"\[state\] database: .* is owned by uid 65534"):
        Store(path)
    assert mode(path) == 0o666 and os.stat(path).st_uid == NOBODY


def test_a_group_writable_state_directory_is_refused(tmp_path):
    shared = tmp_path / "lib"
    shared.mkdir()
    os.chmod(shared, 0o770)
    with pytest.raises(ConfigError, match="is writable by group"):
        Store(shared / "state.db")
    assert not (shared / "state.db").exists()


# --- the config ----------------------------------------------------------------------------------


def write_config(path: Path, text: str = "") -> Path:
    path.write_text(text or f'[state]\ndatabase = "{path.parent / "state.db"}"\n')
    os.chmod(path, 0o600)
    return path


def test_a_world_writable_config_is_refused_with_exit_78(tmp_path):
    cfg = write_config(tmp_path / "relaywatch.toml")
    os.chmod(cfg, 0o666)
    result = CliRunner().invoke(main, ["blocks", "-c", str(cfg)])
    assert result.exit_code == 78
    assert "is writable by every user (mode 0666); run: chmod go-w" in result.output
    os.chmod(cfg, 0o640)
    assert CliRunner().invoke(main, ["blocks", "-c", str(cfg)]).exit_code == 0


@needs_root
def test_a_config_owned_by_another_user_is_refused(tmp_path):
    cfg = write_config(tmp_path / "relaywatch.toml")
    os.chown(cfg, NOBODY, -1)
    with pytest.raises(ConfigError, match="owned by uid 65534, not root"):
        load(cfg)


def test_a_config_in_a_directory_anyone_can_write_is_refused(tmp_path):
    shared = tmp_path / "etc"
    shared.mkdir()
    cfg = write_config(shared / "relaywatch.toml")
    os.chmod(shared, 0o777)  # anyone could rename ours away and put theirs in its place
    with pytest.raises(ConfigError, match="its directory .* is writable by every user"):
        load(cfg)
    os.chmod(shared, 0o1777)
    load(cfg)


@pytest.mark.parametrize("bits", [0o660, 0o664, 0o620])
def test_a_group_writable_config_is_refused_with_exit_78(tmp_path, bits):
    cfg = write_config(tmp_path / "relaywatch.toml")
    os.chmod(cfg, bits)
    os.chown(cfg, -1, ADM)  # the unit itself runs in group adm
    result = CliRunner().invoke(main, ["blocks", "-c", str(cfg)])
    assert result.exit_code == 78
    assert f"is writable by group adm (mode 0{bits:o}); run: chmod go-w" in result.output


def test_a_config_in_a_group_writable_directory_is_refused(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    cfg = write_config(etc / "relaywatch.toml")
    os.chmod(etc, 0o775)
    os.chown(etc, -1, ADM)
    done = subprocess.run([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 78
    assert f"its directory {etc} is writable by group adm (mode 0775)" in done.stderr
    os.chmod(etc, 0o755)
    load(cfg)


def test_a_world_readable_config_with_tokens_is_warned_about_without_the_tokens(tmp_path, caplog):
    cfg = write_config(tmp_path / "relaywatch.toml", f'[notify]\nurls = ["{SECRET_URL}"]\n')
    os.chmod(cfg, 0o644)
    with caplog.at_level(logging.WARNING, "relaywatch.config"):
        load(cfg)
    assert "holds notification URLs (tokens) and every user can read it: chmod 600" in caplog.text
    assert not any(s in caplog.text for s in SECRETS)


def test_a_world_readable_config_with_a_database_password_is_warned_about_without_it(tmp_path, caplog):
    cfg = write_config(tmp_path / "relaywatch.toml",
                       '[state]\ndatabase = "postgresql://relaywatch:DbS3cret@db.example.net/relaywatch"\n')
    os.chmod(cfg, 0o644)
    with caplog.at_level(logging.WARNING, "relaywatch.config"):
        load(cfg)
    assert "holds the database's password in [state] database and every user can read it" in caplog.text
    assert "DbS3cret" not in caplog.text


# --- the map directory ------------------------------------------------------------------------------


def test_a_map_directory_anyone_can_write_is_refused(tmp_path):
    maps = tmp_path / "postfix"
    maps.mkdir()
    permissions.check_map_dir(maps)
    for bits in (0o777, 0o1777):  # sticky does not help: the staging names could be planted
        os.chmod(maps, bits)
        with pytest.raises(ConfigError, match="writable by every user.*will not write access maps there"):
            permissions.check_map_dir(maps)


@needs_root
def test_a_map_directory_owned_by_another_user_is_refused(tmp_path):
    maps = tmp_path / "postfix"
    maps.mkdir()
    os.chown(maps, NOBODY, -1)
    with pytest.raises(ConfigError, match="owned by uid 65534"):
        permissions.check_map_dir(maps)


@pytest.mark.parametrize("st_mode, uid, problem", [
    (stat.S_IFREG | 0o600, 0, None),
    (stat.S_IFREG | 0o664, 0, "is writable by group root (mode 0664)"),  # any group: the unit runs in adm
    (stat.S_IFREG | 0o640, 0, None),
    (stat.S_IFREG | 0o646, 0, "is writable by every user (mode 0646)"),
    (stat.S_IFREG | 0o600, 1000, "is owned by uid 1000, not root"),
    (stat.S_IFREG | 0o600, 4242, None),  # our own file (relaywatch run as uid 4242)
    (stat.S_IFDIR | 0o755, 0, "is not a regular file"),
])
def test_file_problem(st_mode, uid, problem):
    st = os.stat_result((st_mode, 0, 0, 1, uid, 0, 0, 0, 0, 0))
    found = permissions.file_problem(st, euid=4242)
    assert (found if found is None else found.split(";")[0].split(":")[0]) == problem


# --- secrets ---------------------------------------------------------------------------------------------


def test_tokens_never_reach_the_log_or_the_status(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG):
        notifier = Notifier((SECRET_URL,), coalesce_s=0, cooldown_s=0, timeout_s=2, retries=0, backoff_s=0.01)
        notifier.submit(notice_for_text("failure", "test", "body"))
        notifier.close(timeout=5)
    status = notifier.status()
    assert status["failed"] == 1 and status["last_error"]
    text = caplog.text + json.dumps(status)
    assert "127.0.0.1" in text  # the target is named ...
    assert not any(s in text for s in SECRETS)  # ... without its secrets
    # and `relaywatch status` shows what the daemon stored of it
    cfg = write_config(tmp_path / "relaywatch.toml", f'[state]\ndatabase = "{tmp_path / "state.db"}"\n'
                       f'[notify]\nurls = ["{SECRET_URL}"]\n')
    store = Store(tmp_path / "state.db")
    store.status.put(DaemonStatus(pid=None, source="journal", notify=status))
    store.close()
    for args in (["status"], ["status", "--json"]):
        result = CliRunner().invoke(main, [*args, "-c", str(cfg)])
        assert result.exit_code == 3, result.output  # LSB: not running (the stored daemon has no pid)
        assert not any(s in result.output for s in SECRETS)
