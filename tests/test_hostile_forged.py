"""Forged lines: records that claim to be Postfix's but were written by someone else.

Any local user can `logger -t postfix/smtpd 'NOQUEUE: reject: RCPT from unknown[192.0.2.10]: ...'`
(or `postlog -t`, or write to /dev/log from a web app). SYSLOG_IDENTIFIER is the sender's
choice; journald's own fields (_SYSTEMD_UNIT, _COMM, _EXE, _UID) are not. The stream
(tests/support/hostile_journal.py, recorded by systemd-journal-remote and `journalctl -o json` in
tests/data/journal/forged.json.gz) holds a real relay flood and six forgers' floods.
"""

from __future__ import annotations

import gzip
import ipaddress
import json
import logging
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from relaywatch.config import Config
from relaywatch.core.parse import LineParser, YearResolver, journal_forgery
from relaywatch.core.policy import Detector
from relaywatch.engine import Pipeline
from relaywatch.model import Decision, Forged, RelayDenied, Relayed, Unparsed
from relaywatch.replay import replay
from relaywatch.sources.journal import JournalFollower
from relaywatch.store.sqlite import Store
from support import hostile_journal as hj

RECORDED = Path(__file__).parent / "data" / "journal" / "forged.json.gz"
REMOTE = "/lib/systemd/systemd-journal-remote"
needs_journal = pytest.mark.skipif(not (Path(REMOTE).exists() and shutil.which("journalctl")),
                                   reason="needs systemd-journal-remote and journalctl")


def recorded() -> list[str]:
    return gzip.decompress(RECORDED.read_bytes()).decode().splitlines()


def targets_victim(d: Decision) -> bool:
    if d.kind not in ("client", "subnet"):
        return hj.VICTIM in d.target
    return ipaddress.ip_address(hj.VICTIM) in ipaddress.ip_network(d.target)


def run(lines: list[str], parser: LineParser | None = None) -> tuple[Pipeline, list[Decision]]:
    pipeline = Pipeline(Config(), Store(None), persist_counts=False)
    parser = parser or LineParser(YearResolver(2026))
    decisions = [d for line in lines for d in pipeline.feed(line, parser)]
    return pipeline, decisions


def test_a_replayed_journal_with_forged_floods_blocks_only_the_real_flood(caplog):
    with caplog.at_level(logging.WARNING, "relaywatch.engine"):
        result = replay([str(RECORDED)], Config())
    assert not [d for d in result.decisions if targets_victim(d)]
    # the real flood is seen whole: the forged `QID: removed` lines did not hide any of it
    [block] = [d for d in result.decisions if d.action == "block"]
    assert (block.kind, block.target, block.count) == ("client", hj.FLOODER, 60)
    assert result.totals.relayed == 70 and result.totals.relay_denied == 0
    assert result.totals.forged == hj.forged_count() == 610
    assert result.totals.unparsed == 0
    assert "journal records claiming to be Postfix's were written by another program" in caplog.text
    print(f"\nforged journal records rejected: {result.totals.forged} of {result.totals.lines}")


def test_each_forger_is_caught_by_a_journald_field():
    parser = LineParser(YearResolver(2026))
    caught: dict[str, int] = {}
    names = {json.dumps(fields, sort_keys=True): name for name, fields in hj.FORGERS.items()}
    for line in recorded():
        rec = json.loads(line)
        trusted = {k: rec[k] for k in ("_SYSTEMD_UNIT", "_COMM", "_EXE", "_UID") if k in rec}
        name = names.get(json.dumps(trusted, sort_keys=True))
        event = parser.parse(line)
        if name is None:
            assert not isinstance(event, Forged), line
        else:
            assert isinstance(event, Forged), line
            caught[name] = caught.get(name, 0) + 1
    assert set(caught) == set(hj.FORGERS)
    assert parser.journal_uids == {"0", "107"}  # learned from the records of postfix@-.service


def test_the_same_flood_written_by_postfix_would_get_the_victim_blocked():
    """The control: the forgers' records are dangerous, only their journald fields stop them."""
    lines = []
    for line in recorded():
        rec = json.loads(line)
        forged = not rec.get("_EXE", "").startswith("/usr/lib/postfix/")
        if forged and not rec["MESSAGE"].startswith("5A"):  # not the lines that hide the real flood
            for k in ("_SYSTEMD_UNIT", "_COMM", "_EXE", "_UID"):
                rec.pop(k, None)
            rec.update(hj.real(rec["SYSLOG_IDENTIFIER"]))
        lines.append(json.dumps(rec))
    _, decisions = run(lines)
    assert {(d.action, d.kind) for d in decisions if targets_victim(d)} == {("block", "client"), ("alert", "client")}


