"""`relaywatch report`: a period of the daemon's daily records as replay's text, JSON and HTML report."""

from __future__ import annotations

import json
import re

from click.testing import CliRunner

from relaywatch.cli import main
from relaywatch.model import Decision, RelayDenied
from relaywatch.reports import digest
from relaywatch.reports.digest import DayStats, period_result
from relaywatch.store.sqlite import Store
from support.facts import relayed

DAYS = ("2024-05-13", "2024-05-14", "2024-05-15")


def at(day: str, hour: int, minute: int = 0) -> float:
    return digest.day_bounds(day)[0] + hour * 3600 + minute * 60


def block(t: float, target: str) -> Decision:
    return Decision(t, "block", "client", target, "client_burst", 120, 600, 0, ("evidence line",), ("Q1",))


def prepared(tmp_path) -> str:
    """Three recorded days (the last one running) and a day before them with its own block."""
    db = tmp_path / "state.db"
    store = Store(db)
    d13, d14, d15 = (DayStats(d) for d in DAYS)
    for i in range(30):  # 13th, 03:xx: a flood from 218.144.1.1, deferred by hanmail.net
        d13.add(relayed(at(DAYS[0], 3, i), "218.144.1.1", domain="hanmail.net", status="deferred",
                        sender="journeypark@hananet.net"))
    for i in range(5):
        d13.add(relayed(at(DAYS[0], 14, i), "192.0.2.7", domain="example.org", sasl="alice"))
    for i in range(12):  # 14th, 22:xx
        d14.add(relayed(at(DAYS[1], 22, i), "218.144.1.1", domain="hanmail.net", sender="journeypark@hananet.net"))
    for i in range(4):
        d14.add(RelayDenied(at(DAYS[1], 5, i), "211.72.97.40", None))
    d15.add(relayed(at(DAYS[2], 8), "192.0.2.7", domain="example.org", sasl="alice"))
    old = DayStats("2024-05-10")
    old.add(relayed(at("2024-05-10", 9), "198.51.100.99", domain="hanmail.net"))
    for stats in (old, d13, d14):
        store.days.put(stats.day, stats.to_dict())
    store.days.put_current(d15.to_dict())
    store.commit_batch([], [block(at("2024-05-10", 9, 5), "198.51.100.99"),
                            block(at(DAYS[0], 3, 20), "218.144.1.1"),
                            block(at(DAYS[1], 22, 10), "218.144.1.2")])
    store.close()
    cfg = tmp_path / "rw.toml"
    cfg.write_text(f'[state]\ndatabase = "{db}"\n')
    return str(cfg)


def report(cfg: str, *args: str):
    return CliRunner().invoke(main, ["report", "--config", cfg, "--since", DAYS[0], "--until", DAYS[2], *args],
                              catch_exceptions=False)


def test_text_report_merges_the_days_and_says_it_is_hourly_and_approximate(tmp_path):
    result = report(prepared(tmp_path))
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("relaywatch report: 2024-05-13 .. 2024-05-15 (so far) (daemon state)\n")
    assert "48 relayed recipients, 4 relay attempts refused" in out
    assert "per hour" in out and "approximate" in out
    assert "Days recorded: 2024-05-13, 2024-05-14, 2024-05-15" in out
    assert "Decisions (2):" in out and "218.144.1.1" in out and "218.144.1.2" in out
    assert "198.51.100.99" not in out  # the block and the day before the period
    clients = out.split("Top relaying clients:\n", 1)[1].splitlines()
    assert clients[:2] == ["        42  218.144.1.1", "         6  192.0.2.7"]
    assert "Relayed recipients per hour" in out


