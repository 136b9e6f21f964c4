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
from collections.abc import Iterable
from functools import lru_cache
from typing import Final, NamedTuple

from relaywatch.core.grouping import Networks, network_of, networks_of
from relaywatch.core.rules import BUCKET_S, DEFAULT_RULES, DIMS, Fact, Network, Rule, counted, subnet_of
from relaywatch.core.windows import MAX_KEYS, Spread, WindowCounter
from relaywatch.model import Decision


@lru_cache(maxsize=4096)
def _network(target: str) -> Network:
    return ipaddress.ip_network(target)


class Observed(NamedTuple):
    """What one fact did to the detector: the window increments it made, (dim, key) pairs in `bucket`
    (what the store counts, so that a restart rebuilds exactly these windows), and its decisions."""

    bucket: int
    counted: list[tuple[str, str]]
    decisions: list[Decision]


# tuple's own __new__, held: compiled, `tuple.__new__(...)` looks the method up on every call
_NEW: Final = tuple.__new__


class _Watch:
    """One rule on the window of its dimension and length it shares with the rules counting alike: its
    grouping there (`gi`, -1: none) and, with `min_subnets`, the count of distinct narrower networks."""

    __slots__ = ("action", "gi", "group", "kind", "min_clients", "min_subnets", "networks", "quiet_gen",
                 "quiet_target", "quiet_until", "rule", "spread", "threshold", "window")

    def __init__(self, rule: Rule, window: WindowCounter, gi: int, spread: Spread | None,
                 networks: Networks | None) -> None:
        self.rule = rule
        self.window = window
        self.gi = gi
        self.spread = spread
        self.networks = networks  # the window's groupings: the text of the networks it names by number
        self.group = network_of(rule.prefix_v4, rule.prefix_v6) if rule.prefix_v4 else None
        self.action = rule.action
        self.kind = rule.kind
        self.threshold = rule.threshold
        self.min_clients = rule.min_clients
        self.min_subnets = rule.min_subnets
        # the last target found quiet, until when (a blocked flood crosses its threshold on every fact), and
        # the detector's generation of quiet periods it was read in
        self.quiet_target = ""
        self.quiet_until = 0.0
        self.quiet_gen = -1

    def evicted(self) -> int:
        """Keys and networks the window forgot at the cap (its networks: this rule's grouping's)."""
        return self.window.evicted + (self.window.groupings[self.gi].groups_evicted if self.gi >= 0 else 0)


