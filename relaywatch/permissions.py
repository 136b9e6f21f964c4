"""Who may change what relaywatch trusts: its config, its state database, Postfix's maps.

relaywatch runs as root and turns what its config and map directory say into
REJECT lines in Postfix. A config another user can write (it names the maps and
may hold notification tokens) or a map directory anyone can write into (plant a
staging file, swap the map between postmap and rename) hands that power to them.
So: the checks are pure (a stat result in, the reason it is unsafe out); the
helpers around them do the small I/O (stat, create 0700/0600) and raise
ConfigError, exit 78, so systemd does not restart into the same refusal.
"""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Callable
from pathlib import Path

from relaywatch.model import ConfigError

DB_MODE = 0o600
DIR_MODE = 0o700


# --- pure checks -------------------------------------------------------------------


def _owner_ok(st: os.stat_result, euid: int) -> bool:
    return st.st_uid in (0, euid)


def file_problem(st: os.stat_result, euid: int) -> str | None:
    """Why a file relaywatch trusts (its config, its state) is unsafe, or None.

    Group-writable counts as unsafe whatever the group: the unit itself runs in group adm,
    and every member of a group can rewrite what relaywatch acts on as root."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_mode & stat.S_IWOTH:
        return f"is writable by every user (mode {stat.S_IMODE(st.st_mode):04o}); run: chmod go-w FILE"
    if st.st_mode & stat.S_IWGRP:
        return (f"is writable by group {_group(st.st_gid)} (mode {stat.S_IMODE(st.st_mode):04o}); "
                "run: chmod go-w FILE")
    if not _owner_ok(st, euid):
        return (f"is owned by uid {st.st_uid}, not root: that user could make relaywatch block anyone; "
                "run: chown root FILE")
    return None


def dir_problem(st: os.stat_result, euid: int, *, sticky_ok: bool) -> str | None:
    """Why a directory holding a file relaywatch trusts or writes is unsafe, or None.

    `sticky_ok`: a world-writable directory with the sticky bit (like /tmp) is fine for
    reading a file we own there (nobody else can replace it), not for writing one
    (the staging names could be planted in advance).
    """
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory"
    mode = stat.S_IMODE(st.st_mode)
    shared_ok = sticky_ok and st.st_mode & stat.S_ISVTX
    if st.st_mode & stat.S_IWOTH and not shared_ok:
        return f"is writable by every user (mode {mode:04o}); run: chmod go-w DIR"
    if st.st_mode & stat.S_IWGRP and not shared_ok:
        return f"is writable by group {_group(st.st_gid)} (mode {mode:04o}); run: chmod go-w DIR"
    if not _owner_ok(st, euid):
        return f"is owned by uid {st.st_uid}, not root; run: chown root DIR"
    return None


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def secrets_readable(st: os.stat_result) -> bool:
    """A file every user can read (it should not hold notification tokens)."""
    return bool(st.st_mode & stat.S_IROTH)


# --- helpers (small I/O) -----------------------------------------------------------


def check_config_file(path: str | Path, st: os.stat_result | None = None) -> None:
    """Refuse a config that anyone but root (or us) can change. `st`: fstat of the open file."""
    euid = os.geteuid()
    try:
        st = st or os.stat(path)
        parent = os.stat(Path(path).resolve().parent)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    problem = file_problem(st, euid)
    if problem:
        raise ConfigError(f"{path} {problem.replace('FILE', str(path))}; refusing to use it")
    problem = dir_problem(parent, euid, sticky_ok=True)
    if problem:
        directory = Path(path).resolve().parent
        raise ConfigError(f"{path}: its directory {directory} {problem.replace('DIR', str(directory))};"
                          " refusing to use it")


def check_map_dir(path: str | Path, st: os.stat_result | None = None) -> None:
    """Refuse to write Postfix maps into a directory another user can write or owns.
    `path`: the directory; `st`: its fstat when the caller holds it open."""
    try:
        st = st or os.stat(path)
    except OSError as exc:
        raise ConfigError(f"map directory {path}: {exc.strerror or exc}") from exc
    problem = dir_problem(st, os.geteuid(), sticky_ok=False)
    if problem:
        raise ConfigError(f"map directory {path} {problem.replace('DIR', str(path))}; relaywatch will not write"
                          " access maps there")


def private_dir(path: str | Path) -> None:
    """Create `path` (and missing parents) 0700; an existing directory is left as it is
    (it may be shared, like /tmp) but must not be writable by others without the sticky bit."""
    path = Path(path)
    if not path.exists():
        path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(path, DIR_MODE)  # mkdir applies the umask
        return
    problem = dir_problem(os.stat(path), os.geteuid(), sticky_ok=True)
    if problem:
        raise ConfigError(f"state directory {path} {problem.replace('DIR', str(path))}")


SQLITE_HEADER = b"SQLite format 3\x00"


def state_file(path: str | Path, ours: Callable[[bytes], bool]) -> bool:
    """Make sure `path` can safely be relaywatch's state database; True when created here.

    Created 0600 (O_EXCL, no symlink followed). An existing file is looked at before
    anything touches it: it must be a regular file of ours that nobody else can write,
    starting with SQLite's header (or empty: created here, killed before the first write).
    Its mode is tightened only when `ours(header)` says relaywatch made it; any other file
    is refused as it is, never chmodded.
    """
    key = "[state] database"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, DB_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"{key}: cannot create {path}: {exc.strerror or exc}") from exc
    else:
        os.close(fd)
        return True
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{key}: {path} is not a regular file (a symlink?); refusing to open it")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOATIME)
    except PermissionError:  # O_NOATIME needs ownership: refused just below anyway
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as f:
        header = f.read(100)
    if header and not header.startswith(SQLITE_HEADER):
        shown = "".join(chr(b) if 32 <= b < 127 else "." for b in header[:24])
        raise ConfigError(f"{key}: {path} is not a SQLite database (it starts with {shown!r}): relaywatch leaves it"
                          " as it is; point [state] database at a new file")
    if st.st_uid != os.geteuid():
        raise ConfigError(f"{key}: {path} is owned by uid {st.st_uid}, not by relaywatch's user: that user could"
                          " rewrite what relaywatch blocks; refusing to use it (move it aside or chown it)")
    loose = stat.S_IMODE(st.st_mode) & 0o077
    if loose and not ours(header):
        problem = file_problem(st, os.geteuid()) or f"is readable by others (mode {stat.S_IMODE(st.st_mode):04o})"
        raise ConfigError(f"{key}: {path} {problem.replace('FILE', str(path))}; relaywatch did not create it and"
                          " will not change it: refusing to use it")
    if loose:
        os.chmod(path, DB_MODE)
    return False