def test_probing_the_relay_first_does_not_buy_an_hour_without_a_block():
    """Found by the control above: the relay_probe alert on a client silenced its block for an hour."""
    detector = Detector()
    t = 1795773600.0
    decisions = [d for n in range(20)
                 for d in detector.observe(RelayDenied(t + n, "203.0.113.66", None), "probe").decisions]
    assert [(d.action, d.rule) for d in decisions] == [("alert", "relay_probe")]
    relayed = [Relayed(t + 30 + n, f"5A{n:08X}", "203.0.113.66", None, "a@b.example", f"u{n}@c.example",
                       "c.example", "sent") for n in range(60)]
    decisions = [d for fact in relayed for d in detector.observe(fact, "relay").decisions]
    assert ("block", "client", "203.0.113.66") in [(d.action, d.kind, d.target) for d in decisions]


def test_journal_uids_given_by_the_admin_replace_the_learned_ones():
    parser = LineParser(YearResolver(2026), journal_uids=[0, 73])  # mail_owner is 73 on that host
    first = recorded()[0]  # from postfix@-.service, uid 107: the unit vouches for it
    assert not isinstance(parser.parse(first), (Unparsed, Forged))
    assert parser.journal_uids == {"0", "73"}  # nothing learned when the admin said
    rec = {"_UID": "107", "_COMM": "smtpd"}  # journald lost the unit: the user decides
    assert journal_forgery(rec, parser.journal_uids) == "_UID='107'"
    assert journal_forgery(rec, {"0", "107"}) is None


@pytest.mark.parametrize("fields, why", [
    ({"_SYSTEMD_UNIT": "postfix@-.service", "_COMM": "smtpd", "_EXE": "/usr/lib/postfix/sbin/smtpd"}, None),
    ({"_SYSTEMD_UNIT": "postfix.service", "_COMM": "smtpd", "_EXE": "/usr/libexec/postfix/smtpd"}, None),
    ({"_EXE": "/usr/lib/postfix/bin/smtpd", "_UID": "73"}, None),  # JRN (FORMATS.md), uid 73 given
    ({"_COMM": "error", "_UID": "0"}, None),  # the retry service is the error program
    ({"_COMM": "postsuper", "_EXE": "/usr/sbin/postsuper", "_UID": "0"}, None),
    ({}, None),  # nothing to go by (the live follower before it passes these fields)
    ({"_SYSTEMD_UNIT": "user@1000.service"}, "_SYSTEMD_UNIT='user@1000.service'"),
    ({"_SYSTEMD_UNIT": ["postfix@-.service", "x"]}, "_SYSTEMD_UNIT=['postfix@-.service', 'x']"),
    ({"_COMM": "logger"}, "_COMM='logger'"),
    ({"_COMM": "smtpd", "_EXE": "/tmp/postfix/smtpd"}, "_EXE='/tmp/postfix/smtpd'"),
    ({"_COMM": "smtpd", "_EXE": "/usr/sbin/logger"}, "_EXE='/usr/sbin/logger'"),
    ({"_COMM": "postlog", "_EXE": "/usr/sbin/postlog"}, "_COMM='postlog'"),
    ({"_UID": "1000"}, "_UID='1000'"),
    ({"_UID": 1000}, "_UID=1000"),
])
def test_journal_forgery(fields, why):
    assert journal_forgery(fields, {"0", "73"}) == why


@needs_journal
def test_the_recording_is_what_journalctl_makes_of_the_stream(tmp_path):
    path = tmp_path / "forged.journal"
    subprocess.run([REMOTE, f"--output={path}", "-"], input=hj.export(), check=True, capture_output=True)
    out = subprocess.run(["journalctl", f"--file={path}", "-o", "json"], check=True, capture_output=True).stdout
    keys = ("__REALTIME_TIMESTAMP", "SYSLOG_IDENTIFIER", "MESSAGE", "_SYSTEMD_UNIT", "_COMM", "_EXE", "_UID")
    fresh = [[json.loads(line).get(k) for k in keys] for line in out.decode().splitlines()]
    assert fresh == [[json.loads(line).get(k) for k in keys] for line in recorded()]


@needs_journal
def test_the_live_journal_source_rejects_every_forger(tmp_path):
    path = tmp_path / "forged.journal"
    subprocess.run([REMOTE, f"--output={path}", "-"], input=hj.export(), check=True, capture_output=True)
    out = subprocess.run(["journalctl", f"--file={path}", "-n", "1", "-o", "json"], check=True,
                         capture_output=True).stdout
    last = json.loads(out)["__CURSOR"]
    follower = JournalFollower({"cursor": None}, files=[str(path)])
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            batch = follower.read(2000, timeout=0.5)
            lines += batch.lines
            if batch.position["cursor"] == last:
                break
    finally:
        follower.close()
    assert batch.position["cursor"] == last
    _, decisions = run(lines)
    assert not [d for d in decisions if targets_victim(d)]
    assert [(d.kind, d.target) for d in decisions if d.action == "block"] == [("client", hj.FLOODER)]
