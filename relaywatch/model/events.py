"""The parsed log events and the correlated facts, built for most lines of a log, and the run's
totals, counted on every line.

Each is a dataclass (fields, ==, hash, repr, `dataclasses.replace`) with its `__init__` written out:
compiled by mypyc (pyproject's [tool.relaywatch.compiled]), an explicit `__init__` is native code
that the compiled parser and correlator call directly, where the one `dataclass` generates stays an
interpreted frame (0.04 against 0.39 us a Delivery). The `__init__` takes the fields in their
order, `host` keyword-only on events; tests/test_model_events.py holds the two to each other.
Compiled, a class's `__new__` runs that `__init__` (mypyc keeps its attributes always set), so the
default way to copy or pickle (`cls.__new__(cls)`, then the state) fails: each class's `__reduce__`
builds it again through `__init__`, by field name, and copy, deepcopy and pickle use that in either form.
Not `frozen` (a frozen dataclass costs several times as much to build), but hashable and never
assigned to. `Totals`, built once a run, keeps the generated `__init__`; compiled, its fields are
read and counted natively by the compiled pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

# What `__reduce__` returns: how to build the value again, and from what.
Reduced = tuple[Callable[..., object], tuple[object, ...]]


def _rebuilt(cls: Callable[..., object], values: dict[str, Any]) -> object:
    """An event or fact built again from its fields by name (`host` is keyword-only on events)."""
    return cls(**values)


def _reduced(value: Any) -> Reduced:
    """Each class's `__reduce__`: its fields by name, for `_rebuilt`."""
    return _rebuilt, (type(value), {f.name: getattr(value, f.name) for f in fields(value)})


# --- parsed log events -------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Event:
    """Something one log line says. `time` is seconds since the epoch.

    `host` is the syslog hostname: queue ids are unique per host only, so a
    central log that mixes hosts is joined by (host, queue id).
    """

    time: float
    host: str = field(default="", kw_only=True)

    def __init__(self, time: float, *, host: str = "") -> None:
        self.time = time
        self.host = host

    def __reduce__(self) -> Reduced:
        return _reduced(self)


@dataclass(slots=True, unsafe_hash=True)
class Unparsed(Event):
    """A line relaywatch could not read, or a Postfix line of a kind it uses
    whose grammar did not match. Counted, never fatal."""

    reason: str

    def __init__(self, time: float, reason: str, *, host: str = "") -> None:
        self.time = time
        self.host = host
        self.reason = reason


@dataclass(slots=True, unsafe_hash=True)
class Forged(Event):
    """A journal record that claims to be Postfix's but was written by another program
    (`logger -t postfix/smtpd`): counted apart, never read as Postfix's."""

    def __init__(self, time: float, *, host: str = "") -> None:
        self.time = time
        self.host = host


@dataclass(slots=True, unsafe_hash=True)
class ClientSeen(Event):
    """smtpd `QID: client=name[addr]`: a message enters the queue from a client."""

    qid: str
    client: str
    client_name: str
    sasl_user: str | None
    orig_client: str | None

    def __init__(self, time: float, qid: str, client: str, client_name: str, sasl_user: str | None,
                 orig_client: str | None, *, host: str = "") -> None:
        self.time = time
        self.host = host
        self.qid = qid
        self.client = client
        self.client_name = client_name
        self.sasl_user = sasl_user
        self.orig_client = orig_client


@dataclass(slots=True, unsafe_hash=True)
class Pickup(Event):
    """pickup `QID: uid=N from=<sender>`: local submission, no client."""

    qid: str
    uid: int
    sender: str

    def __init__(self, time: float, qid: str, uid: int, sender: str, *, host: str = "") -> None:
        self.time = time
        self.host = host
        self.qid = qid
        self.uid = uid
        self.sender = sender


@dataclass(slots=True, unsafe_hash=True)
class ProxyAccept(Event):
    """smtpd in front of a before-queue filter (`smtpd_proxy_filter`):
    `NOQUEUE: proxy-accept: END-OF-MESSAGE ... queued as QID` ties the front
    session's client to the queue file the filter's re-injection created."""

    qid: str
    client: str
    client_name: str
    sasl_user: str | None

    def __init__(self, time: float, qid: str, client: str, client_name: str, sasl_user: str | None, *,
                 host: str = "") -> None:
        self.time = time
        self.host = host
        self.qid = qid
        self.client = client
        self.client_name = client_name
        self.sasl_user = sasl_user


@dataclass(slots=True, unsafe_hash=True)
class QueueActive(Event):
    """qmgr `QID: from=<sender>, size=N, nrcpt=N (queue active)`; repeats on every retry."""

    qid: str
    sender: str
    size: int
    nrcpt: int

    def __init__(self, time: float, qid: str, sender: str, size: int, nrcpt: int, *, host: str = "") -> None:
        self.time = time
        self.host = host
        self.qid = qid
        self.sender = sender
        self.size = size
        self.nrcpt = nrcpt


