"""`relaywatch run`: the pipeline on a live log, with real actions, as a systemd service.

Each batch of lines is fed through the same `Pipeline` as replay; its counts,
decisions and the source position after its last line are committed in one
transaction, so a SIGKILL at any moment loses or repeats nothing. Blocks go to
the store at once and into Postfix's maps after the batch (one postmap, one
reload), usually well under a second after the line was written.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from relaywatch import config as config_mod
from relaywatch.core.destinations import Destinations, Source
from relaywatch.core.enforcement import Leak, LeakWatch
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.engine import Pipeline
from relaywatch.model import ConfigError, Decision, PostfixError, RelaywatchError
from relaywatch.notify.notices import (
    notice_for_leak,
    notice_for_map_changed,
    notice_for_map_fault,
    notice_for_map_restored,
)
from relaywatch.notify.send import NoticeKind, Notifier, notice_for_decision, notice_for_text, subnet_clients
from relaywatch.policyd import InlineService, service_for
from relaywatch.postfix import hostaddrs
from relaywatch.postfix.audit import AuditMaps, block_bypasses, bypass_text, run_audit
from relaywatch.postfix.blocking import Blocker, SyncResult
from relaywatch.postfix.postconf import local_destinations, postconf, postconf_services
from relaywatch.postfix.queue import PostfixQueue, Target, select
from relaywatch.reports.digest import DayStats, day_of, digest_text, unusual
from relaywatch.reports.report import describe
from relaywatch.sources.choose import Choice, Reason
from relaywatch.sources.choose import choose as choose_source
from relaywatch.sources.follow import FileFollower
from relaywatch.sources.journal import JournalFollower
from relaywatch.store.sqlite import Store, StoreUnavailable

log = logging.getLogger("relaywatch.daemon")

BATCH_LINES = 2000
HOUSEKEEPING_S = 1.0
PRUNE_S = 300.0
PRUNE_LINES = 200_000  # and after this many lines: a backlog must not grow the database
ORIGINS_KEPT_S = 6 * 86400  # longer than Postfix keeps mail (maximal_queue_lifetime = 5d)
# After a block, queued messages the log did not tie to a client are looked up with postcat
# only up to this many (~0.05 s per 1,000); `relaywatch queue hold` looks at them all.
HOLD_POSTCAT_LIMIT = 20_000
DAYS_KEPT = 35  # finished days kept in meta as day:YYYY-MM-DD
HOLD_KINDS = {"client": "client", "subnet": "network", "sasl_user": "sasl_user"}  # block kind -> queue target
POSTFIX_SETTLE_S = 2.5  # Postfix commands wait while main.cf is younger than ~2 s: re-read it after that


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


def notifier_for(cfg: config_mod.Config, state: dict | None = None) -> Notifier | None:
    """`state`: what the last run's notifier remembered (`Notifier.state()`, kept in meta notify_state)."""
    if not cfg.notify_urls and not cfg.notify_config:
        return None
    return Notifier(cfg.notify_urls, cfg.notify_config, coalesce_s=cfg.notify_coalesce_s,
                    cooldown_s=cfg.notify_cooldown_s, timeout_s=cfg.notify_timeout_s, retries=cfg.notify_retries,
                    state=state)


def open_source(cfg: config_mod.Config, store: Store) -> tuple[FileFollower | JournalFollower, Choice]:
    """The follower for [source] path, or for the journal when the default file does not exist."""
    choice = choose_source(cfg.source_path, cfg.source_explicit, os.path.exists(cfg.source_path))
    if choice.note:
        log.warning("%s", choice.note)
    if choice.path != "journal":
        return FileFollower(choice.path, store.position(f"file:{choice.path}")), choice
    try:
        return JournalFollower(store.position("journal"), syslog_names=cfg.syslog_names), choice
    except RelaywatchError as exc:
        if choice.reason is not Reason.FALLBACK:
            raise
        raise ConfigError(f"[source] path: {cfg.source_path} does not exist and the journal cannot be read "
                          f"either, nothing to watch ({exc})") from exc


