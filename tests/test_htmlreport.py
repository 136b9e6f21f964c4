"""The HTML report for a seed-like flood day: markers at their times, top tables, escaping, no fetches."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime
from html.parser import HTMLParser

import pytest

from relaywatch.model import Decision, RelayDenied, Relayed, Totals
from relaywatch.postfix.audit import Finding
from relaywatch.reports.html import esc, render_html
from relaywatch.reports.report import ReplayResult, Tally
from relaywatch.reports.timeline import Timeline

T0 = 1_047_772_800.0  # 2003-03-16 00:00 UTC
FLOOD = T0 + 2 * 3600 - 22  # 01:59:38, as in the thread
HOSTILE = '<script>alert("x")</script>@evil.example'
SVG_NS = "{http://www.w3.org/2000/svg}"


def seed_day() -> tuple[ReplayResult, Timeline, list[Decision]]:
    """A LAN host all day, a rotating /16 flood for an hour, a relay probe, one hostile sender."""
    facts: list[Relayed | RelayDenied] = []
    for i in range(24 * 10):
        facts.append(Relayed(T0 + i * 360, f"L{i}", "192.168.0.10", None, "zebra@woodelf.org", f"u{i}@gmail.com",
                             "gmail.com", "sent"))
    for i in range(2400):
        client = f"218.144.{100 + i % 21}.{i * 7 % 250 + 1}"
        facts.append(Relayed(FLOOD + i * 1.5, f"F{i}", client, None, "journeypark@hananet.net",
                             f"r{i}@hanmail.net", "hanmail.net", "deferred" if i % 2 else "sent"))
    facts += [RelayDenied(T0 + 14 * 3600 + i, "211.72.97.40", None) for i in range(30)]
    facts.append(Relayed(T0 + 5 * 3600, "H1", "203.0.113.9", "<b>user</b>", HOSTILE, "a@x.example", "x.example",
                         "sent"))
    decisions = [
        Decision(FLOOD + 94, "block", "subnet", "218.144.0.0/16", "wide_subnet", 60, 600, clients=26),
        Decision(FLOOD + 153, "alert", "sender", "journeypark@hananet.net", "sender", 100, 600),
        Decision(T0 + 5 * 3600, "alert", "sender", HOSTILE, "sender", 100, 600),
        Decision(T0 + 14 * 3600 + 19, "alert", "client", "211.72.97.40", "relay_probe", 20, 600),
    ]
    totals, tally, tl = Totals(), Tally(), Timeline()
    for f in sorted(facts, key=lambda f: f.time):
        tl.observe(f)
        if isinstance(f, Relayed):
            totals.relayed += 1
            tally.add_relayed(f)
        else:
            totals.relay_denied += 1
            tally.relay_denied.add(f.client)
    for d in decisions:
        tl.decision(d)
    tl.decision(Decision(T0 + 20 * 3600, "unblock", "subnet", "218.144.0.0/16", "expired", 0, 0))
    totals.first_time, totals.last_time, totals.lines = T0, T0 + 86399, 25944
    return ReplayResult(totals, len(facts), decisions, tally), tl, decisions


@pytest.fixture(scope="module")
def day() -> tuple[str, list[Decision]]:
    result, tl, decisions = seed_day()
    findings = [Finding("error", "mynetworks-public", "mynetworks trusts 2 public /8 networks",
                        "Anyone in 61.0.0.0/8 may relay <through> you.", "Set mynetworks = 127.0.0.0/8")]
    return render_html(result, tl, findings), decisions


def svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", page, re.DOTALL)]


class Tables(HTMLParser):
    """h3 title -> rows of cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.title: str | None = None
        self.tag = ""

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tag = tag
        if tag == "tr" and self.title is not None:
            self.tables[self.title].append([])

    def handle_data(self, data: str) -> None:
        if self.tag == "h3":
            self.title = data
            self.tables[data] = []
        elif self.tag in ("td", "th", "span") and self.title is not None and self.tables[self.title]:
            self.tables[self.title][-1].append(data)

    def handle_endtag(self, tag: str) -> None:
        self.tag = ""


