"""The values that flow through the pipeline, and the error family.

sources -> parse (events) -> correlate (Relayed, RelayDenied) -> policy (Decision) -> actions.
Every value here is treated as immutable but `Totals`, a run's running counts; the other mutable
state lives in the correlator, the sliding windows, the store and the pipeline's sinks. The events
and facts, built for most lines of a log, are defined in `relaywatch.model.events`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

# The events, facts and run totals: their own module, compiled (see its docstring); `X as X` re-exports them.
from relaywatch.model.events import ClientSeen as ClientSeen
from relaywatch.model.events import Delivery as Delivery
from relaywatch.model.events import Event as Event
from relaywatch.model.events import Forged as Forged
from relaywatch.model.events import LocalRelayed as LocalRelayed
from relaywatch.model.events import Pickup as Pickup
from relaywatch.model.events import ProxyAccept as ProxyAccept
from relaywatch.model.events import QueueActive as QueueActive
from relaywatch.model.events import Reject as Reject
from relaywatch.model.events import RelayDenied as RelayDenied
from relaywatch.model.events import Relayed as Relayed
from relaywatch.model.events import Removed as Removed
from relaywatch.model.events import Totals as Totals
from relaywatch.model.events import Unparsed as Unparsed

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
