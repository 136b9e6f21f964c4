"""One way to open the state: `[state] database` is a path (SQLite, one host) or a postgresql:// URL
(PostgreSQL, shared by a fleet of hosts). The password comes from `[state] password_file` or
libpq's own environment (PGPASSWORD, PGPASSFILE, ~/.pgpass), never from a message: URLs are redacted."""

from __future__ import annotations

import os
import stat

from relaywatch import permissions
from relaywatch.model import ConfigError
from relaywatch.store.base import StateStore
from relaywatch.store.postgres_state import BlockKeys
from relaywatch.store.sqlite import Store as SQLiteStore

URL_SCHEMES = ("postgresql://", "postgres://")
RELAY_HISTORY = "/var/lib/relaywatch/relayers.db"  # the policy service's own table when the state is elsewhere


def is_url(database: str) -> bool:
    return database.startswith(URL_SCHEMES)


def local_path(database: str) -> str:
    """Where a file of this host's own goes (the policy service's relay history): beside the SQLite
    database, or in /var/lib/relaywatch when the state is in PostgreSQL."""
    return RELAY_HISTORY if is_url(database) else database


def read_password(path: str | None) -> str | None:
    """The first line of `[state] password_file`; ConfigError naming the key otherwise."""
    if not path:
        return None
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise ConfigError(f"[state] password_file: cannot read {path}: {why}") from None
    if permissions.secrets_readable(st):  # as libpq ignores a ~/.pgpass others can read
        raise ConfigError(f"[state] password_file: {path} is readable by every user (mode "
                          f"{stat.S_IMODE(st.st_mode):04o}) and holds the database's password: chmod 600 {path}")
    password = text.split("\n", 1)[0].rstrip("\r")
    if not password:
        raise ConfigError(f"[state] password_file: {path} is empty (the password goes on its first line)")
    return password


def open_store(database: str, *, host: str, password_file: str | None = None, degrade: bool = False,
               block_keys: BlockKeys | None = None) -> StateStore:
    """The store `database` names. `host`: this fleet member's name ([fleet] host); `block_keys`:
    the access-map key and action of a block (PostgreSQL's relaywatch_blocks holds them for Postfix)."""
    if not is_url(database):
        return SQLiteStore(database, degrade=degrade, host=host)
    try:
        from relaywatch.store import postgres
    except ImportError as exc:
        raise ConfigError("[state] database: a postgresql:// URL needs psycopg 3 (Debian: apt install"
                          f" python3-psycopg; pip: relaywatch[postgresql]): {exc}") from None
    try:
        postgres.check_url(database)
    except ValueError as exc:
        raise ConfigError(f"[state] database: {exc}") from None
    # without a password file libpq finds one itself (PGPASSWORD, PGPASSFILE, ~/.pgpass), or the server trusts us
    return postgres.Store(database, host=host, password=read_password(password_file), degrade=degrade,
                          block_keys=block_keys)
