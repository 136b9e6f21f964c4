"""The state database's file: its schema, how it is opened, the daemon's lock on it, and
SQLite's errors as what happened and what to do."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from relaywatch import permissions
from relaywatch.model import RelaywatchError

BUSY_TIMEOUT_S = 20.0  # how long a write waits for another process's lock (systemd's watchdog allows 60 s)
APPLICATION_ID = 0x52574442  # "RWDB" in SQLite's header: this file was made by relaywatch

# The schema is a contract with every database an earlier relaywatch wrote: tables and columns are
# added, never changed (an upgraded daemon reads its old state).
SCHEMA = """
CREATE TABLE IF NOT EXISTS counts (
    dim TEXT NOT NULL, bucket INTEGER NOT NULL, key TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (dim, bucket, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY, time REAL NOT NULL, action TEXT NOT NULL, kind TEXT NOT NULL,
    target TEXT NOT NULL, rule TEXT NOT NULL, count INTEGER NOT NULL, window_s INTEGER NOT NULL,
    clients INTEGER NOT NULL, evidence TEXT NOT NULL, sample_qids TEXT NOT NULL, hosts TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS positions (source TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    kind TEXT NOT NULL, target TEXT NOT NULL, reason TEXT NOT NULL, rule TEXT NOT NULL,
    since REAL NOT NULL, until REAL,
    PRIMARY KEY (kind, target)
);
CREATE TABLE IF NOT EXISTS offences (
    kind TEXT NOT NULL, target TEXT NOT NULL, count INTEGER NOT NULL, last REAL NOT NULL,
    PRIMARY KEY (kind, target)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS origins (
    qid TEXT PRIMARY KEY, client TEXT NOT NULL, sasl_user TEXT, time REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS origins_client ON origins (client);
CREATE TABLE IF NOT EXISTS open_messages (
    qid TEXT PRIMARY KEY, first_seen REAL NOT NULL, last_seen REAL NOT NULL, client TEXT, sasl_user TEXT,
    sender TEXT NOT NULL, nrcpt INTEGER NOT NULL, seen TEXT NOT NULL
) WITHOUT ROWID;
"""
# Columns added since, for a database an earlier relaywatch made: (table, column, its definition)
ADDED_COLUMNS = (("decisions", "hosts", "TEXT NOT NULL DEFAULT '[]'"),)


def add_columns(db: sqlite3.Connection) -> None:
    """Give an older database the columns added since it was made (SCHEMA's IF NOT EXISTS keeps its tables)."""
    for table, column, definition in ADDED_COLUMNS:
        if column not in {row[1] for row in db.execute(f"PRAGMA table_info({table})")}:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")


class StoreUnavailable(RelaywatchError):
    """The database cannot be written for now (locked past the busy timeout, disk full): a fault that
    passes. The daemon keeps working in memory and writes the backlog once it has passed."""


def made_by_relaywatch(header: bytes) -> bool:
    return len(header) >= 72 and int.from_bytes(header[68:72], "big") == APPLICATION_ID


def open_connection(path: str | Path | None) -> sqlite3.Connection:
    """The database at `path` (None: in memory), with the schema; WAL with synchronous=FULL:
    relaywatch must remember what it blocked. (sqlite-utils wraps it, in store.sqlite.)"""
    if path is None:
        db = sqlite3.connect(":memory:")
        db.executescript(SCHEMA)
        return db
    # 0700 directory and 0600 file (its WAL and shm files get the same mode): it holds log
    # lines with addresses in them, and what relaywatch blocks. An existing file is checked
    # before anything opens it: another program's file is never touched.
    permissions.private_dir(Path(path).parent)
    created = permissions.state_file(path, made_by_relaywatch)
    with sqlite_errors(path, "open"):
        db = sqlite3.connect(str(path))
        busy(db, BUSY_TIMEOUT_S)
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # takes effect on a new database only
        if created or db.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
            db.execute(f"PRAGMA application_id={APPLICATION_ID}")  # before WAL: lands in the header
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(SCHEMA)
        add_columns(db)
    return db


def busy(db: sqlite3.Connection, seconds: float) -> None:
    db.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")


@contextlib.contextmanager
def sqlite_errors(path: str | Path | None, doing: str) -> Iterator[None]:
    """SQLite's errors as what happened and what to do; nothing of a failed write is kept."""
    try:
        yield
    except sqlite3.DatabaseError as exc:
        if type(exc) not in (sqlite3.OperationalError, sqlite3.DatabaseError):
            raise  # IntegrityError and the like: a bug, not the environment
        text = str(exc)
        if "locked" in text or "busy" in text:
            raise StoreUnavailable(
                f"state database {path}: cannot {doing} ({text}): another process has held a write lock"
                f" on it for more than {BUSY_TIMEOUT_S:g} s (an open sqlite3 shell, a backup?); nothing was"
                " written: retry once it lets go") from exc
        if "full" in text:
            raise StoreUnavailable(f"state database {path}: cannot {doing} ({text}): the disk is full;"
                                   " nothing was written: free some space") from exc
        if "not a database" in text or "malformed" in text or "corrupt" in text:
            hint = ("it is damaged: restore it from a backup, or move it aside to start a new one (relaywatch then"
                    " forgets its blocks; the access maps keep them until relaywatch next writes them)")
        elif "unable to open" in text or "readonly" in text or "read-only" in text:
            hint = "check that relaywatch runs as root and that its directory is writable"
        else:
            hint = "see the SQLite error"
        raise RelaywatchError(f"state database {path}: cannot {doing} ({text}): {hint}") from exc


def lock_for_daemon(path: str | Path) -> int:
    """One daemon per state database, for its whole life: an exclusive lock on `<database>.lock`
    (released by the kernel when the process ends, SIGKILL included). Returns the lock's fd."""
    lock = Path(f"{path}.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, permissions.DB_MODE)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise RelaywatchError(f"another relaywatch run (pid {holder}) already uses the state database"
                              f" {path}: one daemon per database; stop it first") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd
