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
from collections.abc import Callable
from datetime import datetime
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

SMTPD = frozenset({"smtpd"})
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


# --- the line parser ---------------------------------------------------------


class LineParser:
    """Parses lines of one source; holds only the year context and a timestamp cache."""

    def __init__(self, years: YearResolver | None = None, syslog_names: tuple[str, ...] = ("postfix",)) -> None:
        self.years = years or YearResolver()
        self.syslog_names = syslog_names
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
        if t != t:
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
        except (ValueError, TypeError, KeyError, AttributeError):
            return Unparsed(0.0, "journal record")
        if not isinstance(ident, str) or not isinstance(msg, str):
            return Unparsed(t, "journal record without identifier or message")
        daemon = self._daemon(ident)
        if daemon is None:
            return None
        return parse_message(daemon, t, msg.rstrip("\r\n"))
