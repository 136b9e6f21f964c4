"""Join events by (host, queue id) into the facts detection needs. Pure and bounded.

A message is remembered from its `client=` (or pickup) line until its queue
file is removed, every recipient has been seen once, it has been idle for
`max_idle_s`, or `max_messages` newer ones push it out. Retries repeat qmgr
`from=` and delivery lines: each recipient counts once. Queue ids are unique
per host only: a central log that mixes hosts is joined by (host, queue id).

A content filter's re-injected copy is credited to the client of the message
it was filtered from: the filter's `queued as` reply, or the front smtpd's
`proxy-accept` for a before-queue filter, links the two. The link can come
after the copy's deliveries: once a filter has been seen re-injecting from an
address, the facts of later copies from there are held until their link
arrives, or `hold_s` of log time passes (then they stay with that address).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from relaywatch.core.destinations import (
    AddrKind,
    Destinations,
    InferredDomain,
    LocalDomains,
    LogInference,
    address_kind,
)
from relaywatch.model import (
    ClientSeen,
    Delivery,
    Event,
    LocalRelayed,
    Pickup,
    ProxyAccept,
    QueueActive,
    Reject,
    RelayDenied,
    Relayed,
    Removed,
)

_QUEUED_AS = re.compile(r".*\bqueued as ([0-9A-Za-z]{6,24})\)?$")
# where Postfix tried to deliver when it logs relay=none: "connect to mx.example[192.0.2.5]:25: ..."
_TRIED = re.compile(r"(?:connect to|host|with) [^\s\[\]]+\[([0-9A-Fa-f:.]+)\]")
_ENDS_MESSAGE = frozenset({"DATA", "BDAT", "END-OF-MESSAGE"})
_DROPS_MESSAGE = frozenset({"reject", "milter-reject", "discard", "milter-discard"})
# delivery agents that put mail into this host's mailboxes (or an LMTP store): the domain is ours
_LOCAL_AGENTS = frozenset({"local", "virtual", "lmtp"})
# LMTP replies of a content filter (amavis), not of a mailbox store
_FILTER_REPLY = ("queued as", "discarded", "id=", "BOUNCE")
HOLD_S = 60.0
HELD_MAX = 10_000  # copies held at once: a flood of them falls due early rather than grow memory

Key = tuple[str, str]  # (syslog host, queue id)


def is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr == "::1"


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower() if "@" in address else ""


def key_text(key: Key) -> str:
    """How the store keeps a key: the bare queue id for a log without host names."""
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


def key_of(text: str) -> Key:
    host, _, qid = text.rpartition("/")  # a queue id has no slash
    return host, qid


@dataclass(slots=True)
class _Message:
    first_seen: float
    last_seen: float
    client: str | None
    sasl_user: str | None
    sender: str = ""
    nrcpt: int = 0
    seen: set[str] = field(default_factory=set)
    awaiting: bool = False  # a filter's re-injected copy whose origin is not linked yet: its facts are held
    uid: int | None = None  # a local submission's (pickup), for LocalRelayed


class Correlator:
    def __init__(
        self,
        local_domains: Destinations | None = None,
        max_messages: int = 100_000,
        max_idle_s: float = 6 * 3600,
        track_changes: bool = False,
        hold_s: float = HOLD_S,
    ) -> None:
        self.destinations: Destinations = local_domains if local_domains is not None else LocalDomains()
        self._known = self.destinations.known
        self.inference = LogInference()
        self.max_messages = max_messages
        self.max_idle_s = max_idle_s
        self.hold_s = hold_s
        self._open: OrderedDict[Key, _Message] = OrderedDict()
        # a filtered copy's origin (client, login, pickup uid), when the link came before its client= line
        self._inherited: OrderedDict[Key, tuple[str | None, str | None, int | None]] = OrderedDict()
        # re-injected copies waiting for their link: since, their client, the facts held back
        self._held: OrderedDict[Key, tuple[float, str | None, list[Relayed]]] = OrderedDict()
        self._filters: set[tuple[str, str]] = set()  # (host, address) a content filter re-injected from
        self._filter_hops: set[tuple[str, str]] = set()  # (host, address) a content filter was reached at
        self.released: list[Relayed | LocalRelayed] = []  # held facts now due: the caller takes them after each feed
        self.messages = 0
        self.evicted = 0
        # keys whose state changed since `changes()`: the daemon persists them with its position
        self._changed: set[Key] | None = set() if track_changes else None
        # where queued mail came from, until its queue file is removed: what `queue hold` needs
        self._arrived: list[tuple[str, str, str | None, float]] = []
        self._departed: list[str] = []

    def __len__(self) -> int:
        return len(self._open)

    def _touch(self, key: Key) -> None:
        if self._changed is not None:
            self._changed.add(key)

    def origins(self) -> tuple[list[tuple[str, str, str | None, float]], list[str]]:
        """Since the last call: (qid, client, sasl_user, time) of messages queued from a client,
        and the queue ids Postfix removed. Kept only with `track_changes`."""
        arrived, departed = self._arrived, self._departed
        self._arrived, self._departed = [], []
        return arrived, departed

    def changes(self) -> tuple[list[tuple], list[str]]:
        """Open messages changed since the last call, as rows (key, first_seen, last_seen,
        client, sasl_user, sender, nrcpt, recipients seen), and the keys now forgotten;
        a key is `host/qid` (`qid` alone when the log names no host)."""
        rows, gone = [], []
        for key in self._changed or ():
            msg = self._open.get(key)
            if msg is None:
                gone.append(key_text(key))
            else:
                rows.append((key_text(key), msg.first_seen, msg.last_seen, msg.client, msg.sasl_user, msg.sender,
                             msg.nrcpt, tuple(sorted(msg.seen))))
        if self._changed is not None:
            self._changed.clear()
        return rows, gone

    def load(self, rows: Iterable[tuple]) -> None:
        """Open messages as `changes()` gave them, oldest first (a restarted daemon)."""
        for key, first, last, client, sasl_user, sender, nrcpt, seen in rows:
            self._open[key_of(key)] = _Message(first, last, client, sasl_user, sender, nrcpt, set(seen))

    def inferred(self) -> list[InferredDomain]:
        """The domains taken for local from the log (only when nothing else knew them)."""
        return [] if self._known else self.inference.inferred()

    def take_released(self) -> list[Relayed | LocalRelayed]:
        released, self.released = self.released, []
        return released

    def finish(self) -> None:
        """The end of a replay: what is still held is due, credited as it stands."""
        while self._held:
            self.released.extend(self._held.popitem(last=False)[1][2])

    def feed(self, event: Event) -> Relayed | LocalRelayed | RelayDenied | None:
        """The fact this event completes, if any; held facts that fall due go to `released`."""
        held = self._held
        if held and (event.time - next(iter(held.values()))[0] > self.hold_s or len(held) > HELD_MAX):
            self._expire(event.time)
        kind = type(event)
        if kind is Delivery:
            return self._delivery(event)
        if kind is QueueActive:
            key = (event.host, event.qid)
            msg = self._open.get(key)
            if msg is not None:
                msg.sender, msg.nrcpt, msg.last_seen = event.sender, event.nrcpt, event.time
                self._open.move_to_end(key)
                self._touch(key)
        elif kind is ClientSeen:
            self._client(event)
        elif kind is Removed:
            key = (event.host, event.qid)
            msg = self._open.pop(key, None)
            if msg is not None:
                self._touch(key)
                if msg.awaiting:
                    held.setdefault(key, (event.time, msg.client, []))
            if self._changed is not None:
                self._departed.append(event.qid)
        elif kind is Reject:
            return self._reject(event)
        elif kind is Pickup:
            msg = self._start((event.host, event.qid), event.time, None, None)
            msg.sender, msg.uid = event.sender, event.uid
        elif kind is ProxyAccept:
            self._proxy_accept(event)
        return None

    def _start(self, key: Key, t: float, client: str | None, sasl_user: str | None) -> _Message:
        self._open.pop(key, None)  # short ids are reused: a new client= is a new message
        msg = self._open[key] = _Message(t, t, client, sasl_user)
        self._touch(key)
        self.messages += 1
        self._evict(t)
        return msg

    def _client(self, e: ClientSeen) -> None:
        key = (e.host, e.qid)
        client, sasl_user = e.client, e.sasl_user
        awaiting, uid = False, None
        if is_loopback(client) or (e.host, client) in self._filters:
            # A content filter re-injects: the real origin is the XFORWARD orig_client
            # or the message it was filtered from (linked now, or later).
            inherited = self._inherited.pop(key, None)
            if e.orig_client is not None:
                client = e.orig_client
            elif inherited is not None:
                client, sasl_user, uid = inherited[0], sasl_user or inherited[1], inherited[2]
            else:
                awaiting = sasl_user is None and (e.host, client) in self._filters
        msg = self._start(key, e.time, client, sasl_user)
        msg.awaiting, msg.uid = awaiting, uid
        if self._changed is not None:
            self._arrived.append((e.qid, client, sasl_user, e.time))

    def _reject(self, e: Reject) -> RelayDenied | None:
        if e.qid is not None and e.stage in _ENDS_MESSAGE and e.action in _DROPS_MESSAGE:
            key = (e.host, e.qid)
            if self._open.pop(key, None) is not None:
                self._touch(key)
        if e.relay_denied:
            return RelayDenied(e.time, e.client, e.qid)
        return None

    def _delivery(self, d: Delivery) -> Relayed | LocalRelayed | None:
        if not self._known and d.agent in _LOCAL_AGENTS:
            self._note_local(d)
        key = (d.host, d.qid)
        msg = self._open.get(key)
        if msg is None:
            return None
        filter_hop = d.status == "sent" and "queued as " in d.reply and self._link_filtered(d, msg)
        if d.recipient in msg.seen:
            return None
        msg.seen.add(d.recipient)
        msg.last_seen = d.time
        self._open.move_to_end(key)
        self._touch(key)
        if msg.nrcpt and len(msg.seen) >= msg.nrcpt:
            del self._open[key]
            if msg.awaiting:
                self._held.setdefault(key, (d.time, msg.client, []))
        if msg.client is None:
            if msg.uid is None or filter_hop or not self._outbound(d):
                return None
            return LocalRelayed(d.time, d.qid, msg.uid, msg.sender, d.recipient, domain_of(d.recipient), d.status)
        if filter_hop or not self._outbound(d):
            return None
        fact = Relayed(d.time, d.qid, msg.client, msg.sasl_user, msg.sender, d.recipient, domain_of(d.recipient),
                       d.status, msg.first_seen)
        if msg.awaiting:
            self._held.setdefault(key, (d.time, msg.client, []))[2].append(fact)
            return None
        return fact

    def _outbound(self, d: Delivery) -> bool:
        """Whether this delivery hands a recipient to another host, for a domain that is not ours."""
        if d.orig_to is not None and d.orig_to != d.recipient:
            return False  # an alias or .forward of a local recipient, not a relay
        if d.agent == "lmtp":
            return False  # into a mailbox store (dovecot, cyrus), or a filter: never relaying in itself
        domain = domain_of(d.recipient)
        if domain:
            local = self.destinations.accepts(domain)
            if local is not None:
                return not local
        elif self._known:
            return False  # Postfix completes a bare address with its own domain
        # Nothing known: only an SMTP hand-off to another machine may relay, unless the log
        # shows the domain to be ours (local deliveries, a fixed private next hop).
        if d.agent != "smtp":
            return False
        hop = d.relay_addr
        if hop is None and d.relay == "none":
            tried = _TRIED.search(d.reply)
            hop = tried[1] if tried is not None else None
        if hop is None:
            return not (domain and self.inference.is_local(d.host, domain))
        kind = address_kind(hop)
        if kind is AddrKind.LOOPBACK or kind is AddrKind.OTHER:
            return False
        return not (domain and self.inference.handed_over(d.host, domain, hop, kind is AddrKind.PRIVATE))

    def _note_local(self, d: Delivery) -> None:
        """A local, virtual or LMTP delivery shows its domain (and an alias's) to be ours."""
        if d.agent == "lmtp" and (d.status != "sent" or any(s in d.reply for s in _FILTER_REPLY)):
            return
        for address in (d.recipient, d.orig_to):
            domain = domain_of(address) if address else ""
            if domain:
                self.inference.delivered_locally(d.host, domain, f"delivered by {d.agent}")

    def _link_filtered(self, d: Delivery, msg: _Message) -> bool:
        """Whether this hand-off went to a content filter: its `250 ... queued as NEWQID` names a
        queue file of this host that the filter's re-injection created. Carries the origin on."""
        m = _QUEUED_AS.match(d.reply)
        hop = d.relay_addr
        if m is None or hop is None:
            return False
        hop_kind = address_kind(hop)
        new_key = (d.host, m[1])
        # a hop that has re-injected before, or one on this host, is a filter whatever its copy shows
        known = (d.host, hop) in self._filter_hops or hop_kind is AddrKind.LOOPBACK or hop_kind is AddrKind.OTHER
        reinjected = self._open.get(new_key)
        if reinjected is not None:
            if not self._reinjected_by(d.host, reinjected.client, hop, hop_kind):
                # a copy already linked by another recipient of the same message, or one whose client
                # XFORWARD named: XFORWARD never carries the login, the link does
                if known and reinjected.client == msg.client and msg.sasl_user and not reinjected.sasl_user:
                    reinjected.sasl_user = msg.sasl_user
                    self._touch(new_key)
                return known
            self._learn_filter(d.host, hop, reinjected.client)
            self._relink(new_key, reinjected, msg.client, msg.sasl_user, d.time, msg.uid)
            return True
        held = self._held.get(new_key)
        if held is not None and self._reinjected_by(d.host, held[1], hop, hop_kind):
            self._learn_filter(d.host, hop, held[1])
            self._release(new_key, msg.client, msg.sasl_user, msg.uid)
            return True
        if known:
            self._inherit(new_key, msg.client, msg.sasl_user, msg.uid)  # the copy's client= line is still to come
        return known

    def _reinjected_by(self, host: str, client: str | None, hop: str, hop_kind: AddrKind) -> bool:
        """Whether a message from `client` can be the re-injection of a filter reached at `hop`."""
        if client is None:
            return False
        if client == hop or (host, client) in self._filters:
            return True
        kind = address_kind(client)
        if hop_kind is AddrKind.LOOPBACK or hop_kind is AddrKind.OTHER:
            return kind is AddrKind.LOOPBACK
        return hop_kind is AddrKind.PRIVATE and kind is AddrKind.PRIVATE

    def _proxy_accept(self, e: ProxyAccept) -> None:
        """The front smtpd of a before-queue filter names the queue file its session became."""
        key = (e.host, e.qid)
        msg = self._open.get(key)
        if msg is not None:
            if msg.client is not None and address_kind(msg.client) is not AddrKind.PUBLIC:
                self._learn_filter(e.host, None, msg.client)
                self._relink(key, msg, e.client, e.sasl_user, e.time)
        elif key in self._held:
            client = self._held[key][1]
            if client is not None and address_kind(client) is not AddrKind.PUBLIC:
                self._release(key, e.client, e.sasl_user)
        else:
            self._inherit(key, e.client, e.sasl_user)

    def _learn_filter(self, host: str, hop: str | None, client: str | None) -> None:
        """A filter is reached at `hop` and re-injects from `client`: later copies from there wait
        for their link, and later hand-offs there are a filter's."""
        if len(self._filters) < 256:
            if client is not None:
                self._filters.add((host, client))
            if hop is not None:
                self._filter_hops.add((host, hop))

    def _relink(self, key: Key, msg: _Message, client: str | None, sasl_user: str | None, t: float,
                uid: int | None = None) -> None:
        msg.client, msg.sasl_user, msg.awaiting = client, msg.sasl_user or sasl_user, False
        msg.uid = uid
        self._touch(key)
        if self._changed is not None and client is not None:
            self._arrived.append((key[1], client, msg.sasl_user, t))
        if key in self._held:
            self._release(key, client, sasl_user, uid)

    def _release(self, key: Key, client: str | None, sasl_user: str | None, uid: int | None = None) -> None:
        """The held facts of a re-injected copy, now credited to its origin (a local submission's uid)."""
        facts = self._held.pop(key)[2]
        if client is None:
            if uid is not None:
                self.released.extend(LocalRelayed(f.time, f.qid, uid, f.sender, f.recipient, f.domain, f.status)
                                     for f in facts)
            return
        for fact in facts:
            self.released.append(replace(fact, client=client, sasl_user=fact.sasl_user or sasl_user))

    def _inherit(self, key: Key, client: str | None, sasl_user: str | None, uid: int | None = None) -> None:
        self._inherited[key] = (client, sasl_user, uid)
        if len(self._inherited) > 1024:
            self._inherited.popitem(last=False)

    def _expire(self, now: float) -> None:
        """Held facts whose link never came: they stay with the filter's address."""
        held = self._held
        while held:
            since, _, facts = next(iter(held.values()))
            if now - since <= self.hold_s and len(held) <= HELD_MAX:
                break
            held.popitem(last=False)
            self.released.extend(facts)

    def _evict(self, now: float) -> None:
        while len(self._open) > self.max_messages:
            self._touch(self._open.popitem(last=False)[0])
            self.evicted += 1
        while self._open:
            key, oldest = next(iter(self._open.items()))
            if now - oldest.last_seen <= self.max_idle_s:
                break
            del self._open[key]
            self._touch(key)
            self.evicted += 1
