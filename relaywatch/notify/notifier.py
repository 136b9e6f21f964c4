"""Tell the admin: Apprise notifications with digests, cooldowns and deadlines.

Detection must never wait for a chat server: `Notifier.submit` only puts a
`Notice` on a bounded queue. One worker thread collects notices per target,
sends what arrived within `coalesce_s` as one message (fifty blocks are one
push, not fifty), pushes a target at most once per `cooldown_s` *per kind of
notice* (a block never waits behind the cooldown of an audit notice), bounds each
send with a deadline and retries a bounded number of times with backoff.
A notice with a `key` (the audit's findings) is sent once while it is unchanged;
`Notifier.state()` / `Notifier(state=...)` carry that memory and the cooldowns
across restarts (the daemon keeps them in the store).
apprise costs ~0.25 s to import, so it is imported only once targets exist.

Routing uses apprise tags: a target without tags gets everything; a tagged
target gets the notices sharing one of its tags (or all, if tagged `always`).
A decision's tags are its action, kind and severity, e.g. ("block", "subnet",
"warning"): `tag: block, failure` sends blocks and failures to the phone.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from relaywatch.notify.notices import Notice, NoticeKind, merge
from relaywatch.notify.send import Target, deliver, load_targets
from relaywatch.wording import iso

log = logging.getLogger("relaywatch.notify")

_KEEP_PENDING = 500  # per target; more are dropped and counted, so a flood cannot grow memory


class Notifier:
    """Delivers notices in the background; see the module docstring.

    With no targets it does nothing and never imports apprise.
    `clock` (monotonic seconds) drives coalescing, cooldowns and backoff.
    """

    def __init__(self, urls: tuple[str, ...] = (), config_file: str | None = None, *, coalesce_s: float = 30,
                 cooldown_s: float = 300, timeout_s: float = 10, retries: int = 3, backoff_s: float = 5,
                 queue_size: int = 1000, clock: Callable[[], float] = time.monotonic,
                 state: Mapping[str, Any] | None = None) -> None:
        self.coalesce_s, self.cooldown_s, self.timeout_s = coalesce_s, cooldown_s, timeout_s
        self.retries, self.backoff_s = retries, backoff_s
        self._clock = clock
        self._targets = load_targets(urls, config_file) if urls or config_file else []
        self._queue: queue.Queue[tuple[float, Notice] | None] = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._sent = self._failed = self._dropped = 0
        self._last_error: str | None = None
        self._last_success: float | None = None
        self._sent_keys: dict[str, str] = {}  # notice key -> fingerprint of what was last delivered
        self._restore(state or {})
        self._closing = threading.Event()
        self._close_by = float("inf")
        # Targets are sent to in parallel, so one that hangs delays no other.
        self._pool = ThreadPoolExecutor(max(1, min(8, len(self._targets))), "relaywatch-notify-send")
        self._worker = threading.Thread(target=self._run, name="relaywatch-notify", daemon=True)
        if self._targets:
            self._worker.start()

    def __enter__(self) -> Notifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, notice: Notice) -> None:
        """Queue `notice`; never blocks, never raises. A full queue drops it, counted and logged.
        A keyed notice identical to the one last delivered under its key is not sent again."""
        if not self._targets:
            return
        if notice.key:
            with self._lock:
                unchanged = self._sent_keys.get(notice.key) == notice.fingerprint
            if unchanged:
                log.info("notification %r not sent again: unchanged since it was sent", notice.title)
                return
        try:
            if self._closing.is_set():
                raise queue.Full
            self._queue.put_nowait((self._clock(), notice))  # coalescing counts from submission
        except queue.Full:
            self._drop(notice, "the queue is full or closed")

    def _drop(self, notice: Notice, why: str) -> None:
        with self._lock:
            self._dropped += 1
            dropped = self._dropped
        if dropped == 1 or dropped % 100 == 0:
            log.warning("notification %r dropped, %s (%d dropped so far)", notice.title, why, dropped)

    def forget(self, key: str) -> None:
        """The condition named `key` is over: the next notice under it is sent even if it repeats an old one."""
        with self._lock:
            self._sent_keys.pop(key, None)

    def state(self) -> dict[str, Any]:
        """What must outlive a restart, JSON-able: fingerprints of keyed notices sent, and each
        target's last push per kind (wall time) so that a restart does not reset the cooldowns."""
        wall = time.time() - self._clock()
        with self._lock:
            sent = dict(self._sent_keys)
            cooldowns = {t.name: {k.value: wall + at for k, at in t.last_sent.items()} for t in self._targets}
        return {"sent": sent, "cooldowns": {n: c for n, c in cooldowns.items() if c}}

    def _restore(self, state: Mapping[str, Any]) -> None:
        """The inverse of `state()`; anything malformed is ignored (it only costs a repeated notice)."""
        sent, cooldowns = state.get("sent"), state.get("cooldowns")
        if isinstance(sent, dict):
            self._sent_keys = {str(k): str(v) for k, v in sent.items()}
        if not isinstance(cooldowns, dict):
            return
        offset = self._clock() - time.time()
        kinds = set(NoticeKind.__members__.values())
        for t in self._targets:
            saved = cooldowns.get(t.name)
            if isinstance(saved, dict):
                t.last_sent = {NoticeKind(k): float(at) + offset for k, at in saved.items()
                               if k in kinds and isinstance(at, int | float)}

    def status(self) -> dict[str, Any]:
        """Counters for `relaywatch status`; URLs are redacted."""
        with self._lock:
            return {
                "targets": [{"url": t.name, "tags": list(t.tag_names)} for t in self._targets],
                "sent": self._sent, "failed": self._failed, "dropped": self._dropped,
                "pending": self._queue.qsize() + sum(len(t.pending) for t in self._targets),
                "last_error": self._last_error,
                "last_success": iso(self._last_success) if self._last_success is not None else None,
            }

    def close(self, timeout: float = 10) -> None:
        """Send what is pending now (one attempt per target, within `timeout`) and stop."""
        if not self._targets or self._closing.is_set():
            return
        self._close_by = time.monotonic() + timeout
        self._closing.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(None)  # wake the worker
        self._worker.join(timeout + 1)
        if self._worker.is_alive():
            log.warning("notifications still being sent after %.0f s; %d may be lost",
                        timeout, self.status()["pending"])
        else:
            self._pool.shutdown()

    # The worker thread: everything below touches targets from it only.

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                self._take(self._wait())
                now = self._clock()
                due = [(t, kinds) for t in self._targets
                       if (kinds := t.due_kinds(now, self.coalesce_s, self.cooldown_s))]
                self._send(due, self.timeout_s, final=False)
            except Exception:
                log.exception("notification worker error; continuing")
        try:
            self._take(0)
            timeout = max(0.1, min(self.timeout_s, self._close_by - time.monotonic()))
            self._send([(t, set(t.first_at)) for t in self._targets if t.pending], timeout, final=True)
        except Exception:
            log.exception("notification worker error while closing")

    def _wait(self) -> float | None:
        dues = [at for t in self._targets if (at := t.due_at(self.coalesce_s, self.cooldown_s)) is not None]
        return max(0.0, min(dues) - self._clock()) if dues else None

    def _take(self, timeout: float | None) -> None:
        """Wait up to `timeout` for a notice, then route everything queued."""
        with contextlib.suppress(queue.Empty):
            item = self._queue.get(timeout=timeout)
            while True:
                if item is not None:
                    self._route(*item)
                item = self._queue.get_nowait()

    def _route(self, submitted: float, notice: Notice) -> None:
        for t in self._targets:
            if t.wants(notice):
                t.first_at.setdefault(notice.kind, submitted)
                if len(t.pending) < _KEEP_PENDING:
                    t.pending.append(notice)
                else:
                    self._drop(notice, f"{t.name} has {_KEEP_PENDING} waiting")

    def _send(self, due: list[tuple[Target, set[NoticeKind]]], timeout_s: float, *, final: bool) -> None:
        """One push per target of the pending notices of its due kinds."""
        started = self._clock()  # cooldown and backoff count from the start of the push
        batches = [(t, kinds, [n for n in t.pending if n.kind in kinds]) for t, kinds in due]
        reasons = self._pool.map(lambda b: deliver(b[0], merge(b[2]), timeout_s), batches)
        for (t, kinds, batch), reason in zip(batches, reasons, strict=True):
            self._settle(t, kinds, batch, reason, started, final)

    def _settle(self, t: Target, kinds: set[NoticeKind], batch: list[Notice], reason: str | None, now: float,
                final: bool) -> None:
        attempts = t.failures + 1
        if reason is not None and attempts <= self.retries and not final:
            t.failures, delay = attempts, self.backoff_s * 2 ** (attempts - 1)
            t.retry_at = now + delay  # what arrives meanwhile joins the retry
            with self._lock:
                self._last_error = f"{iso(time.time())} {t.name}: {reason}"
            log.warning("notifying %s failed (attempt %d of %d), retrying in %.1f s: %s",
                        t.name, attempts, self.retries + 1, delay, reason)
            return
        count = len(batch)
        sent = {id(n) for n in batch}
        t.pending = [n for n in t.pending if id(n) not in sent]
        t.failures, t.retry_at = 0, float("-inf")
        left = {n.kind for n in t.pending}
        for kind in kinds:
            if kind in left:
                t.first_at[kind] = now  # what arrived meanwhile starts its own window
            else:
                t.first_at.pop(kind, None)
        if reason is None:
            for kind in kinds:
                t.last_sent[kind] = now
            with self._lock:
                self._sent, self._last_success = self._sent + 1, time.time()
                self._sent_keys.update((n.key, n.fingerprint) for n in batch if n.key)
            log.info("notified %s (%d events)", t.name, count)
            return
        with self._lock:
            self._failed, self._last_error = self._failed + 1, f"{iso(time.time())} {t.name}: {reason}"
        log.error("notifying %s failed after %d attempts, %d events not delivered: %s",
                  t.name, attempts, count, reason)
