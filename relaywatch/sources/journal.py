"""The systemd journal as a live source: `journalctl -f -o json` from a saved cursor.

Debian 12 has no mail.log by default: Postfix logs only to the journal, as
`postfix@-.service`. Same shape as the file follower (relaywatch.follow): batches
of complete lines and the exact position after the last one.
"""

from __future__ import annotations

import json
import logging
import os
import re
import select
import subprocess
import threading
import time
from collections import deque
from fnmatch import fnmatchcase

from relaywatch.model import JSONObject, RelaywatchError
from relaywatch.sources import files as sources
from relaywatch.sources.lines import CHUNK, Batch, LineSplitter

log = logging.getLogger("relaywatch.follow")

_FIELDS = "MESSAGE,SYSLOG_IDENTIFIER,SYSLOG_PID,_PID,_HOSTNAME,_SYSTEMD_UNIT,_COMM,_EXE,_UID"  # + who wrote it
_CURSOR_IN_VERBOSE = re.compile(r"\[(s=[^\]\s]+)\]")
_RECORD_CAP = 1 << 20
_BACKOFF_S = (0.5, 30.0)


def _unreadable(stderr: str, status: str) -> RelaywatchError:
    first = next((s.strip() for s in stderr.splitlines() if s.strip()), status)
    if "ermission" in stderr or "not seeing messages" in stderr:
        hint = ("run relaywatch as root or with the systemd-journal group (SupplementaryGroups=systemd-journal"
                " in its unit), or set [source] path to a log file")
    elif "No journal files" in stderr or "No such file" in stderr:
        hint = "is systemd-journald running? Without a journal, set [source] path to Postfix's log file"
    else:
        hint = "see journalctl(1)"
    return RelaywatchError(f"cannot read the journal: {first}: {hint}")


