"""`relaywatch install-maps`: put relaywatch's lookups in front of the admin's restriction lists.

Replacing a whole restriction list (the old INSTALL.md step) throws away RBLs, postgrey and
policy services. This computes, from the lists as written (`postconf NAME`, and `postconf -P`
for master.cf `-o` overrides, `$name` references kept), the one edit per list that puts
`check_client_access MAP` first in smtpd_client_restrictions and `check_sasl_access MAP`
first in smtpd_recipient_restrictions, leaving every other entry as it was. A Postfix
restriction list stops at its first permit, and a reject in any list wins, so a lookup that
comes first in a list is read for every client. Running it again changes nothing.

`plan()` is pure; `commands()` turns a plan into argument lists that `execute()` runs
(never a shell) and `--dry-run` prints, so what is printed is exactly what would run.
A `pgsql:` map has no file to create or compile: its .cf file and the role's SQL come from
pgsql_install.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from relaywatch.model import ConfigError, PostfixError
from relaywatch.postfix import audit_eval as ev
from relaywatch.postfix.mapkeys import MapSpec
from relaywatch.postfix.pgsql_install import PgsqlPlan, describe_cf, plan_cf, write_cf
from relaywatch.postfix.postconf import postconf, postconf_services

POSTCONF = "/usr/sbin/postconf"
POSTMAP = "/usr/sbin/postmap"
POSTFIX = "/usr/sbin/postfix"

# Which list each lookup goes in front of, and the restriction that reads the map.
TARGETS = {"client": ("smtpd_client_restrictions", "check_client_access"),
           "sasl": ("smtpd_recipient_restrictions", "check_sasl_access")}


@dataclass(frozen=True, slots=True)
class Edit:
    """One restriction list of main.cf (`scope` "main.cf") or of a master.cf service ("submission/inet")."""

    scope: str
    param: str
    old: str
    new: str

    def argv(self, config_directory: str | None) -> list[str]:
        if self.scope == "main.cf":
            return [POSTCONF, *_c(config_directory), "-e", f"{self.param} = {self.new}"]
        return [POSTCONF, *_c(config_directory), "-P", f"{self.scope}/{self.param}={self.new}"]


@dataclass(frozen=True, slots=True)
class Plan:
    edits: tuple[Edit, ...]
    create: tuple[MapSpec, ...]  # map source files that do not exist yet (created empty)
    build: tuple[MapSpec, ...]  # maps to postmap (new, or no compiled file yet)
    skipped: tuple[str, ...]  # services left alone, with the reason
    pgsql: PgsqlPlan | None = None  # the .cf files of pgsql: maps, and the role's SQL

    @property
    def changes(self) -> bool:
        return bool(self.edits or self.create or self.build or (self.pgsql and self.pgsql.write))


def _c(config_directory: str | None) -> list[str]:
    return ["-c", config_directory] if config_directory else []


def _first_is(value: str, params: dict[str, str], param: str, kind: str, spec: MapSpec) -> bool:
    rules = ev.rules({**params, param: value}, param, flatten=False)
    return bool(rules) and ev.refers_to(rules[0], kind, str(spec), params)


def front(value: str, params: dict[str, str], param: str, kind: str, spec: MapSpec, sep: str) -> str | None:
    """`value` with relaywatch's lookup first, or None when it already is.

    The admin's text is kept as written (a `$name`, a bare table, spacing) unless the lookup
    was already in the list further down: then the list is rebuilt without it, entry by entry.
    """
    if _first_is(value, params, param, kind, spec):
        return None
    check = f"{TARGETS[kind][1]} {spec}"
    rules = ev.rules({**params, param: value}, param, flatten=False)
    if any(ev.refers_to(r, kind, str(spec), params) for r in rules):
        rest = [str(r) for r in rules if not ev.refers_to(r, kind, str(spec), params)]
    else:
        rest = [value.strip()] if value.strip() else []
    if sep == ",":  # master.cf: a value without spaces needs no { } quoting
        check = check.replace(" ", ",")
        rest = [",".join(ev.split_list(r)) for r in rest]
    return sep.join([check, *rest])


def plan_edits(main: dict[str, str], services: dict[str, dict[str, str]],
               maps: dict[str, MapSpec]) -> tuple[list[Edit], list[str]]:
    """The edits to main.cf and to each master.cf service that overrides a list. Pure."""
    edits: list[Edit] = []
    skipped: list[str] = []
    for kind, spec in maps.items():
        param = TARGETS[kind][0]
        new = front(main.get(param, ""), main, param, kind, spec, ", ")
        if new is not None:
            edits.append(Edit("main.cf", param, main.get(param, ""), new))
    for name, over in sorted(services.items()):
        relevant = [k for k in maps if TARGETS[k][0] in over]
        if not relevant:
            continue
        if ev.Scope(name, {}, frozenset()).loopback_only:
            skipped.append(f"{name}: a loopback-only listener (content filter re-injection), no client reaches it")
            continue
        params = {**main, **over}
        for kind in relevant:
            param = TARGETS[kind][0]
            new = front(over[param], params, param, kind, maps[kind], ",")
            if new is not None:
                edits.append(Edit(name, param, over[param], new))
    return edits, skipped


def plan(config_directory: str | None, maps: dict[str, MapSpec], database_url: str = "") -> Plan:
    """Read Postfix's lists and the map files; decide what to change (nothing is changed).
    `database_url`: [state] database, where pgsql: maps log in."""
    main = postconf(config_directory, tuple({TARGETS[k][0] for k in maps} | {"default_database_type"}),
                    expand=False)
    edits, skipped = plan_edits(main, postconf_services(config_directory, expand=False), maps)
    create = tuple(s for s in maps.values() if not s.database and not os.path.exists(s.path))
    build = tuple(s for s in maps.values()
                  if s.compiled is not None and (s in create or not os.path.exists(s.compiled)))
    pgsql = plan_cf(maps, database_url) if any(s.database for s in maps.values()) else None
    return Plan(tuple(edits), create, build, tuple(skipped), pgsql)


def commands(p: Plan, config_directory: str | None) -> list[list[str]]:
    """The commands that carry out `p`, in order (creating the empty map files is done in Python)."""
    cmds = [e.argv(config_directory) for e in p.edits]
    cmds += [[POSTMAP, *_c(config_directory), str(s)] for s in p.build]
    if p.changes:
        cmds.append([POSTFIX, *_c(config_directory), "reload"])
    return cmds


def describe(p: Plan, config_directory: str | None, *, dry_run: bool = True) -> list[str]:
    """What --dry-run prints: a comment per change, then each command exactly as it would run,
    then the SQL that makes the role of pgsql: maps (a new password hidden in a dry run)."""
    lines = [f"# {e.scope}: {e.param}: relaywatch's lookup goes first; was: {e.old or '(empty)'}"
             for e in p.edits]
    lines += [f"# skipped {x}" for x in p.skipped]
    lines += [f"# create {s.path} (empty, mode 0644)" for s in p.create]
    sql = describe_cf(p.pgsql, dry_run=dry_run) if p.pgsql else []
    lines += [line for line in sql if line.startswith("#")]
    lines += [shlex.join(c) for c in commands(p, config_directory)]
    return lines + [line for line in sql if not line.startswith("#")]


def execute(p: Plan, config_directory: str | None, say: Callable[[str], None]) -> None:
    """Carry out `p`: .cf files, edits, empty maps, postmap, then reload if Postfix runs; then the SQL
    the database owner runs. Stops at the first failure."""
    for cf in p.pgsql.write if p.pgsql else ():
        write_cf(cf)
        say(f"wrote {cf.spec.path} (mode 0640 root:postfix)")
    for s in p.create:
        with open(s.path, "x", encoding="utf-8"):
            pass
        os.chmod(s.path, 0o644)
        say(f"created {s.path}")
    for cmd in commands(p, config_directory):
        if cmd[-1] == "reload" and not _running(config_directory):
            say("Postfix is not running: the changes take effect when it starts")
            continue
        _run(cmd)
        say(shlex.join(cmd))
    if p.pgsql:
        for line in describe_cf(p.pgsql, dry_run=False):
            if not line.startswith("#"):
                say(line)


def _running(config_directory: str | None) -> bool:
    return subprocess.run([POSTFIX, *_c(config_directory), "status"], capture_output=True,
                          timeout=60, check=False).returncode == 0


def _run(cmd: list[str]) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    except OSError as exc:
        raise PostfixError(f"cannot run {cmd[0]}: {exc}; is Postfix installed?") from exc
    except subprocess.TimeoutExpired as exc:
        raise PostfixError(f"{shlex.join(cmd)} took longer than 60 s") from exc
    if done.returncode != 0:
        raise PostfixError(f"{shlex.join(cmd)} failed (exit {done.returncode}): "
                           f"{done.stderr.strip() or 'no message'}; the commands before it were applied")


def map_specs(client_map: str, sasl_map: str, default_type: str) -> dict[str, MapSpec]:
    """The configured maps by kind; an empty sasl_access_map means none."""
    maps: dict[str, MapSpec] = {}
    for kind, key, text in (("client", "client_access_map", client_map), ("sasl", "sasl_access_map", sasl_map)):
        if text:
            try:
                maps[kind] = MapSpec.parse(text, default_type=default_type)
            except ConfigError as exc:
                raise ConfigError(f"[postfix] {key}: {exc}") from exc
    return maps

