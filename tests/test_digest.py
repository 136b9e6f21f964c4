"""The daily digest: DayStats and its text, the sample day through a Pipeline, the daemon's schedule,
and `relaywatch digest --send` against a real HTTP endpoint on 127.0.0.1."""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from datetime import date, datetime, timedelta
from pathlib import Path

from relaywatch import config as config_mod
from relaywatch.config import Config
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.daemon import Daemon
from relaywatch.engine import Pipeline
from relaywatch.model import Decision, RelayDenied
from relaywatch.notify.notices import HOST
from relaywatch.reports import digest
from relaywatch.reports.daily import DailyRecord
from relaywatch.reports.digest import DayStats, digest_text, unusual
from relaywatch.reports.report import BoundedCounter
from relaywatch.sources import files as sources
from relaywatch.store.sqlite import Store
from support.configs import daemon_sections, write_config
from support.facts import relayed

SAMPLE = Path(__file__).parent.parent / "relaywatch" / "data" / "sample-2003-03-16.log.gz"
DAY = "2024-05-14"
T0 = digest.day_bounds(DAY)[0] + 9 * 3600  # 09:00 local


def stats_with(attempts: int, failed: int, domain: str = "x.example") -> DayStats:
    stats = DayStats(DAY)
    for i in range(attempts):
        status = "deferred" if i < failed - failed // 3 else "bounced" if i < failed else "sent"
        stats.add(relayed(T0 + i, qid=f"Q{i}", domain=domain, status=status))
    return stats


def test_a_destination_deferring_half_our_mail_is_unusual_and_less_is_not():
    assert any("x.example deferred or bounced 10 of 20" in line and "blocklist" in line
               for line in unusual(stats_with(20, 10)))
    assert not unusual(stats_with(20, 9))  # 45 %
    assert not unusual(stats_with(19, 19))  # too few attempts to tell
    title, body = digest_text(stats_with(40, 30))
    assert title == "relaywatch: x.example refused 75% of our mail - digest 2024-05-14: 40 relayed, 0 blocks, 1 unusual"
    assert "check x.example's replies" in body and "30 of 40 first delivery attempts (75%)" in body
    assert "first attempt: 10 sent, 20 deferred, 10 bounced" in body


def test_a_block_is_not_enforced_only_when_mail_is_queued_after_it():
    stats = DayStats(DAY)
    stats.block("client", "203.0.113.5", T0)
    stats.block("subnet", "218.144.0.0/16", T0)
    stats.block("sasl_user", "alice", T0, until=T0 + 3600)
    stats.add(relayed(T0 + 10, "203.0.113.5", qid="Q10", queued=T0 + 30))  # a session open at the block: grace
    stats.add(relayed(T0 + 11, "218.144.9.9", qid="Q11", queued=T0 - 5))  # queued before it, delivered after
    stats.add(relayed(T0 + 12, "198.51.100.1", qid="Q12", sasl="alice", queued=T0 + 4000))  # after the block expired
    stats.add(relayed(T0 + 13, "2001:db8::1", qid="Q13", queued=T0 + 900))  # another family, not in the subnet
    assert not unusual(stats)
    stats.add(relayed(T0 + 900, "218.144.7.7", qid="Q900", queued=T0 + 600))
    stats.add(relayed(T0 + 901, "218.144.7.8", qid="Q901", queued=T0 + 700))
    [line] = unusual(stats)
    assert line.startswith("the block of subnet 218.144.0.0/16 at 09:00 did not stop it: 2 relayed recipients")
    assert "relaywatch audit" in line


def test_relay_refusal_volume_is_unusual_from_the_threshold():
    stats = DayStats(DAY)
    for i in range(digest.DENIED_NOTABLE - 1):
        stats.add(RelayDenied(T0 + i, "211.72.97.40" if i % 2 else f"198.51.100.{i % 250}", None))
    assert not unusual(stats)
    stats.add(RelayDenied(T0, "211.72.97.40", None))
    [line] = unusual(stats)
    assert line.startswith(f"{digest.DENIED_NOTABLE} relay attempts refused (50 from 211.72.97.40)")


