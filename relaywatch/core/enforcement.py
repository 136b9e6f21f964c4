"""Verify blocks from the log: mail from a blocked client queued after its block took effect.

Whatever main.cf says (and whatever relaywatch concluded from it), a client whose mail is
still queued and relayed after its REJECT is in force is not being refused: in the issue
13 run, main.cf was switched to `permit_mynetworks` first and 200/200 messages of a
"blocked" client were relayed. A session opened before the block may finish what it
sends (Postfix re-reads a changed map between sessions), so a leak counts only mail
queued `GRACE_S` after the block took effect, and alarms from `MIN_LEAKED` messages on.
Pure: blocks and Relayed facts in, Leak values out.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from relaywatch.core.rules import in_network
from relaywatch.model import Relayed

GRACE_S = 5.0
MIN_LEAKED = 3
_SAMPLES = 5
_QIDS_KEPT = 10_000  # per block; past it, a message counts when its queue id differs from the last one


@dataclass(frozen=True, slots=True)
class Leak:
    """Mail of a blocked target queued after its block took effect (log time)."""

    kind: str
    target: str
    since: float  # the block took effect
    first: float  # first leaked message queued
    last: float
    count: int  # messages (queue ids) queued after since + GRACE_S
    sample_qids: tuple[str, ...]
    new: bool  # this is the alarm (the first report for this block)


@dataclass(slots=True)
class _Seen:
    first: float
    last: float
    qids: dict[str, None] = field(default_factory=dict)
    count: int = 0
    last_qid: str = ""
    alarmed: bool = False
    reported: int = 0


class LeakWatch:
    """Feed it the blocks in force (`watch`) and every Relayed fact (`observe`); `take` the leaks."""

    def __init__(self, grace_s: float = GRACE_S, min_leaked: int = MIN_LEAKED) -> None:
        self.grace_s = grace_s
        self.min_leaked = min_leaked
        self._since: dict[tuple[str, str], float] = {}
        self._clients: dict[str, float] = {}
        self._users: dict[str, float] = {}
        self._nets: list[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str, float]] = []
        self._seen: dict[tuple[str, str], _Seen] = {}

    def watch(self, in_force_since: dict[tuple[str, str], float]) -> None:
        """The blocks in force now, each with the time it took effect."""
        if in_force_since == self._since:
            return
        self._since = dict(in_force_since)
        self._clients = {t: s for (k, t), s in self._since.items() if k == "client"}
        self._users = {t: s for (k, t), s in self._since.items() if k == "sasl_user"}
        self._nets = [(ipaddress.ip_network(t), t, s) for (k, t), s in self._since.items() if k == "subnet"]
        self._seen = {key: seen for key, seen in self._seen.items() if key in self._since}

    def observe(self, fact: object) -> None:
        """One correlated fact; only Relayed mail from a blocked client or user matters."""
        if type(fact) is not Relayed or not self._since:
            return
        queued = fact.queued if fact.queued is not None else fact.time
        since = self._clients.get(fact.client)
        if since is not None:
            self._note(("client", fact.client), since, queued, fact.qid)
        if fact.sasl_user and fact.sasl_user in self._users:
            self._note(("sasl_user", fact.sasl_user), self._users[fact.sasl_user], queued, fact.qid)
        for net, target, since in self._nets:  # in_network: the address read once per distinct client, cached
            if in_network(fact.client, net):
                self._note(("subnet", target), since, queued, fact.qid)

    def _note(self, key: tuple[str, str], since: float, queued: float, qid: str) -> None:
        if queued < since + self.grace_s:
            return
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen(queued, queued)
        seen.first, seen.last = min(seen.first, queued), max(seen.last, queued)
        # a message counts once, however many recipients it has
        if qid in seen.qids or (len(seen.qids) >= _QIDS_KEPT and qid == seen.last_qid):
            return
        if len(seen.qids) < _QIDS_KEPT:
            seen.qids[qid] = None
        seen.count += 1
        seen.last_qid = qid

    def take(self) -> list[Leak]:
        """Blocks whose leak count changed since the last take and reached `min_leaked`."""
        out = []
        for (kind, target), seen in self._seen.items():
            n = seen.count
            if n < self.min_leaked or n == seen.reported:
                continue
            new = not seen.alarmed
            seen.alarmed, seen.reported = True, n
            out.append(Leak(kind, target, self._since[(kind, target)], seen.first, seen.last, n,
                            tuple(list(seen.qids)[:_SAMPLES]), new))
        return out