def test_blocks_and_alerts_are_on_the_time_axis_at_their_times(day):
    page, decisions = day
    chart = svgs(page)[0]
    t0, t1 = float(chart.get("data-t0")), float(chart.get("data-t1"))
    x0, x1 = float(chart.get("data-x0")), float(chart.get("data-x1"))
    lines = {float(e.get("data-t")): float(e.get("x1")) for e in chart.iter(f"{SVG_NS}line")
             if e.get("class") == "marker"}
    assert t0 <= T0 and t1 >= T0 + 20 * 3600
    for d in decisions:
        assert lines[d.time] == pytest.approx(x0 + (d.time - t0) / (t1 - t0) * (x1 - x0), abs=0.06)
    assert T0 + 20 * 3600 in lines  # the unblock
    labels = [e.text for e in chart.iter(f"{SVG_NS}text")]
    assert "1 block 218.144.0.0/16" in labels


def test_the_zoom_shows_the_first_block_inside_its_two_hours(day):
    page, decisions = day
    zoom = svgs(page)[1]
    t0, t1 = float(zoom.get("data-t0")), float(zoom.get("data-t1"))
    assert t1 - t0 == 7200 and t0 < decisions[0].time < t1
    times = [float(e.get("data-t")) for e in zoom.iter(f"{SVG_NS}line") if e.get("class") == "marker"]
    assert times == [decisions[0].time, decisions[1].time]


def test_the_tables_hold_the_top_entries(day):
    page, _ = day
    parser = Tables()
    parser.feed(page)
    tables = parser.tables
    assert tables["Top relaying clients"][1] == ["192.168.0.10", "240"]
    assert tables["Top senders of relayed mail"][1] == ["journeypark@hananet.net", "2,400"]
    assert tables["Top destination domains"][1] == ["hanmail.net", "2,400", "1,200 (50%)", "0"]
    assert tables["Highest deferral ratio (10+ recipients)"][1][0] == "hanmail.net"
    assert tables["Top clients refused relay"][1] == ["211.72.97.40", "30"]
    assert tables["Top SASL users (relayed)"][1] == ["<b>user</b>", "1"]
    events = tables["Decisions on the timeline"]
    when = datetime.fromtimestamp(FLOOD + 94).astimezone().strftime("%Y-%m-%d %H:%M:%S")  # local time, as iso()
    assert events[1][:5] == ["1", when, "block", "subnet", "218.144.0.0/16"]
    assert events[-1][2] == "unblock"


def test_findings_come_first_and_every_log_string_is_escaped(day):
    page, _ = day
    assert page.index("mynetworks trusts 2 public /8 networks") < page.index("<h2>Timeline</h2>")
    assert "<script" not in page and "<b>user" not in page and "<through>" not in page
    assert esc(HOSTILE) in page and "&lt;b&gt;user&lt;/b&gt;" in page
    assert esc(HOSTILE) == "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;@evil.example"


