"""How Postfix would judge one client: `mynetworks` membership and the smtpd restriction lists.

A pure model of the parts of Postfix's match_list.c and smtpd_check.c that decide whether
a client may relay and whether a REJECT in relaywatch's access map is ever read, so the
audit reasons with Postfix's rules (first match wins, a permit ends only its own list, a
reject anywhere wins) instead of guessing from the text.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
# Address sets are lists of [start, end) spans on one number line: IPv4 at 0..2**32, IPv6 above.
Span = tuple[int, int]
_V6 = 1 << 32
FAMILY = {4: [(0, _V6)], 6: [(_V6, _V6 + (1 << 128))]}
ALL = FAMILY[4] + FAMILY[6]


def span(net: Net) -> Span:
    start = int(net.network_address) + (_V6 if net.version == 6 else 0)
    return (start, start + net.num_addresses)


def norm(spans: list[Span]) -> list[Span]:
    out: list[Span] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def minus(a: list[Span], b: list[Span]) -> list[Span]:
    out: list[Span] = []
    for start, end in norm(a):
        for bs, be in norm(b):
            if be <= start or bs >= end:
                continue
            if bs > start:
                out.append((start, bs))
            start = max(start, be)
        if start < end:
            out.append((start, end))
    return out


def inter(a: list[Span], b: list[Span]) -> list[Span]:
    return minus(a, minus(a, b))


def size(spans: list[Span]) -> int:
    return sum(end - start for start, end in norm(spans))


def _nets(*texts: str) -> list[Span]:
    return [span(ipaddress.ip_network(t)) for t in texts]


# Globally routable unicast space (IANA special-purpose registries, simplified):
# what an open relay exposes to the Internet.
PUBLIC = minus(
    FAMILY[4],
    _nets("0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
          "192.0.0.0/24", "192.0.2.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
          "203.0.113.0/24", "224.0.0.0/3"),
) + minus(_nets("2000::/3"), _nets("2001:db8::/32"))
LOOPBACK = _nets("127.0.0.0/8", "::1/128")
SEED_TESTER = "208.31.42.77"  # the seed's relay-test site: outside the /8s, so its test passed


def _samples() -> tuple[str, ...]:
    """One public address in every IPv4 /8 and IPv6 /8 of 2000::/3, plus the seed's addresses."""
    out = []
    for a in range(1, 224):
        for b in (a, 1, 200):
            ip = ipaddress.ip_address(f"{a}.{b}.{a * 37 % 256}.{a * 101 % 254 + 1}")
            if inter([span(ipaddress.ip_network(ip))], PUBLIC):
                out.append(str(ip))
                break
    out += [f"{p:x}{p:02x}::{p:x}" for p in range(0x20, 0x40)]
    return (*out, "218.144.108.161", "210.196.249.130", SEED_TESTER)


SAMPLES = _samples()


def split_list(value: str) -> list[str]:
    """Split a Postfix list like mystrtokq(): commas and whitespace, except inside {braces}."""
    tokens: list[str] = []
    cur = ""
    depth = 0
    for ch in value:
        if ch in ", \t\r\n" and depth == 0:
            if cur:
                tokens.append(cur)
            cur = ""
            continue
        depth += (ch == "{") - (ch == "}")
        cur += ch
    if cur:
        tokens.append(cur)
    return tokens


def split_map(spec: str, default_type: str = "hash") -> tuple[str, str]:
    """("hash", "/etc/postfix/reject_list") from a map spec; `proxy:` is transparent."""
    while spec.startswith("proxy:"):
        spec = spec[len("proxy:"):]
    kind, sep, name = spec.partition(":")
    if not sep:
        return default_type, posixpath.normpath(spec)
    return kind, posixpath.normpath(name) if name.startswith("/") else name


# --- mynetworks ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Entry:
    """One `mynetworks` pattern.

    kind: net | hostbits, badmask, badtable (Postfix fails the lookup) | partial | table, file, hostname.
    """

    raw: str
    negated: bool
    kind: str
    net: Net | None = None


def parse_mynetworks(value: str) -> list[Entry]:
    entries = []
    for raw in split_list(value):
        pattern = raw.lstrip("!")
        negated = (len(raw) - len(pattern)) % 2 == 1
        entries.append(Entry(raw, negated, *_classify(pattern)))
    return entries


def _classify(p: str) -> tuple[str, Net | None]:
    if p.startswith("/"):
        return "file", None
    bracket = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\](/\d+)?", p)
    text = bracket.group(1) + (bracket.group(2) or "") if bracket else p
    if ":" in p and not bracket:  # Postfix's MATCH_DICTIONARY: anything with ':' not in [] is a table
        try:
            return "badtable", ipaddress.ip_network(p, strict=False)
        except ValueError:
            return "table", None
    if bracket or re.fullmatch(r"[0-9.]+(/\d+)?", p):
        try:
            return "net", ipaddress.ip_network(text)
        except ValueError:
            pass
        try:
            return "hostbits", ipaddress.ip_network(text, strict=False)
        except ValueError:  # with a /mask Postfix's CIDR parser fails; without one it matches nothing
            return ("badmask" if "/" in p else "partial"), None
    return "hostname", None


