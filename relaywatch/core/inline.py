"""Answer Postfix's policy delegation requests (SMTPD_POLICY_README) from relaywatch's state. Pure.

A log watcher acts after the fact: a session already open when a map changed kept relaying.
Postfix asks a policy service at every RCPT, so an answer from the daemon's own state stops a
blocked client, subnet or SASL login at its next recipient, in sessions already open, and
holds a client with no relaying history to a small budget until a human has looked.

Counting: the service counts the relayed recipients it let through; the log pipeline counts the
relayed recipients Postfix logged. A budget is over when the larger of the two reaches the
limit, never their sum: both count the same recipients, seen twice.
"""

from __future__ import annotations

import ipaddress
import string
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from relaywatch.core.destinations import Destinations
from relaywatch.model import ConfigError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

DUNNO = "DUNNO"
MAX_VALUE = 512  # characters of an attribute kept (an address is at most 254)
_WANTED = frozenset((b"request", b"protocol_state", b"client_address", b"sasl_username", b"sender", b"recipient",
                     b"queue_id"))
_PRINTABLE = frozenset(string.printable) - frozenset("\t\n\r\x0b\x0c")


@dataclass(frozen=True, slots=True)
class Request:
    """What relaywatch reads of one policy request; `client` is a valid IP address."""

    state: str
    client: str
    sasl_user: str
    sender: str
    recipient: str
    queue_id: str

    def summary(self) -> str:
        """One line for evidence; attacker-written values made printable and short."""
        return (f"policy {self.state} from {self.client}: sender=<{_clean(self.sender)}> "
                f"recipient=<{_clean(self.recipient)}>" + (f" sasl_username={_clean(self.sasl_user)}"
                                                           if self.sasl_user else ""))


def _clean(text: str) -> str:
    return "".join(c if c in _PRINTABLE else "?" for c in text[:120])


def parse_request(raw: bytes) -> Request | None:
    """name=value lines (the empty line already cut off) -> a Request; None when it is not an
    smtpd access policy request with a valid client address (the caller answers DUNNO)."""
    attrs: dict[bytes, str] = {}
    for line in raw.split(b"\n"):
        name, sep, value = line.partition(b"=")
        if sep and name in _WANTED:
            attrs[name] = value[:MAX_VALUE].decode("utf-8", "replace")
    if attrs.get(b"request") != "smtpd_access_policy":
        return None
    try:
        client = ipaddress.ip_address(attrs.get(b"client_address", "")).compressed
    except ValueError:
        return None
    return Request(attrs.get(b"protocol_state", "").upper(), client, attrs.get(b"sasl_username", ""),
                   attrs.get(b"sender", ""), attrs.get(b"recipient", ""), attrs.get(b"queue_id", ""))


def parse_listen(value: str) -> tuple[str, int | None]:
    """(host, port) of "127.0.0.1:PORT" or "[::1]:PORT"; (path, None) for an absolute unix socket path.
    Only loopback: a service reachable from the network would let anyone spend a client's budget."""
    if value.startswith("/"):
        return value, None
    host, sep, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"[policy] listen: {value!r} is not \"127.0.0.1:PORT\", \"[::1]:PORT\" or a socket path")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"[policy] listen: {value!r} is not a loopback address (or use a unix socket path)")
    return host, int(port)


def recipient_domain(recipient: str) -> str:
    return recipient.rpartition("@")[2].rstrip(".").lower() if "@" in recipient else ""


def history_key(client: str) -> str:
    """What the relaying history remembers: an IPv4 address, or an IPv6 client's /64
    (its interface identifier changes: privacy addresses)."""
    addr = ipaddress.ip_address(client)
    if addr.version == 4:
        return addr.compressed
    return ipaddress.ip_network(f"{addr}/64", strict=False).compressed


