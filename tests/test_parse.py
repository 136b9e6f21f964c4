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

from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.model import ClientSeen, Delivery, Reject, Removed, Unparsed

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


def test_feb_29_read_early_next_year_is_last_years():
    """Review: a log rotated in January of 2025 (its mtime the reference) holds Feb 29 2024; the
    reference's year has no Feb 29 and the stamp was unparsed as impossible. It is 2024's."""
    line = "Feb 29 12:00:00 mx postfix/qmgr[1]: 4BCDEF0123: removed"
    reference = time.mktime((2025, 1, 10, 0, 0, 0, 0, 0, -1))
    event = LineParser(YearResolver(reference=reference)).parse(line)
    assert isinstance(event, Removed)
    assert event.time == time.mktime((2024, 2, 29, 12, 0, 0, 0, 0, -1))
    still = LineParser(YearResolver(reference=time.mktime((2026, 1, 10, 0, 0, 0, 0, 0, -1)))).parse(line)
    assert isinstance(still, Unparsed)  # 2026 and 2025 have none: more than a year back is not guessed


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


# --- hosts, journalctl text exports, other syslog names (issue 12 items 11, 12) --------------------

JOURNAL = Path(__file__).parent / "data" / "journal"
REAL_LOG = Path(__file__).parent / "data" / "postfix37-proxy-filter.log"


def test_every_event_carries_the_syslog_host():
    parser = LineParser(YearResolver(2026))
    events = [parser.parse(line) for line in REAL_LOG.read_text().splitlines()]
    found = [e for e in events if e is not None]
    assert len(found) > 20
    assert {e.host for e in found} == {"rw323"}
    mixed = [LineParser(YearResolver(2026)).parse(f"Nov 30 07:07:47 {h} postfix/qmgr[1]: ABCDEF123: removed")
             for h in ("mx1", "mx2.example.org")]
    assert [e.host for e in mixed] == ["mx1", "mx2.example.org"]


def test_journal_records_carry_their_hostname():
    rec = ('{"SYSLOG_IDENTIFIER":"postfix/qmgr","__REALTIME_TIMESTAMP":"1789228152000000","_HOSTNAME":"%s",'
           '"MESSAGE":"ABCDEF123: removed"}')
    assert LineParser().parse(rec % "mx7").host == "mx7"


@pytest.mark.parametrize("name", ["short-iso", "short-iso-precise", "short-full", "short-unix"])
def test_journalctl_text_exports_are_read(name):
    """Real `journalctl --file -o NAME` output (TZ=UTC): every Postfix line read, the record
    without a hostname counted as unparsed with its reason, the second instance read too."""
    parser = LineParser(YearResolver(2026))
    events = [parser.parse(line) for line in (JOURNAL / f"{name}.log").read_text().splitlines()]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ClientSeen", "QueueActive", "Delivery", "Removed", "Unparsed", "Delivery"]
    assert events[4].reason == "line without a hostname"
    assert events[0].time == pytest.approx(1795773600.000123 if "precise" in name or "unix" in name
                                           else 1795773600.0)
    assert events[5].host == "mx" and events[5].recipient == "carol@far2.example"


def test_journalctl_exports_in_a_local_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    full = [LineParser().parse(x) for x in (JOURNAL / "short-full-berlin.log").read_text().splitlines()]
    iso = [LineParser().parse(x) for x in (JOURNAL / "short-iso-precise-newyork.log").read_text().splitlines()]
    assert full[0].time == 1795773600.0  # `11:00:00 CET`
    assert iso[0].time == pytest.approx(1795773600.000123)  # `05:00:00.000123-0500`, whatever the local zone
    other_zone = "Fri 2026-11-27 10:00:00 JST mx postfix/qmgr[3004]: 4F1C52A0B3: removed"
    assert LineParser().parse(other_zone) == Unparsed(0.0, "impossible timestamp")