def test_json_report_keeps_replay_fields_and_adds_the_period(tmp_path):
    result = report(prepared(tmp_path), "--format", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert (doc["relayed"], doc["relay_denied"]) == (48, 4)
    assert doc["lines"] is None and doc["messages"] is None  # the daily records do not count them
    assert doc["top"]["clients"][0] == {"key": "218.144.1.1", "count": 42}
    assert doc["top"]["senders"][0] == {"key": "journeypark@hananet.net", "count": 42}
    assert doc["top"]["domains"][:2] == [{"key": "hanmail.net", "count": 42}, {"key": "example.org", "count": 6}]
    assert doc["top"]["sasl_users"] == [{"key": "alice", "count": 6}]
    assert doc["top"]["relay_denied"] == [{"key": "211.72.97.40", "count": 4}]
    assert [d["target"] for d in doc["decisions"]] == ["218.144.1.1", "218.144.1.2"]
    assert doc["days"] == list(DAYS) and doc["partial"] and doc["bin_s"] == 3600
    assert doc["period"] == {"since": DAYS[0], "until": DAYS[2]} and "hour" in doc["note"]


def test_html_report_plots_the_hours_with_the_blocks_marked(tmp_path):
    out = tmp_path / "report.html"
    result = report(prepared(tmp_path), "--format", "html", "--output", str(out))
    assert result.exit_code == 0 and result.output == ""
    page = out.read_text()
    assert page.count("<svg") == 1 and "All relayed recipients per hour" in page
    marks = [float(t) for t in re.findall(r'class="marker" data-t="([0-9.]+)"', page)]
    assert marks == [at(DAYS[0], 3, 20), at(DAYS[1], 22, 10)]
    assert "198.51.100.99" not in page
    assert "approximate" in page and "<b>0</b>lines" not in page and "<b>0</b>messages" not in page
    assert "<td>hanmail.net</td><td>42</td><td>30 (71%)</td>" in page  # deferral per destination
    svg = re.search(r"<svg.*?</svg>", page, re.S).group(0)
    assert f'data-t0="{int(digest.day_bounds(DAYS[0])[0])}"' in svg  # the plot starts at the period's midnight


def test_the_timeline_holds_the_hourly_series():
    days = []
    for day, hour, n in ((DAYS[0], 3, 30), (DAYS[1], 22, 12)):
        stats = DayStats(day)
        for i in range(n):
            stats.add(relayed(at(day, hour, i % 60), "218.144.1.1", domain="hanmail.net"))
        days.append(DayStats.from_dict(json.loads(json.dumps(stats.to_dict()))))
    result, no_hours = period_result(days, [])
    series = result.timeline.relayed()
    assert no_hours == [] and result.timeline.bin_s == 3600 and len(series) == 48
    assert series[3] == 30 and series[24 + 22] == 12 and sum(series) == 42
    assert result.timeline.span() == (digest.day_bounds(DAYS[0])[0], digest.day_bounds(DAYS[1])[1])


def test_a_day_stored_before_hourly_counts_still_reads_and_is_named():
    stats = DayStats(DAYS[0])
    stats.add(relayed(at(DAYS[0], 3), "218.144.1.1", domain="hanmail.net"))
    stats.add(RelayDenied(at(DAYS[0], 4), "211.72.97.40", None))
    saved = stats.to_dict()
    assert saved["hourly"]["relayed"][3] == 1 and saved["hourly"]["relay_denied"][4] == 1
    del saved["hourly"]
    old = DayStats.from_dict(saved)
    assert old.hourly_relayed is None and old.to_dict()["hourly"] is None
    # a restored running day keeps counting the rest
    old.add(relayed(at(DAYS[0], 5), "218.144.1.1", domain="hanmail.net"))
    result, no_hours = period_result([old], [])
    assert no_hours == [DAYS[0]] and result.totals.relayed == 2 and result.timeline.relayed() == []


def test_no_recorded_day_in_the_period_exits_1_and_lists_the_days(tmp_path):
    cfg = prepared(tmp_path)
    result = CliRunner().invoke(main, ["report", "--config", cfg, "--since", "2024-06-01",
                                       "--until", "2024-06-07"])
    assert result.exit_code == 1
    assert "no record of 2024-06-01 .. 2024-06-07" in result.output
    assert "2024-05-10, 2024-05-13, 2024-05-14, 2024-05-15" in result.output
    bad = CliRunner().invoke(main, ["report", "--config", cfg, "--since", "2024-06-02",
                                    "--until", "2024-06-01"])
    assert bad.exit_code == 2