def _windows(rules: list[Rule], bucket_s: int, max_keys: int) -> dict[str, list[_Watch]]:
    """The rules' watches by dimension (in rule order), one window per dimension and length, each
    grouping its keys every way its rules need, narrowest networks first."""
    shapes: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for rule in rules:
        pairs = shapes.setdefault((rule.dim, max(1, rule.window_s // bucket_s)), [])
        if rule.prefix_v4:
            pairs.append((rule.prefix_v4, rule.prefix_v6))
            if rule.min_subnets:
                pairs.append((rule.subnet_prefix_v4, rule.subnet_prefix_v6))
    windows: dict[tuple[str, int], WindowCounter] = {}
    networks: dict[tuple[str, int], Networks] = {}
    order: dict[tuple[str, int], tuple[tuple[int, int], ...]] = {}
    for shape, pairs in shapes.items():
        ordered = tuple(sorted(set(pairs), key=lambda p: (-p[0], -p[1])))
        order[shape] = ordered
        spreads = sorted({(ordered.index((r.subnet_prefix_v4, r.subnet_prefix_v6)),
                           ordered.index((r.prefix_v4, r.prefix_v6)))
                          for r in rules if (r.dim, max(1, r.window_s // bucket_s)) == shape and r.min_subnets})
        if ordered:
            networks[shape] = networks_of(ordered)
        windows[shape] = WindowCounter(shape[1], None, max_keys, networks.get(shape), len(ordered), spreads)
    watches: dict[str, list[_Watch]] = {dim: [] for dim in DIMS}
    for rule in rules:
        shape = (rule.dim, max(1, rule.window_s // bucket_s))
        window, ordered = windows[shape], order[shape]
        gi = ordered.index((rule.prefix_v4, rule.prefix_v6)) if rule.prefix_v4 else -1
        spread = window.spread(ordered.index((rule.subnet_prefix_v4, rule.subnet_prefix_v6)), gi) \
            if rule.prefix_v4 and rule.min_subnets else None
        watches[rule.dim].append(_Watch(rule, window, gi, spread, networks.get(shape)))
    return watches


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
        # widest networks first: when a /16 and a /24 inside it cross at once, the /16 (which needs
        # clients in several /24s) covers the /24, and a subnet block covers its clients
        self._watches = _windows(sorted(rules, key=lambda r: (-(r.prefix_v4 > 0), r.prefix_v4)), bucket_s, max_keys)
        self._windows: dict[str, list[WindowCounter]] = {
            dim: list({id(w.window): w.window for w in watches}.values()) for dim, watches in self._watches.items()}
        for windows in self._windows.values():
            for window in windows:
                window.peers = [w for w in windows if w is not window and w.groups_fn is window.groups_fn]
        # keyed by the plain str values: a dict of str keys only is looked up on CPython's fast path, one of
        # StrEnum members on the generic one (about 190 instructions more, three times per fact)
        self._by_dim: dict[str, tuple[list[WindowCounter], list[_Watch]]] = {
            dim.value: (self._windows[dim], self._watches[dim]) for dim in DIMS}
        self._quiet: dict[tuple[str, str, str], float] = {}  # (action, kind, target) -> quiet until
        self._quiet_gen = 0  # changes when a quiet period may end early: the watches' notes are void then
        self._blocked_nets: dict[Network, float] = {}
        # target -> until when a blocked network around it (not itself) holds; cleared with every
        # change of _blocked_nets. A client inside a blocked subnet crosses its threshold on every fact.
        self._covered: dict[str, float] = {}
        self._exempt: dict[tuple[str, str], bool] = {}  # (action, network) -> allow-listed or the host's own
        self._exempt_targets: dict[tuple[str, str], bool] = {}  # the same by (action, target text)
        # the last `evidence` facts and their lines, a ring (a deque of pairs built a tuple per fact)
        self._evidence = max(0, evidence)
        self._recent_facts: list[Fact] = []
        self._recent_lines: list[str] = []
        self._recent_at = 0  # the oldest, once the ring is full: where the next goes

    def bucket(self, t: float) -> int:
        return int(t // self.bucket_s)

    def evictions(self) -> dict[str, int]:
        """Rule name -> keys and networks its window forgot at the cap."""
        return {w.rule.name: w.evicted() for watches in self._watches.values() for w in watches}

    def sizes(self) -> dict[str, tuple[int, int]]:
        """Rule name -> (keys, networks) its window holds now (bench/flood.py checks the caps with it)."""
        return {w.rule.name: (len(w.window), len(w.window.groupings[w.gi].groups) if w.gi >= 0 else 0)
                for watches in self._watches.values() for w in watches}

    def restore(self, dim: str, bucket: int, key: str, n: int) -> None:
        """Replay a stored count (oldest bucket first) into the windows."""
        for window in self._windows.get(dim, ()):
            window.add(bucket, key, n)

    def remember_block(self, kind: str, target: str, until: float) -> None:
        """A block already in force (after a restart): no new decision for it or inside it."""
        self._quiet[("block", kind, target)] = until
        self._quiet_gen += 1
        if kind == "subnet":
            self._blocked_nets[ipaddress.ip_network(target)] = until
            self._covered.clear()

    def remember_alert(self, kind: str, target: str, until: float) -> None:
        """An alert already sent (after a restart): quiet for the rest of its period."""
        self._quiet[("alert", kind, target)] = until
        self._quiet_gen += 1

    def observe(self, fact: Fact, line: str) -> Observed:
        """Count `fact` into the windows of the rules it feeds; decide on the ones that crossed."""
        facts = self._recent_facts
        if len(facts) < self._evidence:
            facts.append(fact)
            self._recent_lines.append(line)
        elif self._evidence:
            at = self._recent_at
            facts[at] = fact
            self._recent_lines[at] = line
            self._recent_at = at + 1 if at + 1 < self._evidence else 0
        t = fact.time
        bucket = int(t // self.bucket_s)
        decisions: list[Decision] = []
        keys = counted(fact, self.allow_sasl_users)
        by_dim = self._by_dim
        for dim, key in keys:
            windows, watches = by_dim[dim]
            for window in windows:
                window.add(bucket, key)
            for watch in watches:
                window = watch.window
                gi = watch.gi
                if gi >= 0:
                    rec = window.last  # the key add() just counted (None: older than the window, and unknown)
                    if rec is None:
                        name = window.last_groups[gi]
                        group = None if name is None else window.groupings[gi].groups.get(name)
                    else:
                        group = rec.groups[gi]
                    if group is None:
                        continue
                    total = group.total
                    if total < watch.threshold:
                        continue
                    clients = group.nkeys
                    if clients < watch.min_clients:
                        continue
                    spread = watch.spread
                    if spread is not None and spread.count(group.name) < watch.min_subnets:
                        continue
                    net = group.text
                    if not net:
                        networks = watch.networks
                        net = group.text = str(group.name) if networks is None else networks.label(gi, group.name)
                    decision = self._decide(watch, t, net, total, clients)
                else:
                    total = window.last_total
                    if total < watch.threshold:
                        continue
                    decision = self._decide(watch, t, key, total, 0)
                if decision is not None:
                    decisions.append(decision)
        return _NEW(Observed, (bucket, keys, decisions))  # not the interpreted __new__ namedtuple writes

    def _decide(self, watch: _Watch, t: float, target: str, count: int, clients: int) -> Decision | None:
        if t < watch.quiet_until and target == watch.quiet_target and watch.quiet_gen == self._quiet_gen:
            return None
        rule = watch.rule
        kind = watch.kind
        # An alert never silences a block: a client that probed the relay (alert) and then relays must be blocked.
        silent = self._quiet
        blocked, told = silent.get(("block", kind, target), -1.0), silent.get((watch.action, kind, target), -1.0)
        if blocked > t or told > t:
            watch.quiet_target, watch.quiet_until, watch.quiet_gen = target, max(blocked, told), self._quiet_gen
            return None
        if not self._may_act_on(rule, kind, target, t):
            return None
        if len(self._quiet) > 10_000:
            self._quiet_gen += 1
            self._quiet = {k: until for k, until in self._quiet.items() if until > t}
            self._blocked_nets = {n: until for n, until in self._blocked_nets.items() if until > t}
            self._covered.clear()
        quiet = self.block_s if rule.action == "block" else max(rule.window_s, self.alert_quiet_s)
        self._quiet[(rule.action, kind, target)] = t + quiet
        if rule.action == "block" and kind == "subnet":
            self._blocked_nets[ipaddress.ip_network(target)] = t + self.block_s
            self._covered.clear()
        facts, lines, at = self._recent_facts, self._recent_lines, self._recent_at
        matching = [(facts[i], lines[i]) for i in (*range(at, len(facts)), *range(at))
                    if self._target_of(watch, facts[i]) == target]
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
        group = watch.group
        return key if key is None or group is None else group(key)
