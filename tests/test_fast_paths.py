"""The hot path's shortcuts give exactly what the slow, obvious code gave.

- LineParser reads the classic envelope with str operations and remembers each stamp, host and
  tag it checked; the oracle here is the old way: one anchored regex (parse._BSD) per line.
- qmgr's two common lines are read with str operations; the oracle is the _QMGR regex alone.
- smtpd's `client=name[addr]` lines are read with str operations; the oracle is CLIENT alone.
- A delivery's address ends are found one at a time; the oracle is the list of every candidate, tried
  in order.
- netaddr reads addresses as integers; the oracle is ipaddress.
- YearResolver asks mktime once per minute; the oracle is logtime.local_epoch (mktime) per second.
"""

from __future__ import annotations

import gzip
import ipaddress
import random
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaywatch.core import deliverytail, grammar, logtime, netaddr
from relaywatch.core.grouping import network_of
from relaywatch.core.inference import AddrKind, address_kind
from relaywatch.core.parse import _BSD, _FULL, GRAMMARS, LineParser, YearResolver
from relaywatch.model import ClientSeen, Delivery, Event, QueueActive, Removed, Unparsed

DATA = Path(__file__).parent / "data"
CORPUS = Path("/work/shared/corpus/public")


class RegexParser:
    """The envelope as parse.py read it before the str fast path: _BSD for every classic line. It wraps
    a LineParser rather than subclassing it: a class compiled by mypyc cannot be subclassed (.ci/compiled)."""

    def __init__(self, years: YearResolver) -> None:
        self.inner = LineParser(years)
        self.stamps: dict[str, float] = {}

    def bsd(self, stamp: str) -> float:
        """A classic stamp resolved by YearResolver.epoch once per distinct second (no minute arithmetic)."""
        t = self.stamps.get(stamp)
        if t is None:
            years = self.inner.years
            month = logtime.MONTHS.get(stamp[:3])
            day, _, hms = stamp[4:].lstrip(" ").partition(" ")
            year = years.year
            t = years.epoch(month, int(day), hms) if month else float("nan")
            if years.year != year or len(self.stamps) >= 4096:
                self.stamps.clear()
            self.stamps[stamp] = t
        return t

    def parse(self, line: str) -> Event | None:
        inner = self.inner
        if line[:1] == "{" or line[:1].isdigit():
            return inner.parse(line)
        envelope = _FULL if line[8:9] == "-" else _BSD
        if envelope is _FULL:
            return inner.parse(line)
        m = _BSD.match(line)
        if m is None:
            return Unparsed(0.0, "no syslog envelope")
        host, prefix, daemon, msg = m.group("host", "prefix", "daemon", "msg")
        grammar = GRAMMARS.get(daemon)
        if grammar is None or prefix is None or not prefix.startswith(inner.syslog_names):
            return inner._not_postfix(host, prefix, daemon, msg)
        t = self.bsd(m["stamp"])
        if not 86400.0 <= t <= 253_370_764_800.0:
            return Unparsed(0.0, "impossible timestamp")
        event = grammar(t, daemon, msg.rstrip("\r"), host)
        if event is None and daemon == "smtpd" and msg.startswith(("NOQUEUE: ", "proxy-accept: ")):
            return inner._proxy(t, host, m["pid"], msg.rstrip("\r"))
        return event


def test_each_family_number_reads_as_its_grammar() -> None:
    """LineParser calls grammar.read(KINDS[program], ...) where GRAMMARS[program] was called."""
    assert set(grammar.KINDS) == set(GRAMMARS) and grammar.NOT_OURS not in grammar.KINDS.values()
    msgs = [line.split(": ", 1)[1] for line in _lines() if ": " in line][::7]
    for daemon, kind in grammar.KINDS.items():
        for msg in msgs:
            assert grammar.read(kind, 1.0, daemon, msg, "h") == GRAMMARS[daemon](1.0, daemon, msg, "h"), msg
    assert grammar.read(grammar.NOT_OURS, 1.0, "smtpd", "8D076AE17: client=a[1.2.3.4]", "h") is None


def _regex_qmgr(t: float, daemon: str, msg: str, host: str) -> Event | None:
    """grammar._qmgr without its str fast path."""
    m = grammar._QMGR.match(msg)
    if m is None:
        return Unparsed(t, "qmgr from=", host=host) if msg.endswith("(queue active)") else None
    if m["removed"]:
        return Removed(t, m["qid"], host=host)
    return QueueActive(t, m["qid"], m["sender"], int(m["size"]), int(m["nrcpt"]), host=host)


