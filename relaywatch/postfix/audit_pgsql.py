"""Audit findings about pgsql: access maps: what Postfix does when their database is down.

A `pgsql:` table whose server cannot be reached does not answer "not found": the lookup
fails, and smtpd defers the client (measured: `451 4.3.5 ... Client host rejected: Server
configuration error` at RCPT). Nothing is relayed unchecked and nothing is lost, but no mail
comes in through that check until the database is back, and for up to a minute longer in each
smtpd process that saw it fail (dict_pgsql.c waits RETRY_CONN_INTV = 60 s before it tries a
failed server again; `postfix reload` ends that at once). That is a choice the site should
make knowingly, so the audit says it, and what this site's configuration chose (direct or
through proxymap, one server or several).
Reads the .cf files (hosts =), otherwise pure.
"""

from __future__ import annotations

from pathlib import Path

from relaywatch.model import Finding
from relaywatch.postfix import audit_eval as ev
from relaywatch.postfix.audit_blocks import AuditMaps
from relaywatch.postfix.pgsql_maps import parse_cf

_WHO = {"client": "every client", "sasl": "every authenticated user"}


def database_map_findings(params: dict[str, str], services: dict[str, dict[str, str]],
                          maps: AuditMaps) -> list[Finding]:
    """One warning per pgsql: map of relaywatch's that a restriction list reads."""
    out: list[Finding] = []
    default = params.get("default_database_type", "hash")
    for kind, spec in maps.by_kind().items():
        map_type, path = ev.split_map(spec, default)
        if map_type != "pgsql":
            continue
        uses = [(scope.name, list_name, rule) for scope in ev.scopes(params, services)
                for list_name in ev.LISTS for rule in ev.rules(scope.params, list_name)
                if ev.refers_to(rule, kind, spec, scope.params)]
        if not uses:
            continue
        hosts = _hosts(path)
        proxied = sorted({f"{name}: {list_name}" for name, list_name, rule in uses if rule.arg.startswith("proxy:")})
        direct = sorted({f"{name}: {list_name}" for name, list_name, rule in uses
                         if not rule.arg.startswith("proxy:")})
        choice = []
        if direct:
            choice.append(f"each smtpd process asks PostgreSQL itself ({', '.join(direct)})")
        if proxied:
            choice.append(f"through proxymap, which shares the connections but fails alike ({', '.join(proxied)})")
        servers = (f"{len(hosts)} servers in hosts = ({' '.join(hosts)}): a lookup fails only when none answers"
                   if len(hosts) > 1 else f"one server ({hosts[0]})" if hosts else
                   f"the servers could not be read from {path}")
        check = ev.CHECK[kind]
        out.append(Finding(
            "warning", "pgsql-map-defers", f"while PostgreSQL is down, Postfix defers {_WHO[kind]} at "
            f"{check} {spec}",
            f"{check} asks PostgreSQL for {_WHO[kind]} that reaches it. While the database cannot be reached "
            "(stopped, restarting, network), the lookup fails and smtpd answers `451 4.3.5 Server configuration "
            "error` at RCPT: the mail is deferred and its sender retries; nothing is accepted unchecked and "
            "nothing is lost, but no mail comes in this way until the database is back, and for up to a minute "
            "longer in each smtpd process that saw it fail (Postfix's pgsql client waits 60 s before it tries a "
            "failed server again; `postfix reload` after the outage ends that). This site's choice: "
            f"{'; '.join(choice)}; {servers}.",
            "Keep it if a deferral during a database outage is acceptable (the blocks stay enforced; mail waits "
            "at the senders). Otherwise: list a second server (a replica) in hosts = of "
            f"{path}; or keep a local map instead ({kind}_access_map = \"hash:...\"), which relaywatch "
            "re-syncs from PostgreSQL on every NOTIFY relaywatch_blocks.",
            {"map": spec, "hosts": hosts, "direct": direct, "proxy": proxied}))
    return out


def _hosts(path: str) -> list[str]:
    try:
        return parse_cf(Path(path).read_text(encoding="utf-8", errors="replace")).get("hosts", "").split()
    except OSError:
        return []
