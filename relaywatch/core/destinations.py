"""Which domains Postfix accepts mail for, as final or relay destination.

Mail for them is not relayed, whoever sent it: a backup MX or a filtering
gateway handing inbound mail to the primary is doing its job. Three sources,
best first: what the admin says (`--local-domain`, `[postfix] local_domains`),
what Postfix says (its domain lists, lookup tables asked per domain), and,
when neither is known, what the log shows (inference.py). Pure: the questions
to Postfix go through an injected `lookup` (postconf.py runs `postmap -q`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
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
