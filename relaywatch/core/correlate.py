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
from typing import Final, cast

from relaywatch.core.destinations import Destinations, LocalDomains
from relaywatch.core.filterlink import (
    _LOOPBACK,
    _OTHER,
    _PRIVATE,
    HELD_MAX,
    HOLD_S,
    FilterLinks,
    Key,
    Message,
    domain_of,
)
from relaywatch.core.inference import (
    AddrKind,
    DeclinedDomain,
    InferredDomain,
    LogInference,
    address_kind,
    may_be_private,
)
from relaywatch.model import (
    ClientSeen,
    Delivery,
    Event,
    LocalRelayed,
    OpenMessage,
    Origin,
    Pickup,
    ProxyAccept,
    QueueActive,
    Reject,
    RelayDenied,
    Relayed,
    Removed,
)

# where Postfix tried to deliver when it logs relay=none: "connect to mx.example[192.0.2.5]:25: ..."
_TRIED: Final = re.compile(r"(?:connect to|host|with) [^\s\[\]]+\[([0-9A-Fa-f:.]+)\]")
_ENDS_MESSAGE: Final = frozenset({"DATA", "BDAT", "END-OF-MESSAGE"})
_DROPS_MESSAGE: Final = frozenset({"reject", "milter-reject", "discard", "milter-discard"})
# delivery agents that put mail into this host's mailboxes (or an LMTP store): the domain is ours
_LOCAL_AGENTS: Final = frozenset({"local", "virtual", "lmtp"})
_HOW: Final = {agent: f"delivered by {agent}" for agent in _LOCAL_AGENTS}  # the evidence, built once
# LMTP replies of a content filter (amavis), not of a mailbox store
_FILTER_REPLY: Final = ("queued as", "discarded", "id=", "BOUNCE")
# amavis's reply to an SMTP hand-off: a content filter, even when its copy cannot be linked (delivered and gone)
_FILTER_SMTP_REPLY: Final = " from MTA("
# the event types, dispatched on by identity (Final: compiled, a C global rather than a module lookup)
_DELIVERY: Final = Delivery
_QUEUE_ACTIVE: Final = QueueActive
_CLIENT_SEEN: Final = ClientSeen
_REMOVED: Final = Removed
_REJECT: Final = Reject
_PICKUP: Final = Pickup
_PROXY_ACCEPT: Final = ProxyAccept


def is_loopback(addr: str) -> bool:
    return addr.startswith("127.") or addr == "::1"


def key_text(key: Key) -> str:
    """How the store keeps a key: the bare queue id for a log without host names."""
    return f"{key[0]}/{key[1]}" if key[0] else key[1]


def key_of(text: str) -> Key:
    host, _, qid = text.rpartition("/")  # a queue id has no slash
    return host, qid


