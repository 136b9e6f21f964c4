"""Turn one mail-log line into one event. Pure: text in, dataclass out, no I/O.

Attackers write parts of every Postfix line (envelope addresses, HELO names,
message ids, remote replies). So each field is read only where Postfix itself
puts it: the syslog tag decides which daemon spoke, the queue id and keyword are
anchored at the start of the message, a client address comes only from the
fixed prefix Postfix writes, and free text after it is never searched.
"""

from __future__ import annotations

import calendar
import ipaddress
import json
import re
import time as _time
from collections.abc import Callable, Container, Iterable
from datetime import datetime
from fnmatch import fnmatchcase
from functools import lru_cache

from .model import (
    ClientSeen,
    Delivery,
    Event,
    Pickup,
    QueueActive,
    Reject,
    Removed,
    Unparsed,
)

# --- envelope ----------------------------------------------------------------

# host, then the syslog tag split into "postfix/submission/" and the program ("smtpd"), pid, message
_TAG = r"\S+ (?P<prefix>[^\s\[:]*/)?(?P<daemon>[^\s\[:/]+)(?:\[\d+\])?:? (?P<msg>.*)"
_BSD = re.compile(r"(?P<stamp>(?P<mon>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) (?P<hms>\d\d:\d\d:\d\d)) " + _TAG, re.S)
_RFC3339 = re.compile(
    r"(?P<sec>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?P<frac>\.\d{1,9})?(?P<tz>Z|[+-]\d\d:\d\d) " + _TAG, re.S
)
_MONTHS = {name: i for i, name in enumerate(calendar.month_abbr) if name}
# Times every report can print (datetime's years 1..9999 in any time zone): others are impossible
_MIN_T, _MAX_T = 86400.0, 253_370_764_800.0  # 1970-01-02, 9998-12-31

# --- queue ids and peers -----------------------------------------------------

_BASE52 = "0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z"
_BASE51 = "0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-y"
QUEUE_ID = rf"(?:[0-9A-F]{{6,}}|[{_BASE52}]{{10,}}z[{_BASE51}]+)"
_PEER = r"(?P<name>[^\s\[\]]*)\[(?P<addr>[^\]\s]+)\](?::\d+)?"

_QID = re.compile(QUEUE_ID)
_CLIENT = re.compile(
    r"client=" + _PEER
    + r"(?:, sasl_method=[^,\s]*)?(?:, sasl_username=(?P<user>[^,]*))?(?:, sasl_sender=[^,]*)?"
    r"(?:, orig_queue_id=\w+)?(?:, orig_client=(?P<oname>[^\s\[\]]*)\[(?P<oaddr>[^\]\s]+)\](?::\d+)?)?$"
)
_REJECT = re.compile(
    r"(?P<action>reject|reject_warning|milter-reject|milter-discard|discard|hold|milter-hold|filter"
    r"|redirect|proxy-reject): (?P<stage>[A-Z][A-Z-]*) from " + _PEER + r": (?P<reply>.*)",
    re.S,
)
_CLEANUP_DROP = re.compile(r"(?:reject|discard): (?:header|body) ")
_RELAY_DENIED = re.compile(
    r"[45]\d\d [45]\.\d{1,3}\.\d{1,3} <.*?>: (?:Recipient address rejected: )?Relay access denied(?:;|$)", re.S
)
_QMGR = re.compile(
    rf"(?P<qid>{QUEUE_ID}): (?:(?P<removed>removed)|(?P<from>from=<(?P<sender>.*)>, size=(?P<size>\d+), "
    r"nrcpt=(?P<nrcpt>\d+) \(queue active\)))$",
    re.S,
)
_PICKUP = re.compile(r"uid=(?P<uid>\d+) from=<(?P<sender>.*)>$", re.S)
_DELIVERY_TAIL = re.compile(
    r'(?:orig_to=<(?P<orig>"(?:[^"\\]|\\.)*"[^>]*|[^>]*)>, )?'
    r"relay=(?P<relay>[^\s,\[]*(?:\[(?P<raddr>[^\]\s]*)\])?(?::\d+)?), "
    r"(?:conn_use=\d+, )?delay=[\d.]+, (?:delays=[\d./]+, )?(?:tls=[^,\s]*, )?(?:dsn=\d\.\d{1,3}\.\d{1,3}, )?"
    r"status=(?P<status>[a-z-]+)(?: \((?P<reply>.*)\))?$",
    re.S,
)

DELIVERY_AGENTS = frozenset({"smtp", "lmtp", "local", "virtual", "pipe", "error", "retry", "discard"})


