"""A timeline as text: sparklines per bin for the terminal report, and the titles both reports use."""

from __future__ import annotations

import re

from relaywatch.reports.timeline import Timeline
from relaywatch.wording import clock

SPARKS = "▁▂▃▄▅▆▇█"
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f]")

DIM_TITLES = {"client": "clients", "sender": "senders", "domain": "destination domains",
              "sasl_user": "SASL users", "relay_denied": "clients refused relay"}


def dim_title(dim: str) -> str:
    if dim.startswith("net:"):
        p4, p6 = dim[4:].split("/")
        return f"/{p4} networks (IPv6 /{p6})"
    return DIM_TITLES[dim]


def unit(bin_s: int) -> str:
    return {60: "minute", 3600: "hour"}.get(bin_s, "day")


def sparkline(values: list[int], width: int) -> str:
    """One character per column, the column's busiest bin scaled to ▁..█; blank for none at all."""
    if not values or width < 1:
        return ""
    cols = min(width, len(values))
    peaks = [max(values[i * len(values) // cols:(i + 1) * len(values) // cols]) for i in range(cols)]
    top = max(peaks)
    if top <= 0:
        return " " * cols
    return "".join(SPARKS[min(7, (v * 8 - 1) // top)] if v > 0 else " " for v in peaks)


def marker_row(tl: Timeline, columns: int) -> str:
    """A row under the overall sparkline with each marker in its column; a block wins a shared column."""
    span = tl.span()
    if span is None:
        return ""
    row = [" "] * columns
    bins = round((span[1] - span[0]) / tl.bin_s)
    rank = {" ": 0, "a": 1, "u": 2, "B": 3}
    for m in tl.markers():
        col = ((int((m.time - span[0]) // tl.bin_s) + 1) * columns - 1) // bins  # as sparkline() groups bins
        char = {"block": "B", "unblock": "u"}.get(m.action, "a")
        if rank[char] > rank[row[col]]:
            row[col] = char
    return "".join(row).rstrip()


def printable(s: str, width: int) -> str:
    """Log text for a terminal: no control characters (escape sequences), cut to `width`."""
    s = _UNPRINTABLE.sub("?", s)
    return s if len(s) <= width else s[: width - 1] + "…"


def text_block(tl: Timeline, width: int = 60, per_dim: int = 3) -> str:
    """The terminal chart for the text report: overall sparkline, then the leaders per dimension."""
    span = tl.span()
    if span is None:
        return "Timeline: nothing relayed\n"
    u = unit(tl.bin_s)
    relayed = tl.relayed()
    columns = min(width, len(relayed))
    per_col = -(-len(relayed) // columns)
    out = [f"Relayed recipients per {u}, {clock(span[0])} .. {clock(span[1])}"
           + (f" (each mark: the busiest {u} of up to {per_col})" if per_col > 1 else "") + ":"]
    refused = tl.refused()
    out.append(f"  {'all relayed':<26} {sparkline(relayed, width):<{columns}} {sum(relayed):>8,}"
               f"  peak {max(relayed):,}/{u}")
    if tl.markers():
        out.append(f"  {'B block, a alert, u unblock':<26} {marker_row(tl, columns)}")
    if any(refused):
        out.append(f"  {'relay refused':<26} {sparkline(refused, width):<{columns}} {sum(refused):>8,}")
    for dim in tl.dims():
        rows = tl.top(dim, per_dim)
        if not rows:
            continue
        out.append(f"Top {dim_title(dim)}:")
        for s in rows:
            out.append(f"  {printable(s.label, 26):<26} {sparkline(s.values, width):<{columns}} {s.total:>8,}")
    return "\n".join(out) + "\n"
