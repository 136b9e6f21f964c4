"""`relaywatch run`: the pipeline on a live log, with real actions, as a systemd service.

Lines are fed through the same `Pipeline` as replay; their counts, decisions and
the source position after the last line fed are committed in one transaction, so
a SIGKILL at any moment loses or repeats nothing (a restart reads again exactly
what was not committed). While lines keep arriving the commits are coalesced: one
COMMIT (one fsync) a second, with the heartbeat, or every COMMIT_LINES lines. A
batch that decided something commits at once, before the block is put in force
and anyone is told, and so do a quiet log (IDLE_S), SIGHUP and shutdown. Blocks go
into Postfix's maps right after that commit (one postmap, one reload).
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from relaywatch import config as config_mod
from relaywatch.build import Parts, build
from relaywatch.daemon_days import save_days, send_digest
from relaywatch.engine import Pipeline
from relaywatch.model import Decision, JSONObject, RelaywatchError
from relaywatch.notify.notices import notice_for_text
from relaywatch.postfix import hostaddrs
from relaywatch.reports.daily import DailyRecord
from relaywatch.reports.digest import DayStats
from relaywatch.respond.pgsql_follow import follower_for
from relaywatch.respond.responder import Counts, Message, Outcome, audit_messages
from relaywatch.store.records import DaemonStatus
from relaywatch.store.sqlite import StoreUnavailable

log = logging.getLogger("relaywatch.daemon")

BATCH_LINES = 2000
HOUSEKEEPING_S = 1.0  # also commits the lines read meanwhile, with the heartbeat (one fsync a second)
COMMIT_LINES = 20_000  # a batch commits at once after this many lines (a backlog read at full speed)
IDLE_S = 0.05  # no new line for this long with lines uncommitted: the log is quiet, commit them
READ_WAIT_S = 0.25  # with everything committed, wait this long for a line (signals are checked between)
PRUNE_S = 300.0
PRUNE_LINES = 200_000  # and after this many lines: a backlog must not grow the database
ORIGINS_KEPT_S = 6 * 86400  # longer than Postfix keeps mail (maximal_queue_lifetime = 5d)
GC_YOUNG = 10_000  # container objects allocated (net) before a young collection; Python: 700


def _log(messages: list[Message]) -> None:
    for level, text in messages:
        log.log(level, "%s", text)


def _freeze() -> None:
    """What is built lives as long as the process (or the configuration): the collector stops scanning
    it again and again while a flood's short-lived objects come and go (4.8 % of the loop's CPU).
    What was frozen before and is garbage now (a SIGHUP's old parts) is collected first."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) how we are; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)


@dataclass
class Signals:
    """What the signal handlers ask of the main loop."""

    stop: threading.Event = field(default_factory=threading.Event)
    reload: threading.Event = field(default_factory=threading.Event)

    def install(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload.set())


class Daemon:
    def __init__(self, config_path: str | None, cfg: config_mod.Config, clock: Callable[[], float] = time.time) -> None:
        self.config_path = config_path
        self.clock = clock
        self.signals = Signals()
        self._use(build(cfg, counts_since=self._counts_since, clock=clock))
        saved = self.store.days.current()
        self.daily = DailyRecord(DayStats.from_dict(saved) if saved else DayStats.for_time(clock()), cfg.block_s)
        self.pipeline = self._pipeline(cfg)
        # Until a first position is stored, a restart would start at the end of the log again.
        self._position_stored = self.store.positions.get(self.source.source_name) is not None
        self.started = clock()
        self.failed_lines = 0
        self._idle = False  # the last read found no new line: the log is read up to now
        self._last_line_at: float | None = None
        self._notify_state: JSONObject | None = None
        self._position: tuple[str, JSONObject] | None = None  # the source's position after the last line read
        self._uncommitted = 0  # lines fed since the last commit
        self._store_fault: str | None = None  # why the store cannot be written; the batches wait in memory
        self.follower = follower_for(self.store, self.blocker)  # a fleet host with file maps

    def _use(self, parts: Parts) -> None:
        self.parts = parts
        self.cfg, self.store, self.blocker, self.notifier = parts.cfg, parts.store, parts.blocker, parts.notifier
        self.responder, self.parser, self.inline = parts.responder, parts.parser, parts.inline
        self.source, self.source_choice = parts.source, parts.source_choice
        self.blocker.reload_off_loop = True

    def _pipeline(self, cfg: config_mod.Config) -> Pipeline:
        self.daily.block_s = cfg.block_s
        pipeline = Pipeline(cfg, self.store, self.parts.destinations, persist_messages=True, sinks=(self.daily,),
                            own_addresses=hostaddrs.for_daemon(cfg.config_directory))
        pipeline.restore(self.clock())
        pipeline.fact_observers.append(self.responder.leaks.observe)
        if self.inline is not None:
            pipeline.fact_observers.append(self.inline.observe)
        self.daily.limit = self.clock() + 3600
        return pipeline

    def _follow(self) -> None:
        """Blocks changed on another host: the maps are rewritten from the fleet's rows now."""
        if self.follower is not None and self.follower.take():
            self.blocker.changed_elsewhere()
            self.responder.sync()

    def _counts_since(self, t: float) -> Counts:
        """The relayed counts since `t`, for the notice of a subnet's busiest clients."""
        return self.store.counts_since(self.pipeline.detector.bucket(t))

    def run(self) -> int:
        self.signals.install()
        _log(audit_messages(self.responder.audit()))
        try:
            self.blocker.expire()
        except StoreUnavailable as exc:
            self._store_down(exc)
        self.blocker.pending = self.blocker.pending or bool(self.store.blocks(self.clock()))
        self.responder.sync()
        if self.inline is not None:
            since = self.pipeline.detector.bucket(self.clock() - self.cfg.policy_window_s)
            self.inline.start(self.responder.block_pairs(), ((key, bucket * self.pipeline.detector.bucket_s, n) for dim,
                                                              bucket, key, n in self.store.counts_since(since)
                                                              if dim == "client"))
        _freeze()
        gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])
        sd_notify("READY=1")
        log.info("following %s; %d blocks in force", self.source.source_name, len(self.store.blocks(self.clock())))
        next_housekeeping = next_prune = 0.0
        next_prune_lines = PRUNE_LINES
        while not self.signals.stop.is_set():
            if self.signals.reload.is_set():
                self.signals.reload.clear()
                self._reload()
            try:
                self._follow()
                self._batch()
                now = self.clock()
                if self.inline is not None:
                    self._inline_tick(now)
                if now >= next_housekeeping:
                    self._housekeeping(now)
                    next_housekeeping = now + HOUSEKEEPING_S
                if now >= next_prune or self.pipeline.totals.lines >= next_prune_lines:
                    self.pipeline.prune()
                    self.store.prune_origins(now - ORIGINS_KEPT_S)
                    next_prune, next_prune_lines = now + PRUNE_S, self.pipeline.totals.lines + PRUNE_LINES
            except StoreUnavailable as exc:  # a write outside the batch (a block expiring...): retried later
                self._store_down(exc)
        sd_notify("STOPPING=1")
        self.close()
        log.info("stopped")
        return 0

    def _batch(self) -> None:
        batch = self.source.read(BATCH_LINES, timeout=IDLE_S if self._uncommitted else READ_WAIT_S)
        self._idle = not batch.lines
        if batch.lines:
            self._last_line_at = self.clock()
        if batch.lines or not self._position_stored:
            self._position = (self.source.source_name, batch.position)
        if not batch.lines:
            if self._uncommitted or not self._position_stored or self._store_fault is not None:
                self._commit([])
            return
        self.pipeline.absorb(self.clock())  # a fleet: the other hosts' counts, so that this batch decides on the sum
        decisions: list[Decision] = []
        for line in batch.lines:
            try:
                decisions.extend(self.pipeline.feed(line, self.parser))
            except Exception:  # a bug must not stop the watch: say which line, keep going
                self.failed_lines += 1
                log.exception("relaywatch failed on this line (please report it): %r", line[:300])
        self._uncommitted += len(batch.lines)
        if not decisions and self._uncommitted < COMMIT_LINES:
            return  # coalesced: committed by the next housekeeping, or when the log goes quiet
        recorded = self._commit(decisions)
        for o in recorded:
            _log(o.recording())
        if self.inline is not None:
            self.inline.decided(decisions)
            if any(o.recorded for o in recorded):
                self.inline.set_blocks(self.responder.block_pairs())
        outcomes = self.responder.follow_up(recorded)
        for o in outcomes:
            _log(o.following())
        self.daily.held(sum(o.held.count or 0 for o in outcomes if o.held is not None))
        for alarm in self.responder.check_leaks():
            _log(alarm.messages())

    def _commit(self, decisions: list[Decision], also: Callable[[], None] | None = None) -> list[Outcome]:
        """Record the blocks of `decisions` and commit them with the counts of every line fed since the
        last commit, the day's digest counts and the read position after those lines, in one
        transaction (with `also`, another write of the same moment); what recording each decision did.

        When the store cannot be written (locked, disk full), the blocks wait in the store's memory
        (the maps get them all the same) and the lines in the pipeline's; a later commit writes it all."""
        recorded: list[Outcome] | None = None
        try:
            with self.store.transaction():
                recorded = self.responder.record(self._claimed(decisions))
                self.pipeline.flush(self._position)
                save_days(self.store, self.daily)
                if also is not None:
                    also()
        except StoreUnavailable as exc:
            if recorded is None:
                recorded = self.responder.record(decisions)
            self._store_down(exc)
            return recorded
        self._position_stored = True
        self._uncommitted = 0
        if self._store_fault is not None:
            self._store_up()
        return recorded

    def _claimed(self, decisions: list[Decision]) -> list[Decision]:
        """A fleet: the decisions another host recorded first are adopted, not recorded again (no second
        notice); their block is the winner's, which the maps take at the next sync."""
        won = self.store.claim(decisions)
        kept = {(w.action, w.kind, w.target, w.time, w.rule) for w in won}
        for d in decisions:
            if (d.action, d.kind, d.target, d.time, d.rule) not in kept:
                log.warning("%s %s %s: already decided by another host of the fleet; its block is adopted",
                            d.action.upper(), d.kind, d.target)
                self.blocker.pending = True
        return won

    def _store_down(self, exc: StoreUnavailable) -> None:
        """Say once that the store cannot be written; detection and blocking go on in memory."""
        if self._store_fault is not None:
            return
        self._store_fault = str(exc)
        log.error("%s; relaywatch keeps following the log, detecting and blocking, and writes everything once"
                  " the database can be written again", exc)
        if self.notifier is not None:
            self.notifier.submit(notice_for_text(
                "failure", "relaywatch: cannot write its state database",
                f"{exc}\n\nrelaywatch keeps running: it follows the log, detects and blocks from memory, and"
                " writes everything it has once the database can be written again. A restart before then"
                " reads again what it has not written.", ("failure",)))

    def _store_up(self) -> None:
        log.warning("the state database can be written again: the backlog is written, nothing was lost")
        if self.notifier is not None:
            self.notifier.submit(notice_for_text(
                "info", "relaywatch: state database writable again",
                f"The fault has passed ({self._store_fault}); everything relaywatch read meanwhile is written.",
                ("info",)))
        self._store_fault = None

    def _inline_tick(self, now: float) -> None:
        """Budgets the policy service saw crossed become decisions like the log's: stored, logged, told."""
        assert self.inline is not None
        decisions = self.inline.tick(now, self.responder.block_pairs)
        if decisions:
            with self.store.transaction():
                won = self._claimed(decisions)  # a fleet: what another host decided first is its to tell
                self.store.commit_batch([], won)
            for o in self.responder.act(won):
                _log(o.messages())

    def _reload(self) -> None:
        """SIGHUP: everything built again from the new configuration (source, parser, blocker,
        notifier, responder, pipeline), or the old one kept whole with the reason; never a crash."""
        try:
            cfg = config_mod.load(self.config_path)
        except RelaywatchError as exc:
            log.error("SIGHUP: keeping the old configuration: %s", exc)
            return
        except Exception:  # a bug must not kill the watch: the old configuration goes on
            log.exception("SIGHUP: keeping the old configuration (please report this error)")
            return
        self._commit([])  # the position read so far: the new source resumes there
        if self._store_fault is not None:  # the new pipeline would restore without what waits in memory
            log.error("SIGHUP: keeping the old configuration while the state database cannot be written;"
                      " send SIGHUP again once it can")
            return
        try:
            parts = build(cfg, self.parts, self._counts_since, self.clock)
        except RelaywatchError as exc:
            log.error("SIGHUP: keeping the old configuration: %s", exc)
            return
        except Exception:
            log.exception("SIGHUP: keeping the old configuration (please report this error)")
            return
        old = self.parts
        self._use(parts)
        old.source.close()
        if old.blocker is not self.blocker:
            old.blocker.close()
        if old.notifier is not None:
            old.notifier.close(timeout=5)
        del old
        self.pipeline = self._pipeline(cfg)
        _freeze()  # the old configuration's parts were frozen too: collected now, the new ones frozen
        self._position = None
        self._position_stored = self.store.positions.get(self.source.source_name) is not None
        _log(audit_messages(self.responder.audit()))
        log.info("configuration reloaded from %s", self.config_path)

    def _housekeeping(self, now: float) -> None:
        _log(self.responder.upkeep(now).messages())
        self.daily.limit = now + 3600
        if self._idle:  # a quiet log: the day still ends at midnight
            self.daily.roll(now)
        totals = self.pipeline.totals
        status = DaemonStatus(
            pid=os.getpid(),
            started=self.started,
            heartbeat=now,
            source=self.source.source_name,
            source_note=self.source_choice.note,
            caught_up=self._idle,
            last_line_at=self._last_line_at,
            lines=totals.lines,
            unparsed=totals.unparsed,
            failed_lines=self.failed_lines,
            relayed=totals.relayed,
            last_log_time=totals.last_time,
            notify=self.notifier.status() if self.notifier is not None else None,
            policy=self.inline.stats() if self.inline is not None else None,
        )
        if self._uncommitted or self.daily.finished:  # the lines read meanwhile commit with the heartbeat
            self._commit([], also=lambda: self.store.status.put(status))
            for alarm in self.responder.check_leaks():
                _log(alarm.messages())
        else:
            self.store.status.put(status)
        send_digest(now, self.cfg.notify_digest_at, self.store, self.daily, self.notifier)
        self._save_notify_state()
        sd_notify(f"STATUS={totals.lines} lines, {totals.relayed} relayed, "
                  f"{len(self.store.blocks(now))} blocks\nWATCHDOG=1")

    def _save_notify_state(self) -> None:
        """Cooldowns and the keyed notices sent, so that a restart neither resets nor repeats them."""
        if self.notifier is not None and (state := self.notifier.state()) != self._notify_state:
            self.store.notify_state.put(state)
            self._notify_state = state

    def close(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.inline is not None:
            self.inline.close()
        self._commit([])
        if self._store_fault is not None:
            log.error("stopping while the state database cannot be written: the next start reads again what was"
                      " not written (its position was not saved either), so nothing is lost")
        self.source.close()
        self.blocker.close()
        if self.notifier is not None:
            self.notifier.close(timeout=5)
            self._save_notify_state()
        self.store.status.stopped(self.clock())
        self.store.close()

    def step(self) -> bool:
        """Read and act on one batch of the log, as the main loop does; True when the log is read up to
        now. For tests and tools that drive the daemon without its loop and signals."""
        self._batch()
        return self._idle

    def housekeeping(self, now: float) -> None:
        """What the main loop does every HOUSEKEEPING_S: expire blocks, check the maps, close and send the day."""
        self._housekeeping(now)
