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
from dataclasses import asdict, dataclass
from pathlib import Path

from relaywatch.model import ENFORCEMENT, Finding, Kind
from relaywatch.postfix import audit_eval as ev
from relaywatch.postfix.postconf import postconf, postconf_services

SEVERITIES = ("error", "warning", "info")
EXIT_FINDINGS = 3  # error-level findings; 1 stays "could not run" (PostfixError), 78 bad relaywatch config
SMALL = {4: 256, 6: 1 << 80}  # more public addresses than a /24 (IPv4) or a /48 (IPv6) is not "a few hosts"
SEED_TESTER = ev.SEED_TESTER
SAMPLES = ev.SAMPLES
_LIST_DEPS = ev.LIST_DEPS
_COMPILED = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb"}


@dataclass(frozen=True)
class AuditMaps:
    """relaywatch's own maps as configured, e.g. "hash:/etc/postfix/reject_list"."""

    client_access_map: str | None = None
    sasl_access_map: str | None = None
    policy: str | None = None  # [policy] listen: relaywatch's inline policy service

    def by_kind(self) -> dict[str, str]:
        return {k: v for k, v in (("client", self.client_access_map), ("sasl", self.sasl_access_map)) if v}


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
        found += _blocks(scope, maps)
        if maps.policy:
            found += _policy_service(scope, maps.policy)
    if maps.policy and not any(f.code == "policy-service" for f in found):
        found.append(Finding("warning", "policy-unused", f"relaywatch's policy service ({maps.policy}) is not asked",
                             "No restriction list has check_policy_service for it, so blocks wait for the map and "
                             "the inline budget does nothing.", _policy_fix(scopes[0], maps.policy), {}))
    found += _type_mismatch(scopes, maps)
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


def _trust(scope: ev.Scope) -> ev.Trust:
    return ev.evaluate(scope.params.get("mynetworks", ""))


_ODD = {"table": "a lookup table", "file": "a file of patterns", "hostname": "matches clients by verified "
        "reverse DNS name", "partial": "matches nothing: only access maps accept partial addresses like 218.144"}


def _mynetworks(scope: ev.Scope, explicit: frozenset[str] | None) -> list[Finding]:
    value = scope.params.get("mynetworks", "")
    trust = ev.evaluate(value)
    public = ev.inter(list(trust.trusted), ev.PUBLIC)
    counts = {v: ev.size(ev.inter(public, ev.FAMILY[v])) for v in (4, 6)}
    where = f"[{scope.name}] "
    out: list[Finding] = []
    keep = [e.raw for e in trust.entries if not (e.net is not None and e.kind == "net" and not e.negated
                                                  and ev.inter([ev.span(e.net)], ev.PUBLIC)
                                                  and e.net.num_addresses > 1)]
    fix = (f"{scope.line('mynetworks', ', '.join(keep) or '127.0.0.0/8, [::1]/128')}\n"
           "# add back each host you really trust as a bare address (210.1.2.3), never as a /8\npostfix reload")
    details: dict[str, object] = {"scope": scope.name, "mynetworks": value, "public_ipv4": counts[4],
                                  "public_ipv6": counts[6], "entries": dict(p for p in trust.added if p[1])}
    if any(not ev.minus(ev.inter(ev.PUBLIC, ev.FAMILY[v]), list(trust.trusted)) for v in (4, 6)):
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
    broken = [e for e in trust.entries if e.kind in ev.BROKEN]
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


def _broken_hint(e: ev.Entry) -> str:
    return e.raw + ": " + {"hostbits": "host bits set", "badmask": "not an address",
                           "badtable": "IPv6 without brackets"}[e.kind]


def _broken_fix(e: ev.Entry) -> str:
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


