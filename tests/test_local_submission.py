"""Issue 12 item 10: mail submitted on the host (sendmail -> postfix/pickup) and handed to another
host is counted per uid and sender; a flood raises an alert, never a block."""

from __future__ import annotations

import random

import pytest

from relaywatch.config import Config
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.engine import Pipeline
from relaywatch.model import LocalRelayed
from relaywatch.reports.daily import DailyRecord
from relaywatch.reports.digest import DayStats
from relaywatch.reports.html import render_html
from relaywatch.reports.report import to_json, to_text
from relaywatch.store.sqlite import Store
from support.maillog import T0, Log, rcpts


def web_app_flood(log: Log, senders: list[str], n: int = 300, uid: int = 33, amavis: bool = False) -> None:
    """A compromised PHP app: one recipient per sendmail call, one every 2 s."""
    for i in range(n):
        log.pickup(T0 + i * 2, uid, senders[i % len(senders)], [f"lead{i}@{['gmail.com', 'web.de'][i % 2]}"],
                   amavis=amavis)


@pytest.mark.parametrize("amavis", [False, True])
@pytest.mark.parametrize("senders", [["www-data@shop.example.org"],
                                     [f"info{i}@bank{i}.example.com" for i in range(300)]])
def test_a_pickup_flood_raises_one_alert_for_its_uid_and_blocks_nothing(tmp_path, senders, amavis):
    log = Log()
    web_app_flood(log, senders, amavis=amavis)
    result = log.replay(tmp_path)
    assert result.totals.local_relayed == 300 and result.totals.relayed == 0
    uid_alerts = [d for d in result.decisions if d.kind == "uid"]
    assert [(d.action, d.target, d.rule, d.count) for d in uid_alerts] == [("alert", "33", "local_submission", 100)]
    assert "postfix/smtp[" in uid_alerts[0].evidence[-1] and "to=<lead" in uid_alerts[0].evidence[-1]
    assert [d for d in result.decisions if d.action == "block"] == []
    if len(senders) == 1:  # the same sender also trips the sender alert, as relayed mail does
        assert ("alert", "sender", senders[0]) in [(d.action, d.kind, d.target) for d in result.decisions]


def test_a_multi_recipient_sendmail_flood_is_counted_per_recipient(tmp_path):
    log = Log()
    for i in range(10):
        log.pickup(T0 + i * 30, 1001, "bob@host.example.org", rcpts(20, "outlook.com", f"b{i}."))
    assert [(d.kind, d.target) for d in log.replay(tmp_path).decisions if d.rule == "local_submission"] == [
        ("uid", "1001")]


def test_cron_and_an_ordinary_web_app_raise_nothing(tmp_path):
    log, rng = Log(), random.Random(10)
    for h in range(24):
        log.pickup(T0 + h * 3600, 0, "root@mail.example.org", ["admin@example.net"])  # cron output off-host
        for k in range(rng.randint(2, 12)):  # contact form and password resets
            log.pickup(T0 + h * 3600 + 60 + k * 240, 33, "www-data@shop.example.org", [f"c{h}.{k}@gmail.com"])
    result = log.replay(tmp_path)
    assert result.totals.local_relayed > 24 and result.decisions == []


def test_pickup_mail_delivered_locally_is_not_counted(tmp_path):
    log = Log()
    for i in range(200):
        log.lines.append((T0 + i, -1, f"mail postfix/pickup[1020]: {i:05X}A0B1C: uid=0 from=<root>"))
        log.lines.append((T0 + i + 0.5, -1, f"mail postfix/local[4000]: {i:05X}A0B1C: to=<root@mail.example.org>,"
                                            " relay=local, delay=0.5, delays=0.4/0/0/0.1, dsn=2.0.0,"
                                            " status=sent (delivered to mailbox)"))
    result = log.replay(tmp_path)
    assert result.totals.local_relayed == 0 and result.decisions == []


def test_reports_timeline_and_digest_take_local_submissions(tmp_path):
    log = Log()
    web_app_flood(log, ["www-data@shop.example.org"], n=150)
    log.smtp(T0 + 5, "84.160.33.7", ["a@gmail.com"], sasl="alice", port="submission/smtpd")
    result = log.replay(tmp_path)
    assert '"local_relayed": 150' in to_json(result)
    assert "uid" in to_text(result) and "33" in to_text(result)
    assert "local_submission" in render_html(result, result.timeline)
    assert result.tally.senders.top() == [("newsletter@shop.example.org", 1)]  # the tables are about clients
    # the daemon's day statistics: a pipeline with the daily record as a sink
    path = tmp_path / "mail-rfc3339.log"
    daily = DailyRecord(DayStats.for_time(T0), Config().block_s)
    pipeline = Pipeline(Config(), Store(None), sinks=(daily,))
    parser = LineParser(YearResolver(2025))
    for line in path.read_text().splitlines():
        pipeline.feed(line, parser)
    assert daily.day.relayed == 1
    assert pipeline.totals.local_relayed == 150


def test_a_restarted_daemon_rebuilds_the_windows_it_counted(tmp_path):
    """The stored counts are exactly what the windows count: uid for pickup mail, the login (not the
    address) for authenticated mail, the address for unauthenticated mail."""
    log = Log()
    web_app_flood(log, ["www-data@shop.example.org"], n=90)
    log.smtp(T0 + 100, "84.160.33.7", rcpts(70, "gmail.com", "bcc"), sasl="teacher", port="submission/smtpd")
    log.smtp(T0 + 110, "45.134.26.10", rcpts(50, "hanmail.net", "v"))
    path = tmp_path / "mail.log"
    path.write_text(log.text())
    store = Store(str(tmp_path / "state.db"))
    first = Pipeline(Config(), store)
    parser = LineParser(YearResolver(2025))
    for line in path.read_text().splitlines():
        first.feed(line, parser)
    first.flush()
    stored = {(dim, key): n for dim, _, key, n in _sum(store.counts_since(0))}
    assert stored[("uid", "33")] == 90
    assert stored[("sasl_user", "teacher")] == 70 and ("client", "84.160.33.7") not in stored
    assert stored[("client", "45.134.26.10")] == 50
    again = Pipeline(Config(), store)
    again.restore(T0 + 300)
    decisions = []
    for i in range(10):
        late = LocalRelayed(T0 + 301 + i, f"X{i}", 33, "www-data@shop.example.org", f"z{i}@web.de", "web.de", "sent")
        decisions += again.detector.observe(late, "late").decisions
    assert [(d.kind, d.target, d.count, d.time) for d in decisions if d.kind == "uid"] == [("uid", "33", 100, T0 + 310)]
    store.close()


def _sum(rows) -> list[tuple[str, int, str, int]]:
    totals: dict[tuple[str, str], int] = {}
    for dim, _bucket, key, n in rows:
        totals[(dim, key)] = totals.get((dim, key), 0) + n
    return [(dim, 0, key, n) for (dim, key), n in totals.items()]
