"""What the log shows about the local domains, when neither the admin nor Postfix says.

Mail for a domain that local, virtual or LMTP delivery takes, or that always goes to one
private next hop that looks like a primary behind a gateway, is not relayed (destinations.py
asks the configured sources first). The correlator also reads the kind of an address here:
loopback, private (the site's own network), public. Pure and bounded.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Final

from relaywatch.core.netaddr import address


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


class AddrKind(Enum):
    LOOPBACK = "loopback"
    PRIVATE = "private"  # RFC 1918, CGNAT, link-local, IPv6 ULA: the site's own network
    PUBLIC = "public"
    OTHER = "other"  # a unix socket, or not an address


_PRIVATE_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7", "fe80::/10"))


_PRIVATE_RANGES = tuple((n.version, int(n.network_address), int(n.broadcast_address)) for n in _PRIVATE_NETS)
# the first bytes those networks start with: most addresses are told public by one set lookup
_PRIVATE_FIRST_BYTES = {v: frozenset(b for ver, lo, hi in _PRIVATE_RANGES if ver == v
                                     for b in range(lo >> (24 if v == 4 else 120), (hi >> (24 if v == 4 else 120)) + 1))
                        for v in (4, 6)}


def address_kind(addr: str) -> AddrKind:
    """Read once per distinct address (netaddr): the hot path never parses an address twice.
    A plain dotted quad (a next hop: mostly new ones in a flood) is read here, without netaddr's
    cache. Documentation ranges count as public here (tests use them for remote hosts)."""
    n = _dotted_quad(addr)
    if n >= 0:
        return _kind_of(4, n)
    a = address(addr)
    if a is None:
        return _address_kind_slow(addr)
    return _kind_of(a[0], a[1])


# The first characters of every text address_kind reads as PRIVATE: "1" (10/8, 100.64/10, 169.254/16,
# 172.16/12, 192.168/16: no leading zeros), "f"/"F" (fc00::/7, fe80::/10: a group has at most four
# hex digits, a compressed first group is zero), "I" (an `IPv6:` prefix).
_PRIVATE_STARTS: Final = frozenset("1fFI")


def may_be_private(addr: str) -> bool:
    """False when address_kind(addr) cannot be PRIVATE: the common public client is told by its first
    character, not read."""
    return addr[:1] in _PRIVATE_STARTS


def _dotted_quad(text: str) -> int:
    """A plain dotted quad as netaddr reads it (ASCII digits, no leading zeros, each part <= 255),
    else -1. One pass over the characters: no list, no int() per part (compiled: 3x cheaper)."""
    n = octet = digits = dots = 0
    for i in range(len(text)):
        c = ord(text[i])
        if c == 46:  # "."
            if digits == 0 or dots == 3:
                return -1
            n = n << 8 | octet
            octet = digits = 0
            dots += 1
        elif 48 <= c <= 57:
            if digits and octet == 0:
                return -1  # a leading zero
            octet = octet * 10 + c - 48
            if octet > 255:
                return -1
            digits += 1
        else:
            return -1
    if digits == 0 or dots != 3:
        return -1
    return n << 8 | octet


def _kind_of(version: int, n: int) -> AddrKind:
    if (n == 1) if version == 6 else (n >> 24 == 127):
        return AddrKind.LOOPBACK
    if (n >> 24 if version == 4 else n >> 120) in _PRIVATE_FIRST_BYTES[version] and any(
            v == version and lo <= n <= hi for v, lo, hi in _PRIVATE_RANGES):
        return AddrKind.PRIVATE
    return AddrKind.PUBLIC


@lru_cache(maxsize=1024)
def _address_kind_slow(addr: str) -> AddrKind:
    """What netaddr does not read as a number: not an address, or a scoped one."""
    try:
        ip = ipaddress.ip_address(addr.removeprefix("IPv6:"))
    except ValueError:
        return AddrKind.OTHER
    if ip.is_loopback:
        return AddrKind.LOOPBACK
    return AddrKind.PRIVATE if any(ip in net for net in _PRIVATE_NETS) else AddrKind.PUBLIC


# A private next hop that takes more domains than this is a smarthost, not a primary behind a gateway.
MAX_HOP_DOMAINS = 20
# ... and so is one taking mail for more unrelated domains than this that the site never sends from:
# a primary behind a gateway is one organisation's mailbox server.
MAX_UNCONFIRMED_DOMAINS = 2

# Public mailbox providers: never a site's own domain, so a next hop taking their mail is a smarthost.
_PROVIDERS = frozenset({
    "googlemail.com", "ymail.com", "rocketmail.com", "aol.com", "icloud.com", "me.com", "mac.com", "mail.ru",
    "bk.ru", "inbox.ru", "list.ru", "rambler.ru", "web.de", "t-online.de", "freenet.de", "qq.com", "163.com",
    "126.com", "yeah.net", "sina.com", "sohu.com", "naver.com", "hanmail.net", "daum.net", "nate.com",
    "protonmail.com", "proton.me", "tutanota.com", "zoho.com", "orange.fr", "wanadoo.fr", "free.fr", "sfr.fr",
    "laposte.net", "libero.it", "virgilio.it", "seznam.cz", "wp.pl", "o2.pl", "interia.pl", "comcast.net",
    "att.net", "verizon.net", "bigpond.com", "rediffmail.com", "mail.com", "fastmail.com", "hey.com"})
# ... and those whose name is theirs under any suffix (yahoo.co.jp, hotmail.fr, gmx.at, outlook.de)
_PROVIDER_NAMES = frozenset({"gmail", "yahoo", "hotmail", "outlook", "live", "msn", "aol", "gmx", "yandex"})
# second-level labels under which a country's registered domains sit (example.co.uk, example.com.au)
_SECOND_LEVEL = frozenset({"co", "com", "net", "org", "ac", "gov", "edu", "ne", "or", "go", "gv", "nic"})


@lru_cache(maxsize=65536)
def registered_domain(domain: str) -> str:
    """The domain its owner registered, near enough without the public suffix list: the last two
    labels, or three under a country's second level (`example.co.uk`). Unrelated domains differ here."""
    labels = domain.split(".")
    n = 3 if len(labels) >= 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL else 2
    return ".".join(labels[-n:])