def _lines() -> list[str]:
    out: list[str] = []
    paths = sorted((DATA / "golden").glob("*.log")) + [DATA / "seed-2003.log", DATA / "postfix37-proxy-filter.log"]
    if CORPUS.is_dir():
        paths += sorted(CORPUS.glob("*.log")) + sorted(CORPUS.glob("*.log.gz"))
    for p in paths:
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rt", encoding="utf-8", errors="replace") as f:
            out += [line.rstrip("\n") for line in f]
    return out


def _mutants(lines: list[str], rng: random.Random, n: int) -> list[str]:
    """Classic lines bent where the envelope is read: spaces, tabs, colons, brackets, odd stamps."""
    bends = [" ", "  ", "\t", ":", "[", "]", "/", "", "x", "1", "\u00a0", "\u0663", "\r"]
    classic = [x for x in lines if x[:1].isalpha() and x[8:9] != "-"] or ["Mar 16 01:59:38 zebra postfix/smtpd[1]: x"]
    out = []
    for _ in range(n):
        line = rng.choice(classic)
        for _ in range(rng.randint(1, 3)):
            i = rng.randint(0, min(len(line), 60))
            cut = rng.randint(0, 2)
            line = line[:i] + rng.choice(bends) + line[i + cut:]
        out.append(line)
    return out


_REFERENCE = time.mktime((2026, 3, 16, 1, 2, 30, 0, 0, -1))  # local time; its limit 2 days on falls mid-minute


@pytest.mark.parametrize("years", [lambda: YearResolver(2026), lambda: YearResolver(reference=_REFERENCE)],
                         ids=["explicit year", "reference"])
def test_the_str_envelope_reads_every_line_as_the_regex_did(years: Callable[[], YearResolver]) -> None:
    lines = _lines()
    lines += _mutants(lines, random.Random(15), 20_000)
    lines += ["Mar  6 01:02:03 h postfix/smtpd[1]: connect from a[1.2.3.4]",
              "Mar 6 01:02:03 h postfix/smtpd[1]: connect from a[1.2.3.4]",
              "Mar 16 01:02:03 h postfix/smtpd: 8D076AE17: client=a[1.2.3.4]",
              "Mar 16 01:02:03 h postfix/submission/smtpd[7]: 8D076AE17: client=a[1.2.3.4]",
              "Mar 16 25:02:03 h postfix/smtpd[1]: 8D076AE17: client=a[1.2.3.4]",
              "Feb 30 01:02:03 h postfix/smtpd[1]: 8D076AE17: client=a[1.2.3.4]",
              "Mar 16 01:02:03 h postfix/smtpd[1]: connect from x: NOQUEUE: reject: RCPT from a[1.2.3.4]: 554 x",
              "Mar 16 01:02:03 h postfix/smtpd[1]: disconnect from a[1.2.3.4]\r",
              "Mar 16 01:02:03 postfix/smtpd[1]: 8D076AE17: client=a[1.2.3.4]",
              "Fri 2026-11-27 10:00:00 UTC h postfix/smtpd[1]: 8D076AE17: client=a[1.2.3.4]",
              "Mar 16 01:02:03 h mail/smtpd[1]: 8D076AE17: client=a[1.2.3.4]",
              "Dec 31 23:59:59 h postfix/qmgr[1]: 8D076AE17: removed",
              "Jan  1 00:00:01 h postfix/qmgr[1]: 8D076AE17: removed"]
    # the seconds of a minute whose stamp fitted just before (LineParser checks only them then)
    lines += [f"Mar 16 01:02:{sec} h postfix/qmgr[1]: 8D076AE17: removed"
              for sec in ("04", "0x", "\u0663\u0663", "5", "05", " 6", "\u00b2\u00b2", "07", "99", "0\t")]
    # minutes around the reference's limit (a line after it is last year's), every second of them
    lines += [f"Mar 18 01:{mi:02}:{sec:02} h postfix/qmgr[1]: 8D076AE17: removed" for mi in (1, 2, 3)
              for sec in range(62)]
    fast, slow = LineParser(years()), RegexParser(years())
    for line in lines:
        assert fast.parse(line) == slow.parse(line), line
    assert fast.other_names == slow.inner.other_names
    assert fast.years.latest == slow.inner.years.latest