@lru_cache(maxsize=16384)
def client_address(addr: str) -> str | None:
    """The canonical text of a client address, or None when Postfix did not log one."""
    if addr.startswith("IPv6:"):
        addr = addr[5:]
    try:
        return ipaddress.ip_address(addr).compressed
    except ValueError:
        return None


# --- message grammars, one per daemon family ---------------------------------


def _split(msg: str) -> tuple[str, str]:
    """(what stands before the first ": ", the rest): a queue id, NOQUEUE, or anything else.

    Callers check the keyword of the rest first (cheap) and validate the queue id after.
    """
    i = msg.find(": ", 0, 40)
    return (msg[:i], msg[i + 2 :]) if i > 0 else ("", msg)


def _is_qid(text: str) -> bool:
    return _QID.fullmatch(text) is not None


def _smtpd(t: float, daemon: str, msg: str) -> Event | None:
    qid, rest = _split(msg)
    if rest.startswith("client="):
        if not _is_qid(qid):
            return None  # NOQUEUE: client= (a before-queue proxy) starts no message
        c = _CLIENT.match(rest)
        addr = c and client_address(c["addr"])
        if addr is None:
            return Unparsed(t, "smtpd client=")
        orig = client_address(c["oaddr"]) if c["oaddr"] else None
        return ClientSeen(t, qid, addr, c["name"], c["user"] or None, orig)
    return _reject(t, qid, rest)


def _reject(t: float, qid: str, rest: str) -> Event | None:
    m = _REJECT.match(rest)
    if m is None or not (qid == "NOQUEUE" or _is_qid(qid)):
        return None
    addr = client_address(m["addr"])
    if addr is None:
        return Unparsed(t, "reject without a client address")
    reply = m["reply"]
    denied = m["action"] == "reject" and _RELAY_DENIED.match(reply) is not None
    return Reject(
        t, None if qid == "NOQUEUE" else qid, m["action"], m["stage"], addr, m["name"], reply, denied
    )


def _qmgr(t: float, daemon: str, msg: str) -> Event | None:
    m = _QMGR.match(msg)
    if m is None:
        if msg.endswith("(queue active)"):
            return Unparsed(t, "qmgr from=")
        return None
    if m["removed"]:
        return Removed(t, m["qid"])
    return QueueActive(t, m["qid"], m["sender"], int(m["size"]), int(m["nrcpt"]))


def _pickup(t: float, daemon: str, msg: str) -> Event | None:
    qid, rest = _split(msg)
    if not rest.startswith("uid=") or not _is_qid(qid):
        return None
    p = _PICKUP.match(rest)
    if p is None:
        return Unparsed(t, "pickup")
    return Pickup(t, qid, int(p["uid"]), p["sender"])


def _cleanup(t: float, daemon: str, msg: str) -> Event | None:
    qid, rest = _split(msg)
    if rest.startswith("message-id="):
        return None
    if (rest.startswith("removed") or _CLEANUP_DROP.match(rest)) and _is_qid(qid):
        return Removed(t, qid)
    return _reject(t, qid, rest)


def _postsuper(t: float, daemon: str, msg: str) -> Event | None:
    qid, rest = _split(msg)
    return Removed(t, qid) if rest == "removed" and _is_qid(qid) else None


def _address_ends(text: str, start: int) -> list[int]:
    """Candidate ends (index of '>') of an address opened at `start`.

    A quoted local part (Postfix >= 3.5 logs the external form) may hold '>'
    and ', '; an unquoted one from an older Postfix is ambiguous, so every
    '>, ' is a candidate and the caller tries them in order.
    """
    if text.startswith('"', start):
        i = start + 1
        while True:
            q = text.find('"', i)
            if q < 0:
                return []
            if text[q - 1] != "\\":
                break
            i = q + 1
        end = text.find(">, ", q)
        return [end] if end >= 0 else []
    ends = []
    end = text.find(">, ", start)
    while end >= 0:
        ends.append(end)
        end = text.find(">, ", end + 1)
    return ends


def _delivery(t: float, agent: str, msg: str) -> Event | None:
    qid, rest = _split(msg)
    if not rest.startswith("to=") or not _is_qid(qid):
        return None
    for end in _address_ends(rest, 4):
        tail = _DELIVERY_TAIL.match(rest, end + 3)
        if tail is None:
            continue
        relay, raddr = tail["relay"], tail["raddr"]
        scope = rest[end:] if rest.startswith('"', 4) else rest
        if scope.count(", relay=") != 1:
            # A second relay= is text an attacker put in an address or reply:
            # keep the delivery but trust no relay it names.
            relay, raddr = "?", None
        return Delivery(
            t, qid, agent, rest[4:end], tail["orig"], relay, raddr, tail["status"], tail["reply"] or ""
        )
    return Unparsed(t, f"{agent} to=")


