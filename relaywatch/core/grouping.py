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

from relaywatch.core.netaddr import address, is_global, network_text, read

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
def networks_of(prefixes: tuple[tuple[int, int], ...]) -> Networks:
    """The groupings of one window (see Networks), one per tuple of pairs, so that windows of different
    lengths grouping alike share their answers."""
    return Networks(prefixes)


class Networks:
    """ip -> its network for each (prefix_v4, prefix_v6) pair (None where `network_of` says None), the
    address read once: the groupings of one window.

    A network is named by a number, not its text: the network's own number (`address >> (width - prefix)`),
    negated less one for IPv4, unique within one pair of prefixes. A flood of distinct IPv6 clients brings
    a new /64 with every client, and writing its text cost more than everything else the windows did for
    it; `label` writes the text (`network_of`'s) only for the networks a rule decides on.
    """

    __slots__ = ("cache", "nothing", "prefixes", "shifts4", "shifts6")

    def __init__(self, prefixes: tuple[tuple[int, int], ...]) -> None:
        self.prefixes = prefixes
        self.nothing: tuple[int | None, ...] = (None,) * len(prefixes)
        self.shifts4 = tuple(32 - p4 for p4, _ in prefixes)  # the host bits of each network, per family
        self.shifts6 = tuple(128 - p6 for _, p6 in prefixes)
        self.cache: dict[str, tuple[int | None, ...]] = {}

    def __call__(self, ip: str) -> tuple[int | None, ...]:
        cache = self.cache
        found = cache.get(ip)
        if found is not None:
            return found
        r = read(ip)  # not address(): no tuple built per new client
        if r is None or r[2] < 0:
            value = tuple(_network_number(ip, p4, p6) for p4, p6 in self.prefixes)
        else:
            version, n = r[1], r[2]
            if not is_global(version, n):
                value = self.nothing
            elif version == 4:
                value = tuple(-(n >> shift) - 1 for shift in self.shifts4)
            else:
                value = tuple(n >> shift for shift in self.shifts6)
        if len(cache) >= _GROUP_CACHE:
            cache.clear()
        cache[ip] = value
        return value

    def label(self, i: int, number: int | str) -> str:
        """The text of network `number` of the `i`th pair of prefixes."""
        if isinstance(number, str):
            return number
        p4, p6 = self.prefixes[i]
        if number < 0:
            return network_text(4, (-number - 1) << (32 - p4), p4)
        return network_text(6, number << (128 - p6), p6)


@lru_cache(maxsize=1024)
def _network_number(ip: str, prefix_v4: int, prefix_v6: int) -> int | None:
    """Networks' number for what netaddr does not read as a number (a scoped address): ipaddress itself."""
    addr = ipaddress.ip_address(ip)
    if not addr.is_global:
        return None
    if addr.version == 4:
        return -(int(addr) >> (32 - prefix_v4)) - 1
    return int(addr) >> (128 - prefix_v6)