def _blocks(scope: ev.Scope, maps: AuditMaps) -> list[Finding]:
    """Would a REJECT in relaywatch's maps reach each kind of client through this service?"""
    out: list[Finding] = []
    mapd = maps.by_kind()
    sasl_on = scope.params.get("smtpd_sasl_auth_enable") == "yes"
    if "client" in mapd and not scope.loopback_only:
        spec = mapd["client"]
        trust = _trust(scope)
        lan = bool(ev.minus(list(trust.trusted), ev.LOOPBACK))
        has_mynet = bool(trust.trusted or trust.maybe or trust.unsure)
        anyone = "client-block-bypassed" if _refs(scope, "client", spec) else "client-map-unreferenced"
        cases = [(ev.Client("no", listed="client"), anyone, "error", "any client", _LIST_DEPS),
                 (ev.Client("yes", listed="client"), "client-block-bypassed-mynetworks",
                  "error" if lan else "warning", "a client inside mynetworks", (*_LIST_DEPS, "mynetworks")),
                 (ev.Client("no", sasl=True, listed="client"), "client-block-bypassed-sasl", "warning",
                  "a client that authenticates", (*_LIST_DEPS, "smtpd_sasl_auth_enable"))]
        for client, code, severity, who, deps in cases:
            if (client.sasl and not sasl_on) or (client.mynet == "yes" and not has_mynet) or not scope.touches(*deps):
                continue
            verdict = ev.simulate(scope.params, client, mapd)
            if verdict.outcome != "reject":
                out.append(_bypass(scope, "client", spec, code, severity, who, verdict))
                if code == anyone:
                    break  # a hole for everyone: the narrower cases add nothing
    if "sasl" in mapd and sasl_on and not scope.loopback_only and scope.touches(*_LIST_DEPS, "smtpd_sasl_auth_enable"):
        verdict = ev.simulate(scope.params, ev.Client("no", sasl=True, listed="sasl"), mapd)
        if verdict.outcome != "reject":
            code = "sasl-block-bypassed" if _refs(scope, "sasl", mapd["sasl"]) else "sasl-map-unreferenced"
            out.append(_bypass(scope, "sasl", mapd["sasl"], code, "error", "an authenticated user", verdict))
    return out


def _refs(scope: ev.Scope, kind: str, spec: str) -> list[tuple[str, int, ev.Rule]]:
    return [(n, i, r) for n in ev.LISTS for i, r in enumerate(ev.rules(scope.params, n), 1)
            if ev.refers_to(r, kind, spec, scope.params)]


def _bypass(scope: ev.Scope, kind: str, spec: str, code: str, severity: str, who: str,
            verdict: ev.Verdict) -> Finding:
    why, fix, details = _bypass_parts(scope, kind, spec, verdict)
    return Finding(severity, code, f"[{scope.name}] {_where(scope.name)} relaywatch's {kind} block for {who}",
                   f"For {who} on {scope.name}: {why}", fix, details)


def _where(scope_name: str) -> str:
    """Who bypasses: main.cf's lists (every service that does not override them), or one master.cf service."""
    if scope_name == "main.cf":
        return "main.cf's restrictions (every smtpd service that does not override them) bypass"
    return f"the master.cf service {scope_name} bypasses"


def _bypass_parts(scope: ev.Scope, kind: str, spec: str, verdict: ev.Verdict) -> tuple[str, str, dict[str, object]]:
    """Which list permits before the map is read, and the corrected line (map check first)."""
    check = f"{ev.CHECK[kind]} {spec}"
    refs = _refs(scope, kind, spec)
    permits = "; ".join(_step_text(s) for s in verdict.steps)
    active = ev.active_lists(scope.params)
    if refs:
        decided = {s.list_name: s for s in verdict.steps}
        parts = []
        for n, i, _ in refs:
            s = decided.get(n)
            if n not in active:
                parts.append(f"{n} (position {i}) is skipped by clients that send no HELO: smtpd_helo_required = no")
            elif s is not None and s.position < i:
                parts.append(f"in {_step_text(s)} before the map at position {i}")
            else:
                parts.append(f"in {n} the map at position {i} follows warn_if_reject, which only logs")
        why = ("relaywatch's `" + check + "` is never read for this client: " + "; ".join(parts) + ". Postfix "
               "ends a restriction list at its first permit. (A permit does not skip the lists after it, and a "
               "reject in an earlier list wins: the block works once one list reads the map before any permit "
               "that fires.)")
    else:
        why = (f"no restriction list of this service consults `{check}`" + (f"; {permits}" if permits else "")
               + ". Blocks written to the map change nothing.")
    usable = [n for n, _, _ in refs if n in active]
    target = usable[0] if usable else verdict.steps[0].list_name if kind == "sasl" and verdict.steps else (
        "smtpd_client_restrictions" if kind == "client" else "smtpd_recipient_restrictions")
    if verdict.outcome == "unknown":
        why += " (Whether it permits depends on an entry the audit cannot evaluate.)"
    value = ", ".join([check] + [str(r) for r in ev.rules(scope.params, target, flatten=False)
                                 if not ev.refers_to(r, kind, spec, scope.params)])
    details: dict[str, object] = {
        "scope": scope.name, "map": spec, "outcome": verdict.outcome, "fixed_list": target,
        "permitted_by": [[s.list_name, s.position, str(s.rule)] for s in verdict.steps],
        "references": [[n, i, str(r)] for n, i, r in refs]}
    return why, f"{scope.line(target, value)}\npostfix reload", details


