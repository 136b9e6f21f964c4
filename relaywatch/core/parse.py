"""Turn one mail-log line into one event. Pure: text in, dataclass out, no I/O.

Here the envelope of a line is read (its time in any of the formats of syslog and
journalctl, the host, the syslog tag, which decides which program spoke) and the
context a line alone lacks is kept (the year, before-queue proxy sessions); what
the message says is relaywatch.grammar's, read where Postfix itself puts each field.
Every event carries its host: queue ids are unique per host only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Container, Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Final

from relaywatch.core.grammar import (
    CLIENT,
    GRAMMARS,
    KINDS,
    NOT_OURS,
    PEER,
    QUEUE_ID,
    SMTPD,
    client_address,
    is_digits,
    is_qid,
    parse_message,
    read,
)
from relaywatch.core.logtime import MONTHS, YearResolver, full_epoch, rfc3339_epoch
from relaywatch.core.replies import queued_as, relay_denied
from relaywatch.model import ClientSeen, Event, Forged, ProxyAccept, Unparsed

__all__ = ["GRAMMARS", "QUEUE_ID", "LineParser", "YearResolver", "client_address", "journal_forgery",
           "parse_message", "relay_denied"]

# --- envelope ----------------------------------------------------------------

# host, then the syslog tag split into "postfix/submission/" and the program ("smtpd"), pid, message
_TAG = r"(?P<host>\S+) (?P<prefix>[^\s\[:]*/)?(?P<daemon>[^\s\[:/]+)(?:\[(?P<pid>\d+)\])?:? (?P<msg>.*)"
_BSD: Final = re.compile(r"(?P<stamp>(?P<mon>[A-Z][a-z]{2}) {1,2}(?P<day>\d{1,2}) (?P<hms>\d\d:\d\d:\d\d)) " + _TAG,
                         re.DOTALL)
# rsyslog, and journalctl -o short-iso / short-iso-precise (offset without a colon)
_RFC3339: Final = re.compile(
    r"(?P<sec>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?P<frac>\.\d{1,9})?(?P<tz>Z|[+-]\d\d:?\d\d) " + _TAG, re.DOTALL
)
# journalctl -o short-full (`Fri 2026-11-27 10:00:00 CET`) and -o short-unix (`1795773600.000123`)
_FULL: Final = re.compile(r"[A-Z][a-z]{2} (?P<date>\d{4}-\d\d-\d\d) (?P<hms>\d\d:\d\d:\d\d) "
                   r"(?P<zone>[A-Za-z+-][A-Za-z0-9+-]{0,9}) " + _TAG, re.DOTALL)
_UNIX: Final = re.compile(r"(?P<unix>\d{1,12}(?:\.\d{1,9})?) " + _TAG, re.DOTALL)
# The same envelope read piece by piece with str operations: each distinct stamp, host and tag
# is checked once against these (the pieces of _BSD), then remembered; anything else takes _BSD.
_BSD_STAMP: Final = re.compile(r"[A-Z][a-z]{2} {1,2}\d{1,2} \d\d:\d\d:\d\d")
_HOST: Final = re.compile(r"\S+")
_TAG_TOKEN: Final = re.compile(r"(?P<prefix>[^\s\[:]*/)?(?P<daemon>[^\s\[:/]+)(?:\[(?P<pid>\d+)\])?:?")
_PIECES_MAX: Final = 4096
_NAN: Final = float("nan")
_Head = tuple[str, str | None, str, str | None, int]  # host, prefix, program, pid, grammar.KINDS or NOT_OURS
NO_HOSTNAME = "line without a hostname"  # Unparsed.reason: journalctl omits it when a record has none
# Times every report can print (datetime's years 1..9999 in any time zone): others are impossible
_MIN_T: Final = 86400.0  # 1970-01-02
_MAX_T: Final = 253_370_764_800.0  # 9998-12-31
_PROXY_PEER: Final = re.compile(PEER + ": ")
_PROXY_STARTS: Final = ("NOQUEUE: ", "proxy-accept: ")  # the smtpd lines of a before-queue proxy session

# --- journal records: who really wrote them ----------------------------------

JOURNAL_UNITS = ("postfix.service", "postfix@*.service")
# The programs that write the lines relaywatch reads (the `retry` service is the error program),
# and where distributions install them: Debian, SUSE/Arch, Fedora/RHEL/Alpine/source, commands.
POSTFIX_PROGRAMS = frozenset({*GRAMMARS, "error"})
POSTFIX_EXE_DIRS = ("/usr/lib/postfix/sbin", "/usr/lib/postfix/bin", "/usr/libexec/postfix",
                    "/usr/local/libexec/postfix", "/usr/sbin", "/usr/local/sbin")


def journal_forgery(rec: Mapping[str, object], uids: Container[str], units: tuple[str, ...] = JOURNAL_UNITS,
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
    """Parses lines of one source. Holds only context: the year, a timestamp cache, the
    clients of before-queue proxy sessions, and the syslog names seen that are not Postfix's."""

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
        self._minute_fits = ""  # line[:13] of the last classic stamp _BSD_STAMP checked and found right
        self._minute_t = _NAN  # YearResolver.minute of that minute: its second 0, or NaN (ask per second)
        self._minute_year: int | None = None  # the resolver's year then (None: the reference reading)
        self._heads: dict[str, _Head] = {}  # "host tag" of classic lines the str fast path has checked
        self._progs: dict[str, _Head] = {}  # "host prog" of those whose tag is `prog[DIGITS]:`
        self._proxied: dict[tuple[str, str | None], ClientSeen] = {}  # (host, smtpd pid) -> NOQUEUE: client=
        # Postfix-shaped lines under a syslog name not in `syslog_names`: name -> lines
        self.other_names: dict[str, int] = {}

    def parse(self, line: str) -> Event | None:
        """One event per line: a fact, Unparsed, Forged (a journal record another program wrote as
        Postfix), or None (a line with nothing relaywatch uses)."""
        first = line[:1]
        if first == "{":
            return self._journal(line)
        if first.isdigit():
            envelope = _RFC3339 if line[4:5] == "-" else _UNIX
        elif line[15:16] == " ":
            # The classic envelope, split with str operations: each distinct stamp and "host tag"
            # was checked once against the pieces of _BSD (_learn), or _BSD decides below.
            sp = line.find(" ", 16)
            end = line.find(" ", sp + 1)
            # `prog[pid]:` is remembered without its pid (a new one each session): by "host prog"
            key_end = end
            head: _Head | None = None
            if sp > 16 and end > 0:
                if ord(line[end - 1]) == 58 and ord(line[end - 2]) == 93:  # the tag ends with "]:"
                    b = line.find("[", sp + 1, end)
                    if b > 0 and is_digits(line, b + 1, end - 2):  # (others, \d+ too: the regex's pid)
                        key_end = b
                head = self._heads.get(line[16:end]) if key_end == end else self._progs.get(line[16:key_end])
            known = self._in_minute(line)
            t = self._stamps.get(line[:15]) if known != known else known
            if head is None or t is None:
                head = self._learn(line, sp, end, key_end)
            if head is not None:
                host, prefix, daemon, pid, kind = head
                if key_end != end and kind == SMTPD:  # only smtpd's pid is read (_proxy's sessions)
                    pid = line[key_end + 1:end - 2]
                msg = line[end + 1:]
                if kind == NOT_OURS:
                    return self._not_postfix(host, prefix, daemon, msg)
                if t is None:
                    t = self._bsd(line[:15])
                if kind == SMTPD and (msg.startswith("connect from ") or msg.startswith("disconnect from ")):
                    # smtpd lines no grammar reads (no queue id): what _smtpd makes of them, without
                    # asking it; most lines of a busy log
                    return None if _MIN_T <= t <= _MAX_T else Unparsed(0.0, "impossible timestamp")
                return self._message(t, kind, host, daemon, pid, msg)
            envelope = _FULL if line[8:9] == "-" else _BSD
        else:
            envelope = _FULL if line[8:9] == "-" else _BSD
        m = envelope.match(line)
        if m is None:
            return Unparsed(0.0, "no syslog envelope")
        host, prefix, daemon, msg = m.group("host", "prefix", "daemon", "msg")
        kind = self._kind(prefix, daemon)
        if kind == NOT_OURS:
            return self._not_postfix(host, prefix, daemon, msg)
        if envelope is _BSD:
            t = self._bsd(m["stamp"])
        elif envelope is _RFC3339:
            t = self._rfc3339(m)
        else:
            t = self._full(m) if envelope is _FULL else float(m["unix"])
        return self._message(t, kind, host, daemon, m["pid"], msg)

    def _kind(self, prefix: str | None, daemon: str) -> int:
        """The grammar family (grammar.KINDS) of a Postfix program under one of our syslog names, else NOT_OURS."""
        if prefix is None or not prefix.startswith(self.syslog_names):
            return NOT_OURS
        return KINDS.get(daemon, NOT_OURS)

    def _learn(self, line: str, sp: int, end: int, key_end: int) -> _Head | None:
        """Check the stamp, host and tag of a classic line against the pieces of _BSD and remember
        the host and tag if they fit: (host, prefix, program, pid, its grammar), or None (then _BSD
        itself decides). When key_end < end the tag is `prog[DIGITS]:` (key: "host prog"), and the
        regex splits it into prefix and program the same way whatever the digits."""
        if sp <= 16 or end < 0 or not self._stamp_fits(line):
            return None
        key = line[16:key_end]
        heads = self._heads if key_end == end else self._progs
        head = heads.get(key)
        if head is None:
            host = line[16:sp]
            tm = _TAG_TOKEN.fullmatch(line, sp + 1, end)
            if _HOST.fullmatch(host) is None or tm is None:
                return None
            prefix, daemon, pid = tm.group("prefix", "daemon", "pid")
            head = (host, prefix, daemon, pid, self._kind(prefix, daemon))
            if len(heads) >= _PIECES_MAX:
                heads.clear()
            heads[key] = head
        return head

    def _stamp_fits(self, line: str) -> bool:
        """_BSD_STAMP fits line[:15]. The seconds are its last `\\d\\d` whatever comes before, so a line
        of the minute (line[:13]) that fitted last needs only two digits (ASCII here; others: the regex)."""
        if line[:13] == self._minute_fits and is_digits(line, 13, 15):
            return True
        if _BSD_STAMP.fullmatch(line, 0, 15) is None:
            return False
        self._minute_fits = line[:13]
        month = MONTHS.get(line[:3])
        day, _, hm = line[4:13].lstrip(" ").partition(" ")  # as _bsd reads the stamp
        self._minute_t = self.years.minute(month, int(day), int(hm[0:2]), int(hm[3:5])) if month else _NAN
        self._minute_year = self.years.year
        return True

    def _in_minute(self, line: str) -> float:
        """The time of a classic line (line[15] is a space) of the minute that _stamp_fits checked last, read
        without a dict: YearResolver.minute's second 0 plus its seconds (see _second_of). Only for the
        reference reading; NaN otherwise and where minute said NaN: then _bsd resolves it per second."""
        base = self._minute_t
        if base != base or self._minute_year is not None:
            return _NAN
        s = self._second_of(line)
        return base + s if s >= 0 else _NAN

    def _second_of(self, text: str) -> int:
        """The second of a stamp (text[:15]) of the minute _stamp_fits checked last: its two digits (ASCII,
        at most 60), or -1 (another minute, other characters: the stamp is resolved as a whole)."""
        if not text.startswith(self._minute_fits):  # (13 characters: no slice to build)
            return -1
        a = ord(text[13]) - 48
        b = ord(text[14]) - 48
        if not (0 <= a <= 6 and 0 <= b <= 9) or a * 10 + b > 60:
            return -1
        return a * 10 + b

    def _message(self, t: float, kind: int, host: str, daemon: str, pid: str | None,
                 msg: str) -> Event | None:
        if not _MIN_T <= t <= _MAX_T:  # also NaN
            return Unparsed(0.0, "impossible timestamp")
        if msg[-1:] == "\r":
            msg = msg.rstrip("\r")
        event = read(kind, t, daemon, msg, host)
        if event is None and kind == SMTPD and msg.startswith(_PROXY_STARTS):
            return self._proxy(t, host, pid, msg)
        return event

    def _not_postfix(self, host: str, prefix: str | None, daemon: str, msg: str) -> Event | None:
        """A line of another program, or of Postfix that relaywatch cannot place: say which."""
        if host[-1:] == ":" and host.startswith(self.syslog_names) and "/" in host:
            return Unparsed(0.0, NO_HOSTNAME)  # `postfix/smtpd[1]:` stands where the host belongs
        grammar = GRAMMARS.get(daemon)
        if grammar is None or prefix is None:
            return None
        tag = prefix + daemon
        if tag in self.other_names or len(self.other_names) < 64:
            event = grammar(0.0, daemon, msg.rstrip("\r"), host)
            if event is not None and type(event) is not Unparsed:
                self.other_names[tag] = self.other_names.get(tag, 0) + 1
        return None

    def _proxy(self, t: float, host: str, pid: str | None, msg: str) -> Event | None:
        """A before-queue filter (smtpd_proxy_filter): `NOQUEUE: client=` names the session's client,
        then `proxy-accept: END-OF-MESSAGE: 250 ... queued as QID` (Postfix 3.7: no NOQUEUE, no peer)
        ties it to the queue file the filter's re-injection made."""
        if msg.startswith("NOQUEUE: client="):
            c = CLIENT.match(msg, 9)
            if c is None or (addr := client_address(c["addr"])) is None:
                return Unparsed(t, "smtpd NOQUEUE: client=", host=host)
            if len(self._proxied) >= 4096:
                self._proxied.clear()
            self._proxied[(host, pid)] = ClientSeen(t, "", addr, c["name"], c["user"] or None, None, host=host)
            return None
        rest = msg.removeprefix("NOQUEUE: ")
        if not rest.startswith("proxy-accept: END-OF-MESSAGE"):
            return None
        session = self._proxied.pop((host, pid), None)
        rest = rest[28:]
        if rest.startswith(" from "):  # the shape of reject lines, should a Postfix write it so
            p = _PROXY_PEER.match(rest, 6)
            if p is None or (addr := client_address(p["addr"])) is None:
                return Unparsed(t, "smtpd proxy-accept", host=host)
            if session is None or session.client != addr:
                session = ClientSeen(t, "", addr, p["name"], None, None, host=host)
            rest = rest[p.end():]
        elif rest.startswith(": "):
            rest = rest[2:]
        else:
            return Unparsed(t, "smtpd proxy-accept", host=host)
        qid = queued_as(rest)
        if qid is None or not is_qid(qid):
            return None  # a filter that names no queue file: nothing to tie
        if session is None:
            return Unparsed(t, "proxy-accept without its NOQUEUE: client= line", host=host)
        return ProxyAccept(t, qid, session.client, session.client_name, session.sasl_user, host=host)

    def _bsd(self, stamp: str) -> float:
        """A classic stamp (`Mar 16 01:59:39`, `Mar  6 ...`, `Mar 6 ...`), resolved once per distinct second."""
        t = self._stamps.get(stamp)
        if t is None:
            # a new second of the minute _stamp_fits checked last: its second 0 plus s, as epoch() gives it
            base = self._minute_t
            s = self._second_of(stamp) if base == base and len(stamp) == 15 and self._minute_fits else -1
            t = self.years.second(base, self._minute_year, s) if s >= 0 else _NAN
            if t != t:
                month = MONTHS.get(stamp[:3])
                day, _, hms = stamp[4:].lstrip(" ").partition(" ")
                year = self.years.year
                t = self.years.epoch(month, int(day), hms) if month else _NAN
                if self.years.year != year:
                    self._stamps.clear()  # a new year: last year's stamps mean other times now
            self._remember(stamp, t)
        return t

    def _rfc3339(self, m: re.Match[str]) -> float:
        sec, frac, tz = m.group("sec", "frac", "tz")
        key = sec + tz
        t = self._stamps.get(key)
        if t is None:
            t = rfc3339_epoch(sec, tz)
            self._remember(key, t)
        return t + float(frac) if frac else t

    def _full(self, m: re.Match[str]) -> float:
        date, hms, zone = m.group("date", "hms", "zone")
        key = f"{date} {hms} {zone}"
        t = self._stamps.get(key)
        if t is None:
            t = full_epoch(date, hms, zone)
            self._remember(key, t)
        return t

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
        host = rec.get("_HOSTNAME")
        host = host if isinstance(host, str) else ""
        if not isinstance(ident, str) or not isinstance(msg, str):
            return Unparsed(t, "journal record without identifier or message", host=host)
        daemon = self._daemon(ident)
        if daemon is None or daemon not in GRAMMARS:
            return None
        if journal_forgery(rec, self.journal_uids) is not None:
            return Forged(t, host=host)
        uid = rec.get("_UID")
        if (not self._uids_given and isinstance(uid, str) and rec.get("_SYSTEMD_UNIT") is not None
                and uid not in self.journal_uids and len(self.journal_uids) < 16):
            self.journal_uids.add(uid)  # a Postfix unit's record: its user is Postfix's
        msg = msg.rstrip("\r\n")
        event = parse_message(daemon, t, msg, host)
        if event is None and daemon == "smtpd" and msg.startswith(_PROXY_STARTS):
            pid = rec.get("SYSLOG_PID") or rec.get("_PID")
            return self._proxy(t, host, pid if isinstance(pid, str) else None, msg)
        return event

    def _daemon(self, tag: str) -> str | None:
        """The Postfix program a syslog tag names (the last component), or None for other programs."""
        slash = tag.rfind("/")
        if slash < 0 or not tag.startswith(self.syslog_names):
            return None
        return tag[slash + 1:]
