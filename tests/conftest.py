"""Shared fixtures. `postfix_instance`: a private, running Postfix (tests/support/postfix_rig.py);
`postgres`: a private PostgreSQL 15 (tests/support/postgres.py);
`sink` and `hang`: real HTTP endpoints on 127.0.0.1 for notifications (tests/support/http_sink.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from support.http_sink import Hang, Sink
from support.postfix_rig import PostfixRig, postfix_installed
from support.postgres import PostgresServer, postfix_pgsql_installed, postgres_installed


@pytest.fixture(scope="module")
def postfix_instance(request: pytest.FixtureRequest) -> Iterator[PostfixRig]:
    """One private Postfix per test module (and per map type: parametrize it
    indirectly with "hash", "cidr", ...). Skips without Postfix or root, unless
    RELAYWATCH_REQUIRE_POSTFIX=1 (CI), where that is a failure."""
    missing = None
    if not postfix_installed():
        missing = "Debian's postfix is not installed (/usr/sbin/postfix, postmap, smtp-sink)"
    elif os.geteuid() != 0:
        missing = "a private Postfix instance needs root"
    if missing:
        if os.environ.get("RELAYWATCH_REQUIRE_POSTFIX") == "1":
            pytest.fail(f"RELAYWATCH_REQUIRE_POSTFIX=1 but {missing}", pytrace=False)
        pytest.skip(missing)
    rig = PostfixRig.start(getattr(request, "param", "hash"))
    try:
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def sink() -> Iterator[Sink]:
    """Records what Apprise's json:// and form:// targets post; a path with "fail" answers 500."""
    s = Sink()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture
def hang() -> Iterator[Hang]:
    """Accepts connections and never answers."""
    h = Hang()
    yield h
    h.close()


def _require(env: str, missing: str | None) -> None:
    """Skip for a missing part, or fail where CI demands it (`env`=1)."""
    if missing:
        if os.environ.get(env) == "1":
            pytest.fail(f"{env}=1 but {missing}", pytrace=False)
        pytest.skip(missing)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One private PostgreSQL for the whole run (tests take a fresh database each: `postgres`).
    Skips without Debian's postgresql-15 or root, unless RELAYWATCH_REQUIRE_POSTGRES=1 (CI)."""
    missing = None
    if not postgres_installed():
        missing = "Debian's postgresql-15 is not installed (/usr/lib/postgresql/15/bin)"
    elif os.geteuid() != 0:
        missing = "a private PostgreSQL is started as the postgres user, which needs root"
    _require("RELAYWATCH_REQUIRE_POSTGRES", missing)
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


_databases = iter(range(1, 1_000_000))


@pytest.fixture
def postgres(postgres_server: PostgresServer) -> PostgresServer:
    """The private PostgreSQL with a fresh, empty database named `relaywatch_N`; its URL is
    `postgres.url(postgres.dbname)`. Tests that restart the server must use `postgres_private`."""
    name = f"relaywatch_{next(_databases)}"
    postgres_server.createdb(name)
    postgres_server.dbname = name
    return postgres_server


@pytest.fixture
def postgres_private() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test's own (it may be stopped and restarted), with a database `relaywatch`."""
    missing = None if postgres_installed() and os.geteuid() == 0 else "no postgresql-15 or not root"
    _require("RELAYWATCH_REQUIRE_POSTGRES", missing)
    server = PostgresServer.start()
    try:
        server.createdb("relaywatch")
        yield server
    finally:
        server.stop()


@pytest.fixture
def pgsql_maps() -> None:
    """Postfix can read pgsql: tables (Debian's postfix-pgsql), or the test skips (fails in CI)."""
    _require("RELAYWATCH_REQUIRE_POSTGRES",
             None if postfix_pgsql_installed() else "Debian's postfix-pgsql is not installed (no pgsql: maps)")
