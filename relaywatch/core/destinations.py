"""Which domains Postfix accepts mail for, as final or relay destination.

Mail for them is not relayed, whoever sent it: a backup MX or a filtering
gateway handing inbound mail to the primary is doing its job. Three sources,
best first: what the admin says (`--local-domain`, `[postfix] local_domains`),
what Postfix says (its domain lists, lookup tables asked per domain), and,
when neither is known, what the log shows. Pure: the questions to Postfix go
through an injected `lookup` (postconf.py runs `postmap -q`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Protocol

# the parameters naming the domains Postfix accepts (final: mydestination, virtual_*; relay: relay_domains)
DOMAIN_PARAMS = ("mydestination", "virtual_alias_domains", "virtual_mailbox_domains", "relay_domains")
# tables matched as patterns: Postfix asks them for the whole domain only, never for parent domains
PATTERN_TABLES = frozenset({"regexp", "pcre", "posix_regexp"})


class Destinations(Protocol):
    """What the correlator asks. `known`: answers come from configuration, so the log
    need not be read for hints; `accepts` is None when Postfix could not be asked."""

    known: bool

    def accepts(self, domain: str) -> bool | None: ...


class Source(str, Enum):
    """Where the local domains came from, as the report names it."""

    OPTION = "option"  # replay --local-domain
    CONFIG = "config"  # [postfix] local_domains
    POSTFIX = "postfix"  # postconf and postmap on the mail host
    LOG = "log"  # nothing known: inferred from the log


class Reason(str, Enum):
    """Why a domain was inferred to be local."""

    LOCAL_DELIVERY = "local_delivery"  # local, virtual or LMTP delivered mail for it
    PRIVATE_NEXT_HOP = "private_next_hop"  # its mail always went to one private next hop (a primary behind a gateway)


@dataclass(frozen=True, slots=True)
class InferredDomain:
    host: str
    domain: str
    reason: Reason
    evidence: str


class LocalDomains:
    """A fixed list: a leading dot matches subdomains. An empty list can still be
    known (a pure relay host); unknown answers None for every domain."""

    def __init__(self, domains: Iterable[str] = (), known: bool | None = None) -> None:
        domains = tuple(d.lower() for d in domains if d)
        self.exact = frozenset(d for d in domains if not d.startswith("."))
        self.parents = tuple(d for d in domains if d.startswith("."))
        self.known = bool(domains) if known is None else known

    def __contains__(self, domain: str) -> bool:
        return domain in self.exact or (bool(self.parents) and domain.endswith(self.parents))

    def accepts(self, domain: str) -> bool | None:
        return (domain in self) if self.known else None


# --- Postfix's own lists -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pattern:
    text: str  # a domain, a .domain, or type:table
    negated: bool = False

    @property
    def table(self) -> bool:
        return ":" in self.text


@dataclass(frozen=True, slots=True)
class DomainList:
    """One of DOMAIN_PARAMS, matched as Postfix matches it: mydestination is a string
    list (exact names only); the others are domain lists, where `.example.com` matches
    subdomains, and so does `example.com` when parent_domain_matches_subdomains names
    the parameter."""

    param: str
    patterns: tuple[Pattern, ...]
    exact_only: bool = False
    parent_style: bool = False

    def keys(self, domain: str, table: str) -> tuple[str, ...]:
        """What Postfix asks a table for this domain: the name, then each parent
        (`.parent`, or `parent` in parent style), except in pattern tables."""
        if self.exact_only or table.partition(":")[0] in PATTERN_TABLES:
            return (domain,)
        keys = [domain]
        dot = domain.find(".", 1)
        while dot >= 0:
            keys.append(domain[dot + 1:] if self.parent_style else domain[dot:])
            dot = domain.find(".", dot + 1)
        return tuple(keys)

    def matches_name(self, domain: str, pattern: str) -> bool:
        if domain == pattern:
            return True
        if self.exact_only:
            return False
        if self.parent_style and domain.endswith("." + pattern):
            return True
        return pattern.startswith(".") and domain.endswith(pattern)


_TOKEN = re.compile(r"!?[^\s,{}]*\{[^}]*\}|[^\s,]+")


def split_list(value: str) -> tuple[Pattern, ...]:
    """A Postfix list value: separated by commas or blanks, `{...}` (inline: tables) kept whole."""
    out = []
    for token in _TOKEN.findall(value):
        negated = token.startswith("!")
        text = token[1:] if negated else token
        if text:
            out.append(Pattern(text if ":" in text else text.lower(), negated))
    return tuple(out)


# lookup(table, keys): whether the table has any of the keys; None when Postfix could not tell
Lookup = Callable[[str, tuple[str, ...]], "bool | None"]


class PostfixDomains:
    """Postfix's domain lists, lookup tables included, asked once per domain and remembered
    for `max_age_s` (tables change without a reload of relaywatch)."""

    known = True

    def __init__(self, lists: tuple[DomainList, ...], lookup: Lookup, clock: Callable[[], float],
                 max_age_s: float = 600.0, max_cached: int = 50_000) -> None:
        self.lists = lists
        self.lookup = lookup
        self.clock = clock
        self.max_age_s = max_age_s
        self.max_cached = max_cached
        self._cache: dict[str, tuple[bool, float]] = {}
        self.questions = 0  # domains Postfix was asked about (not answered from the cache)

    def accepts(self, domain: str) -> bool | None:
        cached = self._cache.get(domain)
        now = self.clock()
        if cached is not None and now - cached[1] < self.max_age_s:
            return cached[0]
        self.questions += 1
        answer = self._ask(domain)
        if answer is not None:
            if len(self._cache) >= self.max_cached:
                self._cache.clear()
            self._cache[domain] = (answer, now)
        return answer

    def _ask(self, domain: str) -> bool | None:
        undecided = False
        for dl in self.lists:
            found = self._in_list(dl, domain)
            if found is None:
                undecided = True
            elif found:
                return True
        return None if undecided else False

    def _in_list(self, dl: DomainList, domain: str) -> bool | None:
        """Postfix's match_list: the first pattern that matches decides; `!` excludes."""
        for p in dl.patterns:
            found = self.lookup(p.text, dl.keys(domain, p.text)) if p.table else dl.matches_name(domain, p.text)
            if found is None:
                return None
            if found:
                return not p.negated
        return False


