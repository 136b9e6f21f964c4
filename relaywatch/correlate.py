"""Join events by queue id into the facts detection needs. Pure and bounded.

A message is remembered from its `client=` (or pickup) line until its queue
file is removed, every recipient has been seen once, it has been idle for
`max_idle_s`, or `max_messages` newer ones push it out. Retries repeat qmgr
`from=` and delivery lines: each recipient counts once.
"""

from __future__ import annotations

import ipaddress
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field

from .model import (
    ClientSeen,
    Delivery,
    Event,
    LocalRelayed,
    Pickup,
    QueueActive,
    Reject,
    Relayed,
    RelayDenied,
    Removed,
)

_QUEUED_AS = re.compile(r".*\bqueued as ([0-9A-Za-z]{6,24})\)?$")
_ENDS_MESSAGE = frozenset({"DATA", "BDAT", "END-OF-MESSAGE"})
_DROPS_MESSAGE = frozenset({"reject", "milter-reject", "discard", "milter-discard"})
REMOTE_AGENTS = frozenset({"smtp", "lmtp"})


@dataclass(slots=True)
class _Message:
    first_seen: float
    last_seen: float
    client: str | None
    sasl_user: str | None
    sender: str = ""
    nrcpt: int = 0
    seen: set[str] = field(default_factory=set)
    uid: int | None = None  # a local submission's (pickup), for LocalRelayed


def is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr == "::1"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


class LocalDomains:
    """The domains Postfix accepts mail for (mydestination, virtual_*_domains, relay_domains).

    Mail to them is not relayed, whoever sent it: a backup MX forwarding to
    the primary is doing its job. A leading dot matches subdomains. An empty
    set can still be known (a pure relay host): `known` says whether the
    domain of a recipient may decide at all.
    """

    def __init__(self, domains: tuple[str, ...] = (), known: bool | None = None) -> None:
        self.exact = frozenset(d.lower() for d in domains if d and not d.startswith("."))
        self.parents = tuple(d.lower() for d in domains if d.startswith("."))
        self.known = bool(domains) if known is None else known

    def __bool__(self) -> bool:
        return self.known

    def __contains__(self, domain: str) -> bool:
        return domain in self.exact or (bool(self.parents) and domain.endswith(self.parents))


def _remote_host(addr: str) -> bool:
    """A relay address that is another machine (not loopback, not a unix socket)."""
    try:
        return not ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


