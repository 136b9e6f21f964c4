"""How relaywatch writes times, durations and decisions for people: one definition of each.

The text and HTML reports, the digest, notices, `check`, `status` and the reason written
next to a block in Postfix's map all say the same thing the same way. Pure, stdlib only.
"""

from __future__ import annotations

from datetime import datetime

from relaywatch.model import Decision

# --- times (local time zone) -------------------------------------------------


def iso(t: float) -> str:
    """2003-03-16T01:59:38+01:00: reports, JSON, notices, status."""
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")


def stamp(t: float) -> str:
    """2003-03-16 01:59:38: a table cell."""
    return datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def clock(t: float) -> str:
    """2003-03-16 01:59: the ends of a chart's time axis."""
    return datetime.fromtimestamp(t).astimezone().strftime("%Y-%m-%d %H:%M")


def hm(t: float) -> str:
    """01:59: a time inside a day the text already names."""
    return datetime.fromtimestamp(t).strftime("%H:%M")


# --- durations ---------------------------------------------------------------


def duration(seconds: int) -> str:
    """A configured span in its largest whole unit: 3600 -> "1 h", 600 -> "10 min", 90 -> "90 s"."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def age(seconds: float) -> str:
    """How long ago, rounded to what a reader needs: "42 s", "17 min", "2.5 h"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# --- decisions ---------------------------------------------------------------


def why(d: Decision) -> str:
    """What made the decision, without the rule's name: "412 relayed recipients from 9 clients in 10 min".
    A manual block's reason is the one given; an unblock says who lifted it."""
    if d.action == "unblock":
        return "lifted by hand" if d.rule == "manual" else "expired"
    if d.rule == "manual":  # `relaywatch block`: its evidence is the reason given
        return d.evidence[0] if d.evidence else "blocked by hand"
    what = f"{d.count:,} relay attempts refused" if d.rule == "relay_probe" else f"{d.count:,} relayed recipients"
    clients = f" from {d.clients} clients" if d.clients else ""
    return f"{what}{clients} in {duration(d.window_s)}"


def describe(d: Decision) -> str:
    """`why` with the rule that decided: the reason in reports, digests, notices and the access map."""
    if d.action == "unblock" or d.rule == "manual":
        return why(d)
    return f"{why(d)} (rule {d.rule})"


# --- text from the log -------------------------------------------------------


def clean(text: str, limit: int = 100) -> str:
    """Log fields are written by strangers: no control characters, no endless lines."""
    short = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return short + ("..." if len(text) > limit else "")