@dataclass(frozen=True)
class Blocked:
    """The blocks in force, in the shape a lookup per request wants: per (version, prefix)
    the set of network numbers, so a client is checked with one mask per prefix in use."""

    nets: tuple[tuple[int, int, frozenset[int]], ...] = ()
    sasl_users: frozenset[str] = frozenset()

    @classmethod
    def of(cls, blocks: Iterable[tuple[str, str]]) -> Blocked:
        """From (kind, target) pairs: client, subnet, sasl_user; others are ignored."""
        nets: dict[tuple[int, int], set[int]] = {}
        users = set()
        for kind, target in blocks:
            if kind == "sasl_user":
                users.add(target)
            elif kind in ("client", "subnet"):
                try:
                    net = ipaddress.ip_network(target, strict=False)
                except ValueError:
                    continue
                nets.setdefault((net.version, net.prefixlen), set()).add(int(net.network_address))
        return cls(tuple((v, p, frozenset(s)) for (v, p), s in sorted(nets.items())), frozenset(users))

    def reason(self, req: Request) -> str | None:
        """Why this request must be refused, or None."""
        if req.sasl_user and req.sasl_user in self.sasl_users:
            return "SASL login blocked"
        if self.nets:
            addr = ipaddress.ip_address(req.client)
            bits, n = addr.max_prefixlen, int(addr)
            for version, prefix, numbers in self.nets:
                if version == addr.version and (n >> (bits - prefix) << (bits - prefix)) in numbers:
                    return "client blocked" if prefix == bits else "network blocked"
        return None


@dataclass(frozen=True, slots=True)
class Exceeded:
    """An unknown relayer crossed its inline budget: the daemon turns it into a decision."""

    time: float
    kind: str  # client | subnet
    target: str
    count: int
    window_s: int
    evidence: tuple[str, ...]
    qids: tuple[str, ...]


