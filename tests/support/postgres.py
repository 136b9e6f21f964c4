"""A private PostgreSQL 15 in a temp directory, for the fleet's tests (STYLE.md's recipe).

Debian's server binaries run as the unprivileged `postgres` user: `initdb` with trust
authentication, `pg_ctl start` with a unix socket in the temp dir and a TCP listener on
127.0.0.1 only (Postfix's pgsql: client and psycopg use either), stopped by the postmaster's
PID. Never touches the machine's own clusters (/etc/postgresql, /var/lib/postgresql).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

BIN = Path("/usr/lib/postgresql/15/bin")


def postgres_installed() -> bool:
    return (BIN / "postgres").exists() and (BIN / "initdb").exists()


def postfix_pgsql_installed() -> bool:
    """Debian's postfix-pgsql: Postfix can read `pgsql:` tables."""
    return Path("/usr/lib/postfix/postfix-pgsql.so").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(args: list[str]) -> subprocess.CompletedProcess[str]:
    """Runs a PostgreSQL tool as the `postgres` user (the server refuses to run as root)."""
    user = pwd.getpwnam("postgres")

    def demote() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return subprocess.run(args, preexec_fn=demote if os.geteuid() == 0 else None, check=True,
                          capture_output=True, text=True, cwd="/")


@dataclass
class PostgresServer:
    root: Path  # the temp dir: data/ and the socket
    port: int
    pid: int
    superuser: str = "postgres"
    dbname: str = "relaywatch"  # the database the `postgres` fixture made for the current test

    @property
    def socket_dir(self) -> str:
        return str(self.root)

    def url(self, dbname: str | None = None, user: str | None = None, password: str | None = None) -> str:
        """A libpq URL over TCP on 127.0.0.1 (what a fleet member would use)."""
        auth = user or self.superuser
        if password is not None:
            auth += f":{password}"
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname or self.dbname}"

    def createdb(self, name: str) -> str:
        """A fresh database; returns its URL."""
        _as_postgres([str(BIN / "createdb"), "-h", self.socket_dir, "-p", str(self.port), name])
        return self.url(name)

    def psql(self, sql: str, dbname: str | None = None) -> str:
        """Runs SQL as the superuser; returns psql's unaligned, tuples-only output."""
        out = _as_postgres([str(BIN / "psql"), "-h", self.socket_dir, "-p", str(self.port),
                            "-d", dbname or self.dbname, "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        return out.stdout

    @classmethod
    def start(cls) -> PostgresServer:
        root = Path(tempfile.mkdtemp(prefix="relaywatch-pg-"))
        root.chmod(0o755)
        user = pwd.getpwnam("postgres")
        if os.geteuid() == 0:
            os.chown(root, user.pw_uid, user.pw_gid)
        data = root / "data"
        _as_postgres([str(BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"])
        port = _free_port()
        return cls._boot(root, port)

    @classmethod
    def _boot(cls, root: Path, port: int) -> PostgresServer:
        data = root / "data"
        opts = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
        _as_postgres([str(BIN / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(root / "server.log"),
                      "-w", "-t", "60", "start"])
        pid = int((data / "postmaster.pid").read_text().split("\n", 1)[0])
        return cls(root, port, pid)

    def stop(self, remove: bool = True) -> None:
        """Stops the postmaster by its PID (fast shutdown), waits for it, and removes the temp dir."""
        try:
            os.kill(self.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        else:
            os.kill(self.pid, signal.SIGKILL)
        if remove:
            shutil.rmtree(self.root, ignore_errors=True)

    def restart(self) -> None:
        """Stop (keeping the data) and start again on the same port: a database restart mid-flood."""
        self.stop(remove=False)
        self.pid = self._boot(self.root, self.port).pid
