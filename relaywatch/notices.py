"""What a notification says: one `Notice` per event, and many as one push. Pure, stdlib only.

A notice is read first on a phone's lock screen: the title names the host and
the event, the first body line says what and why, and the whole notice stays
under `MAX_BYTES` (a push service cuts or refuses longer ones). Evidence and
queue ids come last and are the first to go when room runs out.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shlex
import socket
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from .model import Decision
from .report import iso

SEVERITIES = ("info", "warning", "failure")  # the values of apprise's NotifyType we use
HOST = socket.gethostname().split(".")[0] or "localhost"
PREFIX = f"relaywatch@{HOST}: "
MAX_BYTES = 1000  # title + body of one notice, UTF-8: under 1 KB
_LABELS = {"client": "client", "subnet": "subnet", "sasl_user": "SASL user", "sender": "sender",
           "destination": "destination domain"}
_EVIDENCE_CHARS = 160
_CLIENTS_SHOWN = 5


class NoticeKind(StrEnum):
    """What a notice is about; each kind has its own cooldown, so one kind never delays another."""

    BLOCK = "block"
    ALERT = "alert"
    AUDIT = "audit"
    DIGEST = "digest"
    ERROR = "error"
    TEST = "test"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Notice:
    """One message for the admin. `severity` is an apprise NotifyType value.

    `key`: a notice that states a condition (the audit's findings) names it; the
    notifier sends an unchanged one only once, across reloads and restarts.
    """

    severity: str
    title: str
    body: str
    tags: tuple[str, ...] = ()
    kind: NoticeKind = field(default=NoticeKind.OTHER, kw_only=True)
    key: str = field(default="", kw_only=True)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self.title}\0{self.body}".encode()).hexdigest()[:16]


def _titled(title: str) -> str:
    return PREFIX + title.removeprefix(PREFIX).removeprefix("relaywatch: ")


def _kind_of(tags: Sequence[str]) -> NoticeKind:
    return NoticeKind(tags[0]) if tags and tags[0] in NoticeKind.__members__.values() else NoticeKind.OTHER


def notice_for_text(severity: str, title: str, body: str, tags: Iterable[str] = (), *,
                    kind: NoticeKind | None = None, key: str = "") -> Notice:
    """Any other event: an audit warning, a daemon error, a daily digest (kind from the first tag)."""
    tags = tuple(tags)
    return Notice(severity, _titled(title), body.strip(), tags, kind=kind or _kind_of(tags), key=key)


def notice_for_decision(
    decision: Decision, *, effective: str | None = None, held: int | None = None, undo: str | None = None,
    dry_run: bool = False, clients: Sequence[tuple[str, int]] = (), bypassed_on: Sequence[str] = (),
) -> Notice:
    """What was decided and why, whether it works, and how to undo it.

    `effective` is the warning to show when Postfix would not enforce the block;
    None means it is in effect. `held`: queued messages held. `dry_run`: a replay
    that changed nothing: says what would have been blocked, and no undo.
    `clients`: (address, relayed recipients) of a subnet's busiest clients.
    `bypassed_on`: where Postfix would not enforce it ("main.cf", master.cf services): when
    only services bypass it, the title names them instead of calling the block useless.
    """
    d = decision
    label = f"{_LABELS.get(d.kind, d.kind)} {d.target}"
    short = d.target if d.kind in ("client", "subnet") else label
    what = f"{d.count:,} relay attempts refused" if d.rule == "relay_probe" else f"{d.count:,} relayed recipients"
    why = what + (f" from {d.clients} clients" if d.clients else "") + f" in {_span(d.window_s)} (rule {d.rule})"
    lines: list[str] = []
    if d.action == "block" and dry_run:
        severity = "info"
        title = f"would have blocked {short} (replay)"
        lines = [f"Would have blocked {label} at {iso(d.time)}: {why}.",
                 "Replay of an old log: nothing was changed."]
        undo = None
    elif d.action == "block":
        severity = "warning" if effective is None else "failure"
        services = [s for s in bypassed_on if s != "main.cf"]
        caveat = ("" if effective is None else f" - bypassed on {', '.join(services)}"
                  if services and len(services) == len(bypassed_on) else " - NOT enforced")
        title = f"blocked {short}{caveat}"
        lines = [f"Blocked {label} at {iso(d.time)}: {why}.",
                 "In effect for new SMTP sessions; sessions already open may keep sending."
                 if effective is None else f"NOT ENFORCED: {effective}"]
        undo = undo or f"relaywatch unblock {shlex.quote(d.target)}"
    else:
        severity = "info" if d.rule == "relay_probe" else "warning"
        title = f"{'replay: ' if dry_run else ''}alert {short}"
        lines = [f"Alert for {label} at {iso(d.time)}: {why}."]
    if held is not None:
        lines.append(f"Queued messages held: {held}.")
    if undo:
        lines.append(f"Undo: {undo}")
    extra: list[str] = []
    if clients:
        shown = ", ".join(f"{c} ({n:,})" for c, n in clients[:_CLIENTS_SHOWN])
        more = f" and {len(clients) - _CLIENTS_SHOWN} more" if len(clients) > _CLIENTS_SHOWN else ""
        extra.append(f"Clients: {shown}{more}")
    if d.evidence:
        # the client= lines first: they say who; delivery lines only say where to
        ordered = sorted(d.evidence[-5:], key=lambda line: "client=" not in line)
        extra += ["Evidence:", *(f"  | {_cut(line, _EVIDENCE_CHARS)}" for line in ordered[:3])]
    if d.sample_qids:
        extra.append("Queue IDs: " + ", ".join(d.sample_qids[:5]))
    tags = (d.action, d.kind, severity)
    return _fit(Notice(severity, PREFIX + title, "", tags, kind=_kind_of(tags)), lines, extra)


def subnet_clients(d: Decision, counts: Iterable[tuple[str, int, str, int]]) -> list[tuple[str, int]]:
    """A subnet decision's clients, busiest first, from window counts (dim, bucket, key, n) since its
    window began; empty for other kinds."""
    if d.kind != "subnet":
        return []
    net = ipaddress.ip_network(d.target, strict=False)
    totals: dict[str, int] = {}
    for dim, _bucket, key, n in counts:
        if dim == "client":
            try:
                inside = ipaddress.ip_address(key) in net
            except ValueError:
                continue
            if inside:
                totals[key] = totals.get(key, 0) + n
    return sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))


def _cut(text: str, limit: int) -> str:
    """Log fields are written by strangers: no control characters, no endless lines."""
    clean = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return clean + ("..." if len(text) > limit else "")


def _size(title: str, lines: Sequence[str]) -> int:
    return len(title.encode()) + len("\n".join(lines).encode())


def _fit(base: Notice, lines: list[str], extra: Sequence[str]) -> Notice:
    """`lines` always (cut if they must be), then as many of `extra` as fit in MAX_BYTES."""
    title = _cut(base.title, 200)
    body = [_cut(line, 400) for line in lines]
    for line in extra:
        if _size(title, [*body, line]) > MAX_BYTES:
            break
        body.append(line)
    text = "\n".join(body)
    while len((title + text).encode()) > MAX_BYTES:
        text = text[: len(text) - 16]
    return Notice(base.severity, title, text, base.tags, kind=base.kind, key=base.key)


def _span(s: int) -> str:
    return f"{s // 3600} h" if s >= 3600 and s % 3600 == 0 else f"{s // 60} min" if s >= 60 else f"{s} s"


def merge(notices: Sequence[Notice]) -> Notice:
    """Many notices as one push: the worst event leads the title, then one line each, then
    the first one's details, all in MAX_BYTES."""
    if len(notices) == 1:
        return notices[0]
    total = len(notices)
    notices = sorted(notices, key=lambda n: -SEVERITIES.index(n.severity))  # worst first, else in order
    worst = notices[0]
    kinds = Counter(n.kind.value for n in notices[1:])
    title = f"{worst.title} (+" + ", ".join(f"{c} {k}" for k, c in kinds.most_common()) + ")"
    lines = [f"- {n.title.removeprefix(PREFIX)}" for n in notices]
    body: list[str] = []
    for i, line in enumerate(lines):
        rest = f"- ... and {total - i} more"
        if _size(title, [*body, line, rest]) > MAX_BYTES * 2 // 3:
            body.append(rest)
            break
        body.append(line)
    merged = Notice(worst.severity, title, "", tuple(dict.fromkeys(t for n in notices for t in n.tags)),
                    kind=worst.kind)
    return _fit(merged, body, ["", *worst.body.splitlines()])
