"""When a log line was written: the timestamp formats of syslog and journalctl. Pure, no I/O.

Classic syslog stamps (`Mar 16 01:59:39`) carry no year and no zone: they are local
time, and YearResolver gives them a year. The others say exactly when they were written:
RFC 3339 (rsyslog, `journalctl -o short-iso`/`short-iso-precise`, whose offset has no
colon), `journalctl -o short-full` (`Fri 2026-11-27 10:00:00 CET`: local time and the
zone's abbreviation) and `-o short-unix` (seconds since the epoch).
"""

from __future__ import annotations

import calendar
import time as _time
from datetime import datetime
from typing import Final

MONTHS: Final = {name: i for i, name in enumerate(calendar.month_abbr) if name}
# A line stamped this much before the latest one is a late writer, not the next year
# (several processes write one log; each stamps its line before the logger orders them).
LATE_S: Final = 86400.0
HALF_YEAR_S: Final = 183 * 86400.0
_PER_SECOND: Final = float("nan")


class YearResolver:
    """Gives classic syslog timestamps (no year, local time) their year.

    With an explicit first year the log is read forward: a stamp more than half a year
    before the latest one starts the next year (Dec -> Jan); a stamp that would be more
    than half a year ahead but is, in the previous year, at most LATE_S before the latest
    one is a late line (written at 23:59:59 on Dec 31, logged after 00:00:01 on Jan 1)
    and takes that year without moving the log's year. Without an explicit year, each
    stamp takes the year that puts it at or before `reference` (the file's mtime, or now
    for a live log: a line cannot be from the future), which needs no history.
    """

    def __init__(self, year: int | None = None, reference: float | None = None) -> None:
        self.year = year
        self.reference = reference  # None: now, for a live log that crosses New Year
        self.latest = float("-inf")  # with an explicit year: the latest time resolved so far
        # (year, month, day, hour, minute) -> the epoch of its second 0, or NaN where the zone's offset
        # changes within a day of it (then every second asks mktime)
        self._minutes: dict[tuple[int, int, int, int, int], float] = {}
        self._reference_year = _time.localtime(reference).tm_year if reference is not None else 0

    def epoch(self, month: int, day: int, hms: str) -> float:
        h, mi, s = int(hms[0:2]), int(hms[3:5]), int(hms[6:8])
        if self.year is not None:
            return self._forward(self.year, month, day, h, mi, s)
        reference = _time.time() if self.reference is None else self.reference
        year = self._reference_year if self.reference is not None else _time.localtime(reference).tm_year
        t = self._local(year, month, day, h, mi, s)
        if t > reference + 2 * 86400 or t != t:  # NaN: Feb 29 in a common year may be last year's
            t = self._local(year - 1, month, day, h, mi, s)
        return t

    def minute(self, month: int, day: int, h: int, mi: int) -> float:
        """The time of second 0 of a minute when epoch() gives it plus s for every second s of it (0 to 60),
        so that a parser can add the seconds itself; NaN where that does not hold or is not known once for
        all: near an offset change, a minute that straddles the reference's limit, or no reference (now
        moves). With an explicit year: second 0 in that year, which `second` checks line by line."""
        if self.year is not None:
            return self._base(self.year, month, day, h, mi)
        if self.reference is None:
            return _PER_SECOND
        year = self._reference_year
        limit = self.reference + 2 * 86400
        base = self._base(year, month, day, h, mi)
        if base + 60 <= limit:  # (NaN: False, and False below)
            return base
        if base > limit:  # every second of it is last year's
            return self._base(year - 1, month, day, h, mi)
        return _PER_SECOND

    def second(self, base: float, year: int | None, s: int) -> float:
        """epoch() of second s (0 to 60) of the minute that minute() gave `base` (not NaN) for, while the
        year was `year`: base + s, and with an explicit year the latest moved as epoch() moves it; NaN
        (nothing changed) where epoch() must decide: the year changed since, or the time is more than half
        a year from the latest (epoch() then takes the next year, or the previous one for a late line)."""
        if year is None:
            return base + s if self.year is None else _PER_SECOND
        if year != self.year:
            return _PER_SECOND
        t = base + s
        latest = self.latest
        if t < latest - HALF_YEAR_S or t > latest + HALF_YEAR_S:
            return _PER_SECOND
        if t > latest:
            self.latest = t
        return t

    def _base(self, year: int, month: int, day: int, h: int, mi: int) -> float:
        """local_epoch of second 0 of a minute, mktime asked once per minute, or NaN where its seconds must be
        asked one by one: where the zone's UTC offset is the same a day before and a day after that minute,
        no transition lies near it, so each of its wall times exists once and second s is second 0 plus s
        (60 included: mktime carries it into the next minute)."""
        key = (year, month, day, h, mi)
        base = self._minutes.get(key)
        if base is None:
            base = local_epoch(year, month, day, h, mi, 0)
            if not (base == base and _uniform(base)):  # NaN: an impossible date (mktime says why)
                base = _PER_SECOND
            if len(self._minutes) >= 4096:
                self._minutes.clear()
            self._minutes[key] = base
        return base

    def _local(self, year: int, month: int, day: int, h: int, mi: int, s: int) -> float:
        """local_epoch, with mktime asked once per minute (_base)."""
        base = self._base(year, month, day, h, mi)
        if base != base or s > 60:
            return local_epoch(year, month, day, h, mi, s)
        return base + s

    def _forward(self, year: int, month: int, day: int, h: int, mi: int, s: int) -> float:
        latest = self.latest
        t = self._local(year, month, day, h, mi, s)
        if t < latest - HALF_YEAR_S:
            self.year = year + 1
            t = self._local(year + 1, month, day, h, mi, s)
        elif t > latest + HALF_YEAR_S:
            t_prev = self._local(year - 1, month, day, h, mi, s)
            if latest - LATE_S <= t_prev <= latest:
                return t_prev
        if t > latest:
            self.latest = t
        return t


