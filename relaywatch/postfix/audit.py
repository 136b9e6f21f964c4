"""`relaywatch audit`: find the holes that make a Postfix server an open relay or a block useless.

The 2003 incident relaywatch is built for: a server trusted two public /8s in `mynetworks` and
consulted its reject_list only after `permit_mynetworks`, so blocks were never applied; a relay
test from one address passed. User-facing text explains itself without that story.
`audit()` is pure (effective parameters in, findings out); `run_audit()` adds `postconf` and
the map files' mtimes. The Postfix rules themselves live in audit_eval.
"""

from __future__ import annotations

import ipaddress
import json
import re
import textwrap
from dataclasses import asdict

from relaywatch.model import Finding
from relaywatch.postfix import audit_eval as ev
from relaywatch.postfix import mynetworks as mn
from relaywatch.postfix.audit_blocks import (
    AuditMaps,
    block_findings,
    map_file_findings,
    scope_trust,
    type_mismatch_findings,
)
from relaywatch.postfix.audit_pgsql import database_map_findings
from relaywatch.postfix.postconf import postconf, postconf_services

SEVERITIES = ("error", "warning", "info")
EXIT_FINDINGS = 3  # error-level findings; 1 stays "could not run" (PostfixError), 78 bad relaywatch config
SMALL = {4: 256, 6: 1 << 80}  # more public addresses than a /24 (IPv4) or a /48 (IPv6) is not "a few hosts"
_LIST_DEPS = ev.LIST_DEPS


def audit(params: dict[str, str], services: dict[str, dict[str, str]], maps: AuditMaps,
          extra_addresses: tuple[str, ...] = (), explicit: frozenset[str] | None = None) -> list[Finding]:
    """All findings, errors first.

    `explicit`: names set in main.cf (`postconf -n`), if known; `extra_addresses` join the relay
    self-test (ValueError if one is not an IP address).
    """
    extra = tuple(str(ipaddress.ip_address(a)) for a in extra_addresses)
    scopes = ev.scopes(params, services)
    found: list[Finding] = []
    for scope in scopes:
        if scope.touches("mynetworks"):
            found += _mynetworks(scope, explicit)
        if scope.touches(*_LIST_DEPS) and not ev.is_guarded(scope.params):
            found.append(_unguarded(scope))
        found += block_findings(scope, maps)
        if maps.policy:
            found += _policy_service(scope, maps.policy)
    if maps.policy and not any(f.code == "policy-service" for f in found):
        found.append(Finding("warning", "policy-unused", f"relaywatch's policy service ({maps.policy}) is not asked",
                             "No restriction list has check_policy_service for it, so blocks wait for the map and "
                             "the inline budget does nothing.", _policy_fix(scopes[0], maps.policy), {}))
    found += type_mismatch_findings(scopes, maps)
    if maps.sasl_access_map and not any(s.params.get("smtpd_sasl_auth_enable") == "yes" for s in scopes):
        found.append(Finding("info", "sasl-map-unused", "SASL is not enabled: the SASL access map has no effect",
                             "No smtpd service sets smtpd_sasl_auth_enable = yes, so nobody authenticates and "
                             "check_sasl_access never matches.", "Nothing to do unless you enable SASL.", {}))
    found.append(_selftest(scopes, extra))
    return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


_POLICY_DEFAULT = re.compile(r"default_action\s*=\s*([^,}]+)", re.IGNORECASE)


def _endpoint(listen: str) -> str:
    return f"unix:{listen}" if listen.startswith("/") else f"inet:{listen}"


def _asks(rule: ev.Rule, listen: str) -> bool:
    """Is `rule` a check_policy_service of relaywatch's service at `listen`?"""
    target = rule.arg.replace(" ", "").strip("{}").split(",")[0]
    return rule.name == "check_policy_service" and (target == _endpoint(listen) or (
        listen.startswith("/") and target.startswith("unix:") and listen.endswith("/" + target[5:])))


def _policy_fix(scope: ev.Scope, listen: str, list_name: str = "smtpd_recipient_restrictions") -> str:
    """The admin's own list with relaywatch's service first, failing open; nothing else in it is dropped."""
    entry = f"check_policy_service {{ {_endpoint(listen)}, default_action=DUNNO, timeout=2s, try_limit=1 }}"
    rest = [str(r) for r in ev.rules(scope.params, list_name, flatten=False) if not _asks(r, listen)]
    return scope.line(list_name, ", ".join([entry, *rest])) + "\npostfix reload"


