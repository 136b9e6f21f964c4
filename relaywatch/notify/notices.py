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

from relaywatch.model import Decision
from relaywatch.wording import clean, describe, iso

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
    ENFORCEMENT = "enforcement"  # a block that is not in force, or not enforced by Postfix
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
    not_in_force: str | None = None,
) -> Notice:
    """What was decided and why, whether it works, and how to undo it.

    `not_in_force`: why the block is not in Postfix's map yet (a map fault); None
    means the map holds it and Postfix reloaded. `effective` is the warning to show
    when Postfix would not enforce the block anyway (the mynetworks trap). `held`: queued messages held.
    `dry_run`: a replay that changed nothing: says what would have been blocked, and no undo.
    `clients`: (address, relayed recipients) of a subnet's busiest clients.
    `bypassed_on`: where Postfix would not enforce it ("main.cf", master.cf services): when
    only services bypass it, the title names them instead of calling the block useless.
    """
    d = decision
    label = f"{_LABELS.get(d.kind, d.kind)} {d.target}"
    short = d.target if d.kind in ("client", "subnet") else label
    why = describe(d)
    lines: list[str] = []
    if d.action == "block" and dry_run:
        severity = "info"
        title = f"would have blocked {short} (replay)"
        lines = [f"Would have blocked {label} at {iso(d.time)}: {why}.",
                 "Replay of an old log: nothing was changed."]
        undo = None
    elif d.action == "block":
        severity = "warning" if effective is None and not_in_force is None else "failure"
        services = [s for s in bypassed_on if s != "main.cf"]
        caveat = (" - NOT in force" if not_in_force is not None else "" if effective is None
                  else f" - bypassed on {', '.join(services)}" if services and len(services) == len(bypassed_on)
                  else " - NOT enforced")
        title = f"blocked {short}{caveat}"
        lines = [f"Blocked {label} at {iso(d.time)}: {why}."]
        if not_in_force is not None:
            lines.append(f"NOT IN FORCE: {not_in_force}. relaywatch keeps retrying and sends a notice once "
                         "it is in force.")
        if effective is not None:
            lines.append(f"NOT ENFORCED: {effective}")
        if not_in_force is None and effective is None:
            lines.append("In force: the map holds it and Postfix reloaded; new SMTP sessions are refused, "
                         "sessions already open may keep sending.")
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
        extra += ["Evidence:", *(f"  | {clean(line, _EVIDENCE_CHARS)}" for line in ordered[:3])]
    if d.sample_qids:
        extra.append("Queue IDs: " + ", ".join(d.sample_qids[:5]))
    tags = (d.action, d.kind, severity)
    return _fit(Notice(severity, PREFIX + title, "", tags, kind=_kind_of(tags)), lines, extra)


def notice_for_map_fault(error: str, waiting: Sequence[str]) -> Notice:
    """Blocks relaywatch cannot put in force (sent once per fault, not per retry)."""
    body = [f"Postfix does not refuse these yet: {error}",
            f"Blocks waiting ({len(waiting)}): " + (", ".join(waiting[:20]) or "none (an unblock is waiting)")
            + (" ..." if len(waiting) > 20 else ""),
            "relaywatch retries after 1 s, doubling up to every 30 s, and at once when the map directory's "
            "permissions change; it sends a notice when the blocks are in force."]
    return notice_for_text("failure", "blocks NOT in force", "\n".join(body), ("enforcement", "block", "failure"))


def notice_for_map_restored(in_force: Sequence[str]) -> Notice:
    """A map fault ended: the blocks it held back are in force now."""
    return notice_for_text("info", "blocks in force again",
                           "The access map is written and Postfix reloaded. Blocks in force "
                           f"({len(in_force)}): " + (", ".join(in_force[:20]) or "none")
                           + (" ..." if len(in_force) > 20 else ""), ("enforcement", "block", "info"))


def notice_for_map_changed(changes: Sequence[str]) -> Notice:
    """Someone else rewrote relaywatch's map (an editor, a second relaywatch): it is being restored."""
    return notice_for_text("warning", "access map changed behind relaywatch's back",
                           "\n".join([*changes, "relaywatch is writing its blocks back. If another relaywatch "
                                      "(another state database) writes the same map, give each its own map."]),
                           ("enforcement", "block", "warning"))


def notice_for_leak(kind: str, target: str, since: float, first: float, last: float, count: int,
                    qids: Sequence[str], reason: str | None) -> Notice:
    """A blocked client's mail is still being queued: Postfix is not enforcing the block."""
    label = f"{_LABELS.get(kind, kind)} {target}"
    lines = [f"{count} messages from {label} were queued after its block took effect at {iso(since)} "
             f"(from {iso(first)} to {iso(last)}): Postfix is not refusing it.",
             f"Why, from Postfix's configuration now: {reason}" if reason else
             "Postfix's configuration as relaywatch reads it should refuse it: check smtpd_*_restrictions "
             "(a permit before check_client_access / check_sasl_access?), the map type, and postfix reload.",
             "Sessions opened before the block may finish what they send; mail queued later is not refused."]
    if qids:
        lines.append("Queue IDs: " + ", ".join(qids[:5]))
    return notice_for_text("failure", f"block of {target} NOT enforced", "\n".join(lines),
                           ("enforcement", "block", "failure"))


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


def _size(title: str, lines: Sequence[str]) -> int:
    return len(title.encode()) + len("\n".join(lines).encode())


def _fit(base: Notice, lines: list[str], extra: Sequence[str]) -> Notice:
    """`lines` always (cut if they must be), then as many of `extra` as fit in MAX_BYTES."""
    title = clean(base.title, 200)
    body = [clean(line, 400) for line in lines]
    for line in extra:
        if _size(title, [*body, line]) > MAX_BYTES:
            break
        body.append(line)
    text = "\n".join(body)
    while len((title + text).encode()) > MAX_BYTES:
        text = text[: len(text) - 16]
    return Notice(base.severity, title, text, base.tags, kind=base.kind, key=base.key)


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