def _reference(text: str) -> str | None:
    try:
        return ipaddress.ip_address(text[5:] if text.startswith("IPv6:") else text).compressed
    except ValueError:
        return None


_V6_BITS = st.integers(0, 2**128 - 1)
_TEXTS = st.one_of(
    st.text(alphabet="0123456789abcdefABCDEF:.%", max_size=24),
    st.lists(st.text(alphabet="0123456789abcdefABCDEF", max_size=5), min_size=1, max_size=10).map(":".join),
    _V6_BITS.map(lambda n: ipaddress.IPv6Address(n).compressed),
    _V6_BITS.map(lambda n: ipaddress.IPv6Address(n & ~(2**64 - 1)).exploded.upper()),
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.lists(st.sampled_from(["0", "00", "01", "1", "255", "256", "", "1000"]), min_size=3, max_size=5).map(".".join),
    st.sampled_from(["::", "::1", "1::", "::ffff:1.2.3.4", "fe80::1%eth0", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8",
                     "1:2:3:4:5:6:7:8:9", ":1::", "1:::2", "IPv6:2001:db8::1", "192.0.0.9", "100.64.0.1",
                     # the blocks inet_ntop writes dotted (::/96, ::ffff:0:0/96) and their neighbours
                     "::ffff:0:1", "::FFFF:abcd:1", "::1:2", "::0:1:2", "::1:0:0", "::fffe:0:1", "0:0:0:0:1:ffff:0:1"]),
)


@settings(max_examples=3000, deadline=None)
@given(_TEXTS)
def test_addresses_as_numbers_answer_as_ipaddress_does(text: str) -> None:
    assert netaddr.canonical(text) == _reference(text)
    ref = _reference(text)
    if ref is None or "%" in ref:
        return
    ip = ipaddress.ip_address(ref)
    assert netaddr.address(text) == (ip.version, int(ip))
    assert netaddr.is_global(ip.version, int(ip)) == ip.is_global
    for p4, p6 in ((24, 64), (16, 48)):
        expected = ipaddress.ip_network(f"{ref}/{p4 if ip.version == 4 else p6}", strict=False).compressed
        assert network_of(p4, p6)(ref) == (expected if ip.is_global else None)
    kind = (AddrKind.LOOPBACK if ip.is_loopback else AddrKind.PRIVATE if any(
        ip in ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                                               "169.254.0.0/16", "fc00::/7", "fe80::/10")
        if ipaddress.ip_network(n).version == ip.version) else AddrKind.PUBLIC)
    assert address_kind(text) is kind


def test_is_global_inside_the_blocks_the_registry_cuts_finer() -> None:
    """Where a special-purpose network is narrower than a /24 (IPv6: /48), every address is asked."""
    rng = random.Random(48)
    for block in netaddr._V4_EDGES:
        for low in range(256):
            n = block << 8 | low
            assert netaddr.is_global(4, n) == ipaddress.IPv4Address(n).is_global
    for block in netaddr._V6_EDGES:
        for _ in range(2000):
            n = block << 80 | (rng.getrandbits(80) if rng.random() < 0.5 else rng.randint(0, 300))
            assert netaddr.is_global(6, n) == ipaddress.IPv6Address(n).is_global


def test_qmgr_str_reading_gives_what_the_regex_gives() -> None:
    rng = random.Random(5)
    msgs = [line.split(": ", 1)[1] for line in _lines() if "/qmgr[" in line and ": " in line]
    bends = [">", ", size=", ", nrcpt=", " (queue active)", ": ", "removed", "1", "\u0663", "\u00b2", " ", ""]
    for _ in range(20_000):
        msg = rng.choice(msgs)
        for _ in range(rng.randint(0, 3)):
            i = rng.randint(0, len(msg))
            msg = msg[:i] + rng.choice(bends) + msg[i + rng.randint(0, 3):]
        msgs.append(msg)
    msgs += ["8D076AE17: from=<a>, size=1>, size=2, nrcpt=3 (queue active)",
             "8D076AE17: from=<>, size=0, nrcpt=0 (queue active)", "8D076AE17: removed\n",
             "8D076AE17: from=<a>, size=\u0663, nrcpt=1 (queue active)", "NOQUEUE: removed"]
    for msg in msgs:
        assert grammar._qmgr(1.0, "qmgr", msg, "h") == _regex_qmgr(1.0, "qmgr", msg, "h"), msg