@dataclass(slots=True, unsafe_hash=True)
class Delivery(Event):
    """One recipient's delivery attempt by smtp/lmtp/local/virtual/pipe/error/...

    `orig_to` is set when an alias or .forward rewrote the recipient.
    """

    qid: str
    agent: str
    recipient: str
    orig_to: str | None
    relay: str
    relay_addr: str | None
    status: str
    reply: str

    def __init__(self, time: float, qid: str, agent: str, recipient: str, orig_to: str | None, relay: str,
                 relay_addr: str | None, status: str, reply: str, *, host: str = "") -> None:
        self.time = time
        self.host = host
        self.qid = qid
        self.agent = agent
        self.recipient = recipient
        self.orig_to = orig_to
        self.relay = relay
        self.relay_addr = relay_addr
        self.status = status
        self.reply = reply


@dataclass(slots=True, unsafe_hash=True)
class Removed(Event):
    """The queue file is gone (qmgr/postsuper `removed`, or a cleanup reject)."""

    qid: str

    def __init__(self, time: float, qid: str, *, host: str = "") -> None:
        self.time = time
        self.host = host
        self.qid = qid


@dataclass(slots=True, unsafe_hash=True)
class Reject(Event):
    """An smtpd/postscreen/cleanup policy action: `NOQUEUE: reject: RCPT from ...`.

    `client` comes only from the fixed prefix of the line; `relay_denied` is
    true for our own `Relay access denied` replies, never for remote ones.
    """

    qid: str | None
    action: str
    stage: str
    client: str
    client_name: str
    reply: str
    relay_denied: bool

    def __init__(self, time: float, qid: str | None, action: str, stage: str, client: str, client_name: str,
                 reply: str, relay_denied: bool, *, host: str = "") -> None:
        self.time = time
        self.host = host
        self.qid = qid
        self.action = action
        self.stage = stage
        self.client = client
        self.client_name = client_name
        self.reply = reply
        self.relay_denied = relay_denied


# --- correlated facts --------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Relayed:
    """One recipient of a message from a remote smtpd client handed to another host."""

    time: float
    qid: str
    client: str
    sasl_user: str | None
    sender: str
    recipient: str
    domain: str
    status: str  # of the first delivery attempt
    queued: float | None = field(default=None, compare=False)  # when its client= line was logged
    host: str = field(default="", compare=False)  # the syslog host that relayed it (provenance, like `queued`)

    def __init__(self, time: float, qid: str, client: str, sasl_user: str | None, sender: str, recipient: str,
                 domain: str, status: str, queued: float | None = None, host: str = "") -> None:
        self.time = time
        self.qid = qid
        self.client = client
        self.sasl_user = sasl_user
        self.sender = sender
        self.recipient = recipient
        self.domain = domain
        self.status = status
        self.queued = queued
        self.host = host

    def __reduce__(self) -> Reduced:
        return _reduced(self)


@dataclass(slots=True, unsafe_hash=True)
class LocalRelayed:
    """One recipient of a locally submitted message (sendmail/pickup: a web app,
    a cron job) handed to another host. Counted per uid and sender; alerts only."""

    time: float
    qid: str
    uid: int
    sender: str
    recipient: str
    domain: str
    status: str
    host: str = field(default="", compare=False)

    def __init__(self, time: float, qid: str, uid: int, sender: str, recipient: str, domain: str, status: str,
                 host: str = "") -> None:
        self.time = time
        self.qid = qid
        self.uid = uid
        self.sender = sender
        self.recipient = recipient
        self.domain = domain
        self.status = status
        self.host = host

    def __reduce__(self) -> Reduced:
        return _reduced(self)


@dataclass(slots=True, unsafe_hash=True)
class RelayDenied:
    """Our smtpd refused to relay for this client: a probe of the relay."""

    time: float
    client: str
    qid: str | None
    host: str = field(default="", compare=False)

    def __init__(self, time: float, client: str, qid: str | None, host: str = "") -> None:
        self.time = time
        self.client = client
        self.qid = qid
        self.host = host

    def __reduce__(self) -> Reduced:
        return _reduced(self)


# --- what a run read ---------------------------------------------------------


@dataclass
class Totals:
    """What a run (a replay, the daemon) read: line counts and the span of log time."""

    lines: int = 0
    unparsed: int = 0
    forged: int = 0
    relayed: int = 0
    relay_denied: int = 0
    local_relayed: int = 0  # recipients of mail submitted on the host (pickup) handed to another host
    first_time: float | None = None
    last_time: float | None = None
    unparsed_samples: list[str] = field(default_factory=list)

    def __reduce__(self) -> Reduced:  # compiled, pickle's protocols 0 and 1 refuse the class otherwise
        return _reduced(self)