def _postscreen(t: float, daemon: str, msg: str) -> Event | None:
    qid, rest = _split(msg)
    return _reject(t, qid, rest) if qid == "NOQUEUE" else None


GRAMMARS: dict[str, Callable[[float, str, str], Event | None]] = {
    "smtpd": _smtpd,
    "qmgr": _qmgr,
    "nqmgr": _qmgr,
    "cleanup": _cleanup,
    "pickup": _pickup,
    "postscreen": _postscreen,
    "postsuper": _postsuper,
    **{agent: _delivery for agent in DELIVERY_AGENTS},
}


def parse_message(daemon: str, t: float, msg: str) -> Event | None:
    """The event a Postfix program's message carries; None for lines with nothing relaywatch uses."""
    grammar = GRAMMARS.get(daemon)
    return grammar(t, daemon, msg) if grammar is not None else None


# --- timestamps --------------------------------------------------------------


class YearResolver:
    """Gives classic syslog timestamps (no year, local time) their year.

    With an explicit first year, a jump back of more than six months (Dec -> Jan)
    starts the next year. Without one, each stamp takes the year that puts it
    at or before `reference` (the file's mtime, or now for a live log: a log
    line cannot be from the future).
    """

    def __init__(self, year: int | None = None, reference: float | None = None) -> None:
        self.year = year
        self.reference = reference  # None: now, for a live log that crosses New Year
        self._last_month = 0

    def epoch(self, month: int, day: int, hms: str) -> float:
        h, mi, s = int(hms[0:2]), int(hms[3:5]), int(hms[6:8])
        if self.year is not None:
            if month < self._last_month - 6:
                self.year += 1
            self._last_month = month
            return _local_epoch(self.year, month, day, h, mi, s)
        reference = _time.time() if self.reference is None else self.reference
        year = _time.localtime(reference).tm_year
        t = _local_epoch(year, month, day, h, mi, s)
        if t > reference + 2 * 86400:
            t = _local_epoch(year - 1, month, day, h, mi, s)
        return t


def _local_epoch(year: int, month: int, day: int, h: int, mi: int, s: int) -> float:
    if not (1 <= day <= calendar.monthrange(year, month)[1] and h < 24 and mi < 60 and s < 61):
        return float("nan")
    try:
        return _time.mktime((year, month, day, h, mi, s, 0, 0, -1))
    except (OverflowError, ValueError):
        return float("nan")


# --- journal records: who really wrote them ----------------------------------

FORGED = "forged journal record"  # Unparsed.reason of a record another program wrote as Postfix
JOURNAL_UNITS = ("postfix.service", "postfix@*.service")
# The programs that write the lines relaywatch reads (the `retry` service is the error program),
# and where distributions install them: Debian, SUSE/Arch, Fedora/RHEL/Alpine/source, commands.
POSTFIX_PROGRAMS = frozenset({*GRAMMARS, "error"})
POSTFIX_EXE_DIRS = ("/usr/lib/postfix/sbin", "/usr/lib/postfix/bin", "/usr/libexec/postfix",
                    "/usr/local/libexec/postfix", "/usr/sbin", "/usr/local/sbin")


def journal_forgery(rec: dict, uids: Container[str], units: tuple[str, ...] = JOURNAL_UNITS,
                    exe_dirs: tuple[str, ...] = POSTFIX_EXE_DIRS) -> str | None:
    """Which trusted field of a journal record says that Postfix did not write it, or None.

    SYSLOG_IDENTIFIER is whatever the sender chose (`logger -t postfix/smtpd`); journald
    sets the underscore fields itself. Each one present must say Postfix: the unit, the
    program (_COMM), its executable (_EXE: a copy of logger named smtpd lives elsewhere).
    journald reads those from /proc, so a process that exits at once (logger) often has
    none (systemd#2913); the kernel's _UID is always there, and must then be one of `uids`
    (root, Postfix's mail_owner). A record with none of these fields decides nothing.
    """
    unit = rec.get("_SYSTEMD_UNIT")
    if unit is not None and not (isinstance(unit, str) and any(fnmatchcase(unit, u) for u in units)):
        return f"_SYSTEMD_UNIT={unit!r:.80}"
    comm = rec.get("_COMM")
    if comm is not None and not (isinstance(comm, str) and comm in POSTFIX_PROGRAMS):
        return f"_COMM={comm!r:.80}"
    exe = rec.get("_EXE")
    if exe is not None:
        directory, _, name = exe.rpartition("/") if isinstance(exe, str) else ("", "", "")
        if name not in POSTFIX_PROGRAMS or directory not in exe_dirs:
            return f"_EXE={exe!r:.120}"
    uid = rec.get("_UID")
    if unit is None and uid is not None and not (isinstance(uid, str) and uid in uids):
        return f"_UID={uid!r:.20}"
    return None


