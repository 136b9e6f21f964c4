"""Apprise targets: load them (one per service, their URLs' secrets kept out of every log line)
and deliver one notice to one target within a deadline, never raising.

apprise costs ~0.25 s to import, so it is imported only once targets exist. Routing uses apprise
tags: a target without tags gets everything; a tagged target gets the notices sharing one of its
tags (or all, if tagged `always`). The background digests, cooldowns and retries are `notifier.py`.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from relaywatch.model import ConfigError
from relaywatch.notify.notices import Notice, NoticeKind, notice_for_text
from relaywatch.permissions import check_config_file

log = logging.getLogger("relaywatch.notify")


# --- secrets -----------------------------------------------------------------
_SECRET_KEY = re.compile(r"pass|pwd|secret|token|key|auth|sig|cred|session|cookie|bearer", re.IGNORECASE)
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
class Target:
    """One apprise service and its digest state (touched by the worker only)."""

    name: str
    tags: set[Any]  # the service's apprise tags
    apprise: Any  # an apprise.Apprise holding just this service
    pending: list[Notice] = field(default_factory=list)
    first_at: dict[NoticeKind, float] = field(default_factory=dict)  # per kind: when its oldest pending came
    last_sent: dict[NoticeKind, float] = field(default_factory=dict)  # per kind: its cooldown counts from here
    retry_at: float = float("-inf")
    failures: int = 0

    @property
    def tag_names(self) -> tuple[str, ...]:
        return tuple(sorted(map(str, self.tags)))

    def wants(self, notice: Notice) -> bool:
        from apprise.utils.logic import is_exclusive_match

        if not self.tags or not notice.tags:
            return True
        return bool(is_exclusive_match(list(notice.tags), self.tags))  # type: ignore[no-untyped-call]  # apprise: no hints

    def _due(self, kind: NoticeKind, coalesce_s: float, cooldown_s: float) -> float:
        return max(self.first_at[kind] + coalesce_s, self.last_sent.get(kind, float("-inf")) + cooldown_s,
                   self.retry_at)

    def due_at(self, coalesce_s: float, cooldown_s: float) -> float | None:
        """When the earliest kind of pending notice may go out; None when nothing is pending."""
        return min((self._due(k, coalesce_s, cooldown_s) for k in self.first_at), default=None)

    def due_kinds(self, now: float, coalesce_s: float, cooldown_s: float) -> set[NoticeKind]:
        return {k for k in self.first_at if self._due(k, coalesce_s, cooldown_s) <= now}


def load_targets(urls: Sequence[str], config_file: str | None) -> list[Target]:
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
        targets.append(Target(shown, service.tags, apprise.Apprise(service)))
    return targets


def deliver(target: Target, notice: Notice, timeout_s: float) -> str | None:
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
    for target in load_targets(urls, config_file):
        reason = deliver(target, notice, timeout_s)
        results.append(TargetResult(target.name, target.tag_names, reason is None, reason))
    return results


def send_now(notice: Notice, urls: Sequence[str] = (), config_file: str | None = None, *,
             timeout_s: float = 10) -> list[TargetResult]:
    """Send `notice` once, synchronously, to each target whose tags want it (`relaywatch digest --send`)."""
    results = []
    for target in load_targets(urls, config_file):
        if target.wants(notice):
            reason = deliver(target, notice, timeout_s)
            results.append(TargetResult(target.name, target.tag_names, reason is None, reason))
    return results
