"""Tell the admin: Apprise notifications with digests, cooldowns and deadlines.

Detection must never wait for a chat server: `Notifier.submit` only puts a
`Notice` on a bounded queue. One worker thread collects notices per target,
sends what arrived within `coalesce_s` as one message (fifty blocks are one
push, not fifty), pushes a target at most once per `cooldown_s`, bounds each
send with a deadline and retries a bounded number of times with backoff.
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
import re
import shlex
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from .model import ConfigError, Decision
from .permissions import check_config_file
from .report import iso

log = logging.getLogger("relaywatch.notify")

SEVERITIES = ("info", "warning", "failure")  # the values of apprise's NotifyType we use
PREFIX = "relaywatch: "
_LABELS = {"client": "client", "subnet": "subnet", "sasl_user": "SASL user", "sender": "sender",
           "destination": "destination domain"}
_DIGEST_LINES = 40
_DIGEST_DETAIL_CHARS = 3500
_KEEP_PENDING = 500  # per target; more are dropped and counted, so a flood cannot grow memory


# --- messages ----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Notice:
    """One message for the admin. `severity` is an apprise NotifyType value."""

    severity: str
    title: str
    body: str
    tags: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity {self.severity!r} is not one of {', '.join(SEVERITIES)}")


def notice_for_text(severity: str, title: str, body: str, tags: Iterable[str] = ()) -> Notice:
    """Any other event: an audit warning, a daemon error, a daily digest."""
    return Notice(severity, title if title.startswith(PREFIX) else PREFIX + title, body.strip(), tuple(tags))


def notice_for_decision(
    decision: Decision, *, effective: str | None = None, held: int | None = None, undo: str | None = None
) -> Notice:
    """What was decided and why, whether it works, and how to undo it.

    `effective` is the warning to show when the block does nothing (the
    mynetworks trap); None means it is in effect. `held`: queued messages held.
    """
    d = decision
    label = f"{_LABELS.get(d.kind, d.kind)} {d.target}"
    short = d.target if d.kind in ("client", "subnet") else label
    what = f"{d.count} relay attempts refused" if d.rule == "relay_probe" else f"{d.count} relayed recipients"
    why = what + (f" from {d.clients} clients" if d.clients else "") + f" in {_span(d.window_s)} (rule {d.rule})"
    if d.action == "block":
        severity = "warning" if effective is None else "failure"
        title = f"{PREFIX}blocked {short}" + ("" if effective is None else " - NOT effective")
        lines = [f"Blocked {label} at {iso(d.time)}: {why}.",
                 "In effect for new SMTP sessions; sessions already open may keep sending."
                 if effective is None else f"NOT EFFECTIVE: {effective}"]
        undo = undo or f"relaywatch unblock {shlex.quote(d.target)}"
    else:
        severity = "info" if d.rule == "relay_probe" else "warning"
        title = f"{PREFIX}alert {short}"
        lines = [f"Alert for {label} at {iso(d.time)}: {why}."]
    if held is not None:
        lines.append(f"Queued messages held: {held}.")
    if undo:
        lines.append(f"Undo: {undo}")
    if d.evidence:
        lines += ["Evidence:", *(f"  | {line[:200]}" for line in d.evidence[-3:])]
    if d.sample_qids:
        lines.append("Queue IDs: " + ", ".join(d.sample_qids[:5]))
    return Notice(severity, title, "\n".join(lines), (d.action, d.kind, severity))


def _span(s: int) -> str:
    return f"{s // 3600} h" if s >= 3600 and s % 3600 == 0 else f"{s // 60} min" if s >= 60 else f"{s} s"


def _digest(notices: Sequence[Notice]) -> Notice:
    """Many notices as one message: one line each, then details while they fit a push."""
    if len(notices) == 1:
        return notices[0]
    total = len(notices)
    notices = sorted(notices, key=lambda n: -SEVERITIES.index(n.severity))  # worst first, else in order
    kinds = Counter(n.tags[0] if n.tags else "other" for n in notices)
    title = f"{PREFIX}{total} events (" + ", ".join(f"{c} {k}" for k, c in kinds.most_common()) + ")"
    lines = [f"- {n.title.removeprefix(PREFIX)}" for n in notices[:_DIGEST_LINES]]
    if total > _DIGEST_LINES:
        lines.append(f"- ... and {total - _DIGEST_LINES} more")
    sizes = accumulate(len(n.body) for n in notices)
    details = [n.body for n, size in zip(notices, sizes, strict=True) if size <= _DIGEST_DETAIL_CHARS]
    details = details or [notices[0].body]
    body = "\n".join(lines) + "\n\n" + "\n\n".join(details)
    if len(details) < total:
        body += f"\n\n({total - len(details)} more not detailed here.)"
    return Notice(notices[0].severity, title, body, tuple(dict.fromkeys(t for n in notices for t in n.tags)))


# --- secrets -----------------------------------------------------------------
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|sig|cred|session|cookie|bearer", re.I)
_QUERY_VALUE = re.compile(r"([?&]([^=&#\s]+)=)([^&#\s]*)")
_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^/\s@]+@")


def _secret_key(key: str) -> bool:
    """Custom headers/params of json://, form:// etc. (+ - :) often carry tokens."""
    key = unquote(key)
    return key.startswith(("+", "-", ":")) or bool(_SECRET_KEY.search(key))


