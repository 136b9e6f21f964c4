"""A delivery's tail (relay=, delay=, ..., status=), read with str operations where the regex
DELIVERY_TAIL could match no other way (each field starts with its keyword and holds no `, `); every
other tail is the regex's (read_tail answers None: the fallback). Pure: grammar's delivery line calls it."""

from __future__ import annotations

import re
from typing import Final

from relaywatch.core.charclass import DELAY, DELAYS, DIGIT, FIELD, STATUS, in_class

DELIVERY_TAIL: Final = re.compile(
    r'(?:orig_to=<(?P<orig>"(?:[^"\\]|\\.)*"[^>]*|[^>]*)>, )?'
    r"relay=(?P<relay>[^\s,\[]*(?:\[(?P<raddr>[^\]\s]*)\])?(?::\d+)?), "
    r"(?:conn_use=\d+, )?delay=[\d.]+, (?:delays=[\d./]+, )?(?:tls=[^,\s]*, )?(?:dsn=\d\.\d{1,3}\.\d{1,3}, )?"
    r"status=(?P<status>[a-z-]+)(?: \((?P<reply>.*)\))?$",
    re.DOTALL,
)


def first_end(text: str, start: int) -> int:
    """The first candidate end (index of '>') of an address opened at `start`, or -1.

    A quoted local part (Postfix >= 3.5 logs the external form) may hold '>'
    and ', ': its end is the first '>, ' after the closing quote, the only
    candidate. An unquoted one from an older Postfix is ambiguous, so every
    '>, ' is a candidate and the caller tries them in order.
    """
    if text[start:start + 1] != '"':  # (a slice: startswith at an offset is a generic call, compiled)
        return text.find(">, ", start)
    i = start + 1
    while True:
        q = text.find('"', i)
        if q < 0:
            return -1
        if text[q - 1] != "\\":
            return text.find(">, ", q)
        i = q + 1


_Tail = tuple[str | None, str, str | None, str, str | None]  # orig, relay, raddr, status, reply


def read_tail(rest: str, i: int) -> _Tail | None:
    """What DELIVERY_TAIL.match(rest, i) gives when the tail has its usual shape, read with str
    operations; None where it has not (then the regex decides). Each field of the tail begins with
    its own keyword and cannot hold the `, ` that ends it, so the regex has no other way to match:
    the relay ends at the first `, `, its address at its first `]`, and a reply at the line's last `)`.
    Only ASCII is read here (a non-ASCII digit or space: the regex)."""
    c = _value(rest, i, "relay=")
    if c < 0:
        return None  # orig_to=, or no tail here
    j = i + 6
    raddr: str | None = None
    b = rest.find("[", j, c)
    if b < 0:
        if not in_class(rest, j, c, FIELD):
            return None
    else:
        e = rest.find("]", b + 1, c)
        if e < 0 or not (in_class(rest, j, b, FIELD) and in_class(rest, b + 1, e, FIELD)):
            return None
        if e + 1 < c and not (rest[e + 1] == ":" and e + 2 < c and in_class(rest, e + 2, c, DIGIT)):
            return None
        raddr = rest[b + 1:e]
    relay = rest[j:c]
    i = c + 2
    i = _optional(rest, i, "conn_use=", DIGIT, False)
    if i < 0:
        return None
    c = _value(rest, i, "delay=")
    if c <= i + 6 or not in_class(rest, i + 6, c, DELAY):
        return None
    i = _optional(rest, c + 2, "delays=", DELAYS, False)
    if i < 0:
        return None
    i = _optional(rest, i, "tls=", FIELD, True)
    if i < 0:
        return None
    c = _value(rest, i, "dsn=")
    if c >= 0:
        if not _dsn(rest, i + 4, c):
            return None
        i = c + 2
    if rest[i:i + 7] != "status=":
        return None
    i += 7
    c = rest.find(" ", i)
    n = len(rest)
    if (c if c >= 0 else n) == i or not in_class(rest, i, c if c >= 0 else n, STATUS):
        return None
    if c < 0:
        return None, relay, raddr, rest[i:], None
    if rest[c + 1:c + 2] != "(" or rest[n - 1] != ")" or n < c + 3:
        return None
    return None, relay, raddr, rest[i:c], rest[c + 2:n - 1]


def _value(rest: str, i: int, key: str) -> int:
    """Where the field `key` at rest[i:] ends (its `, `), or -1 when rest[i:] does not start with it."""
    j = i + len(key)
    return rest.find(", ", j) if rest[i:j] == key else -1


def _optional(rest: str, i: int, key: str, chars: int, empty: bool) -> int:
    """Past the optional field `key` at rest[i:] and its `, ` (i where it is absent), or -1 when its value
    is empty (unless `empty`) or has a character outside the class `chars`."""
    c = _value(rest, i, key)
    if c < 0:
        return i
    start = i + len(key)
    if (c == start and not empty) or not in_class(rest, start, c, chars):
        return -1
    return c + 2


def _dsn(text: str, start: int, end: int) -> bool:
    """text[start:end] is what `\\d\\.\\d{1,3}\\.\\d{1,3}` matches whole (ASCII digits only; others: the regex)."""
    dot = text.find(".", start + 2, end)
    return (text[start + 1:start + 2] == "." and 0 < dot - start - 2 < 4 and 0 < end - dot - 1 < 4
            and in_class(text, start, start + 1, DIGIT) and in_class(text, start + 2, dot, DIGIT)
            and in_class(text, dot + 1, end, DIGIT))
