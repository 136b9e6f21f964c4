"""The hot path's shortcuts give exactly what the slow, obvious code gave.

- LineParser reads the classic envelope with str operations and remembers each stamp, host and
  tag it checked; the oracle here is the old way: one anchored regex (parse._BSD) per line.
- qmgr's two common lines are read with str operations; the oracle is the _QMGR regex alone.
- netaddr reads addresses as integers; the oracle is ipaddress.
"""

from __future__ import annotations

import gzip
import ipaddress
import random
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from relaywatch.core import grammar, netaddr
from relaywatch.core.destinations import AddrKind, address_kind
from relaywatch.core.grouping import network_of
from relaywatch.core.parse import _BSD, _FULL, GRAMMARS, LineParser, YearResolver
from relaywatch.model import Event, QueueActive, Removed, Unparsed

DATA = Path(__file__).parent / "data"
CORPUS = Path("/work/shared/corpus/public")


class RegexParser:
    """The envelope as parse.py read it before the str fast path: _BSD for every classic line. It wraps
    a LineParser rather than subclassing it: a class compiled by mypyc cannot be subclassed (.ci/compiled)."""

    def __init__(self, years: YearResolver) -> None:
        self.inner = LineParser(years)

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
        return inner._message(inner._bsd(m["stamp"]), grammar, host, daemon, m["pid"], msg)


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


def test_the_str_envelope_reads_every_line_as_the_regex_did() -> None:
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
    fast, slow = LineParser(YearResolver(2026)), RegexParser(YearResolver(2026))
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
    _V6_BITS.map(lambda n: ipaddress.IPv6Address(n).compressed),
    _V6_BITS.map(lambda n: ipaddress.IPv6Address(n & ~(2**64 - 1)).exploded.upper()),
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.lists(st.sampled_from(["0", "00", "01", "1", "255", "256", "", "1000"]), min_size=3, max_size=5).map(".".join),
    st.sampled_from(["::", "::1", "1::", "::ffff:1.2.3.4", "fe80::1%eth0", "1:2:3:4:5:6:7::", "::2:3:4:5:6:7:8",
                     "1:2:3:4:5:6:7:8:9", ":1::", "1:::2", "IPv6:2001:db8::1", "192.0.0.9", "100.64.0.1"]),
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