class Correlator:
    def __init__(
        self,
        local_domains: LocalDomains | None = None,
        max_messages: int = 100_000,
        max_idle_s: float = 6 * 3600,
        track_changes: bool = False,
    ) -> None:
        self.local_domains = local_domains or LocalDomains()
        self.max_messages = max_messages
        self.max_idle_s = max_idle_s
        self._open: OrderedDict[str, _Message] = OrderedDict()
        self._inherited: OrderedDict[str, tuple[str | None, str | None]] = OrderedDict()
        self.messages = 0
        self.evicted = 0
        # queue ids whose state changed since `changes()`: the daemon persists them with its position
        self._changed: set[str] | None = set() if track_changes else None
        # where queued mail came from, until its queue file is removed: what `queue hold` needs
        self._arrived: list[tuple[str, str, str | None, float]] = []
        self._departed: list[str] = []

    def __len__(self) -> int:
        return len(self._open)

    def _touch(self, qid: str) -> None:
        if self._changed is not None:
            self._changed.add(qid)

    def origins(self) -> tuple[list[tuple[str, str, str | None, float]], list[str]]:
        """Since the last call: (qid, client, sasl_user, time) of messages queued from a client,
        and the queue ids Postfix removed. Kept only with `track_changes`."""
        arrived, departed = self._arrived, self._departed
        self._arrived, self._departed = [], []
        return arrived, departed

    def changes(self) -> tuple[list[tuple], list[str]]:
        """Open messages changed since the last call, as rows (qid, first_seen, last_seen,
        client, sasl_user, sender, nrcpt, recipients seen), and the queue ids now forgotten."""
        rows, gone = [], []
        for qid in self._changed or ():
            msg = self._open.get(qid)
            if msg is None:
                gone.append(qid)
            else:
                rows.append((qid, msg.first_seen, msg.last_seen, msg.client, msg.sasl_user, msg.sender, msg.nrcpt,
                             tuple(sorted(msg.seen))))
        if self._changed is not None:
            self._changed.clear()
        return rows, gone

    def load(self, rows: Iterable[tuple]) -> None:
        """Open messages as `changes()` gave them, oldest first (a restarted daemon)."""
        for qid, first, last, client, sasl_user, sender, nrcpt, seen in rows:
            self._open[qid] = _Message(first, last, client, sasl_user, sender, nrcpt, set(seen))

    def feed(self, event: Event) -> Relayed | LocalRelayed | RelayDenied | None:
        """The fact this event completes, if any."""
        kind = type(event)
        if kind is Delivery:
            return self._delivery(event)
        if kind is QueueActive:
            msg = self._open.get(event.qid)
            if msg is not None:
                msg.sender, msg.nrcpt, msg.last_seen = event.sender, event.nrcpt, event.time
                self._open.move_to_end(event.qid)
                self._touch(event.qid)
        elif kind is ClientSeen:
            self._client(event)
        elif kind is Removed:
            if self._open.pop(event.qid, None) is not None:
                self._touch(event.qid)
            if self._changed is not None:
                self._departed.append(event.qid)
        elif kind is Reject:
            return self._reject(event)
        elif kind is Pickup:
            msg = self._start(event.qid, event.time, None, None)
            msg.sender, msg.uid = event.sender, event.uid
        return None

    def _start(self, qid: str, t: float, client: str | None, sasl_user: str | None) -> _Message:
        self._open.pop(qid, None)  # short ids are reused: a new client= is a new message
        msg = self._open[qid] = _Message(t, t, client, sasl_user)
        self._touch(qid)
        self.messages += 1
        self._evict(t)
        return msg

    def _client(self, e: ClientSeen) -> None:
        client, sasl_user = e.client, e.sasl_user
        if is_loopback(client):
            # A content filter re-injects on loopback; the real origin is the
            # XFORWARD orig_client or the message it was filtered from.
            inherited = self._inherited.pop(e.qid, None)
            if e.orig_client is not None:
                client = e.orig_client
            elif inherited is not None:
                client, sasl_user = inherited[0], sasl_user or inherited[1]
        self._start(e.qid, e.time, client, sasl_user)
        if self._changed is not None:
            self._arrived.append((e.qid, client, sasl_user, e.time))

    def _reject(self, e: Reject) -> RelayDenied | None:
        if e.qid is not None and e.stage in _ENDS_MESSAGE and e.action in _DROPS_MESSAGE:
            if self._open.pop(e.qid, None) is not None:
                self._touch(e.qid)
        if e.relay_denied:
            return RelayDenied(e.time, e.client, e.qid)
        return None

    def _delivery(self, d: Delivery) -> Relayed | LocalRelayed | None:
        msg = self._open.get(d.qid)
        if msg is None:
            return None
        if d.relay_addr is not None and is_loopback(d.relay_addr):
            self._link_filtered(d, msg)
        if d.recipient in msg.seen:
            return None
        msg.seen.add(d.recipient)
        msg.last_seen = d.time
        self._open.move_to_end(d.qid)
        self._touch(d.qid)
        if msg.nrcpt and len(msg.seen) >= msg.nrcpt:
            del self._open[d.qid]
        if msg.client is None:
            if msg.uid is None or not self._outbound(d):
                return None
            return LocalRelayed(d.time, d.qid, msg.uid, msg.sender, d.recipient, domain_of(d.recipient), d.status)
        if not self._outbound(d):
            return None
        return Relayed(d.time, d.qid, msg.client, msg.sasl_user, msg.sender, d.recipient, domain_of(d.recipient),
                       d.status, msg.first_seen)

    def _outbound(self, d: Delivery) -> bool:
        if d.orig_to is not None and d.orig_to != d.recipient:
            return False  # an alias or .forward of a local recipient, not a relay
        remote = d.agent in REMOTE_AGENTS
        # relay=none (no MX answered) and an untrusted relay= (relay_addr None) count as remote
        on_this_host = remote and d.relay_addr is not None and not _remote_host(d.relay_addr)
        if not self.local_domains:
            return remote and not on_this_host
        domain = domain_of(d.recipient)
        if not domain or domain in self.local_domains:
            return False
        # a content filter's "queued as" hand-off: the re-injected copy is what counts
        return not (on_this_host and d.status == "sent" and _QUEUED_AS.match(d.reply) is not None)

    def _link_filtered(self, d: Delivery, msg: _Message) -> None:
        """`250 ... queued as NEWQID` from our own loopback filter carries the origin on
        (a client, or None for a local submission)."""
        m = _QUEUED_AS.match(d.reply) if d.status == "sent" else None
        if m is None:
            return
        new_qid = m[1]
        reinjected = self._open.get(new_qid)
        if reinjected is None:
            self._inherited[new_qid] = (msg.client, msg.sasl_user)
            if len(self._inherited) > 1024:
                self._inherited.popitem(last=False)
        elif reinjected.client is not None and is_loopback(reinjected.client):
            reinjected.client, reinjected.sasl_user = msg.client, reinjected.sasl_user or msg.sasl_user
            reinjected.uid = msg.uid
            self._touch(new_qid)
            if self._changed is not None and msg.client is not None:
                self._arrived.append((new_qid, msg.client, reinjected.sasl_user, d.time))
        elif msg.sasl_user and not reinjected.sasl_user:  # XFORWARD names the client, never its login
            reinjected.sasl_user = msg.sasl_user
            self._touch(new_qid)

    def _evict(self, now: float) -> None:
        while len(self._open) > self.max_messages:
            self._touch(self._open.popitem(last=False)[0])
            self.evicted += 1
        while self._open:
            qid, oldest = next(iter(self._open.items()))
            if now - oldest.last_seen <= self.max_idle_s:
                break
            del self._open[qid]
            self._touch(qid)
            self.evicted += 1
