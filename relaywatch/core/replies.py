"""Reading Postfix's own reply texts in smtpd log lines, where attackers write around them. Pure.

A reject line is `<reply>; from=<SENDER> to=<RECIPIENT> proto=P helo=<HELO>`. Postfix
writes the address in the reply in its internal form (unquoted: it may hold `>`, `;`
and any text), the envelope in from=/to= in the external form (a local part with such
characters in quotes), and neuters the HELO name (`<>;" @` and spaces become `?`).
So a reply is read only whole: its start, both envelope fields and the end must fit
together, and the recipient named in the reply must be the one in to=.
"""

from __future__ import annotations

import re
from typing import Final

_CODE: Final = re.compile(r"[45]\d\d (?:[45]\.\d{1,3}\.\d{1,3} )?<")
# reject_unauth_destination's text (Postfix 2.x-3.x), and the same behind a recipient class
_DENIED: Final = (">: Relay access denied; ", ">: Recipient address rejected: Relay access denied; ")
_QUEUED: Final = "queued as "


def external_end(text: str, start: int) -> int:
    """Index of the `>` that closes an external-form address starting at `start`, or -1.

    Inside double quotes `>` is text and a backslash escapes the next character."""
    i, n, quoted = start, len(text), False
    while i < n:
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif c == '"':
            quoted = True
        elif c == ">":
            return i
        i += 1
    return -1


def internal_form(address: str) -> str:
    """`"a b>"@example.org` -> `a b>@example.org`: the form Postfix writes in its replies."""
    if not address.startswith('"'):
        return address
    out, i = [], 1
    while i < len(address):
        c = address[i]
        if c == "\\" and i + 1 < len(address):
            out.append(address[i + 1])
            i += 2
            continue
        if c == '"':
            return "".join(out) + address[i + 1:]
        out.append(c)
        i += 1
    return address


def relay_denied(reply: str) -> bool:
    """True only for smtpd's own `<R>: Relay access denied; from=<S> to=<R> proto=...`
    (at VRFY: no from=).

    `reply` is what follows `reject: RCPT from name[addr]: `. The address in the reply
    (internal form, no quote in it) must be the one to= names, to= must end where the
    line's last ` proto=` begins (nothing after it but a neutered helo=<>), and the
    sender between them must be one external-form address. Text a client put in the
    sender, the recipient or its HELO cannot make all of these fit.
    """
    if "Relay access denied; " not in reply:
        return False
    code = _CODE.match(reply)
    if code is None:
        return False
    start = code.end()
    end = reply.rfind(" proto=")
    if end < 0:
        end = len(reply)  # Postfix before 2.1: the line ends with to=<...>
    elif reply.count("<", end) > 1 or reply.count(">", end) > 1:
        return False
    for marker in _DENIED:
        at = reply.find(marker, start)
        while at >= 0:
            named = reply[start:at]
            if '"' not in named and _names(reply, at + len(marker), end) == named:
                return True
            at = reply.find(marker, at + 1)
    return False


def _names(reply: str, at: int, end: int) -> str | None:
    """The recipient (internal form) of `from=<S> to=<R>` or `to=<R>` read from `at`, when R ends at `end`."""
    if reply.startswith("from=<", at):
        sender_end = external_end(reply, at + 6)
        if sender_end < 0 or not reply.startswith("> ", sender_end):
            return None
        at = sender_end + 2
    if not reply.startswith("to=<", at) or external_end(reply, at + 4) != end - 1:
        return None
    return internal_form(reply[at + 4:end - 1])


def queued_as(reply: str) -> str | None:
    """The queue id in a before-queue filter's 2xx reply (`250 2.0.0 Ok: queued as QID; from=<...`).

    The filter's reply comes first and holds no client text (amavis wraps the next hop's:
    `250 2.0.0 from MTA(smtp:[127.0.0.1]:10025): 250 2.0.0 Ok: queued as QID`), so it ends
    at the first `; from=<`; the id is what follows its last `queued as `.
    """
    end = reply.find("; from=<")
    if end < 0 or not reply.startswith("2"):
        return None
    head, sep, qid = reply[:end].rpartition(_QUEUED)
    return qid if sep else None
