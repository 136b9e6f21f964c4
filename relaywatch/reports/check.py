"""`relaywatch check IP|NET|LOGIN`: is it blocked, by which entry, since and until when, why,
and would Postfix enforce it; also what `relaywatch block` needs to know ([allow]). With a shared
(PostgreSQL) state it answers for the fleet: a block decided by any host, counts summed over hosts.

Like `fail2ban-client banned IP` and `cscli decisions list -i IP`, but explained: an
address inside a blocked /16 is blocked by that /16, and the answer carries the
decision's evidence and the audit's restriction-order verdict for that client.

Exit codes (`EXIT_*`): 0 blocked, 3 not blocked; 1 runtime error, 2 usage as everywhere.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from relaywatch.config import Config
from relaywatch.core.rules import in_network, subnet_of
from relaywatch.model import CountRow, Decision, RelaywatchError
from relaywatch.postfix.audit_blocks import AuditMaps, block_ineffective_reason
from relaywatch.postfix.postconf import postconf, postconf_services
from relaywatch.respond.blocking import target_kind
from relaywatch.store.sqlite import BlockRow
from relaywatch.wording import describe, iso

EXIT_BLOCKED = 0
EXIT_NOT_BLOCKED = 3
KIND_TEXT = {
    "client": "an SMTP client address (check_client_access)",
    "subnet": "every SMTP client in a network (check_client_access)",
    "sasl_user": "a SASL login (check_sasl_access)",
}

MANUAL_REASON = "blocked by hand"  # `relaywatch block`'s --reason when none is given


def manual_evidence(reason: str) -> str:
    """The evidence line of a manual block: "blocked by hand: REASON", never "blocked by hand: blocked by hand"."""
    return MANUAL_REASON if reason == MANUAL_REASON else f"{MANUAL_REASON}: {reason}"


def looks_like_address(text: str) -> bool:
    """`spammer@example.com` is more often meant as a sender than as a SASL login name."""
    return "@" in text


def parse(text: str, sasl_user: bool = False) -> tuple[str, str]:
    """(kind, canonical target) of what the admin typed; `sasl_user` forces a SASL login."""
    return ("sasl_user", text.strip()) if sasl_user else target_kind(text)


def allowed_by(cfg: Config, kind: str, target: str) -> str | None:
    """Which [allow] entry covers `target` (the rules never block it), or None."""
    if kind == "sasl_user":
        return "[allow] sasl_users" if target in cfg.allow_sasl_users else None
    net = ipaddress.ip_network(target, strict=False)
    for allowed in cfg.allow_networks:
        if allowed.version == net.version and net.overlaps(allowed):
            return f"[allow] networks ({allowed})"
    return None


def enforcement(cfg: Config, kind: str, target: str) -> tuple[bool | None, str]:
    """Would Postfix refuse `target` once blocked (the audit's restriction-order answer, from `postconf`)?
    (True, ""), (False, why not and the fix), or (None, why it cannot tell)."""
    try:
        reason = block_ineffective_reason(
            postconf(cfg.config_directory), postconf_services(cfg.config_directory), kind, target,
            AuditMaps(cfg.client_access_map, cfg.sasl_access_map or None, cfg.policy_listen or None))
    except (RelaywatchError, ValueError) as exc:
        return None, f"cannot check the Postfix configuration: {exc}"
    return (False, reason) if reason else (True, "")

def covering(kind: str, target: str, blocks: Sequence[BlockRow]) -> list[BlockRow]:
    """The blocks in force that refuse `target`: itself, or a network around it."""
    if kind == "sasl_user":
        return [b for b in blocks if b.kind == "sasl_user" and b.target == target]
    net = ipaddress.ip_network(target, strict=False)
    out = []
    for b in blocks:
        if b.kind not in ("client", "subnet"):
            continue
        other = ipaddress.ip_network(b.target, strict=False)
        if subnet_of(net, other):
            out.append(b)
    return sorted(out, key=lambda b: ipaddress.ip_network(b.target, strict=False).prefixlen, reverse=True)


def inside(kind: str, target: str, blocks: Sequence[BlockRow]) -> list[BlockRow]:
    """For a network: the narrower blocks in force inside it (it is then partly blocked)."""
    if kind != "subnet":
        return []
    net = ipaddress.ip_network(target)
    return [b for b in blocks if b.kind in ("client", "subnet") and b.target != target
            and subnet_of(ipaddress.ip_network(b.target, strict=False), net)]


def why(block: BlockRow, decisions: Sequence[Decision]) -> Decision | None:
    """The decision that made `block`: the last block of its target at or before its start."""
    found = [d for d in decisions if d.action == "block" and (d.kind, d.target) == (block.kind, block.target)
             and d.time <= block.since + 1]
    return found[-1] if found else None


@dataclass(frozen=True, slots=True)
class Recent:
    """What the stored windows counted of a target since `since`: every host that counts into the store
    (a fleet's shared PostgreSQL: the fleet's sum)."""

    since: float
    relayed: int = 0
    relay_denied: int = 0


_COUNTED_AS = {"client": ("client", "relay_denied"), "subnet": ("client", "relay_denied"), "sasl_user": ("sasl_user",)}


def recent(kind: str, target: str, since: float, rows: Iterable[CountRow]) -> Recent:
    """Sum the stored counts (`counts_since` rows) that are `target`'s: its own key, or (a network) those inside it."""
    dims = _COUNTED_AS.get(kind, ())
    net = ipaddress.ip_network(target, strict=False) if kind == "subnet" else None
    totals = dict.fromkeys(dims, 0)
    for dim, _, key, n in rows:
        if dim in totals and (key == target if net is None else in_network(key, net)):
            totals[dim] += n
    return Recent(since, totals.get("client", 0) + totals.get("sasl_user", 0), totals.get("relay_denied", 0))


@dataclass
class Answer:
    query: str
    kind: str
    target: str
    blocks: list[BlockRow]
    reasons: list[Decision | None]
    partly: list[BlockRow] = field(default_factory=list)
    allowed: str | None = None
    enforced: bool | None = None  # None: could not be checked
    enforcement: str = ""
    recent: Recent | None = None

    @property
    def blocked(self) -> bool:
        return bool(self.blocks)

    def exit_code(self) -> int:
        return EXIT_BLOCKED if self.blocked else EXIT_NOT_BLOCKED

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query, "kind": self.kind, "target": self.target, "blocked": self.blocked,
            "blocks": [_block_dict(b, d) for b, d in zip(self.blocks, self.reasons, strict=True)],
            "partly_blocked_by": [_block_dict(b, None) for b in self.partly],
            "allowed": self.allowed, "enforced": self.enforced, "enforcement": self.enforcement,
            "recent": None if self.recent is None else {"since": iso(self.recent.since), "relayed": self.recent.relayed,
                                                        "relay_denied": self.recent.relay_denied},
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_text(self) -> str:
        label = {"client": "client", "subnet": "network", "sasl_user": "SASL login"}[self.kind]
        out = [f"{label} {self.target}: " + ("BLOCKED" if self.blocked else "not blocked")]
        for b, d in zip(self.blocks, self.reasons, strict=True):
            entry = "itself" if b.target == self.target else f"{b.kind} {b.target}"
            until = "permanently" if b.until is None else f"until {iso(b.until)}"
            out.append(f"  by {entry}: since {iso(b.since)}, {until} (offence {b.offences})")
            out.append(f"    why: {d.rule + ': ' + describe(d) if d else b.rule + ': ' + b.reason}")
            if d and len(d.hosts) > 1:
                out.append(f"    evidence from hosts {', '.join(d.hosts)}")
            if d:
                for line in d.evidence[-3:]:
                    if line != describe(d):  # a manual block's only evidence is its why
                        out.append(f"    | {line[:160]}")
            out.append(f"    undo: relaywatch unblock {b.target}")
        if self.partly:
            out.append("  partly: " + ", ".join(f"{b.kind} {b.target}" for b in self.partly) + " inside it are blocked")
        if self.allowed:
            out.append(f"  allowed by {self.allowed}: the rules never block it")
        if self.recent is not None and (self.recent.relayed or self.recent.relay_denied):
            r = self.recent
            out.append(f"  counted since {iso(r.since)} (every host sharing this state): "
                       f"{r.relayed:,} relayed recipients, {r.relay_denied:,} relay attempts refused")
        verdict = {True: "Postfix enforces" if self.blocked else "Postfix would enforce",
                   False: "Postfix would NOT enforce", None: "cannot tell whether Postfix enforces"}[self.enforced]
        out.append(f"  {verdict} a block of it" + (f": {self.enforcement}" if self.enforcement else ""))
        return "\n".join(out) + "\n"


def _block_dict(b: BlockRow, d: Decision | None) -> dict[str, Any]:
    return {"kind": b.kind, "target": b.target, "rule": b.rule, "reason": b.reason, "since": iso(b.since),
            "until": None if b.until is None else iso(b.until), "offences": b.offences,
            "decision": None if d is None else {"time": iso(d.time), "rule": d.rule, "why": describe(d),
                                                "evidence": list(d.evidence), "sample_qids": list(d.sample_qids)},
            "undo": f"relaywatch unblock {b.target}"}


def answer(query: str, kind: str, target: str, cfg: Config, blocks: Sequence[BlockRow],
           decisions: Sequence[Decision], enforcement: tuple[bool | None, str],
           counted: Recent | None = None) -> Answer:
    """Everything `check` says; `enforcement` is (enforced, why not / why unknown) from the audit;
    `counted`: what the store's windows counted of it lately (`recent`)."""
    found = covering(kind, target, blocks)
    return Answer(query, kind, target, found, [why(b, decisions) for b in found], inside(kind, target, blocks),
                  allowed_by(cfg, kind, target), *enforcement, recent=counted)