BROKEN = ("hostbits", "badmask", "badtable")


@dataclass(frozen=True, slots=True)
class Trust:
    """What a `mynetworks` value trusts, walked in order like Postfix (first match wins)."""

    entries: tuple[Entry, ...]
    trusted: tuple[Span, ...]  # certainly inside mynetworks
    maybe: tuple[Span, ...]  # inside only if an earlier table/hostname entry does not match first
    failing: tuple[Span, ...]  # reach a broken entry: permit_mynetworks answers 451
    decided: tuple[Span, ...]
    unsure: bool  # a table/file/hostname entry may match any address not yet decided
    added: tuple[tuple[str, int], ...]  # (entry, public addresses it adds)
    shadowed: tuple[str, ...]  # negations that never apply: an earlier entry already matched


def evaluate(value: str) -> Trust:
    entries = parse_mynetworks(value)
    decided: list[Span] = []
    trusted: list[Span] = []
    maybe: list[Span] = []
    failing: list[Span] = []
    added: list[tuple[str, int]] = []
    shadowed: list[str] = []
    unsure = False
    for e in entries:
        if e.kind in ("table", "file", "hostname"):
            unsure = True
        elif e.kind == "net" and e.net is not None:
            new = minus([span(e.net)], decided)
            if not e.negated:
                (maybe if unsure else trusted).extend(new)
                added.append((e.raw, size(inter(new, PUBLIC))))
            elif not new and inter([span(e.net)], trusted):
                shadowed.append(e.raw)
            decided = norm(decided + new)
        elif e.kind in BROKEN:
            # Postfix reports a lookup error for every address (of the pattern's family) that gets this far.
            fails = ALL if e.kind == "badtable" else FAMILY[e.net.version if e.net is not None else 4]
            new = minus(fails, decided)
            (maybe if unsure else failing).extend(new)
            decided = norm(decided + new)
    return Trust(tuple(entries), tuple(norm(trusted)), tuple(norm(maybe)), tuple(norm(failing)),
                 tuple(decided), unsure, tuple(added), tuple(shadowed))


def membership(trust: Trust, target: Net) -> str:
    """"yes" if any of target is trusted, else "error" | "unknown" | "no"."""
    s = [span(target)]
    if inter(s, list(trust.trusted)):
        return "yes"
    if inter(s, list(trust.failing)):
        return "error"
    if inter(s, list(trust.maybe)) or (trust.unsure and minus(s, list(trust.decided))):
        return "unknown"
    return "no"


# --- restriction lists -----------------------------------------------------------------------

LISTS = ("smtpd_client_restrictions", "smtpd_helo_restrictions", "smtpd_sender_restrictions",
         "smtpd_relay_restrictions", "smtpd_recipient_restrictions", "smtpd_data_restrictions",
         "smtpd_end_of_data_restrictions")
RELAY_LISTS = ("smtpd_relay_restrictions", "smtpd_recipient_restrictions")
# Postfix refuses to start unless one of these is in a relay list ahead of any `permit`.
GUARDS = ("reject_unauth_destination", "defer_unauth_destination", "reject", "defer", "defer_if_permit")
_TAKES_ARG = re.compile(r"check_(?!relay_domains$)\w+|reject_rbl_client|reject_rhsbl_\w+|"
                        r"permit_dnswl_client|permit_rhswl_client|sleep")
_BARE_TABLE = {"smtpd_client_restrictions": "check_client_access", "smtpd_helo_restrictions": "check_helo_access",
               "smtpd_sender_restrictions": "check_sender_access"}
CHECK = {"client": "check_client_access", "sasl": "check_sasl_access"}


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    arg: str = ""
    via: str = ""  # restriction class it came from

    def __str__(self) -> str:
        return f"{self.name} {self.arg}".strip()


def rules(params: dict[str, str], list_name: str, flatten: bool = True) -> list[Rule]:
    """A restriction list as Postfix runs it: arguments attached, classes expanded in place."""
    classes = {c.lower() for c in split_list(params.get("smtpd_restriction_classes", ""))}
    return _rules(params.get(list_name, ""), params, _BARE_TABLE.get(list_name, "check_recipient_access"),
                  classes if flatten else set(), "", 0)


def _rules(value: str, params: dict[str, str], bare: str, classes: set[str], via: str, depth: int) -> list[Rule]:
    out: list[Rule] = []
    tokens = iter(split_list(value))
    for token in tokens:
        name = token.lower()
        if _TAKES_ARG.fullmatch(name):
            out.append(Rule(name, next(tokens, ""), via))
        elif ":" in token:  # a bare table is a check of the list's own kind
            out.append(Rule(bare, token, via))
        elif name in classes and depth < 8:
            out += _rules(params.get(token, ""), params, bare, classes, token, depth + 1)
        else:
            out.append(Rule(name, "", via))
    return out


