"""Content filters, for the join: a filter's re-injected copy is credited to the client of the
message it was filtered from. The filter's `queued as` reply, or the front smtpd's `proxy-accept`
for a before-queue filter, links the two; facts of a copy whose link is still to come are held
until it arrives or `hold_s` of log time passes. Pure; mixed into `Correlator`, whose state it shares."""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import replace
from typing import Final

from relaywatch.core.inference import AddrKind, address_kind
from relaywatch.model import Delivery, LocalRelayed, Origin, ProxyAccept, Relayed

_QUEUED_AS: Final = re.compile(r".*\bqueued as ([0-9A-Za-z]{6,24})\)?$")
HOLD_S: Final = 60.0
HELD_MAX: Final = 10_000  # copies held at once: a flood of them falls due early rather than grow memory
_LOOPBACK: Final = AddrKind.LOOPBACK
_PRIVATE: Final = AddrKind.PRIVATE
_PUBLIC: Final = AddrKind.PUBLIC
_OTHER: Final = AddrKind.OTHER

Key = tuple[str, str]  # (syslog host, queue id)


def domain_of(address: str) -> str:
    at = address.rfind("@")
    return address[at + 1:].lower() if at >= 0 else ""


def queued_as(reply: str) -> str | None:
    """The queue id a reply ends with (`... queued as QID`, `(... queued as QID)`): `_QUEUED_AS`'s
    answer by str operations, on every hand-off a content filter may have taken. Only the last
    `queued as ` can start the match (the id after it holds no blank); a line break or a
    non-ASCII character before it is left to the regex."""
    at = reply.rfind("queued as ")
    if at < 0:
        return None
    before = reply[at - 1] if at else " "
    if "\n" in reply or not before.isascii():
        m = _QUEUED_AS.match(reply)
        return m[1] if m is not None else None
    if before.isalnum() or before == "_":
        return None  # no word boundary before "queued"
    qid = reply[at + 10:-1] if reply.endswith(")") else reply[at + 10:]
    return qid if 6 <= len(qid) <= 24 and qid.isascii() and qid.isalnum() else None


class Message:
    """An open message. A plain class, not a dataclass: compiled, its constructor is native (a
    dataclass's generated __init__ stays Python code); slots keep it small in either form."""

    __slots__ = ("first_seen", "last_seen", "client", "sasl_user", "sender", "nrcpt", "seen", "awaiting", "uid")

    def __init__(self, first_seen: float, last_seen: float, client: str | None, sasl_user: str | None,
                 sender: str = "", nrcpt: int = 0, seen: set[str] | None = None) -> None:
        self.first_seen = first_seen
        self.last_seen = last_seen
        self.client = client
        self.sasl_user = sasl_user
        self.sender = sender
        self.nrcpt = nrcpt
        self.seen: set[str] = set() if seen is None else seen
        # a filter's re-injected copy whose origin is not linked yet: its facts are held
        self.awaiting = False
        self.uid: int | None = None  # a local submission's (pickup), for LocalRelayed


