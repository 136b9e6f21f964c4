"""What the blocks of a replay would have stopped: each blocked target's relayed recipients queued at
or after its block. The only part of the timeline a JSON report reads (its decisions' `stopped`).

Pure and stdlib only. A fact finds the blocks over it by a lookup (its client, its SASL user, its
address's networks), not a walk over all of them.
"""

from __future__ import annotations

import ipaddress

from relaywatch.core.netaddr import address
from relaywatch.core.rules import Network, blocked_by
from relaywatch.model import Decision, Relayed

MAX_WATCHED = 200  # blocks whose target's later traffic is counted ("would have stopped")


class _Watched:
    """A block the timeline follows: its network (subnets only) and the recipients queued at or after it.
    Plain classes here, not dataclasses: making a dataclass costs ~5M instructions at every start."""

    __slots__ = ("after", "net")

    def __init__(self, net: Network | None) -> None:
        self.net = net
        self.after = 0


def _count_after(watched: list[tuple[float, _Watched]] | None, t: float) -> None:
    """One more recipient after each of these blocks made at or before `t`."""
    if watched is not None:
        for since, w in watched:
            if t >= since:
                w.after += 1


class _WatchIndex:
    """BlockWatch.watched by target: clients, SASL users, and subnets by (version, host bits) and network."""

    __slots__ = ("clients", "networks", "subnets", "users")

    def __init__(self) -> None:
        self.clients: dict[str, list[tuple[float, _Watched]]] = {}
        self.users: dict[str, list[tuple[float, _Watched]]] = {}
        self.subnets: list[tuple[float, _Watched]] = []
        self.networks: list[tuple[int, int, dict[int, list[tuple[float, _Watched]]]]] = []


class BlockWatch:
    """The blocks followed, each with the recipients queued at or after it."""

    __slots__ = ("_addr", "_client", "_index", "watched")

    def __init__(self) -> None:
        # (kind, target, time) of a block -> its network and the recipients queued at or after it
        self.watched: dict[tuple[str, str, float], _Watched] = {}
        self._index: _WatchIndex | None = None  # of watched, made again after a change
        # the last client read and its address: a message's recipients come one after another, same client
        self._client: str | None = None
        self._addr: tuple[int, int] | None = None

    def decision(self, d: Decision) -> None:
        """Follow a block of a client, subnet or SASL user (up to MAX_WATCHED of them)."""
        if d.action == "block" and d.kind in ("client", "subnet", "sasl_user") and len(self.watched) < MAX_WATCHED:
            try:
                net = ipaddress.ip_network(d.target, strict=False) if d.kind == "subnet" else None
            except ValueError:
                net = None
            if d.kind != "subnet" or net is not None:
                self.watched[(d.kind, d.target, d.time)] = _Watched(net)
                self._index = None

    def fact(self, fact: Relayed) -> None:
        """Count the blocked targets' mail queued after their block: what the block would have stopped."""
        t = fact.queued if fact.queued is not None else fact.time
        index = self._index or self._reindex()
        if index.clients:
            _count_after(index.clients.get(fact.client), t)
        user = fact.sasl_user
        if user is not None and index.users:
            _count_after(index.users.get(user), t)
        if index.subnets:
            client = fact.client
            if client is not self._client:
                self._client, self._addr = client, address(client)
            a = self._addr
            if a is None:  # scoped, or not an address: what rules.in_network makes of it
                for since, w in index.subnets:
                    if t >= since and blocked_by("subnet", "", w.net, fact.client, None):
                        w.after += 1
                return
            version, n = a
            for v, shift, networks in index.networks:
                if v == version:
                    _count_after(networks.get(n >> shift), t)

    def _reindex(self) -> _WatchIndex:
        """The blocks followed, by target: a fact finds its blocks by a lookup, not a walk over all of them."""
        index = _WatchIndex()
        by_mask: dict[tuple[int, int], dict[int, list[tuple[float, _Watched]]]] = {}
        for (kind, target, since), w in self.watched.items():
            if kind == "client":
                index.clients.setdefault(target, []).append((since, w))
            elif kind == "sasl_user":
                index.users.setdefault(target, []).append((since, w))
            elif w.net is not None:
                index.subnets.append((since, w))
                shift = w.net.max_prefixlen - w.net.prefixlen
                by_mask.setdefault((w.net.version, shift), {}).setdefault(
                    int(w.net.network_address) >> shift, []).append((since, w))
        index.networks = [(v, shift, networks) for (v, shift), networks in by_mask.items()]
        self._index = index
        return index

    def after(self, d: Decision) -> int | None:
        """Recipients of `d`'s target queued at or after the block `d`; None when it is not followed."""
        w = self.watched.get((d.kind, d.target, d.time))
        return None if w is None else w.after
