"""What each Postfix program's message says: one grammar per daemon family. Pure: text in, dataclass out.

Attackers write parts of every message (envelope addresses, HELO names, message ids,
remote replies), so each field is read only where Postfix itself puts it: the queue id
and keyword are anchored at the start of the message, a client address comes only from
the fixed prefix Postfix writes, and free text after it is never searched. The line
around the message (time, host, syslog tag) is relaywatch.parse's.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

from relaywatch.core.charclass import B52, DIGIT, HEX, in_class
from relaywatch.core.deliverytail import DELIVERY_TAIL, first_end, read_tail
from relaywatch.core.netaddr import canonical
from relaywatch.core.replies import relay_denied
from relaywatch.model import ClientSeen, Delivery, Event, Pickup, QueueActive, Reject, Removed, Unparsed

# --- queue ids and peers -----------------------------------------------------

_BASE52 = "0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z"
_BASE51 = "0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-y"
QUEUE_ID = rf"(?:[0-9A-F]{{6,}}|[{_BASE52}]{{10,}}z[{_BASE51}]+)"
PEER = r"(?P<name>[^\s\[\]]*)\[(?P<addr>[^\]\s]+)\](?::\d+)?"

_QID: Final = re.compile(QUEUE_ID)
CLIENT: Final = re.compile(
    r"client=" + PEER
    + r"(?:, sasl_method=[^,\s]*)?(?:, sasl_username=(?P<user>[^,]*))?(?:, sasl_sender=[^,]*)?"
    r"(?:, orig_queue_id=\w+)?(?:, orig_client=(?P<oname>[^\s\[\]]*)\[(?P<oaddr>[^\]\s]+)\](?::\d+)?)?$"
)
_REJECT: Final = re.compile(
    r"(?P<action>reject|reject_warning|milter-reject|milter-discard|discard|hold|milter-hold|filter"
    r"|redirect|proxy-reject): (?P<stage>[A-Z][A-Z-]*) from " + PEER + r": (?P<reply>.*)",
    re.DOTALL,
)
_CLEANUP_DROP: Final = re.compile(r"(?:reject|discard): (?:header|body) ")
_QMGR: Final = re.compile(
    rf"(?P<qid>{QUEUE_ID}): (?:(?P<removed>removed)|(?P<from>from=<(?P<sender>.*)>, size=(?P<size>\d+), "
    r"nrcpt=(?P<nrcpt>\d+) \(queue active\)))$",
    re.DOTALL,
)
_PICKUP: Final = re.compile(r"uid=(?P<uid>\d+) from=<(?P<sender>.*)>$", re.DOTALL)
DELIVERY_AGENTS: Final = frozenset({"smtp", "lmtp", "local", "virtual", "pipe", "error", "retry", "discard"})


def client_address(addr: str) -> str | None:
    """The canonical text of a client address, or None when Postfix did not log one."""
    return canonical(addr)


# --- message grammars, one per daemon family ---------------------------------


def _split(msg: str) -> tuple[str, str]:
    """(what stands before the first ": ", the rest): a queue id, NOQUEUE, or anything else.

    Callers check the keyword of the rest first (cheap) and validate the queue id after.
    """
    i = msg.find(": ", 0, 40)
    return (msg[:i], msg[i + 2 :]) if i > 0 else ("", msg)


class _LastQid:
    """The last text is_qid found to be a queue id: a message's lines mostly follow one another
    (client=, cleanup, qmgr, its deliveries, removed), so most lines ask about the id just checked."""

    def __init__(self) -> None:
        self.text = "000000"  # a queue id: only ids are ever kept here


_LAST_QID: Final = _LastQid()


def is_qid(text: str) -> bool:
    """What `_QID.fullmatch` answers, without a regex (one per line): a short id is 6+ characters of
    0-9A-F (so no `z`); a long one is all base 52 with its last `z` after ten and before the end."""
    if text == _LAST_QID.text:
        return True
    n = len(text)
    z = text.rfind("z")
    if z < 0:
        ok = n >= 6 and in_class(text, 0, n, HEX)
    else:
        ok = 10 <= z < n - 1 and in_class(text, 0, n, B52)
    if ok:
        _LAST_QID.text = text
    return ok


def is_digits(text: str, start: int, end: int) -> bool:
    """text[start:end] is ASCII digits, one at least: what `\\d+` matches there, short of other scripts' digits."""
    return start < end and in_class(text, start, end, DIGIT)