def is_guarded(params: dict[str, str]) -> bool:
    """Postfix's own has_required(): a relay list holds a guard before any plain `permit`."""
    for list_name in RELAY_LISTS:
        warn = False
        for rule in rules(params, list_name):
            if rule.name == "permit":
                break
            if rule.name in GUARDS and not warn:
                return True
            warn = rule.name == "warn_if_reject"
    return False


@dataclass(frozen=True, slots=True)
class Client:
    """Who is asking. mynet: a membership() answer; listed: which relaywatch map says REJECT."""

    mynet: str = "no"
    sasl: bool = False
    listed: str = ""
    foreign: bool = False  # the recipient is outside our domains: a relay attempt


@dataclass(frozen=True, slots=True)
class Step:
    list_name: str
    position: int  # 1-based, in the list as Postfix runs it (classes expanded)
    rule: Rule
    result: str  # permit | reject | unknown


@dataclass(frozen=True, slots=True)
class Verdict:
    outcome: str  # accept | reject | unknown
    steps: tuple[Step, ...]  # the deciding rule of each list that decided


LIST_DEPS = (*LISTS, "smtpd_restriction_classes", "smtpd_helo_required")
RELEVANT = frozenset(LIST_DEPS) | {"mynetworks", "smtpd_sasl_auth_enable"}


@dataclass(frozen=True)
class Scope:
    """main.cf, or one master.cf service with its -o overrides applied."""

    name: str
    params: dict[str, str]
    overrides: frozenset[str]

    @property
    def loopback_only(self) -> bool:
        """A listener like 127.0.0.1:10025 (content-filter reinjection): no remote client reaches it."""
        host = self.name.rpartition("/")[0].rpartition(":")[0]
        return host == "localhost" or host == "[::1]" or host.startswith("127.")

    def touches(self, *names: str) -> bool:
        return self.name == "main.cf" or bool(self.overrides & set(names))

    def line(self, name: str, value: str) -> str:
        if name in self.overrides:
            return f"master.cf, service {self.name}:  -o {{ {name} = {value} }}"
        return f"{name} = {value}"


def _expand(value: str, params: dict[str, str], depth: int = 0) -> str:
    """Expand $name in master.cf overrides: `postconf -P` prints them unexpanded."""
    def sub(m: re.Match[str]) -> str:
        name = next(g for g in m.groups() if g)
        return _expand(params.get(name, ""), params, depth + 1) if depth < 8 else ""
    return re.sub(r"\$(?:\{(\w+)\}|\((\w+)\)|(\w+))", sub, value)


def scopes(params: dict[str, str], services: dict[str, dict[str, str]]) -> list[Scope]:
    """main.cf, then each service whose overrides change what the audit looks at."""
    out = [Scope("main.cf", params, frozenset())]
    for name, over in sorted(services.items()):
        if RELEVANT & set(over):
            merged = {**params, **over}
            out.append(Scope(name, {**params, **{k: _expand(v, merged) for k, v in over.items()}}, frozenset(over)))
    return out


def active_lists(params: dict[str, str]) -> list[str]:
    """HELO restrictions bind only when HELO is required: a client can skip HELO otherwise."""
    return [n for n in LISTS if n != "smtpd_helo_restrictions" or params.get("smtpd_helo_required") == "yes"]


def simulate(params: dict[str, str], client: Client, maps: dict[str, str]) -> Verdict:
    """Run the lists in Postfix's order: a permit ends its list only, the first reject ends all."""
    steps: list[Step] = []
    unsure = False
    for list_name in active_lists(params):
        warn = False
        for i, rule in enumerate(rules(params, list_name), 1):
            result = _judge(rule, client, params, maps)
            if result == "reject" and warn:
                result = None
            warn = rule.name == "warn_if_reject"
            if result:
                steps.append(Step(list_name, i, rule, result))
                if result == "reject":
                    return Verdict("reject", tuple(steps))
                unsure |= result == "unknown"
                break
    return Verdict("unknown" if unsure else "accept", tuple(steps))


def refers_to(rule: Rule, kind: str, spec: str, params: dict[str, str]) -> bool:
    default = params.get("default_database_type", "hash")
    return rule.name == CHECK[kind] and split_map(rule.arg, default)[1] == split_map(spec, default)[1]


def _judge(rule: Rule, c: Client, params: dict[str, str], maps: dict[str, str]) -> str | None:
    name = rule.name
    if name == "permit":
        return "permit"
    if name in ("reject", "defer", "defer_if_permit"):
        return "reject"
    if name in ("reject_unauth_destination", "defer_unauth_destination"):
        return "reject" if c.foreign else None
    if name == "permit_auth_destination":
        return None if c.foreign else "permit"
    if name == "permit_mynetworks":
        return {"yes": "permit", "unknown": "unknown", "error": "reject"}.get(c.mynet)
    if name == "permit_sasl_authenticated":
        return "permit" if c.sasl else None
    for kind, spec in maps.items():
        if c.listed == kind and (kind != "sasl" or c.sasl) and refers_to(rule, kind, spec, params):
            return "reject"
    return None