def _step_text(s: ev.Step) -> str:
    return (f"{s.list_name} position {s.position} `{s.rule}`" + (f" (from class {s.rule.via})" if s.rule.via else "")
            + (" may permit" if s.result == "unknown" else " permits"))


def _type_mismatch(scopes: list[ev.Scope], maps: AuditMaps) -> list[Finding]:
    out: list[Finding] = []
    seen: set[tuple[str, str]] = set()
    for kind, spec in maps.by_kind().items():
        default = scopes[0].params.get("default_database_type", "hash")
        want, path = ev.split_map(spec, default)
        for scope in scopes:
            for list_name in ev.LISTS:
                for rule in ev.rules(scope.params, list_name):
                    got, got_path = ev.split_map(rule.arg, default) if rule.arg else ("", "")
                    if got_path == path and got != want and (rule.arg, list_name) not in seen:
                        seen.add((rule.arg, list_name))
                        out.append(Finding(
                            "error", "map-type-mismatch", f"[{scope.name}] {list_name} reads {rule.arg}, "
                            f"relaywatch writes {spec}", f"Postfix opens the map as {got}: but relaywatch "
                            f"writes {want}: keys and runs the matching postmap, so Postfix reads a stale or "
                            "differently parsed table and blocks may not apply.",
                            f"Use the same type on both sides: `{rule.name} {want}:{path}` in {list_name}, "
                            f"or set relaywatch's {kind}_access_map = {got}:{path}\npostfix reload",
                            {"scope": scope.name, "list": list_name, "postfix": rule.arg, "relaywatch": spec}))
    return out


