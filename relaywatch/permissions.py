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

import os
import stat
from pathlib import Path

from .model import ConfigError

DB_MODE = 0o600
DIR_MODE = 0o700


# --- pure checks -------------------------------------------------------------------


def _owner_ok(st: os.stat_result, euid: int) -> bool:
    return st.st_uid in (0, euid)


def file_problem(st: os.stat_result, euid: int) -> str | None:
    """Why a file relaywatch trusts (its config) is unsafe, or None."""
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    if st.st_mode & stat.S_IWOTH:
        return f"is writable by every user (mode {stat.S_IMODE(st.st_mode):04o}); run: chmod o-w FILE"
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
    if st.st_mode & stat.S_IWOTH and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        return f"is writable by every user (mode {mode:04o}); run: chmod o-w DIR"
    if not _owner_ok(st, euid):
        return f"is owned by uid {st.st_uid}, not root; run: chown root DIR"
    return None


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


def private_file(path: str | Path) -> None:
    """Make sure `path` exists, is a regular file and only its owner can read it (0600).
    Created 0600 (O_EXCL, no symlink followed); an existing one of ours is tightened."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, DB_MODE)
    except FileExistsError:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"{path} is not a regular file (a symlink?); refusing to open it") from None
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.chmod(path, DB_MODE)
        return
    os.close(fd)
