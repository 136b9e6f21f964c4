"""Client addresses grouped into their networks, for the subnet rules. Pure, cached, bounded.

One function (and cache) per pair of prefixes, shared by every rule that groups the same way;
addresses are read as numbers (netaddr); caches are dicts cleared when full, so a flood of
distinct clients keeps memory flat.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from functools import lru_cache
from typing import TypeVar

from relaywatch.core.netaddr import address, is_global, network_text

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


V = TypeVar("V")


def _bounded(compute: Callable[[str], V]) -> Callable[[str], V]:
    """`compute` behind a dict cache cleared when full (flat memory under a flood of distinct keys)."""
    cache: dict[str, V] = {}

    def lookup(key: str) -> V:
        if key in cache:
            return cache[key]
        value = compute(key)
        if len(cache) >= _GROUP_CACHE:
            cache.clear()
        cache[key] = value
        return value

    return lookup


@lru_cache(maxsize=1024)
def _network_slow(ip: str, prefix_v4: int, prefix_v6: int) -> str | None:
    """What netaddr does not read as a number (a scoped address): ipaddress itself."""
    addr = ipaddress.ip_address(ip)
    if not addr.is_global:
        return None
    prefix = prefix_v4 if addr.version == 4 else prefix_v6
    return ipaddress.ip_network(f"{ip}/{prefix}", strict=False).compressed


@lru_cache(maxsize=64)
def networks_of(prefixes: tuple[tuple[int, int], ...]) -> Callable[[str], tuple[str | None, ...]]:
    """ip -> what `network_of` answers for each (prefix_v4, prefix_v6) pair, the address read once: the
    groupings of one window. One function (and cache) per tuple of pairs, so that windows of different
    lengths grouping alike share their answers (and the network texts in them)."""
    nothing: tuple[str | None, ...] = (None,) * len(prefixes)

    def compute(ip: str) -> tuple[str | None, ...]:
        addr = address(ip)
        if addr is None:
            return tuple(_network_slow(ip, p4, p6) for p4, p6 in prefixes)
        version, n = addr
        if not is_global(version, n):
            return nothing
        return tuple(network_text(version, n, p4 if version == 4 else p6) for p4, p6 in prefixes)

    return _bounded(compute)