def test_memory_stays_bounded_with_many_distinct_clients_and_the_heavy_hitters_survive():
    stats = DayStats(DAY, cap=1000)
    for i in range(30_000):
        stats.add(relayed(T0 + i, f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", qid=f"Q{i}", domain=f"d{i}.example"))
        if i % 10 == 0:
            stats.add(relayed(T0 + i, "218.144.1.1", qid=f"Q{i}", domain="hanmail.net", status="deferred",
                              sender="journeypark@hananet.net"))
    assert all(len(c.counts) <= 1000 for c in stats.tables.values()) and len(stats.status.rows) <= 1000
    assert stats.tables["clients"].top(1) == [("218.144.1.1", 3000)]
    assert stats.status.rows["hanmail.net"] == [0, 3000, 0]
    saved = stats.to_dict(keep=50)
    assert len(json.dumps(saved)) < 20_000 and saved["approximate"]
    title, body = digest_text(DayStats.from_dict(json.loads(json.dumps(saved))))
    assert "hanmail.net deferred or bounced 3,000 of 3,000" in body and "approximate" in body


def test_stored_and_restored_says_the_same():
    stats = stats_with(30, 20)
    stats.add(relayed(T0 + 50, "203.0.113.5", qid="Q50", sasl="zebra", sender="\x1b[31mevil\nline@x.example"))
    stats.block("client", "203.0.113.5", T0 - 3600)
    stats.add(relayed(T0 + 51, "203.0.113.5", qid="Q51", queued=T0 + 51))
    stats.held = 7
    again = DayStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert digest_text(again) == digest_text(stats)
    body = digest_text(stats)[1]
    assert "queued messages held: 7" in body and "\x1b" not in body and "?[31mevil?line@x.example" in body


def test_the_sample_day_digest_names_the_flood_its_destination_and_the_block():
    store = Store(None)
    daily = DailyRecord(DayStats("2003-03-16"), Config().block_s)
    pipeline = Pipeline(Config(), store, persist_counts=False, sinks=(daily,))
    parser = LineParser(YearResolver(2003))
    for line in sources.read_lines(str(SAMPLE)):
        pipeline.feed(line, parser)
    pipeline.flush()
    stats = daily.day
    assert daily.finished == [] and stats.day == "2003-03-16"
    title, body = digest_text(stats, store.decisions(stats.start, stats.end))
    # the worst event leads: replay enforces nothing, so the block did not hold
    assert title.startswith("relaywatch: block of subnet 218.144.0.0/16 did not hold - digest 2003-03-16: "
                            "2,700 relayed, 1 block")
    assert stats.tables["senders"].top(1) == [("journeypark@hananet.net", 2403)]
    assert "\n     2,403  journeypark@hananet.net\n" in body
    assert "hanmail.net deferred or bounced" in body and "check hanmail.net's replies" in body
    assert "block subnet 218.144.0.0/16" in body
    # replay enforces nothing: the flood went on after the block, and the digest says so
    assert "the block of subnet 218.144.0.0/16 at 02:00 did not stop it" in body


def test_the_pipeline_rolls_the_day_over_at_local_midnight():
    midnight = digest.day_bounds(DAY)[1]
    daily = DailyRecord(DayStats(DAY), Config().block_s)
    pipeline = Pipeline(Config(), Store(None), persist_counts=False, sinks=(daily,))
    daily.limit = midnight + 3600  # the daemon's "now + 1 h": a forged far-future date ends no day
    parser = LineParser(YearResolver())
    for t, line in ((midnight - 1, "q1"), (midnight + 86400 * 400, "q0"), (midnight + 1, "q2")):
        stamp = datetime.fromtimestamp(t).astimezone().isoformat()
        pipeline.feed(f"{stamp} mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[198.51.100.4]: 554 5.7.1 "
                      f"<{line}@x.example>: Relay access denied; from=<a@b.example> to=<{line}@x.example> "
                      "proto=ESMTP helo=<x>", parser)
    [finished] = daily.finished
    assert (finished.day, finished.relay_denied) == (DAY, 2)
    assert (daily.day.day, daily.day.relay_denied) == ((date.fromisoformat(DAY) + timedelta(days=1)).isoformat(), 1)


def _message(qid: str, t: float, rcpt: str, status: str) -> str:
    stamp = datetime.fromtimestamp(t).astimezone().isoformat()
    return (f"{stamp} mx postfix/smtpd[10]: {qid}: client=unknown[203.0.113.50]\n"
            f"{stamp} mx postfix/qmgr[11]: {qid}: from=<news@woodelf.org>, size=900, nrcpt=1 (queue active)\n"
            f"{stamp} mx postfix/smtp[12]: {qid}: to=<{rcpt}>, relay=mx.blocky.example[192.0.2.25]:25, delay=1,"
            f" status={status} (host mx.blocky.example said: 450 4.7.1 listed at a blocklist)\n")


def test_the_daemon_sends_yesterdays_digest_at_the_configured_time_once(tmp_path, sink):
    maillog, db = tmp_path / "mail.log", tmp_path / "state.db"
    cfg_path = write_config(tmp_path / "rw.toml", daemon_sections(tmp_path, maillog=maillog, database=db),
                            {"postfix": {"local_domains": ["woodelf.org"]},
                             "notify": {"urls": [sink.url("json", "/digest")], "coalesce": "1s", "digest_at": "00:00"}},
                            mode=0o600)
    cfg = config_mod.load(cfg_path)
    now = time.time()
    yesterday = (date.today() - timedelta(days=1)).isoformat()
    noon = digest.day_bounds(yesterday)[0] + 12 * 3600
    daemon = Daemon(str(cfg_path), cfg, clock=lambda: noon)  # started yesterday
    try:
        maillog.write_text("".join(_message(f"{0xA00000 + i:X}", noon + i, f"u{i}@blocky.example",
                                            "deferred" if i % 4 else "sent") for i in range(24)))
        for _ in range(20):
            if daemon.step() and daemon.daily.day.relayed:
                break
        assert daemon.daily.day.day == yesterday and daemon.daily.day.relayed == 24
        daemon.housekeeping(now)  # the log is read up to now: yesterday is over
        assert daemon.store.days.get(yesterday)["relayed"] == 24
        assert daemon.store.days.digest_sent() == yesterday
        [payload] = sink.wait_for("/digest", 1)
        daemon.housekeeping(now + 60)
    finally:
        daemon.close()
    assert payload["title"] == (f"relaywatch@{HOST}: blocky.example refused 75% of our mail - digest {yesterday}: "
                                "24 relayed, 0 blocks, 1 unusual")
    assert payload["type"] == "warning"
    assert "blocky.example deferred or bounced 18 of 24" in payload["message"]
    again = Daemon(str(cfg_path), cfg)  # a restart: sent already
    try:
        again.step()
        again.housekeeping(time.time())
    finally:
        again.close()
    time.sleep(0.3)
    assert len(sink.to("/digest")) == 1


def test_relaywatch_digest_send_reaches_a_real_http_endpoint(tmp_path, sink):
    db = tmp_path / "state.db"
    store = Store(db)
    stats = stats_with(25, 20, "hanmail.net")
    stats.add(relayed(T0 + 100, "218.144.108.161", qid="Q100", sender="journeypark@hananet.net"))
    stats.held = 3
    block = Decision(T0 + 100, "block", "client", "218.144.108.161", "client", 60, 600)
    store.days.put(DAY, stats.to_dict())
    store.commit_batch([], [block, Decision(T0 + 86400, "block", "client", "192.0.2.99", "client", 60, 600)])
    store.close()
    cfg = write_config(tmp_path / "rw.toml", {"state": {"database": db},
                                              "notify": {"urls": [sink.url("json", "/hook")]}})
    run = [sys.executable, "-m", "relaywatch", "digest", "-c", str(cfg)]
    done = subprocess.run([*run, "--day", DAY, "--send"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [payload] = sink.to("/hook")
    assert payload["title"] == (f"relaywatch@{HOST}: hanmail.net refused 80% of our mail - digest {DAY}: "
                                "26 relayed, 1 block, 1 unusual")
    assert payload["type"] == "warning"
    body = payload["message"]
    assert "block client 218.144.108.161" in body and "192.0.2.99" not in body  # the next day's block is not in it
    assert "queued messages held: 3" in body and "check hanmail.net's replies" in body
    assert body in done.stdout and "sent   json://127.0.0.1" in done.stderr
    missing = subprocess.run([*run, "--day", "2024-05-01"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and f"recorded days: {DAY}" in missing.stderr
    bad = subprocess.run([*run, "--day", "yesterday"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--day" in bad.stderr


def test_the_title_leads_with_the_worst_event():
    quiet = DayStats(DAY)
    quiet.add(relayed(T0 + 1, qid="Q1"))
    assert digest_text(quiet)[0] == f"relaywatch: a quiet day - digest {DAY}: 1 relayed, 0 blocks"
    blocks = [Decision(T0 + 1, "block", "client", "203.0.113.5", "client", 60, 600),
              Decision(T0 + 2, "block", "subnet", "218.144.0.0/16", "wide_subnet", 400, 600)]
    assert digest_text(quiet, blocks)[0].startswith("relaywatch: blocked client 203.0.113.5 (+1 more) - digest")
    quiet.block("client", "203.0.113.5", T0)
    quiet.add(relayed(T0 + 2, "203.0.113.5", qid="Q2", queued=T0 + 600))
    assert digest_text(quiet, blocks)[0].startswith("relaywatch: block of client 203.0.113.5 did not hold - ")


def test_the_stored_tables_are_the_largest_rows_ties_by_key_as_a_full_sort_gives():
    """The daemon stores its day at every commit: `top` finds the rows without sorting a flood's
    5,000 keys with a Python key, and must give exactly what that sort gave."""
    rng = random.Random(15)
    for _ in range(200):
        counter = BoundedCounter(5000)
        keys = rng.choice([3, 499, 500, 501, 4000])
        for _ in range(keys * rng.choice([1, 3])):
            counter.add(f"203.0.{rng.randrange(keys) % 256}.{rng.randrange(keys) // 256}", rng.choice([1, 1, 2]))
        keep = rng.choice([1, 5, 499, 500])
        assert digest.top(counter.counts, keep) == counter.top(keep)


def test_many_blocks_of_one_day_count_late_mail_only_for_the_block_it_came_through():
    """Mail after a block is looked up by client and SASL user (a hundred blocks a day are not a
    hundred checks a fact); only the block the mail came through counts it."""
    stats = DayStats(DAY)
    for i in range(50):
        stats.block("client", f"203.0.113.{i}", T0)
    stats.block("sasl_user", "203.0.113.7", T0)  # a user named like a client: one block per target
    stats.block("sasl_user", "alice", T0)
    stats.block("subnet", "218.144.0.0/16", T0)
    stats.add(relayed(T0 + 900, "203.0.113.7", qid="Q1", queued=T0 + 600))  # the user's block now, not a client's
    stats.add(relayed(T0 + 901, "203.0.113.8", qid="Q2", sasl="alice", queued=T0 + 600))
    stats.add(relayed(T0 + 902, "218.144.1.1", qid="Q3", sasl="203.0.113.7", queued=T0 + 600))
    late = {target: b.late for target, b in stats.blocks.items() if b.late}
    assert late == {"203.0.113.8": 1, "alice": 1, "218.144.0.0/16": 1, "203.0.113.7": 1}
