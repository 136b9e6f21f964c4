"""Client addresses grouped into their networks, for the subnet rules. Pure, cached, bounded.

One function (and cache) per pair of prefixes, shared by every rule that groups the same way;
addresses are read as numbers (netaddr); caches are dicts cleared when full, so a flood of
distinct clients keeps memory flat.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache

from relaywatch.core.netaddr import address, is_global, network, network_text

_GROUP_CACHE = 2048  # addresses per grouping, cleared when full: flat under a flood of distinct clients


@lru_cache(maxsize=64)
def network_of(prefix_v4: int, prefix_v6: int) -> Callable[[str], str | None]:
    """ip -> its enclosing network, or None for addresses no subnet rule may touch
    (private, loopback, link-local: a LAN is never blocked wholesale). One function (and
    cache) per pair of prefixes, shared by every rule that groups the same way."""

    def compute(ip: str) -> str | None:
        addr = address(ip)
        if addr is None:
            return _network_slow(ip, prefix_v4, prefix_v6)
        if not is_global(addr[0], addr[1]):
            return None
        return network_text(addr[0], addr[1], prefix_v4 if addr[0] == 4 else prefix_v6)

    return _bounded(compute)


def _bounded(compute: Callable[[str], str | None]) -> Callable[[str], str | None]:
    """`compute` behind a dict cache cleared when full (flat memory under a flood of distinct keys)."""
    cache: dict[str, str | None] = {}

    def lookup(key: str) -> str | None:
        value = cache.get(key, _UNKNOWN)
        if value is not _UNKNOWN:
            return value
        value = compute(key)
        if len(cache) >= _GROUP_CACHE:
            cache.clear()
        cache[key] = value
        return value

    return lookup


_UNKNOWN = "?"  # not a network text: a cache miss


@lru_cache(maxsize=1024)
def _network_slow(ip: str, prefix_v4: int, prefix_v6: int) -> str | None:
    """What netaddr does not read as a number (a scoped address): ipaddress itself."""
    addr = ipaddress.ip_address(ip)
    if not addr.is_global:
        return None
    prefix = prefix_v4 if addr.version == 4 else prefix_v6
    return ipaddress.ip_network(f"{ip}/{prefix}", strict=False).compressed


@lru_cache(maxsize=64)
def _supernet_of(prefix_v4: int, prefix_v6: int) -> Callable[[str], str | None]:
    """network text -> its enclosing /prefix network."""

    def compute(net: str) -> str | None:
        addr = network(net)
        if addr is None:
            return _supernet_slow(net, prefix_v4, prefix_v6)
        return network_text(addr[0], addr[1], prefix_v4 if addr[0] == 4 else prefix_v6)

    return _bounded(compute)


@lru_cache(maxsize=1024)
def _supernet_slow(net: str, prefix_v4: int, prefix_v6: int) -> str | None:
    n = ipaddress.ip_network(net)
    return n.supernet(new_prefix=prefix_v4 if n.version == 4 else prefix_v6).compressed