class FilterLinks:
    """The filter-linking half of `Correlator`: it owns the filter state, and reads the open messages."""

    hold_s: float
    _open: OrderedDict[Key, Message]
    _changed: set[Key] | None
    _arrived: list[Origin]
    # a filtered copy's origin (client, login, pickup uid), when the link came before its client= line
    _inherited: OrderedDict[Key, tuple[str | None, str | None, int | None]]
    # re-injected copies waiting for their link: since, their client, the facts held back
    _held: OrderedDict[Key, tuple[float, str | None, list[Relayed]]]
    _filters: set[tuple[str, str]]  # (host, address) a content filter re-injected from
    _filter_hops: set[tuple[str, str]]  # (host, address) a content filter was reached at
    released: list[Relayed | LocalRelayed]  # held facts now due: the caller takes them after each feed

    _kind_of_addr: str | None
    _last_kind: AddrKind

    def _touch(self, key: Key) -> None:
        if self._changed is not None:
            self._changed.add(key)

    def _kind(self, addr: str) -> AddrKind:
        """address_kind, remembered for the last address asked: a hand-off asks about its hop twice."""
        if addr is not self._kind_of_addr:
            self._kind_of_addr, self._last_kind = addr, address_kind(addr)
        return self._last_kind

    def _link_filtered(self, d: Delivery, host: str, hop: str | None, reply: str, msg: Message) -> bool:
        """Whether this hand-off (to `hop`, replying `reply`: d's, read once) went to a content filter:
        its `250 ... queued as NEWQID` names a queue file of this host that the filter's re-injection
        created. Carries the origin on."""
        if hop is None:
            return False
        new_qid = queued_as(reply)
        if new_qid is None:
            return False
        hop_kind = self._kind(hop)
        new_key = (host, new_qid)
        # a hop that has re-injected before, or one on this host, is a filter whatever its copy shows
        known = hop_kind is _LOOPBACK or hop_kind is _OTHER or (
            bool(self._filter_hops) and (host, hop) in self._filter_hops)
        reinjected = self._open.get(new_key)
        if reinjected is not None:
            if not self._reinjected_by(host, reinjected.client, hop, hop_kind):
                # a copy already linked by another recipient of the same message, or one whose client
                # XFORWARD named: XFORWARD never carries the login, the link does
                if known and reinjected.client == msg.client and msg.sasl_user and not reinjected.sasl_user:
                    reinjected.sasl_user = msg.sasl_user
                    self._touch(new_key)
                return known
            self._learn_filter(host, hop, reinjected.client)
            self._relink(new_key, reinjected, msg.client, msg.sasl_user, d.time, msg.uid)
            return True
        held = self._held.get(new_key) if self._held else None
        if held is not None and self._reinjected_by(host, held[1], hop, hop_kind):
            self._learn_filter(host, hop, held[1])
            self._release(new_key, msg.client, msg.sasl_user, msg.uid)
            return True
        if known:
            self._inherit(new_key, msg.client, msg.sasl_user, msg.uid)  # the copy's client= line is still to come
        return known

    def _reinjected_by(self, host: str, client: str | None, hop: str, hop_kind: AddrKind) -> bool:
        """Whether a message from `client` can be the re-injection of a filter reached at `hop`."""
        if client is None:
            return False
        if client == hop or (bool(self._filters) and (host, client) in self._filters):
            return True
        if hop_kind is _LOOPBACK or hop_kind is _OTHER:
            return self._kind(client) is _LOOPBACK
        return hop_kind is _PRIVATE and self._kind(client) is _PRIVATE

    def _proxy_accept(self, e: ProxyAccept) -> None:
        """The front smtpd of a before-queue filter names the queue file its session became."""
        key = (e.host, e.qid)
        msg = self._open.get(key)
        if msg is not None:
            if msg.client is not None and self._kind(msg.client) is not _PUBLIC:
                self._learn_filter(e.host, None, msg.client)
                self._relink(key, msg, e.client, e.sasl_user, e.time)
        elif key in self._held:
            client = self._held[key][1]
            if client is not None and self._kind(client) is not _PUBLIC:
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

    def _relink(self, key: Key, msg: Message, client: str | None, sasl_user: str | None, t: float,
                uid: int | None = None) -> None:
        msg.client, msg.sasl_user, msg.awaiting = client, msg.sasl_user or sasl_user, False
        msg.uid = uid
        self._touch(key)
        if self._changed is not None and client is not None:
            self._arrived.append(Origin(key[1], client, msg.sasl_user, t))
        if key in self._held:
            self._release(key, client, sasl_user, uid)

    def _release(self, key: Key, client: str | None, sasl_user: str | None, uid: int | None = None) -> None:
        """The held facts of a re-injected copy, now credited to its origin (a local submission's uid)."""
        facts = self._held.pop(key)[2]
        if client is None:
            if uid is not None:
                self.released.extend(LocalRelayed(f.time, f.qid, uid, f.sender, f.recipient, f.domain, f.status, f.host)
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