# --- the log's hints, when nothing is known ------------------------------------


class AddrKind(Enum):
    LOOPBACK = "loopback"
    PRIVATE = "private"  # RFC 1918, CGNAT, link-local, IPv6 ULA: the site's own network
    PUBLIC = "public"
    OTHER = "other"  # a unix socket, or not an address


_PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10"))


@lru_cache(maxsize=65536)
def address_kind(addr: str) -> AddrKind:
    """Cached per distinct address: the hot path never parses an address twice.
    Documentation ranges count as public here (tests use them for remote hosts)."""
    try:
        ip = ipaddress.ip_address(addr[5:] if addr.startswith("IPv6:") else addr)
    except ValueError:
        return AddrKind.OTHER
    if ip.is_loopback:
        return AddrKind.LOOPBACK
    return AddrKind.PRIVATE if any(ip in net for net in _PRIVATE_NETS) else AddrKind.PUBLIC


# A private next hop that takes more domains than this is a smarthost, not a primary behind a gateway.
MAX_HOP_DOMAINS = 20


class LogInference:
    """Domains the log shows to be local: they get local, virtual or LMTP deliveries, or all
    their mail goes to private next hops that take few domains. Bounded; per syslog host."""

    def __init__(self, max_domains: int = 10_000, max_hop_domains: int = MAX_HOP_DOMAINS) -> None:
        self.max_domains = max_domains
        self.max_hop_domains = max_hop_domains
        self._delivered: dict[tuple[str, str], str] = {}  # (host, domain) -> how
        self._hop_domains: dict[tuple[str, str], set[str]] = {}  # (host, private hop) -> its domains
        self._domain_hops: dict[tuple[str, str], str] = {}  # (host, domain) -> its first private hop
        self._went_public: set[tuple[str, str]] = set()

    def delivered_locally(self, host: str, domain: str, how: str) -> None:
        key = (host, domain)
        if key not in self._delivered and len(self._delivered) < self.max_domains:
            self._delivered[key] = how

    def handed_over(self, host: str, domain: str, hop: str, private: bool) -> bool:
        """Record a hand-off; whether it makes the domain local (a fixed private next hop)."""
        key = (host, domain)
        if key in self._delivered:
            return True
        if not private:
            if key in self._domain_hops and len(self._went_public) < self.max_domains:
                self._went_public.add(key)
            return False
        if key in self._went_public:
            return False
        domains = self._hop_domains.get((host, hop))
        if domains is None:
            if len(self._hop_domains) >= self.max_domains:
                return False
            domains = self._hop_domains[(host, hop)] = set()
        if len(domains) <= self.max_hop_domains:
            domains.add(domain)
        if key not in self._domain_hops and len(self._domain_hops) < self.max_domains:
            self._domain_hops[key] = hop
        return len(domains) <= self.max_hop_domains

    def is_local(self, host: str, domain: str) -> bool:
        key = (host, domain)
        if key in self._delivered:
            return True
        hop = self._domain_hops.get(key)
        return hop is not None and key not in self._went_public and self._hop_ok(host, hop)

    def _hop_ok(self, host: str, hop: str) -> bool:
        return len(self._hop_domains.get((host, hop), ())) <= self.max_hop_domains

    def inferred(self) -> list[InferredDomain]:
        out = [InferredDomain(h, d, Reason.LOCAL_DELIVERY, how) for (h, d), how in self._delivered.items()]
        out += [InferredDomain(h, d, Reason.PRIVATE_NEXT_HOP, f"always handed to the private next hop {hop}")
                for (h, d), hop in self._domain_hops.items()
                if (h, d) not in self._delivered and (h, d) not in self._went_public and self._hop_ok(h, hop)]
        return sorted(out, key=lambda i: (i.host, i.domain))