class Budget:
    """Relayed recipients per key (client, /24, /64) in a sliding window, from two sources
    kept apart: what the service let through and what the log shows. Bounded: each key keeps
    at most `limit` times per source, and at most `max_keys` keys are kept."""

    def __init__(self, limit: int, window_s: int, prefix_v4: int = 24, prefix_v6: int = 64,
                 max_keys: int = 100_000) -> None:
        self.limit, self.window_s = limit, window_s
        self.prefix_v4, self.prefix_v6 = prefix_v4, prefix_v6
        self.max_keys = max_keys
        self._answered: dict[str, deque[float]] = {}
        self._logged: dict[str, deque[float]] = {}
        self._evidence: dict[str, deque[Request]] = {}

    def keys(self, client: str) -> list[tuple[str, str]]:
        """(kind, key) pairs a client is counted under; networks only for global addresses
        (a LAN is never throttled wholesale, as subnet rules never block one)."""
        addr = ipaddress.ip_address(client)
        out = [("client", addr.compressed)]
        if addr.is_global:
            prefix = self.prefix_v4 if addr.version == 4 else self.prefix_v6
            out.append(("subnet", ipaddress.ip_network(f"{addr}/{prefix}", strict=False).compressed))
        return out

    def _count(self, table: dict[str, deque[float]], key: str, now: float) -> int:
        times = table.get(key)
        if not times:
            return 0
        since = now - self.window_s
        while times and times[0] <= since:
            times.popleft()
        return len(times)

    def count(self, key: str, now: float) -> int:
        return max(self._count(self._answered, key, now), self._count(self._logged, key, now))

    def _add(self, table: dict[str, deque[float]], key: str, t: float) -> None:
        times = table.get(key)
        if times is None:
            if len(table) >= self.max_keys:
                self._forget(table, t)
            times = table[key] = deque(maxlen=self.limit)
        times.append(t)

    def _forget(self, table: dict[str, deque[float]], now: float) -> None:
        """Drop keys whose window is empty; if that is not enough, the oldest quarter."""
        since = now - self.window_s
        stale = [k for k, times in table.items() if not times or times[-1] <= since]
        if len(stale) < len(table) // 4:
            stale += list(table)[: len(table) // 4]
        for k in stale:
            table.pop(k, None)
            self._evidence.pop(k, None)

    def admit(self, req: Request, now: float) -> tuple[str, str, int] | None:
        """Count one relayed recipient for all of the client's keys, or return the first
        (kind, key, count) already at the limit (nothing is counted then)."""
        keys = self.keys(req.client)
        for kind, key in keys:
            n = self.count(key, now)
            if n >= self.limit:
                return kind, key, n
        for _, key in keys:
            self._add(self._answered, key, now)
            ev = self._evidence.get(key)
            if ev is None:
                ev = self._evidence[key] = deque(maxlen=4)
            ev.append(req)
        return None

    def logged(self, client: str, t: float) -> None:
        """One relayed recipient of this client in the log."""
        for _, key in self.keys(client):
            self._add(self._logged, key, t)

    def evidence(self, key: str) -> list[Request]:
        return list(self._evidence.get(key, ()))


class InlinePolicy:
    """The answers. `blocked` and `known` are replaced whole by the daemon (never mutated), so a
    request sees one consistent snapshot; the caller serialises `answer` and `logged`."""

    def __init__(self, local_domains: Destinations, budget: Budget | None, allow: Iterable[Network] = (),
                 known_networks: Iterable[Network] = (), quiet_s: int = 3600) -> None:
        self.local_domains = local_domains
        self.budget = budget if local_domains.known else None  # cannot tell relayed mail: no budget
        self.allow = tuple(allow)
        self.known_networks = tuple(known_networks)
        self.quiet_s = quiet_s
        self.blocked = Blocked()
        self.known: frozenset[str] = frozenset()
        self._raised: dict[str, float] = {}  # key -> no new Exceeded before

    def relayed(self, req: Request) -> bool:
        """Unauthenticated, to a domain Postfix is not the destination for."""
        domain = recipient_domain(req.recipient)
        # a domain Postfix's tables could not answer for is not held to the budget (fail open)
        return not req.sasl_user and bool(domain) and self.local_domains.accepts(domain) is False

    def is_known(self, client: str) -> bool:
        if history_key(client) in self.known:
            return True
        addr = ipaddress.ip_address(client)
        return any(addr in net for net in self.allow) or any(addr in net for net in self.known_networks)

    def answer(self, req: Request | None, now: float) -> tuple[str, Exceeded | None]:
        """The action for Postfix, and an Exceeded when a budget was crossed just now."""
        if req is None:
            return DUNNO, None
        why = self.blocked.reason(req)
        if why is not None:
            return f"REJECT 5.7.1 relaywatch: {why}", None
        budget = self.budget
        if budget is None or req.state != "RCPT" or not self.relayed(req) or self.is_known(req.client):
            return DUNNO, None
        over = budget.admit(req, now)
        if over is None:
            return DUNNO, None
        kind, key, count = over
        who = "your network" if kind == "subnet" else "this client"
        action = (f"DEFER_IF_PERMIT 4.7.1 relaywatch: new relaying from {who} is limited to {budget.limit}"
                  f" recipients in {max(1, budget.window_s // 60)} min; try again later")
        if self._raised.get(key, 0.0) > now:
            return action, None
        if len(self._raised) > 10_000:
            self._raised = {k: until for k, until in self._raised.items() if until > now}
        self._raised[key] = now + max(self.quiet_s, budget.window_s)
        seen = budget.evidence(key)
        lines = [r.summary() + ": DUNNO" for r in seen] + [req.summary() + ": DEFER_IF_PERMIT (over budget)"]
        qids = tuple(dict.fromkeys(r.queue_id for r in (*seen, req) if r.queue_id))
        return action, Exceeded(now, kind, key, count, budget.window_s, tuple(lines), qids)

    def logged(self, client: str, sasl_user: str | None, t: float) -> None:
        """A relayed recipient the log pipeline counted: it counts against an unknown relayer's budget."""
        if self.budget is not None and not sasl_user and not self.is_known(client):
            self.budget.logged(client, t)