@lru_cache(maxsize=65536)
def mailbox_provider(domain: str) -> bool:
    """Whether the domain is a public mailbox provider's (gmail.com, yahoo.co.jp, ...)."""
    reg = registered_domain(domain)
    return reg in _PROVIDERS or reg.partition(".")[0] in _PROVIDER_NAMES


class Declined(str, Enum):
    """Why a domain handed to a private next hop was not inferred to be local."""

    MAILBOX_PROVIDER = "mailbox_provider"  # a public mailbox provider's: never a site's own
    SMARTHOST = "smarthost"  # its hop also took mail a primary never gets: it relays
    WENT_PUBLIC = "went_public"  # its mail also went to a public next hop


@dataclass(frozen=True, slots=True)
class DeclinedDomain:
    host: str
    domain: str
    reason: Declined
    evidence: str


@dataclass(slots=True)
class _Hop:
    """A private next hop: the registered domains it took mail for, and, once it showed itself to
    be a smarthost, why."""

    domains: set[str]
    smarthost: str = ""


class LogInference:
    """Domains the log shows to be local: they get local, virtual or LMTP deliveries, or all their
    mail goes to a private next hop that looks like a primary behind a gateway (a backup MX or a
    filtering gateway in front of the site's mailbox server).

    A private next hop stops being taken for a primary, for good and for every domain behind it,
    as soon as it takes mail no primary gets: for a public mailbox provider (gmail.com: it is a
    smarthost, the relayhost), for more than `max_unconfirmed` unrelated domains that the site
    never sends from (the primary sends its users' mail through the gateway, or they log in), or
    for more than `max_hop_domains` unrelated domains. Bounded; per syslog host."""

    def __init__(self, max_domains: int = 10_000, max_hop_domains: int = MAX_HOP_DOMAINS,
                 max_unconfirmed: int = MAX_UNCONFIRMED_DOMAINS) -> None:
        self.max_domains = max_domains
        self.max_hop_domains = max_hop_domains
        self.max_unconfirmed = max_unconfirmed
        self._delivered: dict[tuple[str, str], str] = {}  # (host, domain) -> how
        self._delivered_regs: set[tuple[str, str]] = set()  # (host, registered domain) of those
        self._hops: dict[tuple[str, str], _Hop] = {}  # (host, private hop) -> what it took
        self._domain_hops: dict[tuple[str, str], str] = {}  # (host, domain) -> its first private hop
        self._went_public: set[tuple[str, str]] = set()
        # (host, registered domain) -> who sent mail from it: private client addresses, "" for a login
        self._senders: dict[tuple[str, str], set[str]] = {}

    def delivered_locally(self, host: str, domain: str, how: str) -> None:
        key = (host, domain)
        if key not in self._delivered and len(self._delivered) < self.max_domains:
            self._delivered[key] = how
            self._delivered_regs.add((host, registered_domain(domain)))

    def sent_from(self, host: str, domain: str, client: str, authenticated: bool) -> None:
        """Mail from `domain` came from a private client or a logged-in user: the site's own mail."""
        key = (host, registered_domain(domain))
        senders = self._senders.get(key)
        if senders is None:
            if len(self._senders) >= self.max_domains:
                return
            senders = self._senders[key] = set()
        if len(senders) < 16:
            senders.add("" if authenticated else client)

    def handed_over(self, host: str, domain: str, hop: str, private: bool) -> bool:
        """Record a hand-off; whether it makes the domain local (a private next hop taken for its primary)."""
        key = (host, domain)
        if key in self._delivered:
            return True
        if not private:
            if key in self._domain_hops and len(self._went_public) < self.max_domains:
                self._went_public.add(key)
            return False
        if key in self._went_public:
            return False
        state = self._hops.get((host, hop))
        if state is None:
            if len(self._hops) >= self.max_domains:
                return False
            state = self._hops[(host, hop)] = _Hop(set())
        if key not in self._domain_hops and len(self._domain_hops) < self.max_domains:
            self._domain_hops[key] = hop
        if state.smarthost:
            return False
        if mailbox_provider(domain):
            state.smarthost = f"it also took mail for {domain}, a public mailbox provider"
            return False
        reg = registered_domain(domain)
        if reg in state.domains:
            return True
        state.domains.add(reg)  # a new one: only now can the hop stop looking like a primary
        if len(state.domains) > self.max_hop_domains:
            state.smarthost = f"it took mail for more than {self.max_hop_domains} unrelated domains"
        else:
            unconfirmed = sorted(d for d in state.domains if not self._confirmed(host, d, hop))
            if len(unconfirmed) > self.max_unconfirmed:
                state.smarthost = (f"it took mail for {len(unconfirmed)} unrelated domains ({', '.join(unconfirmed)})"
                                   " that no login or private host here sends from")
        return not state.smarthost

    def _confirmed(self, host: str, reg: str, hop: str) -> bool:
        """Whether the site sends mail from this registered domain (the primary through its gateway,
        or its users logged in), or delivers some of it here."""
        senders = self._senders.get((host, reg), ())
        return "" in senders or hop in senders or (host, reg) in self._delivered_regs

    def is_local(self, host: str, domain: str) -> bool:
        key = (host, domain)
        if key in self._delivered:
            return True
        hop = self._domain_hops.get(key)
        return hop is not None and key not in self._went_public and self._hop_ok(host, hop)

    def _hop_ok(self, host: str, hop: str) -> bool:
        state = self._hops.get((host, hop))
        return state is not None and not state.smarthost

    def inferred(self) -> list[InferredDomain]:
        out = [InferredDomain(h, d, Reason.LOCAL_DELIVERY, how) for (h, d), how in self._delivered.items()]
        out += [InferredDomain(h, d, Reason.PRIVATE_NEXT_HOP, f"always handed to the private next hop {hop}")
                for (h, d), hop in self._domain_hops.items()
                if (h, d) not in self._delivered and (h, d) not in self._went_public and self._hop_ok(h, hop)]
        return sorted(out, key=lambda i: (i.host, i.domain))

    def declined(self) -> list[DeclinedDomain]:
        """The domains handed to a private next hop that were not taken for local, and why."""
        out = []
        for (h, d), hop in self._domain_hops.items():
            if (h, d) in self._delivered:
                continue
            if mailbox_provider(d):
                out.append(DeclinedDomain(h, d, Declined.MAILBOX_PROVIDER,
                                          f"handed to the private next hop {hop}, but a public mailbox provider's"
                                          " domain is never a site's own: that hop is a smarthost"))
            elif (h, d) in self._went_public:
                out.append(DeclinedDomain(h, d, Declined.WENT_PUBLIC,
                                          f"handed to the private next hop {hop}, and to public next hops too"))
            elif not self._hop_ok(h, hop):
                out.append(DeclinedDomain(h, d, Declined.SMARTHOST,
                                          f"handed to the private next hop {hop}, a smarthost, not a primary:"
                                          f" {self._hops[(h, hop)].smarthost}"))
        return sorted(out, key=lambda i: (i.host, i.domain))