def _uniform(t: float) -> bool:
    """The local zone's UTC offset is the same from a day before `t` to a day after it."""
    try:
        return (_time.localtime(t - 86400.0).tm_gmtoff == _time.localtime(t).tm_gmtoff
                == _time.localtime(t + 86400.0).tm_gmtoff)
    except (OverflowError, OSError, ValueError):
        return False


def _exists(year: int, month: int, day: int, h: int, mi: int, s: int) -> bool:
    return (1 <= year <= 9999 and 1 <= month <= 12 and 1 <= day <= calendar.monthrange(year, month)[1]
            and h < 24 and mi < 60 and s < 61)


def local_epoch(year: int, month: int, day: int, h: int, mi: int, s: int, isdst: int = -1) -> float:
    """Local wall time to epoch seconds; NaN for a date or time that does not exist."""
    if not _exists(year, month, day, h, mi, s):
        return float("nan")
    try:
        return _time.mktime((year, month, day, h, mi, s, 0, 0, isdst))
    except (OverflowError, ValueError):
        return float("nan")


def rfc3339_epoch(sec: str, tz: str) -> float:
    """`2026-11-27T10:00:00` and `Z`, `+01:00` or journalctl's `+0100`; NaN when impossible."""
    if tz == "Z":
        tz = "+00:00"
    elif len(tz) == 5:
        tz = f"{tz[:3]}:{tz[3:]}"
    try:
        return datetime.fromisoformat(sec + tz).timestamp()
    except ValueError:
        return float("nan")


def full_epoch(date: str, hms: str, zone: str) -> float:
    """journalctl `-o short-full`: local date and time, and the zone's abbreviation.

    Abbreviations are ambiguous (CST, IST), so only UTC/GMT and the local zone's own
    names are believed; a stamp from any other zone gives NaN (export with `--utc`).
    """
    y, mo, d = int(date[0:4]), int(date[5:7]), int(date[8:10])
    h, mi, s = int(hms[0:2]), int(hms[3:5]), int(hms[6:8])
    if zone in ("UTC", "GMT"):
        return float(calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0))) if _exists(y, mo, d, h, mi, s) else float("nan")
    if zone not in _time.tzname:
        return float("nan")
    dst = -1 if _time.tzname[0] == _time.tzname[1] else int(zone == _time.tzname[1])
    return local_epoch(y, mo, d, h, mi, s, dst)