def _plain(text: str) -> bool:
    """No whitespace (`\\s`) in `text`: every whitespace character but the space is unprintable.
    Other unprintable characters answer False too: the caller then asks its regex."""
    return " " not in text and text.isprintable()


def _port(text: str, i: int) -> bool:
    """text[i:] is what `(?::\\d+)?$` matches whole, short of a final newline."""
    return i == len(text) or (text.startswith(":", i) and text[i + 1:].isdecimal())


Grammar = Callable[[float, str, str, str], Event | None]  # (time, program, message, host)


def _smtpd(t: float, daemon: str, msg: str, host: str) -> Event | None:
    qid, rest = _split(msg)
    if rest.startswith("client="):
        if not is_qid(qid):
            return None  # NOQUEUE: client= (a before-queue proxy) starts no message: LineParser._proxy
        if "," not in rest:
            # client=name[addr] or name[addr]:port alone, read with str operations where that is
            # exactly what CLIENT reads (no optional field can match without a comma)
            b = rest.find("[", 7)
            e = rest.find("]", b + 1) if b > 0 else -1
            name = rest[7:b]
            if e > b + 1 and "]" not in name and _plain(name) and _port(rest, e + 1):
                raw = rest[b + 1:e]
                if _plain(raw):
                    addr = client_address(raw)
                    if addr is None:
                        return Unparsed(t, "smtpd client=", host=host)
                    return ClientSeen(t, qid, addr, name, None, None, host=host)
        c = CLIENT.match(rest)
        if c is None or (addr := client_address(c["addr"])) is None:
            return Unparsed(t, "smtpd client=", host=host)
        orig = client_address(c["oaddr"]) if c["oaddr"] else None
        return ClientSeen(t, qid, addr, c["name"], c["user"] or None, orig, host=host)
    return _reject(t, qid, rest, host, smtpd=True)


def _reject(t: float, qid: str, rest: str, host: str, smtpd: bool = False) -> Event | None:
    m = _REJECT.match(rest)
    if m is None or not (qid == "NOQUEUE" or is_qid(qid)):
        return None
    addr = client_address(m["addr"])
    if addr is None:
        return Unparsed(t, "reject without a client address", host=host)
    action, stage, reply = m.group("action", "stage", "reply")
    denied = smtpd and action == "reject" and stage in ("RCPT", "VRFY") and relay_denied(reply)
    return Reject(
        t, None if qid == "NOQUEUE" else qid, action, stage, addr, m["name"], reply, denied, host=host
    )


def _qmgr(t: float, daemon: str, msg: str, host: str) -> Event | None:
    # The two shapes of nearly every qmgr line, read with str operations where they give exactly
    # what _QMGR gives (its greedy sender ends at the last `>, size=`); anything else asks _QMGR.
    k = msg.find(": ", 0, 40)
    if k > 0:
        if msg.endswith(" (queue active)") and msg[k + 2:k + 8] == "from=<":
            j = msg.rfind(">, size=")
            n = len(msg) - 15
            c = msg.find(", nrcpt=", j + 8, n) if j >= k + 8 else -1
            # ASCII digits here; others (which \d and int() take too) go to _QMGR
            if c > 0 and is_digits(msg, j + 8, c) and is_digits(msg, c + 8, n):
                qid = msg[:k]
                if is_qid(qid):
                    return QueueActive(t, qid, msg[k + 8:j], int(msg[j + 8:c]), int(msg[c + 8:n]), host=host)
        elif len(msg) == k + 9 and msg.endswith(": removed"):
            qid = msg[:k]
            if is_qid(qid):
                return Removed(t, qid, host=host)
    m = _QMGR.match(msg)
    if m is None:
        if msg.endswith("(queue active)"):
            return Unparsed(t, "qmgr from=", host=host)
        return None
    if m["removed"]:
        return Removed(t, m["qid"], host=host)
    return QueueActive(t, m["qid"], m["sender"], int(m["size"]), int(m["nrcpt"]), host=host)


def _pickup(t: float, daemon: str, msg: str, host: str) -> Event | None:
    qid, rest = _split(msg)
    if not rest.startswith("uid=") or not is_qid(qid):
        return None
    p = _PICKUP.match(rest)
    if p is None:
        return Unparsed(t, "pickup", host=host)
    return Pickup(t, qid, int(p["uid"]), p["sender"], host=host)