class JournalFollower:
    """`journalctl -f -o json` from a saved cursor; hands out Postfix's records as JSON lines.

    Postfix's records are picked here rather than by journalctl matches (a unit match
    would lose records whose unit journald could not tell: processes that exit right
    after logging, systemd#2913): a record is Postfix's when its SYSLOG_IDENTIFIER
    starts with one of `syslog_names` and journald attributed it to one of `units`, or
    to none. One attributed to another unit is forged (`logger -t postfix/smtpd` from a
    shell) and dropped with a warning. `matches` may narrow what journalctl reads.
    position: {"cursor": the __CURSOR of the last record consumed, or None}.
    """

    source_name = "journal"

    def __init__(self, position: JSONObject | None, *, journalctl: str = "journalctl", files: list[str] | None = None,
                 matches: tuple[str, ...] = (), units: tuple[str, ...] = ("postfix.service", "postfix@*.service"),
                 syslog_names: tuple[str, ...] = ("postfix",)) -> None:
        # -m (merge) everywhere: without it `-f` silently means "this boot only", and
        # resuming after a reboot would skip the end of the previous boot. -m also
        # opens other machines' journals, so the system journal is limited to ours.
        self._base = [journalctl, "-m", "--no-pager", *(f"--file={os.path.abspath(f)}" for f in files or ())]
        machine = "" if files else _machine_id()
        self._matches = (*matches, *((f"_MACHINE_ID={machine}",) if machine else ()))
        self._units = units
        self._names = syslog_names
        self._trusted: dict[str, bool] = {}
        self._lines = LineSplitter(_RECORD_CAP)
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: deque[str] = deque(maxlen=20)
        self._stderr_thread: threading.Thread | None = None
        self._delay = _BACKOFF_S[0]
        self._retry_at = 0.0
        self._got_output = False
        last = self._preflight()
        self._cursor: str | None = position.get("cursor") if position else last
        self._skip: str | None = None
        self._start()

    def _preflight(self) -> str | None:
        """Is the journal readable? Returns the cursor of its last record. `-o verbose`
        because the json outputs also silence journalctl's permission hints."""
        try:
            r = subprocess.run([*self._base, "-n", "1", "-o", "verbose", *self._matches],
                               capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        except FileNotFoundError as exc:
            raise RelaywatchError(f"{self._base[0]}: not found: install systemd's journalctl, or set [source]"
                                  " path to a log file") from exc
        except subprocess.TimeoutExpired as exc:
            raise RelaywatchError("journalctl did not answer within 60 s") from exc
        err = r.stderr.decode("utf-8", "replace")
        if r.returncode != 0 or "not seeing messages" in err or "No journal files were found" in err:
            raise _unreadable(err, f"journalctl exited with status {r.returncode}")
        m = _CURSOR_IN_VERBOSE.search(r.stdout.decode("utf-8", "replace").partition("\n")[0])
        return m.group(1) if m else None

    def _start(self) -> None:
        # --cursor, not --after-cursor: systemd 252 skips one record too many when the
        # cursor's record does not match the filter; we drop the cursor's own record here.
        # --no-tail: with -f, journalctl otherwise shows only 10 records after the cursor.
        args = [*self._base, "-f", "--no-tail", "-o", "json", f"--output-fields={_FIELDS}"]
        if self._cursor:
            args.append(f"--cursor={self._cursor}")
        proc = subprocess.Popen([*args, *self._matches], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._proc, self._skip, self._got_output = proc, self._cursor, False
        self._lines = LineSplitter(_RECORD_CAP)
        self._stderr.clear()
        self._stderr_thread = threading.Thread(target=self._drain_stderr, args=(proc,), daemon=True)
        self._stderr_thread.start()

    def _drain_stderr(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            self._stderr.append(line)
            log.warning("journalctl: %s", line)

    @property
    def position(self) -> JSONObject:
        return {"cursor": self._cursor}

    def read(self, max_lines: int, timeout: float) -> Batch:
        deadline = time.monotonic() + timeout
        out: list[str] = []
        while len(out) < max_lines:
            raw, _ = self._lines.take(max_lines - len(out))
            for line in raw:
                self._record(line, out)
            if raw:
                continue
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                break
            self._fill(remaining)
        return Batch(out, self.position)

    def _record(self, line: bytes, out: list[str]) -> None:
        try:
            rec = json.loads(line)
            cursor = rec["__CURSOR"]
        except (ValueError, KeyError, TypeError):
            log.warning("skipping an unreadable journal record: %r", line[:200])
            return
        skip, self._skip = self._skip, None
        if cursor == skip:  # the record we stopped at: --cursor shows it again
            return
        self._cursor = cursor
        self._delay = _BACKOFF_S[0]
        ident = rec.get("SYSLOG_IDENTIFIER")
        if not isinstance(ident, str) or not ident.startswith(self._names):
            return
        unit = rec.get("_SYSTEMD_UNIT")
        if unit is not None and not self._from_postfix(unit):
            return
        text = line.decode("utf-8", "replace")
        if len(text) > sources.MAX_LINE and isinstance(rec.get("MESSAGE"), list):
            # journalctl writes a non-UTF-8 MESSAGE as a list of byte values, 4 characters a byte
            rec["MESSAGE"] = bytes(rec["MESSAGE"]).decode("utf-8", "replace")
            text = json.dumps(rec, ensure_ascii=False)
        out.append(text[:sources.MAX_LINE])

    def _from_postfix(self, unit: str) -> bool:
        trusted = self._trusted.get(unit)
        if trusted is None:
            trusted = self._trusted[unit] = any(fnmatchcase(unit, u) for u in self._units)
            if not trusted:
                log.warning("ignoring journal records that claim to be Postfix's but come from %s (forged with"
                            " logger?); only %s are trusted", unit, ", ".join(self._units))
        return trusted

    def _fill(self, timeout: float) -> None:
        """Read what journalctl wrote within `timeout`; restart it (with backoff) if it died."""
        proc = self._proc
        if proc is None:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                time.sleep(min(wait, timeout))
                return
            self._preflight()
            self._start()
            return
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return
        data = os.read(fd, CHUNK)
        if data:
            self._got_output = True
            self._lines.feed(data)
            return
        self._reap(proc)

    def _reap(self, proc: subprocess.Popen[bytes]) -> None:
        status = proc.wait()
        self._close_pipes(proc)
        self._proc = None
        if status > 0 and not self._got_output:  # it refused to start: a bad cursor, match or journal
            raise _unreadable("\n".join(self._stderr), f"journalctl exited with status {status}")
        log.warning("journalctl exited with status %s; restarting it from the last cursor in %.1f s",
                    status, self._delay)
        self._retry_at = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, _BACKOFF_S[1])

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._close_pipes(proc)

    def _close_pipes(self, proc: subprocess.Popen[bytes]) -> None:
        if self._stderr_thread is not None:
            self._stderr_thread.join(timeout=2)  # it has read journalctl's last words
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def _machine_id() -> str:
    try:
        with open("/etc/machine-id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""