def _policy_service(scope: ev.Scope, listen: str) -> list[Finding]:
    """relaywatch's policy service must fail open (a dead relaywatch must never stop mail) and
    come before permit_mynetworks (which ends the list: the 2003 trap again)."""
    out = []
    for list_name in ev.LISTS:
        rules = ev.rules(scope.params, list_name)
        for i, rule in enumerate(rules):
            if not _asks(rule, listen):
                continue
            out.append(Finding("info", "policy-service", f"[{scope.name}] {list_name} asks relaywatch's policy service",
                               "Blocks take effect at the next RCPT, in sessions already open too.", "Nothing to do.",
                               {}))
            own = _POLICY_DEFAULT.search(rule.arg) if rule.arg.startswith("{") else None
            action = (own[1] if own else scope.params.get("smtpd_policy_service_default_action", "451")).strip()
            if action.upper() != "DUNNO":
                out.append(Finding("warning", "policy-fail-closed", f"[{scope.name}] mail stops when relaywatch's "
                                   "policy service is down", f"check_policy_service in {list_name} falls back to "
                                   f"{action!r}: a stopped or slow relaywatch would defer all mail.",
                                   _policy_fix(scope, listen, list_name), {}))
            if any(r.name == "permit_mynetworks" for r in rules[:i]):
                out.append(Finding("warning", "policy-after-permit", f"[{scope.name}] relaywatch's policy service "
                                   "comes after permit_mynetworks", f"In {list_name}, permit_mynetworks ends the list "
                                   "first for your networks (the 2003 hole): the service never sees them.",
                                   _policy_fix(scope, listen, list_name), {}))
    return out


_ODD = {"table": "a lookup table", "file": "a file of patterns", "hostname": "matches clients by verified "
        "reverse DNS name", "partial": "matches nothing: only access maps accept partial addresses like 218.144"}


