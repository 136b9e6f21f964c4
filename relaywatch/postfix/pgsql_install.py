"""`relaywatch install-maps` for pgsql: access maps: the two .cf files and the role's SQL.

The .cf files get the hosts and database of `[state] database` and the read-only role
relaywatch_postfix with a generated password (kept from an existing .cf, so a second run
writes nothing and prints the same SQL); mode 0640 root:postfix, written atomically. An
existing .cf that differs from what relaywatch would write is left alone and named: the admin
may have pointed Postfix at a replica. Postfix's proxy: is not needed (each smtpd keeps one
connection, closed after a minute idle). The SQL is printed, never run: the database owner runs
it once (relaywatch's own login need not be allowed to create roles).
"""

from __future__ import annotations

import grp
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from relaywatch.model import PostfixError
from relaywatch.postfix.mapkeys import MapSpec
from relaywatch.postfix.pgsql_maps import PgsqlTarget, cf_text, parse_cf, role_sql, target_from_url

CF_MODE = 0o640
HIDDEN = "<generated when the .cf files are written>"
_COMPARED = ("hosts", "user", "dbname", "query")


@dataclass(frozen=True, slots=True)
class CfFile:
    spec: MapSpec
    text: str  # the whole file, password included


@dataclass(frozen=True, slots=True)
class PgsqlPlan:
    write: tuple[CfFile, ...]  # .cf files that do not exist yet
    kept: tuple[str, ...]  # existing .cf files unlike what relaywatch would write: left alone, and why
    role: PgsqlTarget  # whose CREATE ROLE is printed
    new_password: bool  # generated now (hidden in --dry-run: the real run generates its own)


def plan_cf(maps: dict[str, MapSpec], database_url: str) -> PgsqlPlan:
    """What to write for the pgsql: maps among `maps` (kind "client"/"sasl" -> spec); reads existing .cf files."""
    specs = {kind: spec for kind, spec in maps.items() if spec.database}
    existing = {kind: parse_cf(_read(spec.path)) for kind, spec in specs.items() if os.path.lexists(spec.path)}
    old = next((cf.get("password", "") for cf in existing.values() if cf.get("password")), "")
    target = target_from_url(database_url, old or secrets.token_urlsafe(24))
    write, kept = [], []
    for kind, spec in specs.items():
        text = cf_text(target, kind)
        if kind not in existing:
            write.append(CfFile(spec, text))
            continue
        want = parse_cf(text)
        differ = [k for k in _COMPARED if existing[kind].get(k) != want[k]]
        if differ:
            kept.append(f"{spec.path} differs from what relaywatch would write ({', '.join(differ)}): kept as it "
                        "is; remove it to have it written again")
    return PgsqlPlan(tuple(write), tuple(kept), target, not old)


def describe_cf(p: PgsqlPlan, *, dry_run: bool) -> list[str]:
    """Comments for the files, then the SQL (the password hidden in a dry run when it is new)."""
    lines = [f"# write {cf.spec.path} (mode 0640 root:postfix): hosts = {' '.join(p.role.hosts)}, "
             f"dbname = {p.role.dbname}, user = {p.role.user}" for cf in p.write]
    lines += [f"# kept {text}" for text in p.kept]
    role = p.role
    if dry_run and p.new_password:
        role = PgsqlTarget(role.hosts, role.dbname, role.user, "x")
    sql = role_sql(role)
    if role is not p.role:
        sql = [line.replace("PASSWORD 'x'", f"PASSWORD '{HIDDEN}'") for line in sql]
    return lines + sql


def write_cf(cf: CfFile) -> None:
    """Write one .cf atomically, 0640 root:postfix, never through a symlink and never over a file."""
    try:
        gid = grp.getgrnam("postfix").gr_gid
    except KeyError:
        raise PostfixError("there is no group postfix: is Postfix installed?") from None
    path = Path(cf.spec.path)
    staged = path.with_name(f".{path.name}.relaywatch-new")
    try:
        staged.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            os.fchown(f.fileno(), 0, gid)
            os.fchmod(f.fileno(), CF_MODE)
            f.write(cf.text)
            f.flush()
            os.fsync(f.fileno())
        os.link(staged, path)  # fails if the file appeared meanwhile: it is never overwritten
    finally:
        staged.unlink(missing_ok=True)


def _read(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, encoding="utf-8", errors="replace") as f:
        return f.read()