def _selftest(scopes: list[ev.Scope], extra: tuple[str, ...]) -> Finding:
    """Which sample public addresses would relay, per service: one address proves nothing."""
    per: dict[str, dict[str, list[str]]] = {}
    for scope in scopes:
        if scope.loopback_only or not scope.touches(*_LIST_DEPS, "mynetworks"):
            continue
        trust = _trust(scope)
        res: dict[str, list[str]] = {"relayed": [], "unknown": [], "extra_relayed": [], "extra_unknown": []}
        for addr, prefix in [(a, "") for a in SAMPLES] + [(a, "extra_") for a in extra]:
            client = ev.Client(ev.membership(trust, ipaddress.ip_network(addr)), foreign=True)
            outcome = ev.simulate(scope.params, client, {}).outcome
            if outcome != "reject":
                res[prefix + ("relayed" if outcome == "accept" else "unknown")].append(addr)
        per[scope.name] = res
    worst = max(per.values(), key=lambda r: len(r["relayed"]))
    n, m = len(worst["relayed"]), len(SAMPLES)
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
    if n and SEED_TESTER not in worst["relayed"]:
        lines.append(f"A relay test run from {SEED_TESTER} (a public relay tester) would still have passed: "
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
    found = audit(params, services, maps, extra_addresses, explicit) + _map_files(params, services, maps)
    return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


def _map_files(params: dict[str, str], services: dict[str, dict[str, str]], maps: AuditMaps) -> list[Finding]:
    """A missing or older-than-source .db/.lmdb/.cdb: a forgotten postmap."""
    out: list[Finding] = []
    scopes = ev.scopes(params, services)
    for kind, spec in maps.by_kind().items():
        kind_type, path = ev.split_map(spec, params.get("default_database_type", "hash"))
        if kind_type not in _COMPILED or not any(_refs(s, kind, spec) for s in scopes):
            continue
        src, db = Path(path), Path(path + _COMPILED[kind_type])
        cmd = f"postmap {kind_type}:{path}\npostfix reload"
        if not db.exists():
            out.append(Finding("error", "map-db-missing", f"{db} does not exist",
                               f"Postfix cannot open {kind_type}:{path}: every client that reaches the check "
                               "gets `451 4.3.5 Server configuration error`.",
                               ("" if src.exists() else f"touch {path}\n") + cmd, {"map": spec, "file": str(db)}))
        elif src.exists() and src.stat().st_mtime_ns > db.stat().st_mtime_ns:
            out.append(Finding("error", "map-db-stale", f"{db} is older than {path}",
                               f"{path} changed after the last postmap: Postfix still reads the old {db}, so "
                               "the newest entries (blocks) are not in force.", cmd,
                               {"map": spec, "source_mtime": src.stat().st_mtime, "db_mtime": db.stat().st_mtime}))
    return out


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


def block_ineffective_reason(params: dict[str, str], services: dict[str, dict[str, str]], kind: str,
                             target: str, maps: AuditMaps) -> str | None:
    """Why a new block of `target` would not refuse it everywhere, naming where, with the fix;
    None when it will work. kind: "client" | "subnet" (client_access_map) or "sasl_user" (sasl_access_map)."""
    return bypass_text(block_bypasses(params, services, kind, target, maps))


def bypass_text(found: list[tuple[str, str]]) -> str | None:
    """`block_bypasses` as one message naming where the block is bypassed; None when nowhere."""
    if not found:
        return None
    names = [name for name, _ in found]
    where = ("main.cf's restrictions" + (f" and master.cf service(s) {', '.join(names[1:])}" if len(names) > 1
                                         else "") if names[0] == "main.cf" else
             f"master.cf service(s) {', '.join(names)} (main.cf's own restrictions do enforce it)")
    return f"Not enforced by {where}. " + found[0][1]


def block_bypasses(params: dict[str, str], services: dict[str, dict[str, str]], kind: str, target: str,
                   maps: AuditMaps) -> list[tuple[str, str]]:
    """(main.cf or master.cf service, why and the fix) for each place a block of `target` is bypassed."""
    out: list[tuple[str, str]] = []
    mapd = maps.by_kind()
    map_kind = ENFORCEMENT[Kind(kind)].access_map if kind in ENFORCEMENT else None
    if map_kind is None or map_kind not in mapd:
        raise ValueError(f"no relaywatch access map blocks a {kind}")
    for scope in ev.scopes(params, services):
        if scope.loopback_only:
            continue  # a content filter's re-injection port: no blocked client reaches it (as audit, install-maps)
        if map_kind == "client":
            client = ev.Client(ev.membership(_trust(scope), ipaddress.ip_network(target, strict=False)),
                               listed="client")
        elif scope.params.get("smtpd_sasl_auth_enable") == "yes":
            client = ev.Client("no", sasl=True, listed="sasl")
        else:
            continue
        verdict = ev.simulate(scope.params, client, mapd)
        if verdict.outcome != "reject":
            inside = {"yes": "inside mynetworks", "unknown": "possibly inside mynetworks"}.get(client.mynet, "")
            why, fix, _ = _bypass_parts(scope, map_kind, mapd[map_kind], verdict)
            out.append((scope.name, f"Blocking {kind} {target}{f' ({inside})' if inside else ''} will not work on "
                                    f"{scope.name}: {why} Fix: {' / '.join(fix.splitlines())}"))
    return out
