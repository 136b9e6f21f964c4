"""Acting on decisions, once for the daemon and for `replay --apply/--notify`.

A block is recorded in the store (inside the caller's transaction: `record`), then put
in force in Postfix's maps, the target's queued mail held, Postfix's configuration asked
whether it would enforce the block, and the admin told (`follow_up`). Every step says
what it did in a typed outcome; the caller logs or prints them (`messages`). Without a
Blocker the Responder is a dry run: it only tells what would have been done.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from relaywatch.core.enforcement import Leak, LeakWatch
from relaywatch.model import Action, Decision, Kind, PostfixError, RelaywatchError
from relaywatch.notify.notices import (
    NoticeKind,
    notice_for_decision,
    notice_for_leak,
    notice_for_map_changed,
    notice_for_map_fault,
    notice_for_map_restored,
    notice_for_text,
    subnet_clients,
)
from relaywatch.notify.notifier import Notifier
from relaywatch.postfix.audit_blocks import bypass_text
from relaywatch.postfix.queue import PostfixQueue, Target, select
from relaywatch.respond.blocking import Blocker, SyncResult
from relaywatch.respond.enforcement import AuditResult, PostfixConfig
from relaywatch.store.base import StateStore
from relaywatch.store.records import BlockRow, EnforcementAlarm

HOLD_KINDS = {"client": "client", "subnet": "network", "sasl_user": "sasl_user"}  # block kind -> queue target
# Queued messages the log did not tie to a client are looked up with postcat only up to this
# many (~0.05 s per 1,000); `relaywatch queue hold` looks at them all.
HOLD_POSTCAT_LIMIT = 20_000

Message = tuple[int, str]  # (logging level, text)
Counts = Iterable[tuple[str, int, str, int]]


@dataclass(frozen=True)
class Held:
    """The queued mail of a blocked target put on hold: `count` messages, or `error` why not."""

    target: Target
    count: int | None = None
    error: str | None = None
    unchecked: int = 0  # queued messages not looked at (over the postcat budget, or leaving the queue)

    def messages(self) -> list[Message]:
        who = self.target
        if self.error is not None:
            return [(logging.ERROR, f"cannot hold the queued mail of {who}: {self.error}; "
                                    f"then run: relaywatch queue hold {who.option}")]
        out = []
        if self.unchecked:
            out.append((logging.WARNING, f"{self.unchecked} queued messages the log did not tie to {who} were not "
                                         f"looked at (more than {HOLD_POSTCAT_LIMIT}, or mail was leaving the queue);"
                                         f" relaywatch queue hold {who.option} looks at them all"))
        out.append((logging.WARNING, f"HOLD {self.count} messages of {who}"))
        return out


@dataclass(frozen=True)
class Outcome:
    """What acting on one decision did."""

    decision: Decision
    reason: str  # the decision in words, as the map's comment and the log say it
    recorded: bool = False  # a block the store holds: it changes what Postfix must refuse
    refused: str | None = None  # why the block could not be recorded
    not_in_force: str | None = None  # why the maps do not hold it yet (a map fault)
    bypasses: tuple[tuple[str, str], ...] = ()  # (main.cf or service, why and the fix) where Postfix ignores it
    held: Held | None = None
    notified: bool = False

    @property
    def in_force(self) -> bool:
        """Recorded, in the maps, and enforced by every part of Postfix's configuration."""
        return self.recorded and self.not_in_force is None and not self.bypasses

    @property
    def why_not(self) -> str | None:
        """For a block not in force: why."""
        if self.decision.action != "block" or self.in_force:
            return None
        return self.refused or self.not_in_force or bypass_text(list(self.bypasses))

    def messages(self) -> list[Message]:
        return self.recording() + self.following()

    def recording(self) -> list[Message]:
        """What was decided and recorded: said as soon as it is, before the maps are written."""
        d = self.decision
        if d.action != "block":
            return [(logging.WARNING, f"ALERT {d.kind} {d.target}: {self.reason}")]
        if self.refused is not None:
            return [(logging.ERROR, f"cannot block {d.kind} {d.target}: {self.refused}")]
        return [(logging.WARNING, f"BLOCK {d.kind} {d.target}: {self.reason}")]

    def following(self) -> list[Message]:
        """What the follow-up did: the mail held, where Postfix would not enforce the block."""
        d = self.decision
        out = self.held.messages() if self.held is not None else []
        if self.bypasses:
            out.append((logging.ERROR, f"the block of {d.kind} {d.target} is not enforced everywhere: "
                                       f"{bypass_text(list(self.bypasses))}"))
        return out


