"""Parse-side fixes seen through a whole replay: New Year, journalctl exports, other syslog names."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from relaywatch.config import Config
from relaywatch.replay import replay

JOURNAL = Path(__file__).parent / "data" / "journal"
CLIENT = "81.2.69.160"  # global: the client rule's abuser


@pytest.fixture(autouse=True)
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.delenv("TZ")
    time.tzset()


def _stamp(t: float) -> str:
    g = time.gmtime(t)
    return f"{time.strftime('%b', g)} {g.tm_mday:2d} {time.strftime('%H:%M:%S', g)}"


def new_year_flood(tag: str = "postfix") -> list[str]:
    """40 relayed messages before midnight and 40 after, one every 3 s, from one client; several
    writers, so qmgr's last line of the old year (the only one stamped 23:59:59) is logged after
    the first line of the new."""
    midnight = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, -1))
    lines: list[tuple[float, str]] = []
    for i in range(80):
        t = midnight - 1.5 - 3 * (39 - i) if i < 40 else midnight + 1 + 3 * (i - 40)
        qid = f"{0xA0000 + i:X}AB"
        lines += [(t, f"{tag}/smtpd[100]: {qid}: client=unknown[{CLIENT}]"),
                  (t, f"{tag}/qmgr[9]: {qid}: from=<x{i}@spam.example>, size=900, nrcpt=1 (queue active)"),
                  (t, f"{tag}/smtp[200]: {qid}: to=<v{i}@far.example>, relay=mx.far.example[81.2.69.142]:25,"
                            " delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 ok)"),
                  (t + 1, f"{tag}/qmgr[9]: {qid}: removed")]
    lines.sort(key=lambda x: x[0])
    out = [f"{_stamp(t)} mx {text}" for t, text in lines]
    late = next(i for i, line in enumerate(out) if line.startswith("Dec 31 23:59:59") and line.endswith("removed"))
    first_jan = next(i for i, line in enumerate(out) if line.startswith("Jan"))
    out.insert(first_jan, out.pop(late))  # Dec 31 23:59:59 logged after Jan  1 00:00:01 (late < first_jan)
    assert out[first_jan - 1].startswith("Jan  1 00:00:01") and out[first_jan].startswith("Dec 31 23:59:59")
    return out


def test_a_flood_across_new_year_is_blocked_with_year(tmp_path):
    log = tmp_path / "maillog"
    log.write_text("\n".join(new_year_flood()) + "\n")
    result = replay([str(log)], Config(), year=2025)
    blocks = [d for d in result.decisions if d.action == "block" and d.target == CLIENT]
    assert blocks, result.decisions
    assert time.gmtime(blocks[0].time).tm_year == 2026
    assert result.totals.unparsed == 0 and result.totals.relayed == 80


def test_a_flood_across_new_year_is_blocked_with_the_year_from_mtime(tmp_path):
    log = tmp_path / "maillog"
    log.write_text("\n".join(new_year_flood()) + "\n")
    written = time.mktime((2026, 1, 1, 0, 5, 0, 0, 0, -1))
    os.utime(log, (written, written))
    result = replay([str(log)], Config())
    assert any(d.action == "block" and d.target == CLIENT for d in result.decisions)


@pytest.mark.parametrize("name", ["short-iso", "short-iso-precise", "short-full", "short-unix"])
def test_journalctl_exports_replay_and_count_the_line_without_a_hostname(name):
    result = replay([str(JOURNAL / f"{name}.log")], Config(), year=2026)
    assert result.totals.unparsed == 1
    assert "postfix/smtpd[3005]" in result.totals.unparsed_samples[0]
    assert result.totals.relayed == 1


def test_a_log_of_postfix_under_another_syslog_name_says_which_key_to_set(tmp_path, caplog):
    log = tmp_path / "maillog"
    log.write_text("\n".join(new_year_flood(tag="mail")) + "\n")
    with caplog.at_level(logging.WARNING, logger="relaywatch.replay"):
        result = replay([str(log)], Config(), year=2025)
    assert result.totals.relayed == 0
    text = caplog.text
    assert "no line of this log was Postfix's" in text
    assert "mail/smtpd (80 lines)" in text and "mail/qmgr" in text and "mail/smtp" in text
    assert 'syslog_names = ["postfix", "mail"]' in text and "[postfix]" in text
    configured = replay([str(log)], Config(syslog_names=("mail",)), year=2025)
    assert any(d.action == "block" and d.target == CLIENT for d in configured.decisions)


def test_a_second_instance_is_read_without_configuration(tmp_path, caplog):
    log = tmp_path / "maillog"
    log.write_text("\n".join(new_year_flood(tag="postfix-out")) + "\n")
    with caplog.at_level(logging.WARNING, logger="relaywatch.replay"):
        result = replay([str(log)], Config(), year=2025)
    assert result.totals.relayed == 80 and "syslog" not in caplog.text


@pytest.mark.parametrize("enabled", [True, False])
def test_a_replay_leaves_the_cycle_collector_as_it_found_it_even_when_the_log_breaks(tmp_path, enabled):
    """The replay switches Python's collector off while it reads (collecting only past CYCLES_AFTER new
    container objects); whoever called it (a test, the daemon's process) gets it back as it was, also on
    an error."""
    import gc
    import gzip

    from relaywatch.model import RelaywatchError

    whole = gzip.compress(("\n".join(new_year_flood()) + "\n").encode() * 50)
    broken = tmp_path / "mail.log.gz"
    broken.write_bytes(whole[: len(whole) // 2])  # cut mid-stream: reading fails part way
    good = tmp_path / "mail.log"
    good.write_text("\n".join(new_year_flood()) + "\n")
    (gc.enable if enabled else gc.disable)()
    try:
        assert replay([str(good)], Config(), year=2025).decisions
        assert gc.isenabled() is enabled
        with pytest.raises(RelaywatchError, match="cannot read further"):
            replay([str(broken)], Config(), year=2025)
        assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_the_collector_never_walks_what_a_replay_built_and_a_callers_frozen_objects_stay_frozen(tmp_path):
    """With the collector off while it reads, all a replay builds waits in the youngest generation;
    it moves to the oldest unwalked, so that no collection after the loop walks a flood's windows again.
    Objects the caller froze stay frozen (the daemon freezes what it built)."""
    import gc

    lines = []
    for i in range(3000):  # 3000 distinct clients, one relayed message each: thousands of window keys
        qid, client = f"{0xB0000 + i:X}CD", f"2a0b:4000:48:{i:x}::1"
        stamp = f"Mar 16 0{i // 1000}:{i % 1000 // 60 % 60:02d}:{i % 60:02d}"
        lines += [f"{stamp} mx postfix/smtpd[100]: {qid}: client=unknown[{client}]",
                  f"{stamp} mx postfix/qmgr[9]: {qid}: from=<s{i}@spam.example>, size=900, nrcpt=1 (queue active)",
                  f"{stamp} mx postfix/smtp[200]: {qid}: to=<v{i}@far.example>, relay=mx.far.example[81.2.69.142]:25,"
                  " delay=0.5, delays=0.1/0/0.2/0.2, dsn=2.0.0, status=sent (250 ok)",
                  f"{stamp} mx postfix/qmgr[9]: {qid}: removed"]
    log = tmp_path / "mail.log"
    log.write_text("\n".join(lines) + "\n")
    walked: list[int] = []

    def record(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            walked.append(sum(gc.get_count()[: info["generation"] + 1]))

    gc.collect()
    gc.callbacks.append(record)
    try:
        result = replay([str(log)], Config(), year=2026)
    finally:
        gc.callbacks.remove(record)
    assert result.totals.relayed == 3000
    assert max(walked, default=0) < 2000, walked  # not the replay's live set (> 10,000 objects)
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        replay([str(log)], Config(), year=2026)
        assert gc.get_freeze_count() > frozen // 2  # some died since (caches cleared), none was unfrozen
    finally:
        gc.unfreeze()
