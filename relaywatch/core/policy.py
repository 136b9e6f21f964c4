"""Decide from windowed counts whom to block or alert about. Pure: facts in, decisions out.

Who feeds which rule (README, "What counts as relayed, and what gets blocked"):
unauthenticated relaying feeds the client and subnet rules; authenticated
relaying (a SASL login) feeds the SASL-user rule instead, so one login, an
office NAT or a mobile carrier full of logged-in users never gets an address
blocked; a login in `[allow] sasl_users` feeds nothing. Every relayed
recipient feeds the sender and destination alerts; mail submitted on this
host (pickup) feeds the per-uid alert. A subnet rule blocks the narrowest
network that covers the abuse: a /16 rule needs clients in several /24s.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

from relaywatch.core.grouping import _supernet_of, network_of
from relaywatch.core.netaddr import address
from relaywatch.core.windows import MAX_KEYS, WindowCounter
from relaywatch.model import (
    Action,
    Decision,
    Dim,
    Kind,
    LocalRelayed,
    RelayDenied,
    Relayed,
)

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
    a = address(text)
    if a is None:
        addr = _address(text)  # scoped, or not an address
        return addr is not None and addr.version == net.version and addr in net
    shift = net.max_prefixlen - net.prefixlen
    return a[0] == net.version and a[1] >> shift == int(net.network_address) >> shift


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


@lru_cache(maxsize=4096)
def _network(target: str) -> Network:
    return ipaddress.ip_network(target)


class Observed(NamedTuple):
    """What one fact did to the detector: the window increments it made, (dim, key) pairs in `bucket`
    (what the store counts, so that a restart rebuilds exactly these windows), and its decisions."""

    bucket: int
    counted: list[tuple[str, str]]
    decisions: list[Decision]


class _Watch:
    """One rule's window; a subnet rule with `min_subnets` also counts its distinct narrower networks."""

    __slots__ = ("counter", "narrow", "rule", "spread")

    def __init__(self, rule: Rule, bucket_s: int, max_keys: int = MAX_KEYS) -> None:
        group = network_of(rule.prefix_v4, rule.prefix_v6) if rule.prefix_v4 else None
        self.rule = rule
        self.counter = WindowCounter(rule.window_s // bucket_s, group, max_keys)
        self.spread: WindowCounter | None = None
        self.narrow: Callable[[str], str | None] | None = None
        if group is not None and rule.min_subnets:
            self.narrow = network_of(rule.subnet_prefix_v4, rule.subnet_prefix_v6)
            self.spread = WindowCounter(rule.window_s // bucket_s, _supernet_of(rule.prefix_v4, rule.prefix_v6),
                                        max_keys)

    def add(self, bucket: int, key: str, n: int = 1) -> int:
        if self.spread is not None and self.narrow is not None:  # set together
            narrow = self.narrow(key)
            if narrow is not None:
                self.spread.add(bucket, narrow, n)
        return self.counter.add(bucket, key, n)

    def subnets(self, net: str) -> int:
        """Distinct narrower networks with clients in `net` in the window."""
        return self.spread.group_keys.get(net, 0) if self.spread is not None else 0


class Detector:
    """Holds one sliding window per rule and turns crossings into decisions.

    A target decided once stays quiet for `block_s` (blocks) or an hour
    (alerts: one push per flood, not one per window); a client inside a
    blocked subnet needs no block of its own. `never_block`: the host's own
    addresses; no client or subnet block ever covers one.
    """

    def __init__(
        self,
        rules: Iterable[Rule] = DEFAULT_RULES,
        allow_networks: Iterable[Network] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        allow_sasl_users: Iterable[str] = (),
        block_s: int = 86400,
        bucket_s: int = BUCKET_S,
        evidence: int = 512,
        alert_quiet_s: int = 3600,
        max_keys: int = MAX_KEYS,
        never_block: Iterable[Network] = (),
    ) -> None:
        """`max_keys`: distinct keys (and networks) each rule's window holds at most (see WindowCounter)."""
        self.bucket_s = bucket_s
        self.max_keys = max_keys
        self.block_s = block_s
        self.alert_quiet_s = alert_quiet_s
        self.allow = tuple(allow_networks)
        self.never_block = tuple(never_block)
        self.allow_sasl_users = frozenset(allow_sasl_users)
        self._watches: dict[str, list[_Watch]] = {dim: [] for dim in DIMS}
        # widest networks first: when a /16 and a /24 inside it cross at once, the /16 (which needs
        # clients in several /24s) covers the /24, and a subnet block covers its clients
        for rule in sorted(rules, key=lambda r: (-(r.prefix_v4 > 0), r.prefix_v4)):
            self._watches[rule.dim].append(_Watch(rule, bucket_s, max_keys))
        self._quiet: dict[tuple[str, str, str], float] = {}  # (action, kind, target) -> quiet until
        self._blocked_nets: dict[Network, float] = {}
        # target -> until when a blocked network around it (not itself) holds; cleared with every
        # change of _blocked_nets. A client inside a blocked subnet crosses its threshold on every fact.
        self._covered: dict[str, float] = {}
        self._exempt: dict[tuple[str, str], bool] = {}  # (action, network) -> allow-listed or the host's own
        self._exempt_targets: dict[tuple[str, str], bool] = {}  # the same by (action, target text)
        self._recent: deque[tuple[Fact, str]] = deque(maxlen=evidence)

    def bucket(self, t: float) -> int:
        return int(t // self.bucket_s)

    def evictions(self) -> dict[str, int]:
        """Rule name -> keys and networks its window forgot at the cap."""
        return {w.rule.name: w.counter.evicted for watches in self._watches.values() for w in watches}

    def restore(self, dim: str, bucket: int, key: str, n: int) -> None:
        """Replay a stored count (oldest bucket first) into the windows."""
        for watch in self._watches.get(dim, ()):
            watch.add(bucket, key, n)

    def remember_block(self, kind: str, target: str, until: float) -> None:
        """A block already in force (after a restart): no new decision for it or inside it."""
        self._quiet[("block", kind, target)] = until
        if kind == "subnet":
            self._blocked_nets[ipaddress.ip_network(target)] = until
            self._covered.clear()

    def remember_alert(self, kind: str, target: str, until: float) -> None:
        """An alert already sent (after a restart): quiet for the rest of its period."""
        self._quiet[("alert", kind, target)] = until

    def observe(self, fact: Fact, line: str) -> Observed:
        """Count `fact` into the windows of the rules it feeds; decide on the ones that crossed."""
        self._recent.append((fact, line))
        t = fact.time
        bucket = int(t // self.bucket_s)
        decisions: list[Decision] = []
        keys = counted(fact, self.allow_sasl_users)
        watches = self._watches
        for dim, key in keys:
            for watch in watches[dim]:
                spread, narrow = watch.spread, watch.narrow
                if spread is not None and narrow is not None:  # set together
                    net = narrow(key)
                    if net is not None:
                        spread.add(bucket, net)
                counter = watch.counter
                total = counter.add(bucket, key)  # what watch.add does, without its call
                rule = watch.rule
                if rule.prefix_v4:
                    net = counter.last_group  # the group of `key`, as add() just found it
                    if net is None:
                        continue
                    # absent when the event was older than the window (a log that jumps back in time)
                    total = counter.group_totals.get(net, 0)
                    if total < rule.threshold:
                        continue
                    clients = counter.group_keys.get(net, 0)
                    if clients < rule.min_clients or (rule.min_subnets and watch.subnets(net) < rule.min_subnets):
                        continue
                    decision = self._decide(watch, t, net, total, clients)
                elif total >= rule.threshold:
                    decision = self._decide(watch, t, key, total, 0)
                else:
                    continue
                if decision is not None:
                    decisions.append(decision)
        return Observed(bucket, keys, decisions)

    def _decide(self, watch: _Watch, t: float, target: str, count: int, clients: int) -> Decision | None:
        rule = watch.rule
        kind = rule.kind
        # An alert never silences a block: a client that probed the relay (alert) and then relays must be blocked.
        silent = self._quiet
        if silent.get(("block", kind, target), -1.0) > t or silent.get((rule.action, kind, target), -1.0) > t:
            return None
        if not self._may_act_on(rule, kind, target, t):
            return None
        if len(self._quiet) > 10_000:
            self._quiet = {k: until for k, until in self._quiet.items() if until > t}
            self._blocked_nets = {n: until for n, until in self._blocked_nets.items() if until > t}
            self._covered.clear()
        quiet = self.block_s if rule.action == "block" else max(rule.window_s, self.alert_quiet_s)
        self._quiet[(rule.action, kind, target)] = t + quiet
        if rule.action == "block" and kind == "subnet":
            self._blocked_nets[ipaddress.ip_network(target)] = t + self.block_s
            self._covered.clear()
        matching = [(f, line) for f, line in self._recent if self._target_of(watch, f) == target]
        evidence = matching[-5:]
        # the hosts whose facts in the window led here: several when a fleet's logs are replayed as one
        since = t - rule.window_s
        hosts = tuple(sorted({f.host for f, _ in matching if f.host and f.time > since}))
        return Decision(
            time=t,
            action=rule.action,
            kind=kind,
            target=target,
            rule=rule.name,
            count=count,
            window_s=rule.window_s,
            clients=clients,
            evidence=tuple(line for _, line in evidence),
            sample_qids=tuple(dict.fromkeys(f.qid for f, _ in evidence if f.qid)),
            hosts=hosts,
        )

    def _may_act_on(self, rule: Rule, kind: str, target: str, t: float) -> bool:
        if kind == "sasl_user":
            return target not in self.allow_sasl_users
        if kind not in ("client", "subnet"):
            return True
        key = (rule.action, target)
        exempt = self._exempt_targets.get(key)
        if exempt is None:  # a client over its threshold is checked on every fact: its network once
            exempt = self._is_exempt(rule.action, _network(target))
            if len(self._exempt_targets) > 10_000:
                self._exempt_targets.clear()
            self._exempt_targets[key] = exempt
        if exempt:
            return False
        if rule.action != "block" or not self._blocked_nets:
            return True
        covered = self._covered.get(target)
        if covered is None:
            net = _network(target)
            covered = max((until for blocked, until in self._blocked_nets.items()
                           if subnet_of(net, blocked) and net != blocked), default=float("-inf"))
            if len(self._covered) > 10_000:
                self._covered.clear()
            self._covered[target] = covered
        return not covered > t

    def _is_exempt(self, action: str, net: Network) -> bool:
        """Allow-listed networks get no decision; the host's own addresses are never inside a block."""
        key = (action, net.compressed)
        exempt = self._exempt.get(key)
        if exempt is None:
            covers = self.allow + self.never_block if action == "block" else self.allow
            exempt = any(net.overlaps(a) for a in covers if a.version == net.version)
            if len(self._exempt) > 10_000:
                self._exempt.clear()
            self._exempt[key] = exempt
        return exempt

    def _target_of(self, watch: _Watch, fact: Fact) -> str | None:
        dim = watch.rule.dim
        key = next((k for d, k in counted(fact, self.allow_sasl_users) if d == dim), None)
        group = watch.counter.group
        return key if key is None or group is None else group(key)