@dataclass(frozen=True)
class LeakAlarm:
    """A block in force whose target's mail the log still shows queued: not enforced."""

    leak: Leak
    reason: str | None  # where Postfix's configuration bypasses it, when it says
    notified: bool = False

    def messages(self) -> list[Message]:
        k = self.leak
        return [(logging.ERROR, f"the block of {k.kind} {k.target} is NOT enforced: {k.count} messages queued "
                                f"after it took effect{f': {self.reason}' if self.reason else ''}")]


@dataclass(frozen=True)
class Upkeep:
    """A housekeeping round: blocks expired, maps someone else changed, a retried sync, a new audit."""

    expired: tuple[BlockRow, ...] = ()
    tampered: tuple[str, ...] = ()
    synced: SyncResult | None = None
    audit: AuditResult | None = None

    def messages(self) -> list[Message]:
        out = [(logging.INFO, f"block of {b.kind} {b.target} expired") for b in self.expired]
        if self.audit is not None:
            out.append((logging.INFO, "Postfix's main.cf or master.cf changed: reading the configuration in force "
                                      "again"))
            out += audit_messages(self.audit)
        return out


def audit_messages(result: AuditResult) -> list[Message]:
    if result.failed is not None:
        return [(logging.WARNING, f"cannot audit the Postfix configuration: {result.failed}")]
    return [(logging.ERROR, f"audit: {f.code}: {f.title} Fix: {f.fix.replace(chr(10), '; ')}") for f in result.errors]