def _regex_smtpd(t: float, daemon: str, msg: str, host: str) -> Event | None:
    """grammar._smtpd without its str fast path for client=: CLIENT alone."""
    qid, rest = grammar._split(msg)
    if rest.startswith("client="):
        if not grammar.is_qid(qid):
            return None
        c = grammar.CLIENT.match(rest)
        if c is None or (addr := grammar.client_address(c["addr"])) is None:
            return Unparsed(t, "smtpd client=", host=host)
        orig = grammar.client_address(c["oaddr"]) if c["oaddr"] else None
        return ClientSeen(t, qid, addr, c["name"], c["user"] or None, orig, host=host)
    return grammar._reject(t, qid, rest, host, smtpd=True)


_CLIENTS = [
    "8D076AE17: client=unknown[2a0b:4000:48:0:864a:0::944a]", "8D076AE17: client=unknown[218.144.149.137]",
    "8D076AE17: client=a.example[1.2.3.4]:2525", "8D076AE17: client=a.example[1.2.3.4]:",
    "8D076AE17: client=a.example[1.2.3.4]\n", "8D076AE17: client=[1.2.3.4]", "8D076AE17: client=a[]",
    "8D076AE17: client=a]b[1.2.3.4]", "8D076AE17: client=a[1.2.3.4]x", "8D076AE17: client=a\tb[1.2.3.4]",
    "8D076AE17: client=a[IPv6:2001:db8::1]", "8D076AE17: client=a[not an address]", "NOQUEUE: client=a[1.2.3.4]",
    "8D076AE17: client=a[1.2.3.4], sasl_method=PLAIN, sasl_username=u@example.org",
    "8D076AE17: client=a[1.2.3.4], orig_queue_id=8D076AE18, orig_client=b[5.6.7.8]",
    "8D076AE17: client=a[1.2.3.4]:\u0663", "8D076AE17: client=a[1.2\u00a0.3.4]",
]


def _bent(msgs: list[str], rng: random.Random, n: int, bends: list[str]) -> list[str]:
    out = list(msgs)
    for _ in range(n):
        msg = rng.choice(msgs)
        for _ in range(rng.randint(1, 3)):
            i = rng.randint(0, len(msg))
            msg = msg[:i] + rng.choice(bends) + msg[i + rng.randint(0, 3):]
        out.append(msg)
    return out


def test_client_str_reading_gives_what_the_regex_gives() -> None:
    msgs = _CLIENTS + [line.split(": ", 1)[1] for line in _lines() if "/smtpd[" in line and "client=" in line]
    bends = ["[", "]", ":", ", ", ",", "\n", "\t", "\u00a0", "\u0663", " ", "", "x", "1", "::", "IPv6:", "%"]
    for msg in _bent(msgs, random.Random(26), 30_000, bends):
        assert grammar._smtpd(1.0, "smtpd", msg, "h") == _regex_smtpd(1.0, "smtpd", msg, "h"), msg


_GROUPS = st.lists(st.one_of(st.just(0), st.integers(0, 0xFFFF)), min_size=8, max_size=8)


@settings(max_examples=3000, deadline=None)
@given(_V6_BITS, _GROUPS)
def test_v6_text_is_ipaddress_compressed(n: int, groups: list[int]) -> None:
    assert netaddr.v6_text(n) == ipaddress.IPv6Address(n).compressed
    runs = sum(g << (16 * i) for i, g in enumerate(groups))  # zero groups in runs of every length and place
    assert netaddr.v6_text(runs) == ipaddress.IPv6Address(runs).compressed
    assert netaddr.canonical(ipaddress.IPv6Address(runs).exploded) == ipaddress.IPv6Address(runs).compressed
    for low in (runs & 0xFFFFFFFF, 0xFFFF << 32 | runs & 0xFFFFFFFF):  # inside ::/96 and ::ffff:0:0/96
        assert netaddr.v6_text(low) == ipaddress.IPv6Address(low).compressed
        assert netaddr.canonical(ipaddress.IPv6Address(low).exploded) == ipaddress.IPv6Address(low).compressed


