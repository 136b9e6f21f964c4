"""The parser against golden lines (expected result written next to each line) and by property."""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaywatch.model import ClientSeen, Delivery, Reject, Removed, Unparsed
from relaywatch.parse import LineParser, YearResolver

GOLDEN = Path(__file__).parent / "data" / "golden"


def golden_cases():
    for path in sorted(GOLDEN.glob("*.log")):
        expect = None
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.startswith("# expect: "):
                expect = json.loads(line[len("# expect: "):])
            elif line.startswith("#") or not line:
                continue
            else:
                assert expect is not None, f"{path.name}:{number} has no expectation"
                yield pytest.param(line, expect, id=f"{path.name}:{number}")
                expect = None


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


@pytest.mark.parametrize("line, expect", list(golden_cases()))
def test_golden(line, expect):
    event = LineParser(YearResolver(2003)).parse(line)
    assert (type(event).__name__ if event is not None else None) == expect["event"], event
    names = {f.name for f in fields(event)} if event is not None else set()
    for key, want in expect.items():
        if key == "event":
            continue
        assert key in names, f"{type(event).__name__} has no field {key}"
        got = getattr(event, key)
        assert (list(got) if isinstance(got, tuple) else got) == want, key


def test_golden_files_cover_every_event_kind():
    kinds = {expect["event"] for _, expect in (c.values for c in golden_cases())}
    assert kinds >= {"ClientSeen", "QueueActive", "Delivery", "Removed", "Reject",
                     "Pickup", "Unparsed", None}


def test_classic_timestamp_takes_the_year_given():
    event = LineParser(YearResolver(2003)).parse(
        "Mar 16 01:59:39 zebra postfix/smtpd[29327]: 8D076AE17: client=unknown[218.144.108.161]")
    assert time.gmtime(event.time)[:6] == (2003, 3, 16, 1, 59, 39)


def test_explicit_year_rolls_over_from_december_to_january():
    parser = LineParser(YearResolver(2002))
    dec = parser.parse("Dec 31 23:59:59 h postfix/qmgr[1]: ABCDEF123: removed")
    jan = parser.parse("Jan  1 00:00:01 h postfix/qmgr[1]: ABCDEF124: removed")
    assert time.gmtime(dec.time).tm_year == 2002
    assert time.gmtime(jan.time).tm_year == 2003
    assert jan.time - dec.time == 2


def test_year_from_mtime_puts_december_lines_in_the_previous_year():
    written = time.mktime((2004, 1, 2, 12, 0, 0, 0, 0, -1))
    parser = LineParser(YearResolver(reference=written))
    dec = parser.parse("Dec 31 23:59:59 h postfix/qmgr[1]: ABCDEF123: removed")
    jan = parser.parse("Jan  2 00:00:01 h postfix/qmgr[1]: ABCDEF124: removed")
    assert time.gmtime(dec.time).tm_year == 2003
    assert time.gmtime(jan.time).tm_year == 2004


def test_rfc3339_offset_and_fraction():
    parser = LineParser()
    a = parser.parse("2023-03-14T00:00:31.185246+01:00 helga postfix/qmgr[1]: 4PbCZy4PWKz3tBr: removed")
    b = parser.parse("2023-03-13T23:00:31.5Z helga postfix/qmgr[1]: 4PbCZy4PWKz3tBr: removed")
    assert a.time == pytest.approx(1678748431.185246)
    assert b.time - a.time == pytest.approx(0.314754)


def test_impossible_date_is_unparsed():
    assert isinstance(LineParser(YearResolver(2003)).parse("Feb 29 00:00:00 h postfix/qmgr[1]: ABCDEF123: removed"),
                      Unparsed)
    assert isinstance(LineParser(YearResolver(2004)).parse("Feb 29 00:00:00 h postfix/qmgr[1]: ABCDEF123: removed"),
                      Removed)
    assert isinstance(LineParser().parse("2023-02-30T00:00:00Z h postfix/qmgr[1]: ABCDEF123: removed"), Unparsed)


def test_syslog_names_other_than_postfix_are_ignored_unless_configured():
    line = "Mar 16 01:59:39 zebra mail/smtpd[29327]: 8D076AE17: client=unknown[218.144.108.161]"
    assert LineParser().parse(line) is None
    assert isinstance(LineParser(syslog_names=("mail",)).parse(line), ClientSeen)


def test_local_time_is_used_for_classic_timestamps(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    event = LineParser(YearResolver(2003)).parse("Mar 16 09:00:00 zebra postfix/qmgr[1]: ABCDEF123: removed")
    assert time.gmtime(event.time)[:4] == (2003, 3, 16, 0)


# --- properties -----------------------------------------------------------------

PREFIXES = st.sampled_from([
    "Mar 16 01:59:39 zebra postfix/smtpd[29327]: ",
    "Mar 16 01:59:39 zebra postfix/smtp[29330]: ",
    "Mar 16 01:59:39 zebra postfix/qmgr[24493]: ",
    "2023-03-14T00:31:06.621091+01:00 helga postfix/submission/smtpd[303987]: ",
    "Mar 16 01:59:39 zebra postfix/cleanup[1]: 8D076AE17: ",
    "Mar 16 01:59:39 zebra postfix/smtpd[29327]: 8D076AE17: client=",
    "Mar 16 01:59:39 zebra postfix/smtpd[29327]: NOQUEUE: reject: RCPT from unknown[",
    "Mar 16 01:59:39 zebra postfix/smtp[29330]: 8D076AE17: to=<",
    "",
])
NASTY = st.text(alphabet=st.sampled_from(list("<>[]:;,= \"\\()@.0123456789abcdefABCDEF\x00\ufffdNOQUEUEtorelaystatus")),
                max_size=200)


@settings(max_examples=2000, deadline=None)
@given(prefix=PREFIXES, tail=NASTY)
def test_parser_never_raises(prefix, tail):
    LineParser(YearResolver(2003)).parse(prefix + tail)


@settings(max_examples=500, deadline=None)
@given(text=st.text(max_size=300))
def test_parser_never_raises_on_any_text(text):
    LineParser().parse(text)


@settings(max_examples=1000, deadline=None)
@given(tail=NASTY)
def test_a_client_address_never_comes_from_text_after_the_prefix(tail):
    """Whatever a client writes after `helo=`/in a reply, the client is the one Postfix logged."""
    line = ("Mar 16 01:59:39 zebra postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[192.0.2.1]: "
            "554 5.7.1 <a@b>: Relay access denied; from=<x> to=<y> proto=SMTP helo=<" + tail)
    event = LineParser(YearResolver(2003)).parse(line)
    assert isinstance(event, Reject) and event.client == "192.0.2.1"


@settings(max_examples=1000, deadline=None)
@given(local=NASTY)
def test_delivery_status_is_postfix_s_when_the_recipient_is_quoted(local):
    local = local.replace('"', "").replace("\\", "")
    line = (f'Mar 16 01:59:39 zebra postfix/smtp[1]: 8D076AE17: to=<"{local}"@victim.example>, '
            "relay=mx.victim.example[192.0.2.9]:25, delay=1, delays=0/0/0/1, dsn=4.4.2, status=deferred (x)")
    event = LineParser(YearResolver(2003)).parse(line)
    assert isinstance(event, Delivery)
    assert (event.status, event.relay_addr, event.recipient) == ("deferred", "192.0.2.9", f'"{local}"@victim.example')


def test_the_tz_fixture_restores_the_environment():
    assert os.environ.get("TZ") == "UTC"