class Responder:
    """Block (through the Blocker), hold (postfix.queue), check enforcement, notify."""

    def __init__(self, store: StateStore, blocker: Blocker | None, notifier: Notifier | None, postfix: PostfixConfig,
                 describe: Callable[[Decision], str], *, hold: bool, config_directory: str | None,
                 counts_since: Callable[[float], Counts] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.blocker = blocker
        self.notifier = notifier
        self.postfix = postfix
        self.describe = describe
        self.hold = hold
        self.config_directory = config_directory
        self.counts_since = counts_since  # relayed counts since a time, for a subnet's busiest clients
        self.clock = clock
        self.leaks = LeakWatch()
        if blocker is not None:
            self.leaks.watch(blocker.in_force_since)

    @property
    def dry_run(self) -> bool:
        return self.blocker is None

    def act(self, decisions: Sequence[Decision]) -> list[Outcome]:
        """Record, then follow up: for callers without a transaction of their own."""
        return self.follow_up(self.record(decisions))

    def record(self, decisions: Sequence[Decision]) -> list[Outcome]:
        """Remember the blocks among `decisions` (inside the caller's transaction, if any)."""
        return [self._record(d) for d in decisions]

    def _record(self, d: Decision) -> Outcome:
        reason = self.describe(d)
        if d.action != "block" or self.blocker is None:
            return Outcome(d, reason)
        try:
            self.blocker.block(d.kind, d.target, reason, rule=d.rule)
        except RelaywatchError as exc:
            return Outcome(d, reason, refused=str(exc))
        return Outcome(d, reason, recorded=True)

    def follow_up(self, recorded: Sequence[Outcome]) -> list[Outcome]:
        """Put the recorded blocks in force (one sync), hold their queued mail (even when the map is
        pending: holding is what stops the mail already queued), check enforcement, notify."""
        synced = self.sync() if any(o.recorded for o in recorded) else None
        out = []
        for o in recorded:
            d = o.decision
            if d.action == "block" and not self.dry_run:
                if o.refused is not None:
                    not_in_force: str | None = f"relaywatch could not record the block: {o.refused}"
                else:
                    not_in_force = synced.error if synced is not None else None
                o = Outcome(d, o.reason, o.recorded, o.refused, not_in_force,
                            tuple(self.postfix.bypasses(d.kind, d.target)), self._hold(d) if o.recorded else None)
            out.append(self._tell(o))
        return out

    def _hold(self, d: Decision) -> Held | None:
        """Put what a blocked target already queued on hold; None when off or impossible."""
        if not self.hold or d.kind not in HOLD_KINDS:
            return None
        who = Target(HOLD_KINDS[d.kind], d.target)
        queue = PostfixQueue(self.config_directory)
        try:
            found = select(queue, who, self.store.queue_ids(**{who.kind: who.value}),
                           queues=("incoming", "active", "deferred"), postcat_limit=HOLD_POSTCAT_LIMIT)
            return Held(who, queue.hold(m.qid for m in found.messages), unchecked=found.unchecked)
        except PostfixError as exc:
            return Held(who, error=str(exc))

    def _tell(self, o: Outcome) -> Outcome:
        if self.notifier is None:
            return o
        d = o.decision
        if self.dry_run:
            self.notifier.submit(notice_for_decision(d, dry_run=True))
            return Outcome(d, o.reason, notified=True)
        held = o.held.count if o.held is not None else None
        undo = f"relaywatch unblock {d.target}" if d.action == "block" else None
        if undo and held:
            undo += "; held mail: " + Target(HOLD_KINDS[d.kind], d.target).hint()
        counts = self.counts_since(d.time - d.window_s) if self.counts_since is not None else ()
        self.notifier.submit(notice_for_decision(
            d, effective=bypass_text(list(o.bypasses)), held=held, undo=undo, clients=subnet_clients(d, counts),
            bypassed_on=[name for name, _ in o.bypasses], not_in_force=o.not_in_force if d.action == "block" else None))
        return Outcome(d, o.reason, o.recorded, o.refused, o.not_in_force, o.bypasses, o.held, notified=True)

    def sync(self) -> SyncResult:
        """Write the maps; tell the admin when a map fault begins (once) and when the blocks it held back
        are in force; the log check watches what is in force now."""
        assert self.blocker is not None
        result = self.blocker.sync()
        self.leaks.watch(self.blocker.in_force_since)
        if self.notifier is None:
            return result
        if result.fault_began and result.error:
            waiting = [b.target for b in self.store.blocks(self.clock())]
            self.notifier.submit(notice_for_map_fault(result.error, waiting))
        if result.recovered:
            self.notifier.submit(notice_for_map_restored([b.target for b in result.recovered]))
        return result

    def check_leaks(self) -> list[LeakAlarm]:
        """Blocked targets whose mail is still queued (from the log): a status entry, and for a new
        one an alarm decision and a notice."""
        leaks = self.leaks.take()
        if not leaks:
            return []
        alarms = self.store.alarms.get()
        out = []
        for leak in leaks:
            alarm = EnforcementAlarm(leak.kind, leak.target, leak.since, leak.first, leak.last, leak.count,
                                     tuple(leak.sample_qids))
            alarms[alarm.key] = alarm
            if leak.new:
                out.append(self._leak_alarm(leak))
        self.store.alarms.put(alarms)
        return out

    def _leak_alarm(self, leak: Leak) -> LeakAlarm:
        reason = bypass_text(self.postfix.bypasses(leak.kind, leak.target))
        alarm = Decision(leak.last, Action.ALERT, Kind(leak.kind), leak.target, "block_not_enforced", leak.count,
                         int(leak.last - leak.since), sample_qids=leak.sample_qids)
        with self.store.transaction():
            won = self.store.claim([alarm])  # a fleet: the host that recorded it first tells
            self.store.commit_batch([], won)
        if self.notifier is None or not won:
            return LeakAlarm(leak, reason)
        self.notifier.submit(notice_for_leak(leak.kind, leak.target, leak.since, leak.first, leak.last,
                                             leak.count, leak.sample_qids, reason))
        return LeakAlarm(leak, reason, notified=True)

    def audit(self) -> AuditResult:
        """Read Postfix's configuration and tell the admin where blocks would be bypassed (once per change)."""
        result = self.postfix.audit()
        if self.notifier is None or result.failed is not None:
            return result
        if not result.errors:
            self.notifier.forget("audit")
            return result
        body = "\n\n".join(f"{f.title}\n{f.fix}" for f in result.errors)
        self.notifier.submit(notice_for_text("failure", f"{len(result.errors)} hole(s) in Postfix: relaywatch audit",
                                             body, kind=NoticeKind.AUDIT, key="audit"))
        return result

    def upkeep(self, now: float) -> Upkeep:
        """Expire blocks, restore maps someone else changed, retry a pending sync, audit a changed Postfix."""
        assert self.blocker is not None
        expired = tuple(self.blocker.expire())
        changed = tuple(self.blocker.check_maps())
        if changed and self.blocker.first_tamper and self.notifier is not None:
            self.notifier.submit(notice_for_map_changed(list(changed)))
        synced = self.sync() if self.blocker.due() else None
        audit = self.audit() if self.postfix.settled_change(now) else None
        return Upkeep(expired, changed, synced, audit)

    def block_pairs(self) -> list[tuple[str, str]]:
        return [(b.kind, b.target) for b in self.store.blocks(self.clock())]