@pytest.mark.parametrize(("zone", "year"), [
    ("UTC", 2026), ("Europe/Berlin", 2026), ("America/New_York", 2026), ("Australia/Lord_Howe", 2026),
    ("America/St_Johns", 2026), ("Pacific/Chatham", 2026), ("Africa/Casablanca", 2026), ("Asia/Tokyo", 2026),
    ("Africa/Monrovia", 1972),  # -0:44:30 until 1972-01-07: an offset change inside a minute
])
def test_timestamps_per_minute_are_mktime_per_second(zone: str, year: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every second of the hours around each of the zone's offset changes (DST both ways, half hours,
    Casablanca's Ramadan, Monrovia's seconds), a sample of the rest of the year, and impossible times."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        resolver = YearResolver(reference=time.mktime((year, 12, 31, 0, 0, 0, 0, 0, -1)))
        hours = [time.mktime((year, 1, 1, 0, 0, 0, 0, 0, -1)) + 3600 * i for i in range(366 * 24)]
        offsets = [time.localtime(t).tm_gmtoff for t in hours]
        changes = [hours[i] for i in range(1, len(hours)) if offsets[i] != offsets[i - 1]]
        rng = random.Random(zone)
        cases = []
        for t in changes + rng.sample(hours, 200):
            for k in range(-3 * 3600, 3 * 3600, 1 if t in changes else 97):
                lt = time.localtime(t + k)
                cases.append((lt.tm_year, lt.tm_mon, lt.tm_mday, lt.tm_hour, lt.tm_min, lt.tm_sec))
        cases += [(year, mo, d, h, mi, s) for (mo, d) in ((3, 29), (3, 8), (10, 25), (11, 1), (4, 5), (2, 28))
                  for h in (0, 1, 2, 3) for mi in (0, 29, 30, 59) for s in (0, 1, 59, 60)]
        cases += [(2026, 2, 29, 1, 2, 3), (2026, 2, 30, 1, 2, 3), (2026, 4, 31, 0, 0, 0), (2026, 1, 1, 24, 0, 0),
                  (2026, 1, 1, 23, 60, 0), (2026, 1, 1, 23, 59, 60), (2026, 1, 1, 23, 59, 61),
                  (2026, 12, 31, 23, 59, 99), (2028, 2, 29, 12, 0, 0), (9999, 12, 31, 23, 59, 60), (1, 1, 1, 0, 0, 0)]
        for case in cases:
            expected = logtime.local_epoch(*case)
            got = resolver._local(*case)
            assert got == expected or (got != got and expected != expected), (zone, case)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "Australia/Lord_Howe", "Africa/Monrovia"])
