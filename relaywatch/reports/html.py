"""The replay report as one self-contained HTML file: an inline SVG timeline, the tables, the findings.

No scripts, fonts, images or links to fetch: it opens offline, from a mail attachment,
and prints. Every string that came from the log is attacker-controlled and goes
through `esc()`; the SVG is well-formed XML (its own small writer, no plotting library
to install).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from relaywatch.model import Decision
from relaywatch.reports.report import ReplayResult, stopped
from relaywatch.reports.sparks import dim_title, unit
from relaywatch.reports.svg import Svg, esc, num
from relaywatch.reports.timeline import Marker, Timeline
from relaywatch.wording import duration, stamp

if TYPE_CHECKING:
    from relaywatch.model import Finding

W, LEFT, PLOT_W = 1200, 50, 850
LEGEND_X = LEFT + PLOT_W + 16
PANEL_H, PANEL_GAP, ROW_H, MAX_FLAG_ROWS = 104, 44, 15, 6
COLORS = ("#1d4ed8", "#c2410c", "#0f766e", "#7c3aed", "#be185d")
SHORT_UNITS = {"minute": "min", "hour": "h", "day": "day"}
ZOOM_BINS = 120  # the two hours around the first block, when the plot spans more than 3 times that
ACTION_COLORS = {"block": "#b91c1c", "alert": "#b45309", "unblock": "#15803d"}
TICK_STEPS = (60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800, 2592000)


class _Totals(Protocol):
    lines: int
    unparsed: int
    relayed: int
    relay_denied: int
    first_time: float | None
    last_time: float | None


class _Tally(Protocol):
    def tables(self) -> dict[str, list[tuple[str, int]]]: ...


class ReportSource(Protocol):
    """What a replay (or a period of the daemon's state) offers: `report.ReplayResult` fits.
    Read-only properties: the report never assigns them, so a narrower type (a list, a Tally) fits."""

    @property
    def totals(self) -> _Totals: ...

    @property
    def messages(self) -> int: ...

    @property
    def decisions(self) -> Sequence[Decision]: ...

    @property
    def tally(self) -> _Tally: ...


def _nice_step(top: float, lines: int = 4) -> int:
    """A whole 1, 2 or 5 times a power of ten giving at most `lines` gridlines (counts are whole)."""
    raw = max(top / lines, 1.0)
    mag = 10 ** math.floor(math.log10(raw))
    return int(next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw))


def _points(values: Sequence[int], x0: float, dx: float, y: Callable[[float], float]) -> list[tuple[float, float]]:
    """Bin centres, leaving out the inside of flat runs (a quiet day is mostly zeros)."""
    last = len(values) - 1
    return [(x0 + (i + 0.5) * dx, y(v)) for i, v in enumerate(values)
            if i in (0, last) or v != values[i - 1] or v != values[i + 1]]


class _Chart:
    """Small multiples on one time axis (bins `lo` to `hi` of the timeline): lines, thresholds, markers."""

    def __init__(self, tl: Timeline, lo: int, hi: int) -> None:
        span = tl.span()
        assert span is not None
        self.tl, self.lo, self.hi = tl, lo, hi
        self.t0, self.t1 = span[0] + lo * tl.bin_s, span[0] + hi * tl.bin_s
        self.svg = Svg()
        self.unit = unit(tl.bin_s)
        self.markers = [(i, m) for i, m in enumerate(tl.markers(), 1) if self.t0 <= m.time <= self.t1]

    def x(self, t: float) -> float:
        return LEFT + (t - self.t0) / (self.t1 - self.t0) * PLOT_W

    def render(self) -> str:
        tl, lo, hi = self.tl, self.lo, self.hi
        everything = tl.relayed()
        panels: list[tuple[str, list[tuple[str, list[int], int]], str]] = [
            (f"All relayed recipients per {self.unit}", [("all relayed", everything[lo:hi], sum(everything))], "")]
        for d in tl.dims():
            lines = [(s.label + (" *" if s.missed else ""), s.values[lo:hi], s.total) for s in tl.top(d)]
            lines = [line for line in lines if any(line[1])]
            what = "relay attempts refused" if d == "relay_denied" else "relayed recipients"
            if lines:
                panels.append((f"Top {dim_title(d)}: {what} per {self.unit}", lines, d))
        flags = self._pack_flags()
        strip_h = len({row for row, _, _ in flags.values()}) * ROW_H + 8
        tops = [strip_h + 26 + i * (PANEL_H + PANEL_GAP) for i in range(len(panels))]
        bottom = tops[-1] + PANEL_H
        self._axis(tops, bottom)
        self._markers(flags, bottom)
        for top, (title, series, dim) in zip(tops, panels, strict=True):
            self._panel(top, title, series, dim)
        return self.svg.render(W, bottom + 30, role="img", class_="timeline", data_t0=self.t0, data_t1=self.t1,
                               data_x0=LEFT, data_x1=LEFT + PLOT_W,
                               aria_label="Timeline of relayed recipients with relaywatch's decisions")

    def _pack_flags(self) -> dict[int, tuple[int, float, str]]:
        """Marker index -> (row, x, label): the full label where it fits, else just its number."""
        ends: list[float] = []
        out: dict[int, tuple[int, float, str]] = {}
        for i, m in self.markers:
            x = self.x(m.time)
            for label in (f"{i} {m.action} {m.target}"[:34], str(i)):
                width = len(label) * 6.4 + 4
                a = x + 3 if x + width < LEFT + PLOT_W else x - 3 - width
                row = next((r for r, end in enumerate(ends) if a > end + 4), len(ends))
                if row < MAX_FLAG_ROWS:
                    if row == len(ends):
                        ends.append(a + width)
                    else:
                        ends[row] = a + width
                    out[i] = (row, a, label)
                    break
        return out

    def _axis(self, tops: list[int], bottom: int) -> None:
        span = self.t1 - self.t0
        step = next((s for s in TICK_STEPS if span / s <= 12), TICK_STEPS[-1])
        offset = datetime.fromtimestamp(self.t0).astimezone().utcoffset()
        off = int(offset.total_seconds()) if offset else 0
        t = -(-(int(self.t0) + off) // step) * step - off
        while t <= self.t1:
            local = datetime.fromtimestamp(t).astimezone()
            daily = step >= 86400 or (span > 86400 and local.hour == 0 and local.minute == 0)
            x = self.x(t)
            for top in tops:
                self.svg.line(x, top, x, top + PANEL_H, stroke="#e5e7eb")
            self.svg.text(x, bottom + 16, local.strftime("%m-%d" if daily else "%H:%M"), text_anchor="middle",
                          fill="#374151")
            t += step
        zone = datetime.fromtimestamp(self.t0).astimezone().strftime("%Y-%m-%d, UTC%z")
        self.svg.text(LEFT + PLOT_W, bottom + 29, f"local time ({zone})", text_anchor="end", fill="#6b7280",
                      font_size=11)

    def _markers(self, flags: dict[int, tuple[int, float, str]], bottom: int) -> None:
        for i, m in self.markers:
            color = ACTION_COLORS.get(m.action, "#b45309")
            x = self.x(m.time)
            self.svg.open("g", f"#{i} {_when(m.time)} {m.action} {m.kind} {m.target} {m.detail}".strip(),
                          class_="marker")
            self.svg.line(x, 2, x, bottom, stroke=color, stroke_width=1.2, stroke_opacity=0.7, class_="marker",
                          data_t=m.time, stroke_dasharray=None if m.action != "alert" else "3 3")
            if i in flags:
                row, a, label = flags[i]
                self.svg.text(a, 12 + row * ROW_H, label, fill=color, font_size=11, font_weight=600)
            self.svg.close("g")

    def _panel(self, top: int, title: str, lines: list[tuple[str, list[int], int]], dim: str) -> None:
        """`lines`: (label, values in view, total): the legend shows the total, the figure of the tables."""
        svg, n = self.svg, self.hi - self.lo
        thresholds = self.tl.thresholds(dim) if dim else []
        peak = max([max(values) for _, values, _ in lines] + [t.per_bin for t in thresholds] + [1])
        step = _nice_step(peak)
        ymax = step * -(-peak // step)

        def y(v: float) -> float:
            return top + PANEL_H - v / ymax * PANEL_H

        svg.text(LEFT, top - 8, title, font_weight=600, font_size=13, fill="#111827")
        svg.add("rect", x=LEFT, y=top, width=PLOT_W, height=PANEL_H, fill="none", stroke="#d1d5db")
        for v in range(0, int(ymax) + 1, step):
            svg.line(LEFT, y(v), LEFT + PLOT_W, y(v), stroke="#f3f4f6" if v else "#9ca3af")
            svg.text(LEFT - 6, y(v) + 4, f"{v:,}", text_anchor="end", fill="#6b7280", font_size=11)
        dx = PLOT_W / n
        legend_y = top + 4
        for color, (label, values, total) in zip(COLORS, lines, strict=False):
            pts = _points(values, LEFT, dx, y)
            if not dim:
                svg.polyline([(LEFT, y(0)), *pts, (LEFT + PLOT_W, y(0))], fill="#bfdbfe", stroke="none")
            svg.polyline(pts, fill="none", stroke=color, stroke_width=1.4, stroke_linejoin="round")
            legend_y += 15
            self._legend(legend_y, color, label, f"{total:,}", None)
        for t in thresholds:
            color = ACTION_COLORS.get(t.action, "#b45309")
            svg.line(LEFT, y(t.per_bin), LEFT + PLOT_W, y(t.per_bin), stroke=color, stroke_width=1.2,
                     stroke_dasharray="6 4")
            legend_y += 15
            rate = f"{num(round(t.per_bin, 1))}/{SHORT_UNITS[self.unit]}"
            clients = f", ≥{t.min_clients} IPs" if t.min_clients else ""
            self._legend(legend_y, color, f"{t.rule} {t.action} {t.threshold}/{duration(t.window_s)}{clients}",
                         rate, "6 4")

    def _legend(self, y: float, color: str, label: str, value: str, dash: str | None) -> None:
        svg = self.svg
        svg.line(LEGEND_X, y - 4, LEGEND_X + 18, y - 4, stroke=color, stroke_width=2, stroke_dasharray=dash)
        short = label if len(label) <= 36 else label[:35] + "…"
        svg.text(LEGEND_X + 24, y, short, label if short != label else None, fill="#1f2937", font_size=11)
        svg.text(W - 4, y, value, text_anchor="end", fill="#374151", font_size=11)


def _zoom(tl: Timeline) -> tuple[int, int] | None:
    """The bins around the first block (else the first decision), when the whole plot is much longer."""
    span, n, marks = tl.span(), len(tl.relayed()), tl.markers()
    if span is None or n <= 3 * ZOOM_BINS or not marks:
        return None
    first = next((m for m in marks if m.action == "block"), marks[0])
    lo = max(0, min(n - ZOOM_BINS, int((first.time - span[0]) // tl.bin_s) - ZOOM_BINS // 4))
    return lo, lo + ZOOM_BINS


def _when(t: float | None) -> str:
    return stamp(t) if t is not None else "-"


def _table(title: str, head: Sequence[str], rows: Sequence[Sequence[object]], cls: str = "") -> str:
    """A titled table; the first column is text, the others numbers unless `cls` says otherwise."""
    ths = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    body = body or f'<tr><td colspan="{len(head)}" class="none">none</td></tr>'
    return f'<section class="table {cls}"><h3>{esc(title)}</h3><table><tr>{ths}</tr>{body}</table></section>'


class _Html(str):
    """A cell already written as HTML (its parts escaped)."""


def _cell(value: object) -> str:
    if isinstance(value, _Html):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    text = str(value)
    return esc(text) if len(text) <= 80 else f'<span title="{esc(text)}">{esc(text[:79])}…</span>'


def _findings(findings: Sequence[Finding]) -> str:
    if not findings:
        return ""
    items = "".join(
        f'<li class="{esc(f.severity)}"><span class="sev">{esc(f.severity)}</span> <b>{esc(f.title)}</b>'
        f"<p>{esc(f.explanation)}</p><p class=\"fix\">Fix: {esc(f.fix)}</p></li>" for f in findings)
    return f'<section class="findings"><h2>Configuration audit</h2><ul>{items}</ul></section>'


def _events(markers: list[Marker], result: ReportSource, timeline: Timeline, dry_run: bool) -> str:
    """Each decision with its evidence (the client= lines first), what it would have stopped, and its undo."""
    decisions: dict[tuple[float, str, str, str], Decision] = {
        (d.time, d.action, d.kind, d.target): d for d in result.decisions}
    rows = []
    for i, m in enumerate(markers, 1):
        d = decisions.get((m.time, m.action, m.kind, m.target))
        stop = stopped(result, d, timeline) if d is not None and isinstance(result, ReplayResult) else None
        why = m.detail + (f"; {stop.text() if dry_run else stop.text().replace('would have ', '')}" if stop else "")
        if d is not None and len(d.hosts) > 1:  # a fleet's decision: whose logs it came from
            why += f"; evidence from hosts {', '.join(d.hosts)}"
        lines = sorted(m.evidence[-5:], key=lambda line: "client=" not in line)[:3]
        evidence = _Html("<br>".join(esc(line if len(line) <= 200 else line[:199] + "…") for line in lines))
        undo = "" if m.action != "block" else "none: nothing was blocked" if dry_run else (
            f"relaywatch unblock {m.target}")
        action = f"would {m.action}" if dry_run and m.action == "block" else m.action
        rows.append((i, _when(m.time), action, m.kind, m.target, m.rule, _Html(esc(why)), evidence, undo,
                     "yes" if dry_run else "no"))
    return _table("Decisions on the timeline", ("#", "time", "action", "kind", "target", "rule", "why", "evidence",
                                                "undo", "dry run"), rows, "events")


def _explain(tl: Timeline) -> str:
    u = unit(tl.bin_s)
    text = (f"Each line counts relayed recipients per {u}. A rule counts over a sliding window, so its threshold is "
            f"drawn dashed, spread evenly over the window and scaled to one {u}: 60 per 10 min is drawn at "
            f"{num(60 * tl.bin_s / 600)} per {u}, the steady rate at which the rule trips. ")
    if tl.bin_s < 600:
        text += ("A line that stays below it for a whole window never trips the rule; one above it trips the rule "
                 "only if it stays there long enough. ")
    else:
        text += f"A burst inside one {u} can trip a rule while the {u}'s total stays below the line. "
    text += ("Subnet rules also need a number of distinct clients in the network. Vertical lines mark relaywatch's "
             "decisions (red: block, dashed amber: alert, green: unblock); numbers refer to the table below. "
             "The number after a name is its total over the whole report, the figure the tables below show. A * after "
             "a name: it had counts before it became one of the leaders of its panel, which are in that total but "
             "not in its line.")
    return f'<p class="note">{esc(text)}</p>'


CSS = """
:root{color-scheme:light}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:#111827;
background:#fff;margin:24px auto;max-width:1220px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}h3{font-size:14px;margin:0 0 6px}
.sub{color:#4b5563;margin:0}.stats{display:flex;flex-wrap:wrap;gap:8px 28px;margin:14px 0;padding:0}
.stats li{list-style:none}.stats b{display:block;font-size:20px;font-variant-numeric:tabular-nums}
.findings ul{padding:0}.findings li{list-style:none;border-left:4px solid #9ca3af;padding:6px 12px;margin:8px 0;
background:#f9fafb}.findings li.error{border-color:#b91c1c}.findings li.warning{border-color:#b45309}
.findings p{margin:4px 0;white-space:pre-wrap}.sev{font-size:11px;text-transform:uppercase;font-weight:700;
color:#4b5563}.fix{color:#374151}
svg.timeline{width:100%;height:auto;display:block}.note{color:#4b5563;font-size:13px;max-width:75em}
.tables{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:20px 28px}
table{border-collapse:collapse;width:100%;font-size:13px}
th{text-align:left;border-bottom:1px solid #9ca3af;font-weight:600;padding:3px 6px}
td{border-bottom:1px solid #e5e7eb;padding:3px 6px;font-variant-numeric:tabular-nums;white-space:nowrap}
td:first-child{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px;white-space:normal;
overflow-wrap:anywhere;min-width:11em}.events td:nth-child(n+5){white-space:normal}
.table td+td,.table th+th{text-align:right}.events td+td,.events th+th{text-align:left}
.events td:first-child{min-width:0;font-family:inherit}
.events td:nth-child(5),.events td:nth-child(8){font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
.events td:nth-child(8){font-size:11px;white-space:normal;overflow-wrap:anywhere}
td.none{color:#6b7280;font-family:inherit}
@page{margin:12mm}
@media print{body{margin:0;max-width:none}section,svg{break-inside:avoid}h2{break-after:avoid}}
"""  # noqa: E501 - one rule per line: a long selector list stays readable whole


def render_html(result: ReportSource, timeline: Timeline, findings: Sequence[Finding] = (),
                notes: Sequence[str] = (), uncounted: Collection[str] = (), dry_run: bool = False) -> str:
    """The whole report as one HTML document (UTF-8 text). `notes` go under the title;
    `uncounted` names figures the source does not know ("lines", "messages"): they are left out.
    `dry_run`: a replay that changed nothing (its decisions say "would", and offer no undo)."""
    t = result.totals
    blocks = sum(1 for d in result.decisions if d.action == "block")
    alerts = sum(1 for d in result.decisions if d.action == "alert")
    stats = [(k, n) for k, n in (("lines", t.lines), ("messages", result.messages), ("relayed recipients", t.relayed),
                                  ("relay attempts refused", t.relay_denied), ("blocks", blocks),
                                  ("alerts", alerts)) if k not in uncounted]
    tables = result.tally.tables()
    markers = timeline.markers()
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>relaywatch report</title>", f"<style>{CSS}</style></head><body>",
        "<header><h1>relaywatch report</h1>",
        f'<p class="sub">{esc(_when(t.first_time))} .. {esc(_when(t.last_time))}'
        f"{f', {t.unparsed:,} lines unparsed' if t.unparsed else ''}</p>",
        '<ul class="stats">' + "".join(f"<li><b>{n:,}</b>{esc(k)}</li>" for k, n in stats) + "</ul>",
        *(f'<p class="note">{esc(n)}</p>' for n in notes),
        "</header>",
        _findings(findings),
        "<section><h2>Timeline</h2>",
    ]
    if timeline.span() is None:
        parts.append('<p class="note">Nothing was relayed and nothing decided in this period.</p></section>')
    else:
        parts += [_Chart(timeline, 0, len(timeline.relayed())).render(), _explain(timeline), "</section>"]
        zoom = _zoom(timeline)
        if zoom is not None:
            chart = _Chart(timeline, *zoom)
            parts.append(f"<section><h2>The first block, closer: {esc(_when(chart.t0))} .. {esc(_when(chart.t1))}"
                         f"</h2>{chart.render()}</section>")
    if timeline.markers_dropped:
        parts.append(f'<p class="note">{timeline.markers_dropped:,} later decisions are not drawn.</p>')
    parts.append(f'<section class="events-wrap">{_events(markers, result, timeline, dry_run)}</section>'
                 if markers else "")
    delivery = [(r.domain, r.relayed, f"{r.deferred:,} ({r.deferred_ratio:.0%})", r.bounced)
                for r in timeline.delivery()]
    deferring = [(r.domain, r.relayed, f"{r.deferred:,} ({r.deferred_ratio:.0%})") for r in timeline.most_deferred()]
    parts += [
        '<h2>Top tables</h2><div class="tables">',
        _table("Top relaying clients", ("client", "relayed"), tables["clients"]),
        _table("Top senders of relayed mail", ("sender", "relayed"), tables["senders"]),
        _table("Top destination domains", ("domain", "relayed", "deferred", "bounced"), delivery),
        _table("Highest deferral ratio (10+ recipients)", ("domain", "relayed", "deferred"),
               deferring),
        _table("Top SASL users (relayed)", ("SASL user", "relayed"), tables["sasl_users"]),
        _table("Top clients refused relay", ("client", "refused"), tables["relay_denied"]),
        "</div>",
        '<p class="note">Deferral counts the first delivery attempt of each recipient. A destination deferring most '
        "of our mail is often a sign that we are already on its blocklist.</p>",
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p) + "\n"
