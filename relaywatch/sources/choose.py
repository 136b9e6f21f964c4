"""Which log the daemon reads, and how far behind it is: for `run`, `status` and `audit`.

Stock Debian 12 has no rsyslog, so no /var/log/mail.log: Postfix logs only to the
journal. A daemon told (by default) to follow a file that does not exist would
watch nothing forever. The rule:

- `[source] path` not set and the default file missing: follow the journal instead,
  and say so in the log and in `status`.
- `[source] path` set explicitly to a file that does not exist yet: wait for it (an
  admin who names a file may be installing rsyslog, or a log shipper, right now), and
  say loudly that nothing is being read until it appears.

Pure except `lag()`, which stats the file the position points into.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import StrEnum

from relaywatch.model import Finding, JSONObject
from relaywatch.wording import age

JOURNAL = "journal"
QUIET_S = 3600  # no new line for this long while the daemon runs: worth a warning


class Reason(StrEnum):
    """Why the daemon reads what it reads."""

    CONFIGURED = "configured"
    FALLBACK = "fallback"  # the default file does not exist: the journal instead
    WAITING = "waiting"  # the configured file does not exist yet


@dataclass(frozen=True, slots=True)
class Choice:
    path: str  # a file, or "journal"
    reason: Reason
    note: str  # for the log and `status`; "" when there is nothing to say


def choose(path: str, explicit: bool, exists: bool) -> Choice:
    """What to follow for `[source] path` = `path` (`explicit`: written in the config)."""
    if path == JOURNAL or exists:
        return Choice(path, Reason.CONFIGURED, "")
    if not explicit:
        return Choice(JOURNAL, Reason.FALLBACK,
                      f"{path} does not exist (no rsyslog?): following the systemd journal instead; set "
                      f"[source] path = \"journal\" to make this explicit, or to a file to wait for it")
    return Choice(path, Reason.WAITING,
                  f"{path} does not exist: nothing is read until it appears ([source] path is set to it; "
                  f"set path = \"journal\" if Postfix logs only to the journal)")


def describe_position(source: str | None, position: JSONObject | None) -> str:
    """A position as a human reads it: file and offset, or the journal cursor, shortened."""
    if not source:
        return "no source recorded"
    if source == JOURNAL:
        cursor = (position or {}).get("cursor")
        if not cursor:
            return "journal, from its end (no record read yet)"
        fields = dict(part.partition("=")[::2] for part in str(cursor).split(";"))
        short = ";".join(f"{k}={v[:8]}" for k, v in fields.items() if k in ("s", "i", "t"))
        return f"journal cursor {short or str(cursor)[:40]}"
    name = source.removeprefix("file:")
    if not position or position.get("inode") is None:
        return f"{name}, not opened yet (it does not exist)"
    return f"{name}, offset {position['offset']:,} (inode {position['inode']})"


@dataclass(frozen=True, slots=True)
class Lag:
    """How far behind the reader is. Files: `unread_bytes` (exact). The journal: `behind_s`, the age of
    the last line read while more were waiting (0 when caught up), an upper bound of the real lag."""

    unread_bytes: int | None = None
    behind_s: float | None = None

    def text(self) -> str:
        if self.unread_bytes is not None:
            return "caught up" if self.unread_bytes == 0 else f"{self.unread_bytes:,} bytes not yet read"
        if self.behind_s is not None:
            return "caught up" if self.behind_s == 0 else f"behind by at most {self.behind_s:,.0f} s of log"
        return "unknown"


def lag(source: str | None, position: JSONObject | None, caught_up: bool | None, last_log_time: float | None,
        now: float) -> Lag:
    """How far behind the reader of `source` is at `now` (see `Lag`)."""
    if not source:
        return Lag()
    if source != JOURNAL:
        try:
            st = os.stat(source.removeprefix("file:"))
        except OSError:
            return Lag()
        pos = position or {}
        if pos.get("inode") == st.st_ino and pos.get("device") == st.st_dev:
            return Lag(unread_bytes=max(0, st.st_size - int(pos.get("offset", 0))))
        return Lag(unread_bytes=st.st_size)  # a new file (rotated since): all of it is still to read
    if caught_up:
        return Lag(behind_s=0.0)
    if last_log_time is None:
        return Lag()
    return Lag(behind_s=round(max(0.0, now - last_log_time), 1))


def arriving(last_line_at: float | None, now: float) -> str:
    """Whether lines are arriving, for `status` and `audit`."""
    if last_line_at is None:
        return "no line read yet"
    seconds = now - last_line_at
    return f"last line read {age(seconds)} ago" + (" (is Postfix logging here?)" if seconds >= QUIET_S else "")


def finding(path: str, explicit: bool, exists: bool, daemon: JSONObject | None, now: float) -> Finding:
    """What the audit says about the log relaywatch reads: which one, and whether lines arrive."""
    choice = choose(path, explicit, exists)
    what = "the systemd journal" if choice.path == JOURNAL else choice.path
    daemon = daemon or {}
    running = bool(daemon.get("pid")) and now - daemon.get("heartbeat", 0) < 30
    heard = arriving(daemon.get("last_line_at"), now) if running else "the daemon is not running"
    quiet = running and (daemon.get("last_line_at") is None or now - daemon["last_line_at"] >= QUIET_S)
    severity = "warning" if choice.reason is Reason.WAITING or quiet else "info"
    text = f"relaywatch reads {what}: {heard}"
    explanation = (choice.note or f"[source] path = {path}") + "."
    fix = ("Set [source] path to the file Postfix logs to, or to \"journal\"; then systemctl restart relaywatch"
           if severity == "warning" else "Nothing to do.")
    return Finding(severity, "source", text, explanation, fix,
                   {"path": path, "reads": choice.path, "reason": choice.reason.value, "running": running,
                    "last_line_at": daemon.get("last_line_at")})