def _mynetworks(scope: ev.Scope, explicit: frozenset[str] | None) -> list[Finding]:
    value = scope.params.get("mynetworks", "")
    trust = mn.evaluate(value)
    public = mn.inter(list(trust.trusted), mn.PUBLIC)
    counts = {v: mn.size(mn.inter(public, mn.FAMILY[v])) for v in (4, 6)}
    where = f"[{scope.name}] "
    out: list[Finding] = []
    keep = [e.raw for e in trust.entries if not (e.net is not None and e.kind == "net" and not e.negated
                                                  and mn.inter([mn.span(e.net)], mn.PUBLIC)
                                                  and e.net.num_addresses > 1)]
    fix = (f"{scope.line('mynetworks', ', '.join(keep) or '127.0.0.0/8, [::1]/128')}\n"
           "# add back each host you really trust as a bare address (210.1.2.3), never as a /8\npostfix reload")
    details: dict[str, object] = {"scope": scope.name, "mynetworks": value, "public_ipv4": counts[4],
                                  "public_ipv6": counts[6], "entries": dict(p for p in trust.added if p[1])}
    if any(not mn.minus(mn.inter(mn.PUBLIC, mn.FAMILY[v]), list(trust.trusted)) for v in (4, 6)):
        out.append(Finding("error", "mynetworks-everything", where + "mynetworks trusts the whole Internet",
                           f"mynetworks = {value} includes every public address (0.0.0.0/0 or [::]/0): anyone "
                           "passes permit_mynetworks and may relay to any domain, and no block listed after "
                           "permit_mynetworks applies to them.", fix, details))
    elif counts[4] > SMALL[4] or counts[6] > SMALL[6]:
        out.append(Finding("error", "mynetworks-public", where + "mynetworks trusts " + " and ".join(
                           f"{counts[v]:,} public IPv{v}" for v in (4, 6) if counts[v]) + " addresses",
                           "Every client in mynetworks passes permit_mynetworks: it may relay to any domain "
                           "without authenticating, and a reject_list consulted after permit_mynetworks never "
                           "applies to it. (`210.x.y.z/8, 218.u.v.w/8` once meant two hosts and trusted 33,554,432 "
                           "addresses: a server became an open relay that way.) Wide public entries: "
                           + ", ".join(f"{k} ({n:,})" for k, n in trust.added if n > 1) + ".", fix, details))
    elif counts[4] or counts[6]:
        out.append(Finding("info", "mynetworks-public-small", where + f"mynetworks trusts {counts[4] + counts[6]:,} "
                           "public address(es)", "These may relay without authentication; make sure each one is "
                           "yours: " + ", ".join(k for k, n in trust.added if n) + ".", "Nothing, if they are.",
                           details))
    broken = [e for e in trust.entries if e.kind in mn.BROKEN]
    if broken:
        out.append(Finding("error", "mynetworks-invalid", where + "mynetworks has entries Postfix cannot match",
                           "Postfix 3 stops at these entries with a lookup error (`non-null host address bits`, "
                           "or an IPv6 network without [brackets] read as a table), so every client not matched "
                           "by an earlier entry gets `451 Temporary lookup failure` and legitimate mail is "
                           "deferred. Do not follow Postfix's own hint (`perhaps you should use 210.0.0.0/8`) "
                           "blindly: it trusts a whole /8, an open relay, where a host was meant. "
                           + "; ".join(_broken_hint(e) for e in broken) + ".",
                           "\n".join(_broken_fix(e) for e in broken) + "\npostfix reload",
                           {"scope": scope.name, "entries": [e.raw for e in broken]}))
    odd = [(e.raw, _ODD[e.kind]) for e in trust.entries if e.kind in _ODD] + [
        (raw, "a negation after an entry that already matched: first match wins, move it before") for raw in
        trust.shadowed]
    if odd:
        out.append(Finding("warning", "mynetworks-unchecked", where + "mynetworks entries that need a human look",
                           "Tables, files and hostnames cannot be evaluated here (the counts and the relay "
                           "self-test treat them as unknown); the others match nothing: "
                           + "; ".join(f"{r}: {why}" for r, why in odd) + ".",
                           "Prefer explicit addresses and [ipv6]/len networks in mynetworks.",
                           {"scope": scope.name, "entries": dict(odd)}))
    style = scope.params.get("mynetworks_style", "")
    if (scope.name == "main.cf" and explicit is not None and "mynetworks" not in explicit
            and style in ("class", "subnet") and (counts[4] or counts[6])):
        out.append(Finding("warning", "mynetworks-style", f"mynetworks_style = {style} trusts your public "
                           "interfaces' neighbours", f"mynetworks is not set, so Postfix derives it from the "
                           f"{style} of every interface address ({value}); on a public interface that trusts "
                           "other customers of your provider. compatibility_level >= 2 defaults to host.",
                           "mynetworks_style = host\n(or set mynetworks explicitly)\npostfix reload", details))
    return out


def _broken_hint(e: mn.Entry) -> str:
    return e.raw + ": " + {"hostbits": "host bits set", "badmask": "not an address",
                           "badtable": "IPv6 without brackets"}[e.kind]


def _broken_fix(e: mn.Entry) -> str:
    body = e.raw.lstrip("!")
    neg = "!" if e.negated else ""
    if e.kind == "badtable":
        addr, _, plen = body.partition("/")
        return f"replace {e.raw} with {neg}[{addr}]" + (f"/{plen}" if plen else "")
    if e.net is None:
        return f"replace {e.raw} with a full network address (192.168.1.0/24, not 192.168.1/24)"
    return (f"replace {e.raw} with {neg}{body.split('/')[0]} (the host; only if you mean the whole "
            f"network: {neg}{e.net if e.net.version == 4 else f'[{e.net.network_address}]/{e.net.prefixlen}'})")


def _unguarded(scope: ev.Scope) -> Finding:
    lists = {n: scope.params.get(n, "") for n in ev.RELAY_LISTS}
    return Finding("error", "relay-unguarded", f"[{scope.name}] no reject_unauth_destination before a permit",
                   "Neither smtpd_relay_restrictions nor smtpd_recipient_restrictions reaches "
                   "reject_unauth_destination (or defer_unauth_destination, reject) before a plain permit, so "
                   "any client that no earlier rule rejects may relay to every domain. Postfix 3 smtpd refuses "
                   "to start like this; an older Postfix, or a restriction class hiding it, runs an open relay.",
                   scope.line("smtpd_relay_restrictions",
                              "permit_mynetworks, permit_sasl_authenticated, reject_unauth_destination")
                   + "\npostfix reload", {"scope": scope.name, **lists})


