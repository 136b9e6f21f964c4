"""Postfix's pgsql: lookup tables for relaywatch's blocks, as text: the .cf file, the role SQL.

A `pgsql:/etc/postfix/relaywatch-clients.cf` access map has no file of blocks: Postfix asks
PostgreSQL for each key (access(5): 218.144.1.2, then 218.144.1, 218.144) with the query of
core/blocks_table.py, logging in as a role that may only read the table. Pure: `install_maps`
and `pgsql_lookup` do the I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from relaywatch.core.blocks_table import QUERY_CLIENTS, QUERY_SASL, READ_ROLE, TABLE
from relaywatch.model import ConfigError
from relaywatch.postfix.mapkeys import reject_text, render_key

QUERIES = {"client": QUERY_CLIENTS, "sasl": QUERY_SASL}  # by access map (install_maps.TARGETS' kinds)
HEADER = ("# relaywatch: Postfix reads relaywatch's blocks from PostgreSQL ({what}).\n"
          "# Written by `relaywatch install-maps`; mode 0640 root:postfix: it holds a password.\n")
_WHAT = {"client": "check_client_access: clients and networks", "sasl": "check_sasl_access: SASL logins"}
_CF_KEYS = ("hosts", "user", "password", "dbname", "query")
_SAFE_VALUE = re.compile(r"[!-~]+")  # one printable ASCII word: nothing Postfix's parser would split or trim


@dataclass(frozen=True, slots=True)
class PgsqlTarget:
    """Where Postfix's client logs in: `hosts` in pgsql_table(5) form (inet:HOST:PORT, unix:/DIR)."""

    hosts: tuple[str, ...]
    dbname: str
    user: str = READ_ROLE
    password: str = ""


def lookup_key(kind: str, target: str) -> str:
    """The relaywatch_blocks.lookup_key of a block: the key Postfix asks for (InvalidBlock if none is safe)."""
    return render_key(kind, target, "pgsql")


def action(rule: str, reason: str) -> str:
    """The relaywatch_blocks.action of a block: the same REJECT text a hash: map holds."""
    return f"REJECT {reject_text(f'{rule}: {reason}')}"


def target_from_url(url: str, password: str = "") -> PgsqlTarget:
    """The hosts and database of `[state] database` (postgresql://...), for the read-only role."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError("[state] database: pgsql: access maps read relaywatch's blocks from its PostgreSQL "
                          "database; set [state] database = \"postgresql://HOST/DBNAME\"")
    query = parse_qs(parts.query)
    port = query.get("port", [""])[0]
    hosts: list[str] = []
    for item in parts.netloc.rpartition("@")[2].split(","):
        if not item:
            continue
        if item.startswith("["):
            raise ConfigError("[state] database: an IPv6 literal host cannot be named in Postfix's pgsql hosts "
                              "= (inet:HOST:PORT); use a host name")
        host, _, item_port = item.partition(":")
        hosts.append(f"inet:{unquote(host)}" + (f":{item_port or port}" if item_port or port else ""))
    hosts += [f"unix:{d}" for d in query.get("host", []) if d.startswith("/")]
    dbname = unquote(parts.path.lstrip("/")) or query.get("dbname", [""])[0]
    if not hosts or not dbname:
        raise ConfigError("[state] database: name the host and the database (postgresql://HOST:PORT/DBNAME): "
                          "Postfix's pgsql: tables log in there")
    for value in (*hosts, dbname):
        if not _SAFE_VALUE.fullmatch(value):
            raise ConfigError(f"[state] database: {value!r} cannot be written to a Postfix .cf file")
    return PgsqlTarget(tuple(hosts), dbname, READ_ROLE, password)


def cf_text(target: PgsqlTarget, kind: str) -> str:
    """The whole .cf file for the access map `kind` ("client" or "sasl")."""
    if not _SAFE_VALUE.fullmatch(target.password):
        raise ConfigError("the password of Postfix's PostgreSQL role must be one word of printable ASCII")
    values = {"hosts": " ".join(target.hosts), "user": target.user, "password": target.password,
              "dbname": target.dbname, "query": QUERIES[kind]}
    return HEADER.format(what=_WHAT[kind]) + "".join(f"{k} = {values[k]}\n" for k in _CF_KEYS)


def parse_cf(text: str) -> dict[str, str]:
    """`name = value` lines as Postfix reads them (comments, blank lines, continuation lines)."""
    out: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if line[0].isspace() and last:
            out[last] += " " + line.strip()
            continue
        name, sep, value = line.partition("=")
        if sep:
            last = name.strip()
            out[last] = value.strip()
    return out


def role_sql(target: PgsqlTarget) -> list[str]:
    """What the database's administrator runs once: a role that can log in and read the blocks, nothing else.
    CREATE ROLE needs a superuser or CREATEROLE, which the daemons' role (the database's owner) lacks."""
    secret = target.password.replace("'", "''")
    return [f"-- in database {target.dbname}, as a superuser or a role with CREATEROLE, once relaywatch has"
            f" created {TABLE} (its first start); until then Postfix defers every client at this lookup"
            " (451 4.3.5). Once for the fleet: on the next hosts (the same .cf files) the role exists already:",
            f"CREATE ROLE {target.user} LOGIN PASSWORD '{secret}';",
            f"GRANT SELECT ON {TABLE} TO {target.user};"]
