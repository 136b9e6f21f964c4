"""The rules and what feeds them: which (dimension, key) pairs a fact counts under, the default rules,
and the address tests that blocks and reports share. Pure; policy.py decides from the windows they fill.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from relaywatch.core.netaddr import read
from relaywatch.model import Action, Dim, Kind, LocalRelayed, RelayDenied, Relayed

BUCKET_S = 10
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Fact = Relayed | RelayDenied | LocalRelayed


def subnet_of(inner: Network, outer: Network) -> bool:
    """`inner.subnet_of(outer)`, False across address families (where the stdlib raises)."""
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False

def blocked_by(kind: str, target: str, net: Network | None, client: str, sasl_user: str | None) -> bool:
    """Whether mail from `client` (logged in as `sasl_user`) is what a block of (kind, target) refuses;
    `net` is the parsed target of a subnet block."""
    if kind == "client":
        return client == target
    if kind == "sasl_user":
        return sasl_user == target
    return net is not None and in_network(client, net)


def in_network(text: str, net: Network) -> bool:
    """Whether `text` is an address inside `net` (False for anything else: a sender, a domain)."""
    r = read(text)
    if r is None or r[2] < 0:
        addr = _address(text)  # scoped, or not an address
        return addr is not None and addr.version == net.version and addr in net
    last = _LAST.net
    if last[0] is not net:  # a report asks about one network for every client it counted
        shift = net.max_prefixlen - net.prefixlen
        last = _LAST.net = (net, net.version, shift, int(net.network_address) >> shift)
    return r[1] == last[1] and r[2] >> last[2] == last[3]


class _Last:
    """The network in_network asked about last, read: (it, its version, host bits, its number). Holding
    the object makes an `is` test enough (its id cannot be reused meanwhile); one tuple, replaced whole,
    so that threads asking about different networks never see a mix."""

    __slots__ = ("net",)

    def __init__(self) -> None:
        self.net: tuple[Network | None, int, int, int] = (None, 0, 0, 0)


_LAST: Final = _Last()


@lru_cache(maxsize=4096)
def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


DIMS = tuple(Dim)
_KIND_OF_DIM = {Dim.CLIENT: Kind.CLIENT, Dim.SENDER: Kind.SENDER, Dim.DOMAIN: Kind.DESTINATION,
                Dim.SASL_USER: Kind.SASL_USER, Dim.RELAY_DENIED: Kind.CLIENT, Dim.UID: Kind.UID}
ALERT_ONLY_DIMS = (Dim.SENDER, Dim.DOMAIN, Dim.UID)


@dataclass(frozen=True, slots=True)
class Rule:
    """Count `dim` over `window_s`; at `threshold` take `action`.

    With a prefix, clients are grouped into networks and the rule needs
    `min_clients` distinct addresses in the network: that is what rotation looks like.
    With `min_subnets`, those clients must also fall into that many distinct
    narrower networks (/`subnet_prefix_v4`, /`subnet_prefix_v6`): a flood inside
    one /24 is the /24's business, not its /16's.
    """

    name: str
    dim: Dim
    action: Action
    threshold: int
    window_s: int
    prefix_v4: int = 0
    prefix_v6: int = 0
    min_clients: int = 0
    min_subnets: int = 0
    subnet_prefix_v4: int = 24
    subnet_prefix_v6: int = 64

    @property
    def kind(self) -> Kind:
        return Kind.SUBNET if self.prefix_v4 else _KIND_OF_DIM[self.dim]


DEFAULT_RULES = (
    Rule("client", Dim.CLIENT, Action.BLOCK, threshold=60, window_s=600),
    Rule("subnet", Dim.CLIENT, Action.BLOCK, threshold=60, window_s=600, prefix_v4=24, prefix_v6=64, min_clients=4),
    Rule("wide_subnet", Dim.CLIENT, Action.BLOCK, threshold=30, window_s=600, prefix_v4=16, prefix_v6=48,
         min_clients=8, min_subnets=4),
    Rule("slow_subnet", Dim.CLIENT, Action.BLOCK, threshold=160, window_s=3 * 3600, prefix_v4=24, prefix_v6=64,
         min_clients=8),
    Rule("slow_wide_subnet", Dim.CLIENT, Action.BLOCK, threshold=200, window_s=3 * 3600, prefix_v4=16, prefix_v6=48,
         min_clients=12, min_subnets=6),
    Rule("sasl_user", Dim.SASL_USER, Action.BLOCK, threshold=150, window_s=3600),
    Rule("sender", Dim.SENDER, Action.ALERT, threshold=100, window_s=600),
    Rule("destination", Dim.DOMAIN, Action.ALERT, threshold=100, window_s=600),
    Rule("relay_probe", Dim.RELAY_DENIED, Action.ALERT, threshold=20, window_s=600),
    Rule("local_submission", Dim.UID, Action.ALERT, threshold=100, window_s=600),
)


def counted(fact: Fact, allow_sasl_users: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """The (dim, key) pairs one fact counts under: the single answer to "what feeds which rule",
    for the windows and for the stored counts they are rebuilt from."""
    if isinstance(fact, RelayDenied):
        return [("relay_denied", fact.client)]
    if isinstance(fact, LocalRelayed):
        keys = [("uid", str(fact.uid))]
    elif not fact.sasl_user:
        keys = [("client", fact.client)]
    elif fact.sasl_user in allow_sasl_users:
        return []
    else:
        keys = [("sasl_user", fact.sasl_user)]
    keys.append(("sender", fact.sender or "<>"))
    if fact.domain:
        keys.append(("domain", fact.domain))
    return keys