class _Scrubber(logging.Filter):
    """Masks URL secrets in text: known ones by value, query args and passwords by shape.

    Also filters apprise's and urllib3's loggers: their DEBUG lines show custom
    headers (`+Authorization=...`) and GET parameters (`-apikey=...`) in clear.
    """

    known: frozenset[str] = frozenset()  # replaced, never mutated: other threads read it

    def scrub(self, text: str) -> str:
        for secret in sorted(self.known, key=len, reverse=True):
            text = text.replace(secret, "****")
        text = _QUERY_VALUE.sub(lambda m: m[1] + ("****" if _secret_key(m[2]) else m[3]), text)
        return _PASSWORD.sub(r"\1****@", text)

    def filter(self, record: logging.LogRecord) -> bool:
        if (clean := self.scrub(message := record.getMessage())) != message:
            record.msg, record.args = clean, None
        return True


_SCRUB = _Scrubber()


def _secrets(url: str, shown: str) -> set[str]:
    """The parts of `url` that redaction hid (password, path tokens...), to mask them anywhere."""
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    words = [password, *(v for k, v in parse_qsl(parts.query) if _secret_key(k))]
    words += [w for w in (user, *hostport.split(":"), *parts.path.split("/")) if w not in shown]
    return {x for w in words if len(w) >= 3 for x in (w, unquote(w))}


def _shown(service: Any, written: str = "") -> str:
    """apprise's plugin-aware privacy view, plus the query the admin wrote, masked."""
    base: str = service.url(privacy=True).partition("?")[0]
    query = urlsplit(written).query
    return base + ("?" + _SCRUB.scrub("?" + query)[1:] if query else "")


def redact(url: str) -> str:
    """`url` safe for logs and status; an URL apprise cannot parse shows only its schema."""
    import apprise

    service = apprise.Apprise.instantiate(url)
    return _shown(service, url) if service else f"{urlsplit(url).scheme or '?'}://..."


# --- targets -----------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TargetResult:
    """One target's answer to `send_test`; `url` is redacted, `error` says why it failed."""

    url: str
    tags: tuple[str, ...]
    ok: bool
    error: str | None = None


