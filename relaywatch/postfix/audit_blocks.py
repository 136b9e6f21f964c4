"""Audit findings about relaywatch's own blocks: would a REJECT in its access maps be read for
each kind of client on each smtpd service (or does a permit come first), does Postfix open the map
with the type relaywatch writes, is the compiled map current; and the same check for one new block.
Pure except `map_file_findings`, which looks at the map files' mtimes."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from relaywatch.model import ENFORCEMENT, Finding, Kind
from relaywatch.postfix import audit_eval as ev
from relaywatch.postfix import mynetworks as mn

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


def scope_trust(scope: ev.Scope) -> mn.Trust:
    return mn.evaluate(scope.params.get("mynetworks", ""))


def block_findings(scope: ev.Scope, maps: AuditMaps) -> list[Finding]:
    """Would a REJECT in relaywatch's maps reach each kind of client through this service?"""
    out: list[Finding] = []
    mapd = maps.by_kind()
    sasl_on = scope.params.get("smtpd_sasl_auth_enable") == "yes"
    if "client" in mapd and not scope.loopback_only:
        spec = mapd["client"]
        trust = scope_trust(scope)
        lan = bool(mn.minus(list(trust.trusted), mn.LOOPBACK))
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


def type_mismatch_findings(scopes: list[ev.Scope], maps: AuditMaps) -> list[Finding]:
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


def map_file_findings(params: dict[str, str], services: dict[str, dict[str, str]], maps: AuditMaps) -> list[Finding]:
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
            client = ev.Client(mn.membership(scope_trust(scope), ipaddress.ip_network(target, strict=False)),
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