def test_a_minute_plus_its_seconds_is_the_time_of_each_second(zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """YearResolver.minute + s is what mktime per second gives (the year chosen as epoch chooses it), for
    every second of minutes around offset changes, around the reference's limit and elsewhere; else NaN."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        year = 1972 if zone == "Africa/Monrovia" else 2026
        rng = random.Random(zone)
        hours = [time.mktime((year, 1, 1, 0, 0, 0, 0, 0, -1)) + 3600 * i for i in range(366 * 24)]
        changes = [hours[i] for i in range(1, len(hours))
                   if time.localtime(hours[i]).tm_gmtoff != time.localtime(hours[i - 1]).tm_gmtoff]
        fast = 0
        for reference in (time.mktime((year, 12, 31, 0, 0, 0, 0, 0, -1)), rng.choice(hours) + 30.5, *changes[:2]):
            resolver = YearResolver(reference=reference)
            limit = reference + 2 * 86400
            ref_year = time.localtime(reference).tm_year
            moments = [limit + 60 * k for k in range(-3, 4)] + [t + 60 * k for t in changes for k in range(-90, 90, 7)]
            moments += rng.sample(hours, 50) + [limit - 86400 * 200, limit + 86400 * 200]
            for moment in moments:
                lt = time.localtime(moment)
                base = resolver.minute(lt.tm_mon, lt.tm_mday, lt.tm_hour, lt.tm_min)
                if base != base:
                    continue
                fast += 1
                for sec in range(61):
                    wall = (lt.tm_mon, lt.tm_mday, lt.tm_hour, lt.tm_min, sec)
                    expected = logtime.local_epoch(ref_year, *wall)
                    if expected > limit:
                        expected = logtime.local_epoch(ref_year - 1, *wall)
                    assert base + sec == expected, (zone, reference, wall)
        assert fast > 100
        assert YearResolver().minute(3, 16, 1, 2) != YearResolver().minute(3, 16, 1, 2)  # NaN: now moves
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin"])
def test_forward_seconds_from_the_minute_are_what_epoch_gives(zone: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With an explicit year, YearResolver.second (second 0 of a minute computed earlier, maybe under another
    year, plus s) gives what epoch() gives and moves the latest and the year as it does, or NaN and nothing:
    runs of seconds of a minute, New Year with late lines, jumps of months back and forth, DST changes."""
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        rng = random.Random(zone)
        # (no wall time a DST change makes ambiguous: glibc's mktime answers those by its last call)
        starts = [(12, 31, 23, 59), (1, 1, 0, 0), (3, 29, 1, 59), (10, 25, 1, 59), (10, 25, 3, 0), (6, 15, 12, 0),
                  (7, 1, 0, 0)]
        for _ in range(200):
            fast, slow = YearResolver(2026), YearResolver(2026)
            bases: dict[tuple[int, int, int, int], tuple[float, int | None]] = {}
            for _ in range(60):
                minute = rng.choice(starts) if rng.random() < 0.7 else (
                    rng.randint(1, 12), rng.randint(1, 24), rng.randint(0, 23), rng.randint(0, 59))
                if minute not in bases or rng.random() < 0.2:
                    bases[minute] = (fast.minute(*minute), fast.year)
                base, year = bases[minute]
                for sec in rng.sample(range(61), rng.randint(1, 4)):
                    t = fast.second(base, year, sec) if base == base else float("nan")
                    if t != t:
                        t = fast.epoch(minute[0], minute[1], f"{minute[2]:02}:{minute[3]:02}:{sec:02}")
                    expected = slow.epoch(minute[0], minute[1], f"{minute[2]:02}:{minute[3]:02}:{sec:02}")
                    assert (t, fast.latest, fast.year) == (expected, slow.latest, slow.year), (minute, sec)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def _every_end(text: str, start: int) -> list[int]:
    """Candidate ends of an address opened at `start`, all at once (grammar's way before first_end)."""
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


def _listed_delivery(t: float, agent: str, msg: str, host: str) -> Event | None:
    qid, rest = grammar._split(msg)
    if not rest.startswith("to=") or grammar._QID.fullmatch(qid) is None:
        return None
    for end in _every_end(rest, 4):
        tail = deliverytail.DELIVERY_TAIL.match(rest, end + 3)
        if tail is None:
            continue
        relay, raddr = tail["relay"], tail["raddr"]
        scope = rest[end:] if rest.startswith('"', 4) else rest
        if scope.count(", relay=") != 1:
            relay, raddr = "?", None
        return Delivery(
            t, qid, agent, rest[4:end], tail["orig"], relay, raddr, tail["status"], tail["reply"] or "", host=host
        )
    return Unparsed(t, f"{agent} to=", host=host)


_DELIVERIES = [
    "8F544AE03: to=<a@b.example>, relay=[2001:db8::1]:25, conn_use=2, delay=0.2, delays=0/0/0/0.2, "
    "tls=TLSv1.3, dsn=2.0.0, status=sent (250 2.0.0 Ok)",
    '8F544AE03: to=<"a>, relay=x[6.6.6.6]:25, delay=1, status=sent (x)"@b.example>, relay=local, delay=1, '
    "dsn=2.0.0, status=sent (ok)",
    '8F544AE03: to=<"a\\"b>, x"@b.example>, orig_to=<"q>"@c>, relay=local, delay=1, status=sent (ok)',
    "8F544AE03: to=<a>, relay=evil[6.6.6.6]:25, delay=1, dsn=2.0.0, status=sent (x@b.example>, relay=real"
    "[9.9.9.9]:25, delay=1, dsn=2.0.0, status=sent (250 ok)",
    "8F544AE03: to=<a>, b>, c@d>, relay=real[9.9.9.9]:25, delay=1, dsn=2.0.0, status=sent (250 <x>, "
    "relay=evil[6.6.6.6]:25, delay=1, status=sent (y))",
    '8F544AE03: to=<"a@b.example>, relay=x[1.2.3.4]:25, delay=1, status=sent (ok)',
]


def test_delivery_ends_found_one_at_a_time_as_in_the_list() -> None:
    msgs = _DELIVERIES + [line.split(": ", 1)[1] for line in _lines()
                          if " to=<" in line and ": " in line and any(f"/{a}[" in line for a in
                                                                    grammar.DELIVERY_AGENTS)]
    bends = [">, ", ", relay=", "relay=", "[", "]", ":", ", ", " (", ")", "\n", '"', "\\", ">", "orig_to=<", "",
             "x", "z", "E"]
    for msg in _bent(msgs, random.Random(25), 30_000, bends):
        assert grammar._delivery(1.0, "smtp", msg, "h") == _listed_delivery(1.0, "smtp", msg, "h"), msg


_QID_CHARS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz:\n\u0663\u00b2"
_BASE52 = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"  # Postfix's long queue ids


@settings(max_examples=5000, deadline=None)
@given(st.one_of(st.text(alphabet=_QID_CHARS, max_size=20), st.text(alphabet="0123456789ABCDEF", max_size=12),
                 st.tuples(st.text(alphabet=_BASE52, min_size=8, max_size=13), st.sampled_from(["z", "", "zz"]),
                           st.text(alphabet=_BASE52, max_size=5)).map("".join)))
def test_is_qid_answers_as_the_regex_does(text: str) -> None:
    expected = grammar._QID.fullmatch(text) is not None
    assert grammar.is_qid(text) == expected, text
    assert grammar.is_qid(text) == expected, text  # the second time from the last id it kept, if any
    assert not grammar.is_qid(text + ":") and not grammar.is_qid("") and grammar.is_qid("000000")


_TAIL_PIECES = st.lists(st.sampled_from([
    "relay=", "mx.example[1.2.3.4]:25", "local", "none", "[2001:db8::1]", "[]", "]", "[", ":25", ":", "x",
    ", ", ",", " ", "\t", "\n", "\u0663", "\u00a0", "conn_use=2", "delay=", "0.2", "1", ".", "delays=", "0/0.1/0/0.2",
    "/", "tls=", "TLSv1.3", "dsn=", "2.0.0", "4.4.10", "2.0", "status=", "sent", "deferred", "--", "Sent", " (",
    "(", ")", "250 ok", "orig_to=<a@b>", "relay=x[6.6.6.6]:25, "]), max_size=24).map("".join)


@settings(max_examples=5000, deadline=None)
@given(_TAIL_PIECES)
def test_delivery_tail_read_with_str_is_what_the_regex_reads(text: str) -> None:
    """read_tail answers only where the regex matches, and then with the regex's groups; else the regex decides."""
    for tail in (text, "relay=mx.example[1.2.3.4]:25, delay=1, dsn=2.0.0, status=" + text,
                 "relay=local, conn_use=3, delay=0.1, delays=0/0/0/0.1, tls=" + text, "relay=" + text):
        fast = deliverytail.read_tail(tail, 0)
        if fast is not None:
            m = deliverytail.DELIVERY_TAIL.match(tail, 0)
            assert m is not None, tail
            assert fast == m.group("orig", "relay", "raddr", "status", "reply"), tail


def test_delivery_tails_of_the_logs_take_the_str_path() -> None:
    """The str reading answers for the usual tails (else it would buy nothing), as the regex does."""
    tails = [line.split(">, relay=", 1)[1] for line in _lines() if ">, relay=" in line and "orig_to=" not in line]
    read = 0
    for tail in tails:
        fast = deliverytail.read_tail("relay=" + tail, 0)
        if fast is not None:
            read += 1
            m = deliverytail.DELIVERY_TAIL.match("relay=" + tail, 0)
            assert m is not None and fast == m.group("orig", "relay", "raddr", "status", "reply"), tail
    assert read >= 0.95 * len(tails) > 0


def test_in_network_answers_for_the_network_asked_not_the_last_one() -> None:
    """in_network keeps the last network it read: a different network (even an equal one, or one of the
    same prefix elsewhere) must be read afresh, in either address family."""
    from relaywatch.core.rules import in_network

    a, b = ipaddress.ip_network("2a0b:4000:48::/48"), ipaddress.ip_network("2a0b:4000:49::/48")
    c, d = ipaddress.ip_network("218.144.0.0/16"), ipaddress.ip_network("218.144.7.0/24")
    for _ in range(2):
        assert in_network("2a0b:4000:48:c7:1190::cc8e", a) and not in_network("2a0b:4000:48:c7:1190::cc8e", b)
        assert in_network("2a0b:4000:49::1", b) and not in_network("2a0b:4000:49::1", a)
        assert not in_network("218.144.7.9", a)
        assert in_network("218.144.7.9", c) and in_network("218.144.7.9", d) and not in_network("218.144.8.9", d)
        assert in_network("218.144.8.9", c) and not in_network("2a0b:4000:48::1", c)
        assert in_network("2a0b:4000:48::1", ipaddress.ip_network("2a0b:4000:48::/48"))  # equal, not the same