class Correlator(FilterLinks):
    """The join: one per log (or per daemon); feed it events in log order."""

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
        # whether `accepts` can answer: a LocalDomains that knows nothing answers None for every domain
        self._ask = self._known or type(self.destinations) is not LocalDomains
        self.inference = LogInference()
        self.max_messages = max_messages
        self.max_idle_s = max_idle_s
        self.hold_s = hold_s
        self._open = OrderedDict()
        self._inherited = OrderedDict()
        self._held = OrderedDict()
        self._filters = set()
        self._filter_hops = set()
        self._kind_of_addr, self._last_kind = None, AddrKind.OTHER
        self.released = []
        self.messages = 0
        self.evicted = 0
        # keys whose state changed since `changes()`: the daemon persists them with its position
        self._changed = set() if track_changes else None
        # where queued mail came from, until its queue file is removed: what `queue hold` needs
        self._arrived = []
        self._departed: list[str] = []

    def __len__(self) -> int:
        return len(self._open)

    def origins(self) -> tuple[list[Origin], list[str]]:
        """Since the last call: (qid, client, sasl_user, time) of messages queued from a client,
        and the queue ids Postfix removed. Kept only with `track_changes`."""
        arrived, departed = self._arrived, self._departed
        self._arrived, self._departed = [], []
        return arrived, departed

    def changes(self) -> tuple[list[OpenMessage], list[str]]:
        """Open messages changed since the last call, as rows (key, first_seen, last_seen,
        client, sasl_user, sender, nrcpt, recipients seen), and the keys now forgotten;
        a key is `host/qid` (`qid` alone when the log names no host)."""
        rows: list[OpenMessage] = []
        gone: list[str] = []
        for key in self._changed or ():
            msg = self._open.get(key)
            if msg is None:
                gone.append(key_text(key))
            else:
                rows.append(OpenMessage(key_text(key), msg.first_seen, msg.last_seen, msg.client, msg.sasl_user,
                                        msg.sender, msg.nrcpt, tuple(sorted(msg.seen))))
        if self._changed is not None:
            self._changed.clear()
        return rows, gone

    def load(self, rows: Iterable[OpenMessage]) -> None:
        """Open messages as `changes()` gave them, oldest first (a restarted daemon)."""
        for key, first, last, client, sasl_user, sender, nrcpt, seen in rows:
            self._open[key_of(key)] = Message(first, last, client, sasl_user, sender, nrcpt, set(seen))

    def inferred(self) -> list[InferredDomain]:
        """The domains taken for local from the log (only when nothing else knew them)."""
        return [] if self._known else self.inference.inferred()

    def declined(self) -> list[DeclinedDomain]:
        """The domains handed to a private next hop that were not taken for local, and why."""
        return [] if self._known else self.inference.declined()

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
        if kind is _DELIVERY:
            return self._delivery(cast(Delivery, event))
        if kind is _QUEUE_ACTIVE:
            self._queue_active(cast(QueueActive, event))
        elif kind is _CLIENT_SEEN:
            self._client(cast(ClientSeen, event))
        elif kind is _REMOVED:
            self._removed(cast(Removed, event))
        elif kind is _REJECT:
            return self._reject(cast(Reject, event))
        elif kind is _PICKUP:
            e = cast(Pickup, event)
            msg = self._start((e.host, e.qid), e.time, None, None)
            msg.sender, msg.uid = e.sender, e.uid
        elif kind is _PROXY_ACCEPT:
            self._proxy_accept(cast(ProxyAccept, event))
        return None

    def _queue_active(self, e: QueueActive) -> None:
        host = e.host
        key = (host, e.qid)
        msg = self._open.get(key)
        if msg is not None:
            msg.sender, msg.nrcpt, msg.last_seen = e.sender, e.nrcpt, e.time
            self._open.move_to_end(key)
            self._touch(key)
            if not self._known:
                self._note_sender(host, msg)

    def _removed(self, e: Removed) -> None:
        key = (e.host, e.qid)
        msg = self._open.pop(key, None)
        if msg is not None:
            self._touch(key)
            if msg.awaiting:
                self._held.setdefault(key, (e.time, msg.client, []))
        if self._changed is not None:
            self._departed.append(e.qid)

    def _start(self, key: Key, t: float, client: str | None, sasl_user: str | None) -> Message:
        opened = self._open
        opened.pop(key, None)  # short ids are reused: a new client= is a new message
        msg = opened[key] = Message(t, t, client, sasl_user)
        self._touch(key)
        self.messages += 1
        self._evict(t)
        return msg

    def _client(self, e: ClientSeen) -> None:
        host, qid, seen_from, t = e.host, e.qid, e.client, e.time
        key = (host, qid)
        client: str | None = seen_from  # a linked copy's origin may be a local submission (no client)
        sasl_user = e.sasl_user
        awaiting, uid = False, None
        if is_loopback(seen_from) or (bool(self._filters) and (host, seen_from) in self._filters):
            # A content filter re-injects: the real origin is the XFORWARD orig_client
            # or the message it was filtered from (linked now, or later).
            inherited = self._inherited.pop(key, None) if self._inherited else None
            orig_client = e.orig_client
            if orig_client is not None:
                client = orig_client
            elif inherited is not None:
                client, sasl_user, uid = inherited[0], sasl_user or inherited[1], inherited[2]
            else:
                awaiting = sasl_user is None and (host, client) in self._filters
        msg = self._start(key, t, client, sasl_user)
        msg.awaiting, msg.uid = awaiting, uid
        if self._changed is not None:
            self._arrived.append(Origin(qid, client, sasl_user, t))

    def _reject(self, e: Reject) -> RelayDenied | None:
        if e.qid is not None and e.stage in _ENDS_MESSAGE and e.action in _DROPS_MESSAGE:
            key = (e.host, e.qid)
            if self._open.pop(key, None) is not None:
                self._touch(key)
        if e.relay_denied:
            return RelayDenied(e.time, e.client, e.qid, e.host)
        return None

    def _delivery(self, d: Delivery) -> Relayed | LocalRelayed | None:
        agent = d.agent
        if not self._known and agent in _LOCAL_AGENTS:
            self._note_local(d, agent)
        host, qid = d.host, d.qid
        key = (host, qid)
        opened = self._open
        msg = opened.get(key)
        if msg is None:
            return None
        status, reply, hop = d.status, d.reply, d.relay_addr
        filter_hop = status == "sent" and "queued as " in reply and (
            self._link_filtered(d, host, hop, reply, msg) or _FILTER_SMTP_REPLY in reply)
        recipient = d.recipient
        seen = msg.seen
        if recipient in seen:
            return None
        seen.add(recipient)
        t = d.time
        msg.last_seen = t
        self._touch(key)
        if msg.nrcpt and len(seen) >= msg.nrcpt:
            del opened[key]
            if msg.awaiting:
                self._held.setdefault(key, (t, msg.client, []))
        else:
            opened.move_to_end(key)
        client = msg.client
        if client is None:
            if msg.uid is None or filter_hop:
                return None
            domain = domain_of(recipient)
            if not self._outbound(d, host, hop, agent, recipient, domain):
                return None
            return LocalRelayed(t, qid, msg.uid, msg.sender, recipient, domain, status, host)
        if filter_hop:
            return None
        domain = domain_of(recipient)
        if not self._outbound(d, host, hop, agent, recipient, domain):
            return None
        fact = Relayed(t, qid, client, msg.sasl_user, msg.sender, recipient, domain, status, msg.first_seen, host)
        if msg.awaiting:
            self._held.setdefault(key, (t, client, []))[2].append(fact)
            return None
        return fact

    def _outbound(self, d: Delivery, host: str, hop: str | None, agent: str, recipient: str, domain: str) -> bool:
        """Whether this delivery hands a recipient to another host, for a domain that is not ours."""
        orig_to = d.orig_to
        if orig_to is not None and orig_to != recipient:
            return False  # an alias or .forward of a local recipient, not a relay
        if agent == "lmtp":
            return False  # into a mailbox store (dovecot, cyrus), or a filter: never relaying in itself
        if domain:
            if self._ask:
                local = self.destinations.accepts(domain)
                if local is not None:
                    return not local
        elif self._known:
            return False  # Postfix completes a bare address with its own domain
        # Nothing known: only an SMTP hand-off to another machine may relay, unless the log
        # shows the domain to be ours (local deliveries, a fixed private next hop).
        if agent != "smtp":
            return False
        if hop is None and d.relay == "none":
            tried = _TRIED.search(d.reply)
            hop = tried[1] if tried is not None else None
        if hop is None:
            return not (domain and self.inference.is_local(host, domain))
        kind = self._kind(hop)
        if kind is _LOOPBACK or kind is _OTHER:
            return False
        return not (domain and self.inference.handed_over(host, domain, hop, kind is _PRIVATE))

    def _note_local(self, d: Delivery, agent: str) -> None:
        """A local, virtual or LMTP delivery shows its domain (and an alias's) to be ours."""
        if agent == "lmtp" and (d.status != "sent" or any(s in d.reply for s in _FILTER_REPLY)):
            return
        host, how, orig_to = d.host, _HOW[agent], d.orig_to
        for address in (d.recipient, orig_to) if orig_to else (d.recipient,):
            domain = domain_of(address) if address else ""
            if domain:
                self.inference.delivered_locally(host, domain, how)

    def _note_sender(self, host: str, msg: Message) -> None:
        """Mail from a logged-in user or a private host (not a content filter's copy) is the site's
        own: its sender domain is one the site sends from."""
        client = msg.client
        if client is None or msg.awaiting:
            return
        login = msg.sasl_user is not None
        if not login and not may_be_private(client):
            return  # most mail: from a public client, without a login
        domain = domain_of(msg.sender)
        if not domain or (bool(self._filters) and (host, client) in self._filters):
            return
        if login:
            self.inference.sent_from(host, domain, client, True)
        elif address_kind(client) is _PRIVATE:
            self.inference.sent_from(host, domain, client, False)

    def _evict(self, now: float) -> None:
        opened = self._open
        while len(opened) > self.max_messages:
            self._touch(opened.popitem(last=False)[0])
            self.evicted += 1
        stale: list[Key] = []
        # least recently touched first, up to the first one in use; by key (compiled, .items() of an
        # OrderedDict is a method call and a view for each new message, and the first key is enough)
        for key in opened:
            if now - opened[key].last_seen <= self.max_idle_s:
                break
            stale.append(key)
        for key in stale:
            del opened[key]
            self._touch(key)
            self.evicted += 1
