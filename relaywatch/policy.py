"""Decide from windowed counts whom to block or alert about. Pure: facts in, decisions out.

Defaults a home or small-office admin can keep: a LAN host mailing a few
dozen people an hour, an authenticated user's ordinary day, and inbound mail
from big providers (delivered locally, so never "relayed") stay far below
every threshold, while the 2003 flood trips the /16 rule within two minutes.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

from .model import Decision, Relayed, RelayDenied
from .windows import MAX_KEYS, WindowCounter

BUCKET_S = 10
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DIMS = ("client", "sender", "domain", "sasl_user", "relay_denied")
_KIND_OF_DIM = {"client": "client", "sender": "sender", "domain": "destination", "sasl_user": "sasl_user",
                "relay_denied": "client"}


@dataclass(frozen=True, slots=True)
class Rule:
    """Count `dim` over `window_s`; at `threshold` take `action`.

    With a prefix, clients are grouped into networks and the rule needs
    `min_clients` distinct addresses in the network: that is what rotation looks like.
    """

    name: str
    dim: str
    action: str
    threshold: int
    window_s: int
    prefix_v4: int = 0
    prefix_v6: int = 0
    min_clients: int = 0

    @property
    def kind(self) -> str:
        return "subnet" if self.prefix_v4 else _KIND_OF_DIM[self.dim]


DEFAULT_RULES = (
    Rule("client", "client", "block", threshold=60, window_s=600),
    Rule("subnet", "client", "block", threshold=60, window_s=600, prefix_v4=24, prefix_v6=64, min_clients=4),
    Rule("wide_subnet", "client", "block", threshold=60, window_s=600, prefix_v4=16, prefix_v6=48, min_clients=8),
    Rule("sasl_user", "sasl_user", "block", threshold=150, window_s=3600),
    Rule("sender", "sender", "alert", threshold=100, window_s=600),
    Rule("destination", "domain", "alert", threshold=100, window_s=600),
    Rule("relay_probe", "relay_denied", "alert", threshold=20, window_s=600),
)


def network_of(prefix_v4: int, prefix_v6: int) -> Callable[[str], str | None]:
    """ip -> its enclosing network, or None for addresses no subnet rule may touch
    (private, loopback, link-local: a LAN is never blocked wholesale)."""

    @lru_cache(maxsize=65536)
    def group(ip: str) -> str | None:
        addr = ipaddress.ip_address(ip)
        if not addr.is_global:
            return None
        prefix = prefix_v4 if addr.version == 4 else prefix_v6
        return ipaddress.ip_network(f"{ip}/{prefix}", strict=False).compressed

    return group


def fact_key(dim: str, fact: Relayed | RelayDenied) -> str | None:
    if dim == "client" or dim == "relay_denied":
        return fact.client
    if dim == "sender":
        return fact.sender or "<>"  # type: ignore[union-attr]
    if dim == "domain":
        return fact.domain or None  # type: ignore[union-attr]
    return fact.sasl_user  # type: ignore[union-attr]


class _Watch:
    __slots__ = ("rule", "counter")

    def __init__(self, rule: Rule, bucket_s: int, max_keys: int = MAX_KEYS) -> None:
        group = network_of(rule.prefix_v4, rule.prefix_v6) if rule.prefix_v4 else None
        self.rule = rule
        self.counter = WindowCounter(rule.window_s // bucket_s, group, max_keys)


class Detector:
    """Holds one sliding window per rule and turns crossings into decisions.

    A target decided once stays quiet for `block_s` (blocks) or an hour
    (alerts: one push per flood, not one per window); a client inside a
    blocked subnet needs no block of its own.
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
    ) -> None:
        """`max_keys`: distinct keys (and networks) each rule's window holds at most (see WindowCounter)."""
        self.bucket_s = bucket_s
        self.max_keys = max_keys
        self.block_s = block_s
        self.alert_quiet_s = alert_quiet_s
        self.allow = tuple(allow_networks)
        self.allow_sasl_users = frozenset(allow_sasl_users)
        self._watches: dict[str, list[_Watch]] = {dim: [] for dim in DIMS}
        for rule in rules:
            self._watches[rule.dim].append(_Watch(rule, bucket_s, max_keys))
        self._quiet: dict[tuple[str, str, str], float] = {}  # (action, kind, target) -> quiet until
        self._blocked_nets: dict[Network, float] = {}
        self._recent: deque[tuple[Relayed | RelayDenied, str]] = deque(maxlen=evidence)

    def bucket(self, t: float) -> int:
        return int(t // self.bucket_s)

    def evictions(self) -> dict[str, int]:
        """Rule name -> keys and networks its window forgot at the cap."""
        return {w.rule.name: w.counter.evicted for watches in self._watches.values() for w in watches}

    def restore(self, dim: str, bucket: int, key: str, n: int) -> None:
        """Replay a stored count (oldest bucket first) into the windows."""
        for watch in self._watches.get(dim, ()):
            watch.counter.add(bucket, key, n)

    def remember_block(self, kind: str, target: str, until: float) -> None:
        """A block already in force (after a restart): no new decision for it or inside it."""
        self._quiet[("block", kind, target)] = until
        if kind == "subnet":
            self._blocked_nets[ipaddress.ip_network(target)] = until

    def remember_alert(self, kind: str, target: str, until: float) -> None:
        """An alert already sent (after a restart): quiet for the rest of its period."""
        self._quiet[("alert", kind, target)] = until

    def observe(self, fact: Relayed | RelayDenied, line: str) -> list[Decision]:
        self._recent.append((fact, line))
        bucket = self.bucket(fact.time)
        decisions: list[Decision] = []
        dims = ("client", "sender", "domain", "sasl_user") if type(fact) is Relayed else ("relay_denied",)
        for dim in dims:
            key = fact_key(dim, fact)
            if key is None:
                continue
            for watch in self._watches[dim]:
                total = watch.counter.add(bucket, key)
                rule = watch.rule
                if rule.prefix_v4:
                    decision = self._check_group(watch, fact, key)
                elif total >= rule.threshold:
                    decision = self._decide(watch, fact.time, key, total, 0)
                else:
                    continue
                if decision is not None:
                    decisions.append(decision)
        return decisions

    def _check_group(self, watch: _Watch, fact: Relayed | RelayDenied, key: str) -> Decision | None:
        counter, rule = watch.counter, watch.rule
        net = counter.group(key) if counter.group else None
        if net is None:
            return None
        # absent when the event was older than the window (a log that jumps back in time)
        total = counter.group_totals.get(net, 0)
        clients = counter.group_keys.get(net, 0)
        if total < rule.threshold or clients < rule.min_clients:
            return None
        return self._decide(watch, fact.time, net, total, clients)

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
        quiet = self.block_s if rule.action == "block" else max(rule.window_s, self.alert_quiet_s)
        self._quiet[(rule.action, kind, target)] = t + quiet
        if rule.action == "block" and kind == "subnet":
            self._blocked_nets[ipaddress.ip_network(target)] = t + self.block_s
        evidence = [(f, line) for f, line in self._recent if self._target_of(watch, f) == target][-5:]
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
        )

    def _may_act_on(self, rule: Rule, kind: str, target: str, t: float) -> bool:
        if kind == "sasl_user":
            return target not in self.allow_sasl_users
        if kind not in ("client", "subnet"):
            return True
        net = ipaddress.ip_network(target)
        if any(net.overlaps(a) for a in self.allow if a.version == net.version):
            return False
        if rule.action != "block":
            return True
        return not any(
            until > t and blocked.version == net.version and net.subnet_of(blocked) and net != blocked
            for blocked, until in self._blocked_nets.items()
        )

    @staticmethod
    def _target_of(watch: _Watch, fact: Relayed | RelayDenied) -> str | None:
        if (type(fact) is RelayDenied) != (watch.rule.dim == "relay_denied"):
            return None
        key = fact_key(watch.rule.dim, fact)
        group = watch.counter.group
        return key if key is None or group is None else group(key)