def test_a_line_without_a_hostname_is_counted_never_dropped():
    for line in ("Nov 27 10:00:01 postfix/smtpd[3005]: NOQUEUE: reject: RCPT from unknown[198.51.100.77]: 554 5.7.1 "
                 "<v@far.example>: Relay access denied; from=<s@example.org> to=<v@far.example> proto=ESMTP helo=<x>",
                 "2026-11-27T10:00:01+0000 postfix/qmgr[3004]: 4F1C52A0B3: removed"):
        assert LineParser(YearResolver(2026)).parse(line) == Unparsed(0.0, "line without a hostname")
    assert LineParser().parse("Nov 27 10:00:01 CRON[5]: (root) CMD (true)") is None


def test_postfix_lines_under_other_syslog_names_are_noticed():
    parser = LineParser(YearResolver(2026))
    lines = ["Nov 30 07:07:47 mx mail/smtpd[1]: 7060A20E1F6: client=unknown[81.2.69.160]",
             "Nov 30 07:07:47 mx mail/qmgr[2]: 7060A20E1F6: removed",
             "Nov 30 07:07:47 mx mail/smtpd[1]: connect from unknown[81.2.69.160]",
             "Nov 30 07:07:47 mx postfix-out/smtp[3]: 7060A20E1F6: to=<a@b.example>, relay=none, delay=1, "
             "status=deferred (x)",
             "Nov 30 07:07:47 mx dovecot/imap[4]: removed",
             "Nov 30 07:07:47 mx smtpd[5]: 7060A20E1F6: client=unknown[81.2.69.160]"]
    events = [parser.parse(line) for line in lines]
    assert events[:3] == [None, None, None] and type(events[3]).__name__ == "Delivery"
    assert parser.other_names == {"mail/smtpd": 1, "mail/qmgr": 1}


# --- before-queue filter (issue 12 item 8) ------------------------------------------------------------


def test_proxy_accept_ties_the_front_session_to_the_queue_file():
    """Postfix 3.7's real lines: `proxy-accept` has no NOQUEUE and no peer; the client is the one
    of the same smtpd's `NOQUEUE: client=` line."""
    parser = LineParser(YearResolver(2026))
    events = [parser.parse(line) for line in REAL_LOG.read_text().splitlines()]
    proxied = [e for e in events if type(e).__name__ == "ProxyAccept"]
    assert [(e.qid, e.client, e.client_name, e.sasl_user, e.host) for e in proxied] == [
        ("7060A20E1F6", "127.0.0.7", "unknown", None, "rw323"),
        ("7280F20F66A", "127.0.0.7", "unknown", None, "rw323"),
        ("74A2B20E1F6", "127.0.0.7", "unknown", None, "rw323")]
    filtered = [e for e in events if isinstance(e, ClientSeen)]
    assert {e.client for e in filtered} == {"127.0.0.1"}  # the filter's re-injection: not the client


