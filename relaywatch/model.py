"""The values that flow through the pipeline, and the error family.

sources -> parse (events) -> correlate (Relayed, RelayDenied) -> policy (Decision) -> actions.
Every value here is treated as immutable but `Totals`, a run's running counts; the other mutable
state lives in the correlator, the sliding windows, the store and the pipeline's sinks. Events and
facts are built for most lines of a log, so they are not `frozen` (a frozen dataclass costs several
times as much to build) but stay hashable and are never assigned to.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

# A JSON object as json.loads returns it: a source's read position, a stored state record.
JSONObject = dict[str, Any]


class RelaywatchError(Exception):
    """Base of every error relaywatch reports to the user."""

    exit_code = 1


class ConfigError(RelaywatchError):
    """The configuration is unusable; systemd must not restart us in a loop."""

    exit_code = 78


class PostfixError(RelaywatchError):
    """A Postfix command failed; the previous map stays in force."""


# --- parsed log events -------------------------------------------------------


@dataclass(slots=True, unsafe_hash=True)
class Event:
    """Something one log line says. `time` is seconds since the epoch.

    `host` is the syslog hostname: queue ids are unique per host only, so a
    central log that mixes hosts is joined by (host, queue id).
    """

    time: float
    host: str = field(default="", kw_only=True)


@dataclass(slots=True, unsafe_hash=True)
class Unparsed(Event):
    """A line relaywatch could not read, or a Postfix line of a kind it uses
    whose grammar did not match. Counted, never fatal."""

    reason: str


@dataclass(slots=True, unsafe_hash=True)
class Forged(Event):
    """A journal record that claims to be Postfix's but was written by another program
    (`logger -t postfix/smtpd`): counted apart, never read as Postfix's."""


@dataclass(slots=True, unsafe_hash=True)
class ClientSeen(Event):
    """smtpd `QID: client=name[addr]`: a message enters the queue from a client."""

    qid: str
    client: str
    client_name: str
    sasl_user: str | None
    orig_client: str | None


@dataclass(slots=True, unsafe_hash=True)
class Pickup(Event):
    """pickup `QID: uid=N from=<sender>`: local submission, no client."""

    qid: str
    uid: int
    sender: str


@dataclass(slots=True, unsafe_hash=True)
class ProxyAccept(Event):
    """smtpd in front of a before-queue filter (`smtpd_proxy_filter`):
    `NOQUEUE: proxy-accept: END-OF-MESSAGE ... queued as QID` ties the front
    session's client to the queue file the filter's re-injection created."""

    qid: str
    client: str
    client_name: str
    sasl_user: str | None


@dataclass(slots=True, unsafe_hash=True)
class QueueActive(Event):
    """qmgr `QID: from=<sender>, size=N, nrcpt=N (queue active)`; repeats on every retry."""

    qid: str
    sender: str
    size: int
    nrcpt: int


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


@dataclass(slots=True, unsafe_hash=True)
class Removed(Event):
    """The queue file is gone (qmgr/postsuper `removed`, or a cleanup reject)."""

    qid: str


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


@dataclass(slots=True, unsafe_hash=True)
class RelayDenied:
    """Our smtpd refused to relay for this client: a probe of the relay."""

    time: float
    client: str
    qid: str | None
    host: str = field(default="", compare=False)


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


# --- audit findings ----------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One thing the audit (or the source check) found, with why it matters and how to fix it."""

    severity: str  # error | warning | info
    code: str
    title: str
    explanation: str
    fix: str
    details: dict[str, object] = field(default_factory=dict, hash=False)


# --- decisions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy decided, with the evidence a human needs to check it.

    action: unblock is the daemon's store only (rule "manual" or "expired").
    hosts: the syslog hosts of the facts behind it (several in a fleet or a central log).
    """

    time: float
    action: Action
    kind: Kind
    target: str
    rule: str
    count: int
    window_s: int
    clients: int = 0
    evidence: tuple[str, ...] = field(default=())
    sample_qids: tuple[str, ...] = field(default=())
    hosts: tuple[str, ...] = field(default=())


# --- vocabulary -----------------------------------------------------------------
# StrEnum members equal their strings: the store, the maps and the JSON output keep the same text.


class Action(StrEnum):
    """What a decision does."""

    BLOCK = "block"
    ALERT = "alert"
    UNBLOCK = "unblock"


class Kind(StrEnum):
    """What a decision is about (`uid`: a local user submitting through sendmail/pickup)."""

    CLIENT = "client"
    SUBNET = "subnet"
    SASL_USER = "sasl_user"
    SENDER = "sender"
    DESTINATION = "destination"
    UID = "uid"


class Dim(StrEnum):
    """What a window counts relayed recipients (or refusals) by."""

    CLIENT = "client"
    SENDER = "sender"
    DOMAIN = "domain"
    SASL_USER = "sasl_user"
    RELAY_DENIED = "relay_denied"
    UID = "uid"


class AccessMapName(StrEnum):
    """Which configured access map a block is written to: [postfix] client_access_map or sasl_access_map."""

    CLIENT = "client"  # check_client_access: smtpd_client_restrictions and the like
    SASL = "sasl"  # check_sasl_access


class QueueTarget(StrEnum):
    """What `queue hold` selects queued mail by (its `--client`, `--network`, ... option)."""

    CLIENT = "client"
    NETWORK = "network"
    SENDER = "sender"
    SASL_USER = "sasl_user"


@dataclass(frozen=True, slots=True)
class Enforcement:
    """Where a block of one kind takes effect: its access map and the queued mail it holds."""

    access_map: AccessMapName
    queue: QueueTarget


# The one table from block kind to access map to queue target: only these kinds can be blocked.
ENFORCEMENT: dict[Kind, Enforcement] = {
    Kind.CLIENT: Enforcement(AccessMapName.CLIENT, QueueTarget.CLIENT),
    Kind.SUBNET: Enforcement(AccessMapName.CLIENT, QueueTarget.NETWORK),
    Kind.SASL_USER: Enforcement(AccessMapName.SASL, QueueTarget.SASL_USER),
}


# --- stored rows ------------------------------------------------------------------
# Named tuples: built per batch on the hot path (as cheap as a tuple) and unpacked like one.


class CountRow(NamedTuple):
    """`n` events of `key` in the window dimension `dim` during time bucket `bucket`."""

    dim: str
    bucket: int
    key: str
    n: int


class OpenMessage(NamedTuple):
    """A message the correlator still holds, as a restarted daemon reloads it; `key` is
    `host/qid` (`qid` alone when the log names no host)."""

    key: str
    first_seen: float
    last_seen: float
    client: str | None
    sasl_user: str | None
    sender: str
    nrcpt: int
    seen: tuple[str, ...]


class Origin(NamedTuple):
    """Where a queued message came from, until Postfix removes it: what `queue hold` selects by."""

    qid: str
    client: str | None  # None: a filtered copy of a local submission (no client)
    sasl_user: str | None
    time: float
