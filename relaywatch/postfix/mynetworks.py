"""What `mynetworks` trusts, as Postfix's match_list.c reads it: each pattern classified, the
trusted addresses as spans on one number line, and whether a client is inside. Pure."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from relaywatch.postfix.audit_eval import split_list

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