def test_proxy_accept_variants():
    front = "Mar  3 10:00:00 gw postfix/smtpd[77]: "
    cases = [  # (NOQUEUE: client= line, proxy-accept line, expected (qid, client, sasl) or event kind)
        ("NOQUEUE: client=mail.example.net[2a00:1450:4001:80b::2005], sasl_method=PLAIN, sasl_username=ann",
         "proxy-accept: END-OF-MESSAGE: 250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: queued as "
         "4PbC4z6W5Qz3tG3; from=<a@example.net> to=<b@far.example> proto=ESMTP helo=<mail.example.net>",
         ("4PbC4z6W5Qz3tG3", "2a00:1450:4001:80b::2005", "ann")),
        ("NOQUEUE: client=unknown[81.2.69.160]",
         "NOQUEUE: proxy-accept: END-OF-MESSAGE from unknown[81.2.69.160]: 250 2.0.0 Ok: queued as DF66E940333; "
         "from=<a@example.net> to=<b@far.example> proto=ESMTP helo=<x>",
         ("DF66E940333", "81.2.69.160", None)),
        ("NOQUEUE: client=unknown[81.2.69.160]",  # a filter that names no queue file
         "proxy-accept: END-OF-MESSAGE: 250 2.0.0 Ok; from=<a@example.net> to=<b@far.example> proto=ESMTP helo=<x>",
         None),
        ("NOQUEUE: client=unknown[81.2.69.160]",  # the queue id only in the sender: not the filter's reply
         "proxy-accept: END-OF-MESSAGE: 250 2.0.0 Ok; from=<queued as ABCDEF123@x> to=<b@far.example> proto=ESMTP",
         None),
        ("connect from unknown[81.2.69.160]",  # the log starts mid-session
         "proxy-accept: END-OF-MESSAGE: 250 2.0.0 Ok: queued as DF66E940333; from=<a@b> to=<c@d> proto=ESMTP",
         "Unparsed"),
        ("NOQUEUE: client=unknown[81.2.69.160]",
         "proxy-reject: END-OF-MESSAGE: 554 5.7.0 Reject, id=31619-02 - spam; from=<> to=<b@far.example> proto=SMTP",
         None),
    ]
    for client, accept, want in cases:
        parser = LineParser(YearResolver(2026))
        assert parser.parse(front + client) is None
        event = parser.parse(front + accept)
        if want is None or want == "Unparsed":
            assert (type(event).__name__ if event else None) == want, accept
        else:
            assert (event.qid, event.client, event.sasl_user, event.host) == (*want, "gw")
    parser = LineParser(YearResolver(2026))  # another smtpd process's session is not this one's
    parser.parse(front + "NOQUEUE: client=unknown[81.2.69.160]")
    other = parser.parse("Mar  3 10:00:00 gw postfix/smtpd[78]: proxy-accept: END-OF-MESSAGE: 250 2.0.0 Ok: "
                         "queued as DF66E940333; from=<a@b> to=<c@d> proto=ESMTP")
    assert isinstance(other, Unparsed)


# --- New Year (issue 12 item 9) -----------------------------------------------------------------------


def _year(event):
    return time.gmtime(event.time).tm_year


def test_a_late_line_after_midnight_keeps_its_year_and_moves_nothing():
    parser = LineParser(YearResolver(2025))
    lines = ["Dec 31 23:59:58 h postfix/qmgr[1]: ABCDEF121: removed",
             "Jan  1 00:00:01 h postfix/qmgr[1]: ABCDEF122: removed",
             "Dec 31 23:59:59 h postfix/smtp[2]: ABCDEF123: removed",
             "Jan  1 00:00:02 h postfix/qmgr[1]: ABCDEF124: removed",
             "Dec 31 23:59:57 h postfix/smtp[3]: ABCDEF125: removed",
             "Jan  1 00:00:03 h postfix/qmgr[1]: ABCDEF126: removed",
             "Mar  5 10:00:00 h postfix/qmgr[1]: ABCDEF127: removed"]
    years = [_year(parser.parse(x.replace("smtp[", "qmgr["))) for x in lines]
    assert years == [2025, 2026, 2025, 2026, 2025, 2026, 2026]


def test_mtime_year_survives_lines_out_of_order():
    written = time.mktime((2026, 1, 1, 0, 5, 0, 0, 0, -1))
    parser = LineParser(YearResolver(reference=written))
    years = [_year(parser.parse(f"{stamp} h postfix/qmgr[1]: ABCDEF123: removed"))
             for stamp in ("Dec 31 23:59:58", "Jan  1 00:00:01", "Dec 31 23:59:59", "Jan  1 00:00:02")]
    assert years == [2025, 2026, 2025, 2026]


def test_explicit_year_still_rolls_over_after_a_gap_and_keeps_backward_jumps_in_the_year():
    parser = LineParser(YearResolver(2025))
    stamps = ["Aug 11 10:00:00", "Aug 10 09:00:00", "Dec 30 10:00:00", "Feb  2 10:00:00", "Oct  1 10:00:00"]
    years = [_year(parser.parse(f"{s} h postfix/qmgr[1]: ABCDEF123: removed")) for s in stamps]
    assert years == [2025, 2025, 2025, 2026, 2026]
