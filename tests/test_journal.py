"""The journal source on a real journal: written by Debian's systemd-journal-remote from
export-format entries (tests/support/journal.py) and read by the real journalctl; no journald runs."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pytest

from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.model import ClientSeen, Delivery, Reject, RelaywatchError
from relaywatch.sources import files as sources
from relaywatch.sources.journal import JournalFollower
from support.follow import collect
from support.journal import OLD_BOOT, Journal, export_entry, needs_journal

DATA = Path(__file__).parent / "data" / "journal"


@pytest.fixture
def journal(tmp_path):
    j = Journal(tmp_path / "x.journal")
    yield j
    j.close()


@pytest.fixture
def jfollow(journal):
    made: list[JournalFollower] = []

    def make(position: dict | None, **kwargs) -> JournalFollower:
        f = JournalFollower(position, files=[str(journal.path)], **kwargs)
        made.append(f)
        return f

    yield make
    for f in made:
        f.close()


def messages(lines: list[str]) -> list[str]:
    return [json.loads(line)["MESSAGE"] for line in lines]


@needs_journal
def test_journal_follows_postfix_records_live_and_drops_forged_ones(journal, jfollow, caplog):
    journal.send(export_entry("before the start"))
    f = jfollow(None)
    assert f.source_name == "journal"
    assert f.read(10, timeout=0.2).lines == []  # a first start begins at the end, like tail -f
    with caplog.at_level(logging.WARNING, "relaywatch.follow"):
        journal.send(
            export_entry("4F1C52A0B2: client=unknown[192.0.2.1]"),
            export_entry("Accepted publickey for root", ident="sshd", unit="ssh.service"),
            export_entry("4F1C52A0B9: client=unknown[192.0.2.66]", unit="session-3.scope"),  # logger -t postfix/smtpd
            export_entry("4F1C52A0B3: removed", ident="postfix/qmgr", unit=None),  # unit lost (systemd#2913)
            export_entry("4F1C52A0B4: removed", ident="postfix-out/qmgr", unit="postfix@postfix-out.service"),
        )
        lines, position = collect(f, 3)
    assert messages(lines) == ["4F1C52A0B2: client=unknown[192.0.2.1]", "4F1C52A0B3: removed", "4F1C52A0B4: removed"]
    assert "session-3.scope" in caplog.text
    assert position["cursor"] == journal.cursors()[-1]
    parser = LineParser(YearResolver(2026), ("postfix",))
    assert [type(parser.parse(line)).__name__ for line in lines] == ["ClientSeen", "Removed", "Removed"]


@needs_journal
def test_journal_resumes_exactly_across_a_reboot_and_past_ten_records(journal, jfollow):
    # Two traps of journalctl 252: -f means "this boot only" (without -m), and -f with
    # a cursor shows only 10 records after it (without --no-tail).
    journal.send(*(export_entry(f"old boot {i}", boot=OLD_BOOT) for i in range(15)))
    journal.send(*(export_entry(f"this boot {i}") for i in range(15)))
    expected = [f"old boot {i}" for i in range(3, 15)] + [f"this boot {i}" for i in range(15)]
    f = jfollow({"cursor": journal.cursors()[2]})
    lines, position = collect(f, 16, max_lines=4, deadline_s=5)
    f.close()
    assert len(lines) >= 16  # from one journalctl: more than 10 records after its cursor
    seen = messages(lines)
    deadline = time.monotonic() + 10
    while len(seen) < len(expected) and time.monotonic() < deadline:  # a new follower every two batches
        f = jfollow(position)
        for _ in range(2):
            if len(seen) < len(expected):
                batch = f.read(4, timeout=1)
                seen += messages(batch.lines)
                position = batch.position
        f.close()
    assert seen == expected


@needs_journal
def test_journal_restarts_a_journalctl_that_died_from_the_last_cursor(journal, jfollow, caplog):
    journal.send(export_entry("start"))
    f = jfollow(None)
    journal.send(export_entry("one"))
    assert messages(collect(f, 1)[0]) == ["one"]
    f._proc.kill()
    journal.send(export_entry("two"), export_entry("three"))
    with caplog.at_level(logging.WARNING, "relaywatch.follow"):
        assert messages(collect(f, 2)[0]) == ["two", "three"]
    assert "restarting it from the last cursor" in caplog.text


@needs_journal
def test_a_long_non_utf8_message_stays_one_parseable_line(journal, jfollow):
    journal.send(export_entry("start"))
    f = jfollow(None)
    text = b"NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 554 5.7.1 helo=<" + b"\xe9" * 2500 + b">"
    journal.send(export_entry(text))
    [line] = collect(f, 1)[0]
    assert len(line) < sources.MAX_LINE
    assert json.loads(line)["MESSAGE"].startswith("NOQUEUE: reject: RCPT from unknown[192.0.2.7]: 554")


@needs_journal
def test_a_bad_stored_cursor_is_a_clear_error(journal, jfollow):
    journal.send(export_entry("start"))
    f = jfollow({"cursor": "not a cursor"})
    with pytest.raises(RelaywatchError, match="cannot read the journal: Failed to seek to cursor"):
        f.read(10, timeout=5)


def test_an_unreadable_journal_is_a_clear_error(tmp_path):
    with pytest.raises(RelaywatchError, match="cannot read the journal: Failed to open files: No such file"):
        JournalFollower(None, files=[str(tmp_path / "none.journal")])
    with pytest.raises(RelaywatchError, match="not found: install systemd's journalctl"):
        JournalFollower(None, journalctl=str(tmp_path / "no-journalctl"))


@needs_journal
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to act as nobody")
def test_a_journal_without_permission_says_which_group_to_join(journal, tmp_path):
    journal.send(export_entry("secret"))
    os.chmod(journal.path, 0o600)
    as_nobody = tmp_path / "journalctl-as-nobody"
    as_nobody.write_text('#!/bin/sh\nexec setpriv --reuid=nobody --regid=nogroup --clear-groups journalctl "$@"\n')
    as_nobody.chmod(0o755)
    with pytest.raises(RelaywatchError, match="Permission denied: run relaywatch as root or with the systemd-journal"):
        JournalFollower(None, journalctl=str(as_nobody), files=[str(journal.path)])


def test_the_recorded_journal_stream_parses():
    """tests/data/journal/postfix.json: `journalctl -o json` output (see the README there)."""
    parser = LineParser(YearResolver(2026), ("postfix",))
    events = [parser.parse(line) for line in (DATA / "postfix.json").read_text().splitlines()]
    kinds = {i: type(e).__name__ if e else None for i, e in enumerate(events)}
    assert {i: kinds[i] for i in (1, 3, 4, 5, 7, 8, 9)} == {
        1: "ClientSeen", 3: "QueueActive", 4: "Delivery", 5: "Removed", 7: "Reject", 8: None, 9: "Reject"}
    seen, sent, denied, odd = events[1], events[4], events[7], events[9]
    assert isinstance(seen, ClientSeen) and seen.client == "203.0.113.9" and seen.time == 1795773600.25
    assert isinstance(sent, Delivery) and sent.status == "sent" and sent.recipient == "bob@example.com"
    assert isinstance(denied, Reject) and denied.relay_denied and denied.client == "203.0.113.50"
    assert isinstance(odd, Reject) and odd.relay_denied and "\ufffd" in odd.reply  # MESSAGE: a list of byte values
