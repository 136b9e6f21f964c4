"""relaywatch_blocks in a private PostgreSQL, for the pgsql: map tests: the table and Postfix's
read-only role (which must log in with its password), the .cf texts, and block rows written
as t18-store's PostgreSQL store writes them (same key and action rendering)."""

from __future__ import annotations

import os
import time

import pytest

from relaywatch.core.blocks_table import DDL, READ_ROLE
from relaywatch.postfix.pgsql_maps import PgsqlTarget, action, cf_text, lookup_key
from support.postfix_rig import postfix_installed
from support.postgres import PostgresServer, postfix_pgsql_installed, postgres_installed

PASSWORD = "Gq4-pgsql-maps-test"


def prepare(pg: PostgresServer) -> None:
    """The blocks table and the role; pg_hba makes the role log in with scram (the rest stays trust)."""
    pg.psql(f"{DDL} CREATE ROLE {READ_ROLE} LOGIN PASSWORD '{PASSWORD}';"
            f" GRANT SELECT ON relaywatch_blocks TO {READ_ROLE};")
    hba = pg.root / "data" / "pg_hba.conf"
    hba.write_text(f"host all {READ_ROLE} 127.0.0.1/32 scram-sha-256\n" + hba.read_text())
    pg.psql("SELECT pg_reload_conf()")


def target(pg: PostgresServer, password: str = PASSWORD) -> PgsqlTarget:
    return PgsqlTarget((f"inet:127.0.0.1:{pg.port}",), pg.dbname, READ_ROLE, password)


def cfs(pg: PostgresServer, password: str = PASSWORD) -> dict[str, str]:
    """The client and SASL .cf texts for PostfixRig.start("pgsql", ...)."""
    return {kind: cf_text(target(pg, password), kind) for kind in ("client", "sasl")}


def insert(pg: PostgresServer, kind: str, target_: str, until: float | None = None, host: str = "mx1") -> None:
    act = action("manual", "relay abuse").replace("'", "''")
    pg.psql(f"INSERT INTO relaywatch_blocks (kind, target, lookup_key, action, reason, rule, since, until, host) "
            f"VALUES ('{kind}', '{target_}', '{lookup_key(kind, target_)}', '{act}', 'relay abuse', 'manual', "
            f"{time.time()}, {'NULL' if until is None else until}, '{host}')")


def need_parts() -> None:
    """Postfix, postfix-pgsql and PostgreSQL 15, as root; skip without them (fail in CI)."""
    missing = ("Debian's postfix is not installed" if not postfix_installed() else
               "Debian's postfix-pgsql is not installed" if not postfix_pgsql_installed() else
               "Debian's postgresql-15 is not installed" if not postgres_installed() else
               "private Postfix and PostgreSQL instances need root" if os.geteuid() != 0 else None)
    if missing:
        if "1" in (os.environ.get("RELAYWATCH_REQUIRE_POSTGRES"), os.environ.get("RELAYWATCH_REQUIRE_POSTFIX")):
            pytest.fail(f"RELAYWATCH_REQUIRE_POSTGRES/POSTFIX=1 but {missing}", pytrace=False)
        pytest.skip(missing)
