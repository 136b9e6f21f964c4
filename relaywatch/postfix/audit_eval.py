"""How Postfix would judge one client by the smtpd restriction lists (`mynetworks` is mynetworks.py).

A pure model of the parts of Postfix's match_list.c and smtpd_check.c that decide whether
a client may relay and whether a REJECT in relaywatch's access map is ever read, so the
audit reasons with Postfix's rules (first match wins, a permit ends only its own list, a
reject anywhere wins) instead of guessing from the text.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass


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
