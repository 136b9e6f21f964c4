"""The correlator's str fast paths, each proved against the slow reading it replaces: the filter's
`queued as QID` against its regex, an address's kind against `ipaddress` (non-addresses too)."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from relaywatch.core.correlate import Correlator
from relaywatch.core.filterlink import _QUEUED_AS, queued_as
from relaywatch.core.inference import AddrKind, address_kind, may_be_private
from relaywatch.core.parse import LineParser, YearResolver

_REPLIES = st.one_of(
    st.text(alphabet="queud as0123456789ABCDEFz()_-.é\n", max_size=40),
    st.builds(lambda head, sep, qid, tail: f"{head}{sep}queued as {qid}{tail}",
              st.sampled_from(["250 2.0.0 Ok:", "250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 Ok,", "", "x", "é",
                               "line\nbreak"]),
              st.sampled_from([" ", "", "_", "a", "(", "é", "\n"]),
              st.text(alphabet="0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz_é", max_size=26),
              st.sampled_from(["", ")", "))", " ", "\n", ")\n", ".", "x)"])),
)


@settings(max_examples=3000, deadline=None)
@given(_REPLIES)
def test_queued_as_answers_as_the_regex_does(reply: str) -> None:
    m = _QUEUED_AS.match(reply)
    assert queued_as(reply) == (m[1] if m is not None else None)


def _kind(text: str) -> AddrKind:
    try:
        ip = ipaddress.ip_address(text.removeprefix("IPv6:"))
    except ValueError:
        return AddrKind.OTHER
    if ip.is_loopback:
        return AddrKind.LOOPBACK
    private = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "fc00::/7",
               "fe80::/10")
    return AddrKind.PRIVATE if any(ip in ipaddress.ip_network(n) for n in private
                                   if ipaddress.ip_network(n).version == ip.version) else AddrKind.PUBLIC


_ADDRESSES = st.one_of(
    st.lists(st.sampled_from(["0", "00", "01", "1", "9", "10", "99", "100", "127", "168", "172", "192", "254", "255",
                              "256", "999", "1000", "", "٣", "a", "1 "]), min_size=2, max_size=6).map(".".join),
    st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
    st.text(alphabet="0123456789.:abcdefIPv%", max_size=20),
    st.sampled_from(["::1", "fe80::1%eth0", "IPv6:fd00::1", "::ffff:10.0.0.1", "unix:private/smtp", "none"]),
)


@settings(max_examples=3000, deadline=None)
@given(_ADDRESSES)
def test_address_kind_answers_as_ipaddress_does(text: str) -> None:
    kind = _kind(text)
    assert address_kind(text) is kind
    assert may_be_private(text) or kind is not AddrKind.PRIVATE


@settings(max_examples=2000, deadline=None)
@given(st.one_of(st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n))),
                 st.integers(0, 2**128 - 1).map(lambda n: ipaddress.IPv6Address(n).compressed),
                 st.integers(0xFC00 << 112, (0xFEC0 << 112) - 1).map(
                     lambda n: ipaddress.IPv6Address(n).exploded.upper()),
                 st.sampled_from(["10.0.0.1", "100.64.0.1", "169.254.1.1", "172.16.0.1", "192.168.1.1", "fd00::1",
                                  "FE80::1", "fe80::1%eth0", "IPv6:fd00::1"])))
def test_a_private_address_is_never_told_public_by_its_first_character(text: str) -> None:
    assert may_be_private(text) or _kind(text) is not AddrKind.PRIVATE


def test_a_hop_asked_twice_in_a_row_keeps_its_kind_per_address() -> None:
    """The correlator remembers the last address's kind: a new address is asked afresh."""
    lines = [
        "Mar  5 10:00:00 mx postfix/smtpd[1]: A1B2C3D4E5: client=unknown[91.12.29.46]",
        "Mar  5 10:00:01 mx postfix/qmgr[2]: A1B2C3D4E5: from=<a@example.net>, size=1, nrcpt=3 (queue active)",
        "Mar  5 10:00:02 mx postfix/smtp[3]: A1B2C3D4E5: to=<x@gmx.de>, relay=mx.gmx.de[212.227.15.9]:25,"
        " delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 4Qx1Yz2AbC)",
        "Mar  5 10:00:03 mx postfix/smtp[3]: A1B2C3D4E5: to=<y@corp.example>, relay=mail.corp.example[10.0.0.5]:25,"
        " delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 5Qx1Yz2AbC)",
        "Mar  5 10:00:04 mx postfix/smtp[3]: A1B2C3D4E5: to=<z@web.de>, relay=mx.web.de[212.227.15.9]:25,"
        " delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 6Qx1Yz2AbC)",
    ]
    parser, correlator = LineParser(YearResolver(2026)), Correlator()
    facts = [f for f in (correlator.feed(e) for e in map(parser.parse, lines) if e is not None) if f is not None]
    # the public hops relay; the private one is taken for the domain's own primary (a gateway)
    assert [f.recipient for f in facts] == ["x@gmx.de", "z@web.de"]