def _cleanup(t: float, daemon: str, msg: str, host: str) -> Event | None:
    qid, rest = _split(msg)
    if rest.startswith("message-id="):
        return None
    if (rest.startswith("removed") or _CLEANUP_DROP.match(rest)) and is_qid(qid):
        return Removed(t, qid, host=host)
    return _reject(t, qid, rest, host)


def _postsuper(t: float, daemon: str, msg: str, host: str) -> Event | None:
    qid, rest = _split(msg)
    return Removed(t, qid, host=host) if rest == "removed" and is_qid(qid) else None


def _delivery(t: float, agent: str, msg: str, host: str) -> Event | None:
    qid, rest = _split(msg)
    if not rest.startswith("to=") or not is_qid(qid):
        return None
    quoted = rest[4:5] == '"'
    end = first_end(rest, 4)
    while end >= 0:
        tail = read_tail(rest, end + 3)
        if tail is None:
            m = DELIVERY_TAIL.match(rest, end + 3)
            if m is None:
                end = -1 if quoted else rest.find(">, ", end + 1)
                continue
            tail = m["orig"], m["relay"], m["raddr"], m["status"], m["reply"]
        orig, relay, raddr, status, reply = tail
        scope = rest[end:] if quoted else rest
        if scope.count(", relay=") != 1:
            # A second relay= is text an attacker put in an address or reply:
            # keep the delivery but trust no relay it names.
            relay, raddr = "?", None
        return Delivery(t, qid, agent, rest[4:end], orig, relay, raddr, status, reply or "", host=host)
    return Unparsed(t, f"{agent} to=", host=host)


def _postscreen(t: float, daemon: str, msg: str, host: str) -> Event | None:
    qid, rest = _split(msg)
    return _reject(t, qid, rest, host) if qid == "NOQUEUE" else None


# The same families as numbers, for LineParser: a native call through `read` instead of a Python-level
# call of the function a dict holds (argument parsing, the time boxed as a float), on every line.
NOT_OURS: Final = 0  # no grammar, or a syslog name relaywatch does not read
SMTPD: Final = 1
_QMGR_KIND: Final = 2
_CLEANUP_KIND: Final = 3
_PICKUP_KIND: Final = 4
_POSTSCREEN_KIND: Final = 5
_POSTSUPER_KIND: Final = 6
_DELIVERY_KIND: Final = 7
KINDS: Final[dict[str, int]] = {
    "smtpd": SMTPD,
    "qmgr": _QMGR_KIND,
    "nqmgr": _QMGR_KIND,
    "cleanup": _CLEANUP_KIND,
    "pickup": _PICKUP_KIND,
    "postscreen": _POSTSCREEN_KIND,
    "postsuper": _POSTSUPER_KIND,
    **{agent: _DELIVERY_KIND for agent in DELIVERY_AGENTS},
}


def read(kind: int, t: float, daemon: str, msg: str, host: str) -> Event | None:
    """GRAMMARS[daemon](t, daemon, msg, host) for the family `kind` (KINDS[daemon]), NOT_OURS: None."""
    if kind == _DELIVERY_KIND:
        return _delivery(t, daemon, msg, host)
    if kind == SMTPD:
        return _smtpd(t, daemon, msg, host)
    if kind == _QMGR_KIND:
        return _qmgr(t, daemon, msg, host)
    if kind == _CLEANUP_KIND:
        return _cleanup(t, daemon, msg, host)
    if kind == _PICKUP_KIND:
        return _pickup(t, daemon, msg, host)
    if kind == _POSTSCREEN_KIND:
        return _postscreen(t, daemon, msg, host)
    if kind == _POSTSUPER_KIND:
        return _postsuper(t, daemon, msg, host)
    return None


_BY_KIND: Final[dict[int, Grammar]] = {
    SMTPD: _smtpd, _QMGR_KIND: _qmgr, _CLEANUP_KIND: _cleanup, _PICKUP_KIND: _pickup,
    _POSTSCREEN_KIND: _postscreen, _POSTSUPER_KIND: _postsuper, _DELIVERY_KIND: _delivery,
}
# by syslog name, for callers outside the parser's per-line path: KINDS read through _BY_KIND (one list of names)
GRAMMARS: Final[dict[str, Grammar]] = {daemon: _BY_KIND[kind] for daemon, kind in KINDS.items()}


def parse_message(daemon: str, t: float, msg: str, host: str = "") -> Event | None:
    """The event a Postfix program's message carries; None for lines with nothing relaywatch uses."""
    grammar = GRAMMARS.get(daemon)
    return grammar(t, daemon, msg, host) if grammar is not None else None
