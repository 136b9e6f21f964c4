"""The values that flow through the pipeline, and the error family.

sources -> parse (events) -> correlate (Relayed, RelayDenied) -> policy (Decision) -> actions.
Every value here is immutable; the only mutable state lives in the correlator,
the sliding windows and the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class RelaywatchError(Exception):
    """Base of every error relaywatch reports to the user."""

    exit_code = 1


class ConfigError(RelaywatchError):
    """The configuration is unusable; systemd must not restart us in a loop."""

    exit_code = 78


class PostfixError(RelaywatchError):
    """A Postfix command failed; the previous map stays in force."""


# --- parsed log events -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Something one log line says. `time` is seconds since the epoch.

    `host` is the syslog hostname: queue ids are unique per host only, so a
    central log that mixes hosts is joined by (host, queue id).
    """

    time: float
    host: str = field(default="", kw_only=True)


@dataclass(frozen=True, slots=True)
class Unparsed(Event):
    """A line relaywatch could not read, or a Postfix line of a kind it uses
    whose grammar did not match. Counted, never fatal."""

    reason: str


@dataclass(frozen=True, slots=True)
class ClientSeen(Event):
    """smtpd `QID: client=name[addr]`: a message enters the queue from a client."""

    qid: str
    client: str
    client_name: str
    sasl_user: str | None
    orig_client: str | None


@dataclass(frozen=True, slots=True)
class Pickup(Event):
    """pickup `QID: uid=N from=<sender>`: local submission, no client."""

    qid: str
    uid: int
    sender: str


@dataclass(frozen=True, slots=True)
class ProxyAccept(Event):
    """smtpd in front of a before-queue filter (`smtpd_proxy_filter`):
    `NOQUEUE: proxy-accept: END-OF-MESSAGE ... queued as QID` ties the front
    session's client to the queue file the filter's re-injection created."""

    qid: str
    client: str
    client_name: str
    sasl_user: str | None


@dataclass(frozen=True, slots=True)
class QueueActive(Event):
    """qmgr `QID: from=<sender>, size=N, nrcpt=N (queue active)`; repeats on every retry."""

    qid: str
    sender: str
    size: int
    nrcpt: int


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class Removed(Event):
    """The queue file is gone (qmgr/postsuper `removed`, or a cleanup reject)."""

    qid: str


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
class RelayDenied:
    """Our smtpd refused to relay for this client: a probe of the relay."""

    time: float
    client: str
    qid: str | None


# --- decisions ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    """What the policy decided, with the evidence a human needs to check it.

    action: "block" | "alert" | "unblock" (the daemon's store only: rule "manual" or "expired");
    kind: "client" | "subnet" | "sasl_user" | "sender" | "destination".
    """

    time: float
    action: str
    kind: str
    target: str
    rule: str
    count: int
    window_s: int
    clients: int = 0
    evidence: tuple[str, ...] = field(default=())
    sample_qids: tuple[str, ...] = field(default=())