# --- the line parser ---------------------------------------------------------


class LineParser:
    """Parses lines of one source; holds only the year context and a timestamp cache."""

    def __init__(self, years: YearResolver | None = None, syslog_names: tuple[str, ...] = ("postfix",),
                 journal_uids: Iterable[int] | None = None) -> None:
        """`journal_uids`: the users Postfix runs as (root, mail_owner), for journal records
        journald could not tie to a unit. None: root, and the users of records from Postfix's
        own units seen so far (the recorded host's uids are not known in advance)."""
        self.years = years or YearResolver()
        self.syslog_names = syslog_names
        self._uids_given = journal_uids is not None
        self.journal_uids: set[str] = {str(u) for u in journal_uids} if journal_uids is not None else {"0"}
        self._stamps: dict[str, float] = {}

    def parse(self, line: str) -> Event | None:
        """One event per line: a fact, Unparsed, or None (a line with nothing relaywatch uses)."""
        first = line[:1]
        if first == "{":
            return self._journal(line)
        rfc3339 = first.isdigit()
        m = (_RFC3339 if rfc3339 else _BSD).match(line)
        if m is None:
            return Unparsed(0.0, "no syslog envelope")
        prefix, daemon, msg = m.group("prefix", "daemon", "msg")
        grammar = GRAMMARS.get(daemon)
        if grammar is None or prefix is None or not prefix.startswith(self.syslog_names):
            return None
        t = self._rfc3339(m) if rfc3339 else self._bsd(m)
        if not _MIN_T <= t <= _MAX_T:  # also NaN
            return Unparsed(0.0, "impossible timestamp")
        if msg[-1:] == "\r":
            msg = msg.rstrip("\r")
        return grammar(t, daemon, msg)

    def _daemon(self, tag: str) -> str | None:
        """The Postfix program a syslog tag names (the last component), or None for other programs."""
        slash = tag.rfind("/")
        if slash < 0 or not tag.startswith(self.syslog_names):
            return None
        return tag[slash + 1:]

    def _bsd(self, m: re.Match[str]) -> float:
        t = self._stamps.get(m["stamp"])
        if t is None:
            month = _MONTHS.get(m["mon"])
            t = self.years.epoch(month, int(m["day"]), m["hms"]) if month else float("nan")
            self._remember(m["stamp"], t)
        return t

    def _rfc3339(self, m: re.Match[str]) -> float:
        sec, frac, tz = m.group("sec", "frac", "tz")
        key = sec + tz
        t = self._stamps.get(key)
        if t is None:
            try:
                t = datetime.fromisoformat(sec + ("+00:00" if tz == "Z" else tz)).timestamp()
            except ValueError:
                t = float("nan")
            self._remember(key, t)
        return t + float(frac) if frac else t

    def _remember(self, key: str, t: float) -> None:
        if len(self._stamps) >= 4096:
            self._stamps.clear()
        self._stamps[key] = t

    def _journal(self, line: str) -> Event | None:
        """A `journalctl -o json` record; MESSAGE may be a byte array when not UTF-8."""
        try:
            rec = json.loads(line)
            ident = rec.get("SYSLOG_IDENTIFIER")
            msg = rec.get("MESSAGE")
            if isinstance(msg, list):
                msg = bytes(msg).decode("utf-8", "replace")
            t = int(rec["__REALTIME_TIMESTAMP"]) / 1e6
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError, RecursionError):
            # OverflowError: a timestamp of 400 digits or 1e400; RecursionError: [[[[... nested deeper than Python
            return Unparsed(0.0, "journal record")
        if not _MIN_T <= t <= _MAX_T:
            return Unparsed(0.0, "impossible timestamp")
        if not isinstance(ident, str) or not isinstance(msg, str):
            return Unparsed(t, "journal record without identifier or message")
        daemon = self._daemon(ident)
        if daemon is None or daemon not in GRAMMARS:
            return None
        if journal_forgery(rec, self.journal_uids) is not None:
            return Unparsed(t, FORGED)
        uid = rec.get("_UID")
        if (not self._uids_given and isinstance(uid, str) and rec.get("_SYSTEMD_UNIT") is not None
                and uid not in self.journal_uids and len(self.journal_uids) < 16):
            self.journal_uids.add(uid)  # a Postfix unit's record: its user is Postfix's
        return parse_message(daemon, t, msg.rstrip("\r\n"))