def test_the_page_fetches_nothing_and_its_svg_is_xml(day):
    page, _ = day
    assert not re.search(r"""\b(src|href|xlink:href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "@import" not in page and "url(" not in page and "<link" not in page and "<img" not in page
    assert len(svgs(page)) == 2  # the day, and the zoom on the first block


def test_control_characters_from_the_log_cannot_break_the_svg():
    tl = Timeline()
    tl.observe(Relayed(T0, "Q", "203.0.113.9", None, "a\x00\x1b\ud800b@x.example", "r@x.example", "x.example",
                       "sent"))
    result = ReplayResult(Totals(relayed=1, first_time=T0, last_time=T0), 1, [], Tally())
    page = render_html(result, tl)
    assert "\x00" not in page and "\x1b" not in page
    page.encode("utf-8")
    svgs(page)


def test_an_empty_period_still_renders():
    page = render_html(ReplayResult(Totals(), 0, [], Tally()), Timeline())
    assert "Nothing was relayed" in page and "<svg" not in page


# --- issue 16 item 15: what each block would have stopped, evidence, undo, dry run, legend = tables ----------


def flood_with_block(evidence: tuple[str, ...]) -> tuple[ReplayResult, Timeline, Decision]:
    """60 recipients from 218.144.7.9 before a block of 218.144.0.0/16, 240 from the network after it."""
    totals, tally, tl = Totals(), Tally(), Timeline()
    block = Decision(FLOOD + 60, "block", "subnet", "218.144.0.0/16", "wide_subnet", 60, 600, clients=4,
                     evidence=evidence)
    facts = [Relayed(FLOOD + i + 0.5, f"F{i}", f"218.144.{7 + (i >= 60) * (i % 4)}.9", None, "a@hananet.net",
                     f"r{i}@hanmail.net", "hanmail.net", "sent", queued=FLOOD + i) for i in range(300)]
    facts.append(Relayed(FLOOD + 100, "X", "203.0.113.9", None, "b@x.example", "c@y.example", "y.example", "sent"))
    for f in sorted(facts, key=lambda f: f.time):
        if f.qid == "F60":
            tl.decision(block)  # decided on F59's delivery: F60 was queued at the moment of the block
        tl.observe(f)
        totals.relayed += 1
        tally.add_relayed(f)
    totals.first_time, totals.last_time = FLOOD, FLOOD + 300
    return ReplayResult(totals, len(facts), [block], tally, tl), tl, block


def test_each_block_says_what_it_would_have_stopped():
    from relaywatch.reports.report import stopped, to_json, to_text

    result, _, block = flood_with_block(())
    stop = stopped(result, block)
    assert (stop.after, stop.total) == (240, 300)
    assert stop.text() == "would have stopped 240 of 300 relayed recipients, 80.0 %"
    assert "would have stopped 240 of 300 relayed recipients, 80.0 %" in to_text(result)
    assert "      stopped 240 of 300" in to_text(result, dry_run=False)
    import json
    assert json.loads(to_json(result))["decisions"][0]["stopped"] == {"after": 240, "of": 300}


def test_the_decisions_table_shows_evidence_undo_and_dry_run():
    delivery = "Mar 16 02:01:10 zebra postfix/smtp[29341]: F59: to=<r59@hanmail.net>, relay=none, status=deferred"
    client = "Mar 16 02:01:09 zebra postfix/smtpd[29340]: F59: client=unknown[218.144.7.9]"
    result, tl, _ = flood_with_block((delivery, client))
    for dry_run, action, undo, flag in [(True, "would block", "none: nothing was blocked", "yes"),
                                        (False, "block", "relaywatch unblock 218.144.0.0/16", "no")]:
        parser = Tables()
        parser.feed(render_html(result, tl, dry_run=dry_run))
        head, row = parser.tables["Decisions on the timeline"]
        assert head == ["#", "time", "action", "kind", "target", "rule", "why", "evidence", "undo", "dry run"]
        assert row[2] == action and row[-2:] == [undo, flag]
        assert row[7] == client  # the client= line leads the evidence
        assert "stopped 240 of 300 relayed recipients, 80.0 %" in row[6]


def test_legend_figures_agree_with_the_tables():
    totals, tally, tl = Totals(), Tally(), Timeline()
    facts = [Relayed(FLOOD + i, f"A{i}", f"198.18.0.{i % 12}", None, "s@x.example", f"r{i}@y.example", "y.example",
                     "sent") for i in range(60)]  # twelve leaders with 5 each fill the series
    facts += [Relayed(FLOOD + 100 + i, f"B{i}", "203.0.113.99", None, "s@x.example", f"q{i}@y.example", "y.example",
                      "sent") for i in range(20)]  # a late leader: its first 5 are not in its line
    for f in facts:
        tl.observe(f)
        totals.relayed += 1
        tally.add_relayed(f)
    totals.first_time, totals.last_time = FLOOD, FLOOD + 200
    page = render_html(ReplayResult(totals, len(facts), [], tally), tl)
    texts = [e.text for e in svgs(page)[0].iter(f"{SVG_NS}text")]
    assert texts[texts.index("203.0.113.99 *") + 1] == "20"  # was 15, the sum of its line
    assert texts[texts.index("all relayed") + 1] == "80"
    parser = Tables()
    parser.feed(page)
    assert parser.tables["Top relaying clients"][1] == ["203.0.113.99", "20"]