@dataclass(eq=False)
class _Target:
    """One apprise service and its digest state (touched by the worker only)."""

    name: str
    tags: set[Any]  # the service's apprise tags
    apprise: Any  # an apprise.Apprise holding just this service
    pending: list[Notice] = field(default_factory=list)
    first_at: float = 0.0
    last_sent: float = float("-inf")
    retry_at: float = float("-inf")
    failures: int = 0

    @property
    def tag_names(self) -> tuple[str, ...]:
        return tuple(sorted(map(str, self.tags)))

    def wants(self, notice: Notice) -> bool:
        from apprise.utils.logic import is_exclusive_match

        return not self.tags or not notice.tags or is_exclusive_match(list(notice.tags), self.tags)

    def due_at(self, coalesce_s: float, cooldown_s: float) -> float | None:
        if not self.pending:
            return None
        return max(self.first_at + coalesce_s, self.last_sent + cooldown_s, self.retry_at)


def _load(urls: Sequence[str], config_file: str | None) -> list[_Target]:
    """One target per apprise service, so a failing one is retried alone."""
    import apprise

    for name in ("apprise", "urllib3.connectionpool"):  # both log request URLs at DEBUG
        if _SCRUB not in logging.getLogger(name).filters:
            logging.getLogger(name).addFilter(_SCRUB)
    found: list[tuple[Any, str]] = []
    for i, url in enumerate(urls, 1):
        service = apprise.Apprise.instantiate(url)
        if not service:
            raise ConfigError(f"notify urls #{i} ({redact(url)}): not a valid Apprise URL")
        found.append((service, url))
    if config_file:
        check_config_file(config_file)  # it holds tokens; apprise would only log a missing file
        config = apprise.AppriseConfig()
        config.add(config_file)
        services = list(apprise.Apprise(config).find())
        if not services:
            raise ConfigError(f"notify config file {config_file}: no usable Apprise URL in it")
        found += [(s, "") for s in services]
    targets = []
    for service, written in found:
        shown = _shown(service, written)
        _SCRUB.known = _SCRUB.known | _secrets(written or service.url(), shown)
        targets.append(_Target(shown, service.tags, apprise.Apprise(service)))
    return targets


def _deliver(target: _Target, notice: Notice, timeout_s: float) -> str | None:
    """Send once within `timeout_s`; None on success, else a reason safe to log."""
    from apprise import NotifyType

    try:
        result = target.apprise.notify(
            body=notice.body, title=notice.title, notify_type=NotifyType(notice.severity), timeout=timeout_s
        )
    except Exception as e:  # apprise 2.x reports instead of raising; a plugin bug must not stop the worker
        return _SCRUB.scrub(f"{type(e).__name__}: {e}")
    if result:
        return None
    messages = [e.message for s in result for e in s.logs() if e.level in ("WARNING", "ERROR")]
    return _SCRUB.scrub((result.status.name.lower() + (f": {messages[-1]}" if messages else ""))[:300])


def send_test(urls: Sequence[str] = (), config_file: str | None = None, *,
              timeout_s: float = 10) -> list[TargetResult]:
    """`relaywatch notify-test`: one test message to each target separately, synchronously."""
    text = f"If you can read this, relaywatch on {socket.gethostname()} can notify this target."
    notice = notice_for_text("info", "test notification", text, ("test",))
    results = []
    for target in _load(urls, config_file):
        reason = _deliver(target, notice, timeout_s)
        results.append(TargetResult(target.name, target.tag_names, reason is None, reason))
    return results


def send_now(notice: Notice, urls: Sequence[str] = (), config_file: str | None = None, *,
             timeout_s: float = 10) -> list[TargetResult]:
    """Send `notice` once, synchronously, to each target whose tags want it (`relaywatch digest --send`)."""
    results = []
    for target in _load(urls, config_file):
        if target.wants(notice):
            reason = _deliver(target, notice, timeout_s)
            results.append(TargetResult(target.name, target.tag_names, reason is None, reason))
    return results