class Daemon:
    def __init__(self, config_path: str | None, cfg: config_mod.Config, blocker_factory: Callable[
            [config_mod.Config, Store], Blocker], clock: Callable[[], float] = time.time) -> None:
        self.config_path = config_path
        self.cfg = cfg
        self.clock = clock
        self.signals = Signals()
        self.store = Store(cfg.database, degrade=True)
        try:
            self.store.lock_for_daemon()
        except RelaywatchError:
            self.store.close()
            raise
        self.blocker_factory = blocker_factory
        self.blocker = blocker_factory(cfg, self.store)
        self.notifier = notifier_for(cfg, self.store.meta("notify_state"))
        saved = self.store.meta("day_current")
        self.pipeline = self._pipeline(cfg, DayStats.from_dict(saved) if saved else DayStats.for_time(clock()))
        self.source, self.source_choice = open_source(cfg, self.store)
        # Until a first position is stored, a restart would start at the end of the log again.
        self._position_stored = self.store.position(self.source.source_name) is not None
        self.parser = LineParser(YearResolver(), cfg.syslog_names)
        self.postfix_params: tuple[dict[str, str], dict[str, dict[str, str]]] | None = None
        self._postfix_stamp = self._postfix_files()
        self.started = clock()
        self.failed_lines = 0
        self._idle = False  # the last read found no new line: the log is read up to now
        self._last_line_at: float | None = None
        self._notify_state: dict | None = None
        self.inline: InlineService | None = None
        if cfg.policy_listen:
            self.inline = service_for(cfg.policy_listen, cfg.database, self.pipeline.correlator.destinations,
                                      cfg.policy_budget, cfg.policy_window_s, cfg.allow_networks, cfg.policy_known,
                                      cfg.policy_max_connections)
            self.pipeline.fact_observers.append(self.inline.observe)
        self._position: tuple[str, dict] | None = None  # the source's position after the last line read
        self._store_fault: str | None = None  # why the store cannot be written; the batches wait in memory

    def _pipeline(self, cfg: config_mod.Config, day: DayStats | None) -> Pipeline:
        pipeline = Pipeline(cfg, self.store, self._local_domains(cfg), persist_messages=True, day=day,
                            own_addresses=hostaddrs.for_daemon(cfg.config_directory))
        pipeline.restore(self.clock())
        self.leaks = LeakWatch()
        self.leaks.watch(self.blocker.in_force_since)
        pipeline.fact_observers.append(self.leaks.observe)
        pipeline.day_limit = self.clock() + 3600
        return pipeline

    def _local_domains(self, cfg: config_mod.Config) -> Destinations:
        """[postfix] local_domains, else what Postfix accepts mail for (its tables asked per domain)."""
        destinations, source, detail = local_destinations((), cfg.local_domains, cfg.config_directory)
        if source is Source.LOG:
            log.warning("cannot ask Postfix for the local domains (%s): they are inferred from the log; "
                        "set [postfix] local_domains", detail)
        return destinations

    def run(self) -> int:
        self.signals.install()
        self._audit()
        try:
            self.blocker.expire()
        except StoreUnavailable as exc:
            self._store_down(exc)
        self.blocker.pending = self.blocker.pending or bool(self.store.blocks(self.clock()))
        self._synced(self.blocker.sync())
        if self.inline is not None:
            since = self.pipeline.detector.bucket(self.clock() - self.cfg.policy_window_s)
            self.inline.start(self._block_pairs(), ((key, bucket * self.pipeline.detector.bucket_s, n) for dim, bucket,
                                                    key, n in self.store.counts_since(since) if dim == "client"))
        sd_notify("READY=1")
        log.info("following %s; %d blocks in force", self.source.source_name, len(self.store.blocks(self.clock())))
        next_housekeeping = next_prune = 0.0
        next_prune_lines = PRUNE_LINES
        while not self.signals.stop.is_set():
            if self.signals.reload.is_set():
                self.signals.reload.clear()
                self._reload()
            try:
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
        batch = self.source.read(BATCH_LINES, timeout=0.25)
        self._idle = not batch.lines
        if batch.lines:
            self._last_line_at = self.clock()
        if batch.lines or not self._position_stored:
            self._position = (self.source.source_name, batch.position)
        if not batch.lines:
            if not self._position_stored or self._store_fault is not None:
                self._commit([])
            return
        decisions: list[Decision] = []
        for line in batch.lines:
            try:
                decisions.extend(self.pipeline.feed(line, self.parser))
            except Exception:  # a bug must not stop the watch: say which line, keep going
                self.failed_lines += 1
                log.exception("relaywatch failed on this line (please report it): %r", line[:300])
        failed: dict[tuple[str, str], str] = {}
        blocked = self._commit(decisions, failed)
        if self.inline is not None:
            self.inline.decided(decisions)
            if blocked:
                self.inline.set_blocks(self._block_pairs())
        synced = self._synced(self.blocker.sync()) if blocked else None
        # held even when the map is pending: holding is what stops the mail already queued
        held = {(d.kind, d.target): self._hold(d) for d in blocked}
        if self.pipeline.day is not None:
            self.pipeline.day.held += sum(n for n in held.values() if n)
        for d in decisions:
            key = (d.kind, d.target)
            self._tell(d, held.get(key), failed.get(key) or (synced.error if synced is not None else None))
        self._check_leaks()

    def _commit(self, decisions: list[Decision], failed: dict[tuple[str, str], str] | None = None) -> list[Decision]:
        """Act on the batch's decisions and commit them with their blocks, counts, the day's digest
        counts and the read position, in one transaction; the decisions that blocked.

        When the store cannot be written (locked, disk full), the blocks wait in the store's memory
        (the maps get them all the same) and the batch in the pipeline's; a later commit writes it all."""
        blocked: list[Decision] | None = None
        try:
            with self.store.transaction():
                blocked = [d for d in decisions if self._act(d, failed if failed is not None else {})]
                self.pipeline.flush(self._position)
                self._save_days()
        except StoreUnavailable as exc:
            if blocked is None:
                blocked = [d for d in decisions if self._act(d, failed if failed is not None else {})]
            self._store_down(exc)
            return blocked
        self._position_stored = True
        if self._store_fault is not None:
            self._store_up()
        return blocked

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

    def _act(self, d: Decision, failed: dict[tuple[str, str], str]) -> bool:
        """Record a block decision; True when it changes what Postfix must refuse (else why not in `failed`)."""
        if d.action != "block":
            log.warning("ALERT %s %s: %s", d.kind, d.target, describe(d))
            return False
        try:
            self.blocker.block(d.kind, d.target, describe(d), rule=d.rule)
        except RelaywatchError as exc:
            log.error("cannot block %s %s: %s", d.kind, d.target, exc)
            failed[(d.kind, d.target)] = f"relaywatch could not record the block: {exc}"
            return False
        log.warning("BLOCK %s %s: %s", d.kind, d.target, describe(d))
        return True

    def _block_pairs(self) -> list[tuple[str, str]]:
        return [(b.kind, b.target) for b in self.store.blocks(self.clock())]

    def _inline_tick(self, now: float) -> None:
        """Budgets the policy service saw crossed become decisions like the log's: stored, logged, told."""
        assert self.inline is not None
        decisions = self.inline.tick(now, self._block_pairs)
        if decisions:
            self.store.commit_batch([], decisions)
            for d in decisions:
                self._act(d, {})
                self._tell(d)

    def _synced(self, result: SyncResult) -> SyncResult:
        """Tell the admin when a map fault begins (once) and when the blocks it held back are in force."""
        self.leaks.watch(self.blocker.in_force_since)
        if self.notifier is None:
            return result
        if result.fault_began and result.error:
            waiting = [b.target for b in self.store.blocks(self.clock())]
            self.notifier.submit(notice_for_map_fault(result.error, waiting))
        if result.recovered:
            self.notifier.submit(notice_for_map_restored([b.target for b in result.recovered]))
        return result

    def _check_leaks(self) -> None:
        """Blocked targets whose mail is still queued (from the log): an alarm, a status entry, a decision."""
        leaks = self.leaks.take()
        if not leaks:
            return
        alarms = self.store.meta("enforcement_alarms")
        alarms = alarms if isinstance(alarms, dict) else {}
        for leak in leaks:
            alarms[f"{leak.kind} {leak.target}"] = {
                "kind": leak.kind, "target": leak.target, "since": leak.since, "first": leak.first,
                "last": leak.last, "messages": leak.count, "sample_qids": list(leak.sample_qids)}
            if leak.new:
                self._leak_alarm(leak)
        self.store.set_meta("enforcement_alarms", alarms)

    def _leak_alarm(self, leak: Leak) -> None:
        reason = bypass_text(self._bypasses(leak.kind, leak.target))
        log.error("the block of %s %s is NOT enforced: %d messages queued after it took effect%s", leak.kind,
                  leak.target, leak.count, f": {reason}" if reason else "")
        self.store.commit_batch([], [Decision(leak.last, "alert", leak.kind, leak.target, "block_not_enforced",
                                              leak.count, int(leak.last - leak.since), sample_qids=leak.sample_qids)])
        if self.notifier is not None:
            self.notifier.submit(notice_for_leak(leak.kind, leak.target, leak.since, leak.first, leak.last,
                                                 leak.count, leak.sample_qids, reason))

    def _hold(self, d: Decision) -> int | None:
        """Put what a blocked target already queued on hold; None when off or impossible."""
        if not self.cfg.queue_hold or d.kind not in HOLD_KINDS:
            return None
        who = Target(HOLD_KINDS[d.kind], d.target)
        queue = PostfixQueue(self.cfg.config_directory)
        try:
            found = select(queue, who, self.store.queue_ids(**{who.kind: who.value}),
                           queues=("incoming", "active", "deferred"), postcat_limit=HOLD_POSTCAT_LIMIT)
            held = queue.hold(m.qid for m in found.messages)
        except PostfixError as exc:
            log.error("cannot hold the queued mail of %s: %s; then run: relaywatch queue hold %s", who, exc, who.option)
            return None
        if found.unchecked:
            log.warning("%d queued messages the log did not tie to %s were not looked at (more than %d, or "
                        "mail was leaving the queue); relaywatch queue hold %s looks at them all",
                        found.unchecked, who, HOLD_POSTCAT_LIMIT, who.option)
        log.warning("HOLD %d messages of %s", held, who)
        return held

    def _tell(self, d: Decision, held: int | None = None, not_in_force: str | None = None) -> None:
        bypasses = self._bypasses(d.kind, d.target) if d.action == "block" else []
        effective = bypass_text(bypasses)
        if effective:
            log.error("the block of %s %s is not enforced everywhere: %s", d.kind, d.target, effective)
        if self.notifier is not None:
            undo = f"relaywatch unblock {d.target}" if d.action == "block" else None
            if undo and held:
                undo += "; held mail: " + Target(HOLD_KINDS[d.kind], d.target).hint()
            clients = subnet_clients(d, self.store.counts_since(self.pipeline.detector.bucket(d.time - d.window_s)))
            self.notifier.submit(notice_for_decision(d, effective=effective, held=held, undo=undo, clients=clients,
                                                     bypassed_on=[name for name, _ in bypasses],
                                                     not_in_force=not_in_force if d.action == "block" else None))

    def _bypasses(self, kind: str, target: str) -> list[tuple[str, str]]:
        """Where Postfix's configuration in force now would not enforce a block of `target`
        (main.cf, master.cf services); re-read when main.cf or master.cf changed."""
        if self._postfix_files() != self._postfix_stamp:
            self._audit()
        if self.postfix_params is None:
            return []
        params, services = self.postfix_params
        try:
            return block_bypasses(params, services, kind, target, self._audit_maps())
        except ValueError:
            return []

    def _audit_maps(self) -> AuditMaps:
        return AuditMaps(self.cfg.client_access_map, self.cfg.sasl_access_map or None, self.cfg.policy_listen or None)

    def _postfix_files(self) -> tuple[tuple[int, int, int] | None, ...]:
        """(inode, size, mtime) of main.cf and master.cf: the configuration in force changed when these did."""
        out = []
        for name in ("main.cf", "master.cf"):
            try:
                st = os.stat(os.path.join(self.cfg.config_directory or "/etc/postfix", name))
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def _audit(self) -> None:
        """Read Postfix's configuration and say loudly where blocks would be bypassed."""
        self._postfix_stamp = self._postfix_files()
        try:
            self.postfix_params = (postconf(self.cfg.config_directory), postconf_services(self.cfg.config_directory))
            findings = run_audit(self.cfg.config_directory, self._audit_maps())
        except PostfixError as exc:
            log.warning("cannot audit the Postfix configuration: %s", exc)
            return
        errors = [f for f in findings if f.severity == "error"]
        for f in errors:
            log.error("audit: %s: %s Fix: %s", f.code, f.title, f.fix.replace("\n", "; "))
        if self.notifier is None:
            return
        if not errors:
            self.notifier.forget("audit")
            return
        body = "\n\n".join(f"{f.title}\n{f.fix}" for f in errors)
        self.notifier.submit(notice_for_text("failure", f"{len(errors)} hole(s) in Postfix: relaywatch audit",
                                             body, kind=NoticeKind.AUDIT, key="audit"))

    def _reload(self) -> None:
        """SIGHUP: the new configuration, or the old one kept with the reason; never a crash."""
        try:
            cfg = config_mod.load(self.config_path)
            blocker = self.blocker_factory(cfg, self.store)
        except RelaywatchError as exc:
            log.error("SIGHUP: keeping the old configuration: %s", exc)
            return
        except Exception:  # a bug must not kill the watch: the old configuration goes on
            log.exception("SIGHUP: keeping the old configuration (please report this error)")
            return
        self._commit([])
        if self._store_fault is not None:  # the new pipeline would restore without what waits in memory
            log.error("SIGHUP: keeping the old configuration while the state database cannot be written;"
                      " send SIGHUP again once it can")
            return
        self.cfg = cfg
        in_force_since = self.blocker.in_force_since
        self.blocker = blocker
        self.blocker.in_force_since = in_force_since  # the log check goes on across a reload
        self.pipeline = self._pipeline(cfg, self.pipeline.day)
        if self.inline is not None:  # [policy] itself changes at the next restart
            self.inline.policy.local_domains = self.pipeline.correlator.destinations
            self.pipeline.fact_observers.append(self.inline.observe)
        self._audit()
        log.info("configuration reloaded from %s", self.config_path)

    def _housekeeping(self, now: float) -> None:
        for b in self.blocker.expire():
            log.info("block of %s %s expired", b.kind, b.target)
        changed = self.blocker.check_maps()
        if changed and self.blocker.first_tamper and self.notifier is not None:
            self.notifier.submit(notice_for_map_changed(changed))
        if self.blocker.due():
            self._synced(self.blocker.sync())
        stamp = self._postfix_files()
        if stamp != self._postfix_stamp and all(s is None or now - s[2] / 1e9 >= POSTFIX_SETTLE_S for s in stamp):
            log.info("Postfix's main.cf or master.cf changed: reading the configuration in force again")
            self._audit()
        self.pipeline.day_limit = now + 3600
        if self._idle:  # a quiet log: the day still ends at midnight
            self.pipeline.roll_day(now)
        if self.pipeline.finished_days:
            self._save_days()
        self._send_digest(now)
        totals = self.pipeline.totals
        status = {
            "pid": os.getpid(),
            "started": self.started,
            "heartbeat": now,
            "source": self.source.source_name,
            "source_note": self.source_choice.note,
            "caught_up": self._idle,
            "last_line_at": self._last_line_at,
            "lines": totals.lines,
            "unparsed": totals.unparsed,
            "failed_lines": self.failed_lines,
            "relayed": totals.relayed,
            "last_log_time": totals.last_time,
            "notify": self.notifier.status() if self.notifier is not None else None,
            "policy": self.inline.stats() if self.inline is not None else None,
        }
        self.store.set_meta("daemon", status)
        self._save_notify_state()
        sd_notify(f"STATUS={totals.lines} lines, {totals.relayed} relayed, "
                  f"{len(self.store.blocks(now))} blocks\nWATCHDOG=1")

    def _save_days(self) -> None:
        """Keep finished days as day:YYYY-MM-DD (the last DAYS_KEPT) and the current one as day_current."""
        pipeline = self.pipeline
        for day in pipeline.finished_days:
            self.store.set_meta(f"day:{day.day}", day.to_dict())
        if pipeline.finished_days:
            oldest = day_of(datetime.fromisoformat(pipeline.finished_days[-1].day).timestamp() - DAYS_KEPT * 86400)
            self.store.prune_meta("day:", oldest)
            pipeline.finished_days.clear()
        if pipeline.day is not None:
            self.store.set_meta("day_current", pipeline.day.to_dict())

    def _send_digest(self, now: float) -> None:
        """At [notify] digest_at (local time), send yesterday's digest once."""
        if not self.cfg.notify_digest_at or self.notifier is None:
            return
        local = datetime.fromtimestamp(now)
        if local.strftime("%H:%M") < self.cfg.notify_digest_at:
            return
        day = (local.date() - timedelta(days=1)).isoformat()
        if (self.store.meta("digest_sent") or "") >= day:
            return
        if self.pipeline.day is None or self.pipeline.day.day <= day:
            return  # still reading yesterday's log (a backlog): wait until it is finished
        self.store.set_meta("digest_sent", day)  # before submitting: a crash loses it rather than repeat it
        saved = self.store.meta(f"day:{day}")
        if saved is None:
            log.info("no digest for %s: relaywatch did not watch the log that day", day)
            return
        stats = DayStats.from_dict(saved)
        title, body = digest_text(stats, self.store.decisions(stats.start, stats.end))
        severity = "warning" if unusual(stats) else "info"
        self.notifier.submit(notice_for_text(severity, title, body, ("digest", severity)))
        log.info("daily digest of %s submitted", day)

    def _save_notify_state(self) -> None:
        """Cooldowns and the keyed notices sent, so that a restart neither resets nor repeats them."""
        if self.notifier is not None and (state := self.notifier.state()) != self._notify_state:
            self.store.set_meta("notify_state", state)
            self._notify_state = state

    def close(self) -> None:
        if self.inline is not None:
            self.inline.close()
        self._commit([])
        if self._store_fault is not None:
            log.error("stopping while the state database cannot be written: the next start reads again what was"
                      " not written (its position was not saved either), so nothing is lost")
        self.source.close()
        if self.notifier is not None:
            self.notifier.close(timeout=5)
            self._save_notify_state()
        self.store.set_meta("daemon", {**(self.store.meta("daemon") or {}), "pid": None, "stopped": self.clock()})
        self.store.close()

    def step(self) -> bool:
        """Read and act on one batch of the log, as the main loop does; True when the log is read up to
        now. For tests and tools that drive the daemon without its loop and signals."""
        self._batch()
        return self._idle

    def housekeeping(self, now: float) -> None:
        """What the main loop does every HOUSEKEEPING_S: expire blocks, check the maps, close and send the day."""
        self._housekeeping(now)