def _selftest(scopes: list[ev.Scope], extra: tuple[str, ...]) -> Finding:
    """Which sample public addresses would relay, per service: one address proves nothing."""
    per: dict[str, dict[str, list[str]]] = {}
    for scope in scopes:
        if scope.loopback_only or not scope.touches(*_LIST_DEPS, "mynetworks"):
            continue
        trust = scope_trust(scope)
        res: dict[str, list[str]] = {"relayed": [], "unknown": [], "extra_relayed": [], "extra_unknown": []}
        for addr, prefix in [(a, "") for a in mn.SAMPLES] + [(a, "extra_") for a in extra]:
            client = ev.Client(mn.membership(trust, ipaddress.ip_network(addr)), foreign=True)
            outcome = ev.simulate(scope.params, client, {}).outcome
            if outcome != "reject":
                res[prefix + ("relayed" if outcome == "accept" else "unknown")].append(addr)
        per[scope.name] = res
    worst = max(per.values(), key=lambda r: len(r["relayed"]))
    n, m = len(worst["relayed"]), len(mn.SAMPLES)
    name = next(k for k, v in per.items() if v is worst)
    text = (f"{n} of {m} sample public addresses (one in every public IPv4 /8 and IPv6 /8, plus three of a "
            "2003 open-relay incident) "
            f"would be relayed without authentication through {name}")
    lines = [f"{k}: {len(v['relayed'])} of {m} relayed" + (f" ({', '.join(v['relayed'][:8])}"
             + (", ..." if len(v['relayed']) > 8 else "") + ")" if v["relayed"] else "")
             + (f"; {len(v['unknown'])} depend on entries the audit cannot evaluate" if v["unknown"] else "")
             for k, v in per.items()]
    for k, v in per.items():
        lines += [f"{k}: named address {a} would be relayed" for a in v["extra_relayed"]]
        lines += [f"{k}: named address {a} depends on entries the audit cannot evaluate" for a in v["extra_unknown"]]
    if n and mn.SEED_TESTER not in worst["relayed"]:
        lines.append(f"A relay test run from {mn.SEED_TESTER} (a public relay tester) would still have passed: "
                     "a test from one address says nothing about the others.")
    return Finding("error" if n else "info", "relay-selftest", text, "\n".join(lines),
                   "Fix the mynetworks and relay-restriction findings above, then run the audit again."
                   if n else "Nothing to do.", {"samples": m, "services": per})


# --- I/O -------------------------------------------------------------------------------------


def run_audit(config_directory: str | None, maps: AuditMaps, extra_addresses: tuple[str, ...] = ()) -> list[Finding]:
    """Audit the live configuration (`postconf -c DIR`) and relaywatch's map files.

    Raises PostfixError when postconf fails (no main.cf, no Postfix).
    """
    params = postconf(config_directory)
    services = postconf_services(config_directory)
    explicit = frozenset(postconf(config_directory, explicit_only=True))
    found = (audit(params, services, maps, extra_addresses, explicit) + map_file_findings(params, services, maps)
             + database_map_findings(params, services, maps))
    return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


def exit_code(findings: list[Finding]) -> int:
    """0 unless an error-level finding exists (EXIT_FINDINGS = 3); warnings never fail cron or CI."""
    return EXIT_FINDINGS if any(f.severity == "error" for f in findings) else 0


def format_text(findings: list[Finding]) -> str:
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    out = [f"relaywatch audit: {counts['error']} error(s), {counts['warning']} warning(s), {counts['info']} info"]
    for severity in SEVERITIES:
        for f in (f for f in findings if f.severity == severity):
            out += ["", f"{severity.upper():7} {f.code}: {f.title}"]
            out += [textwrap.fill(p, 100, initial_indent="    ", subsequent_indent="    ")
                    for p in f.explanation.splitlines()]
            out += ["    fix:"] + [f"      {line}" for line in f.fix.splitlines()]
    return "\n".join(out) + "\n"


def to_json(findings: list[Finding]) -> str:
    counts = {s: sum(f.severity == s for f in findings) for s in SEVERITIES}
    return json.dumps({"counts": counts, "exit_code": exit_code(findings),
                       "findings": [asdict(f) for f in findings]}, indent=2)