# --- the notifier ------------------------------------------------------------
class Notifier:
    """Delivers notices in the background; see the module docstring.

    With no targets it does nothing and never imports apprise.
    `clock` (monotonic seconds) drives coalescing, cooldowns and backoff.
    """

    def __init__(self, urls: tuple[str, ...] = (), config_file: str | None = None, *, coalesce_s: float = 30,
                 cooldown_s: float = 300, timeout_s: float = 10, retries: int = 3, backoff_s: float = 5,
                 queue_size: int = 1000, clock: Callable[[], float] = time.monotonic,
                 sent_at: Mapping[str, float] | None = None) -> None:
        """`sent_at`: what `sent_at()` said before a restart, so that cooldowns outlive it."""
        self.coalesce_s, self.cooldown_s, self.timeout_s = coalesce_s, cooldown_s, timeout_s
        self.retries, self.backoff_s = retries, backoff_s
        self._clock = clock
        self._targets = _load(urls, config_file) if urls or config_file else []
        for t in self._targets:
            if sent_at and t.name in sent_at:
                t.last_sent = clock() - (time.time() - sent_at[t.name])
        self._queue: queue.Queue[tuple[float, Notice] | None] = queue.Queue(queue_size)
        self._lock = threading.Lock()
        self._sent = self._failed = self._dropped = 0
        self._last_error: str | None = None
        self._last_success: float | None = None
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
        """Queue `notice`; never blocks, never raises. A full queue drops it, counted and logged."""
        if not self._targets:
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

    def sent_at(self) -> dict[str, float]:
        """Target (redacted URL) -> wall time of its last push: the cooldowns, for the store."""
        now, wall = self._clock(), time.time()
        return {t.name: wall - (now - t.last_sent) for t in self._targets if t.last_sent != float("-inf")}

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
                self._send([t for t in self._targets
                            if (at := t.due_at(self.coalesce_s, self.cooldown_s)) is not None and at <= now],
                           self.timeout_s, final=False)
            except Exception:
                log.exception("notification worker error; continuing")
        try:
            self._take(0)
            timeout = max(0.1, min(self.timeout_s, self._close_by - time.monotonic()))
            self._send([t for t in self._targets if t.pending], timeout, final=True)
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
                if not t.pending:
                    t.first_at = submitted
                if len(t.pending) < _KEEP_PENDING:
                    t.pending.append(notice)
                else:
                    self._drop(notice, f"{t.name} has {_KEEP_PENDING} waiting")

    def _send(self, due: list[_Target], timeout_s: float, *, final: bool) -> None:
        started = self._clock()  # cooldown and backoff count from the start of the push
        batches = [(t, t.pending[:]) for t in due]
        reasons = self._pool.map(lambda b: _deliver(b[0], _digest(b[1]), timeout_s), batches)
        for (t, batch), reason in zip(batches, reasons, strict=True):
            self._settle(t, len(batch), reason, started, final)

    def _settle(self, t: _Target, count: int, reason: str | None, now: float, final: bool) -> None:
        attempts = t.failures + 1
        if reason is not None and attempts <= self.retries and not final:
            t.failures, delay = attempts, self.backoff_s * 2 ** (attempts - 1)
            t.retry_at = now + delay  # what arrives meanwhile joins the retry
            with self._lock:
                self._last_error = f"{iso(time.time())} {t.name}: {reason}"
            log.warning("notifying %s failed (attempt %d of %d), retrying in %.1f s: %s",
                        t.name, attempts, self.retries + 1, delay, reason)
            return
        del t.pending[:count]
        t.failures, t.retry_at = 0, float("-inf")
        if t.pending:
            t.first_at = now  # what arrived meanwhile starts its own window
        if reason is None:
            t.last_sent = now
            with self._lock:
                self._sent, self._last_success = self._sent + 1, time.time()
            log.info("notified %s (%d events)", t.name, count)
            return
        with self._lock:
            self._failed, self._last_error = self._failed + 1, f"{iso(time.time())} {t.name}: {reason}"
        log.error("notifying %s failed after %d attempts, %d events not delivered: %s",
                  t.name, attempts, count, reason)
