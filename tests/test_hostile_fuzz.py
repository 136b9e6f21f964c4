"""Fuzzing parse -> correlate -> decide -> report with hostile lines (the generators and invariants
are bench/fuzz.py's, which runs them for hours with atheris).

Invariants: nothing raises; an address that appears only in text the attacker wrote (HELO,
envelope addresses, message-id, Subject, remote replies, command tails) is never an event's client
nor the target of a client or subnet decision; every block target is a key Postfix's map accepts;
no line makes a regular expression backtrack for long.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relaywatch.config import Config
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.engine import replay
from relaywatch.model import Unparsed
from relaywatch.reports import report
from relaywatch.reports.html import render_html

BENCH = Path(__file__).parent.parent / "bench" / "fuzz.py"
_spec = importlib.util.spec_from_file_location("fuzz", BENCH)
fuzz = sys.modules["fuzz"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz)  # type: ignore[union-attr]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fuzz.hypothesis_inputs(), st.booleans())
def test_hostile_logs_keep_every_invariant(case, reports):
    lines, canary_free = case
    fuzz.run_lines(lines, canary_free, reports=reports)


def test_the_canary_check_is_not_vacuous():
    """The same template with the canary where Postfix writes the client is decided on."""
    template = next(t for t in fuzz.TEMPLATES if t[1].startswith("NOQUEUE: reject: RCPT from {name}[{ip}]: 554"))
    fields = {"qid": "4F1C52A0B3", "name": "unknown", "ip": fuzz.CANARY4, "port": "25", "rname": "mx",
              "rip": fuzz.RELAYS[0], "h1": "a@b.example", "h2": "c@d.example", "h3": "x"}
    with pytest.raises(fuzz.Violation, match="canary"):
        fuzz.run_lines([fuzz.fill(template, fields, 0)], canary_free=True, reports=False)


def test_worst_case_lines_parse_without_backtracking():
    parser = LineParser(YearResolver(2026))
    slowest, what, count = 0.0, "", 0
    for label, line in fuzz.worst_cases():
        start = time.perf_counter()
        parser.parse(line)
        elapsed = time.perf_counter() - start
        count += 1
        assert elapsed < 1.0, label  # measured: ~2 ms at worst; a backtracking regex takes seconds to years
        if elapsed > slowest:
            slowest, what = elapsed, label
    print(f"\n{count} crafted 8 KB lines: slowest parse {slowest * 1e3:.2f} ms ({what})")
    assert count > 400


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4),
    max_leaves=20)
journal_keys = st.sampled_from(["MESSAGE", "SYSLOG_IDENTIFIER", "__REALTIME_TIMESTAMP", "_SYSTEMD_UNIT", "_COMM",
                                "_EXE", "_UID", "__CURSOR"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(journal_keys, json_values | st.sampled_from(
    ["postfix/smtpd", "postfix@-.service", "smtpd", "1795773600000000",
     "NOQUEUE: reject: RCPT from unknown[8.8.8.8]: 554 5.7.1 <a@b>: Relay access denied;"])))
def test_any_journal_record_is_an_event_or_unparsed_never_an_exception(rec):
    event = LineParser(YearResolver(2026)).parse(json.dumps(rec))
    assert event is None or hasattr(event, "time")


@pytest.mark.parametrize("line", [
    '{"MESSAGE":' + "[" * 5000 + "]" * 5000 + "}",  # deeper than Python's recursion limit
    '{"__REALTIME_TIMESTAMP":"' + "9" * 400 + '","SYSLOG_IDENTIFIER":"postfix/smtpd","MESSAGE":"x"}',
    '{"__REALTIME_TIMESTAMP":1e400,"SYSLOG_IDENTIFIER":"postfix/smtpd","MESSAGE":"x"}',
    '{"__REALTIME_TIMESTAMP":"99999999999999999999","SYSLOG_IDENTIFIER":"postfix/smtpd",'
    '"MESSAGE":"NOQUEUE: reject: RCPT from unknown[203.0.113.5]: 554 5.7.1 <a@b>: Relay access denied;"}',
    "0001-01-01T00:00:00+14:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[203.0.113.5]: 554 5.7.1 "
    "<a@b>: Relay access denied;",
    "9999-12-31T23:59:59-14:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[203.0.113.5]: 554 5.7.1 "
    "<a@b>: Relay access denied;",
])
def test_lines_that_used_to_crash_the_parser_or_the_reports(line, tmp_path):
    """Found by fuzzing: RecursionError and OverflowError escaped the parser, and a time outside
    datetime's years 1..9999 crashed every report at the end of a replay."""
    assert isinstance(LineParser(YearResolver(2026)).parse(line), Unparsed)
    log = tmp_path / "hostile.log"
    log.write_text(line + "\n")
    result = replay([str(log)], Config())
    assert result.totals.unparsed == 1
    report.to_text(result)
    report.to_json(result)
    render_html(result, result.timeline)
