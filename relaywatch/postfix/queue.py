"""Act on mail already queued: find an abuser's messages and hold, release or delete them.

`postqueue -j` lists the queue but carries no client address. The store ties queue
ids to clients from the log's `client=` lines (cheap, and it survives a content
filter's re-injection); messages it does not know are looked up with `postcat -e`,
whose envelope records hold the client, many queue ids per process (measured with
10,000 queued: postqueue -j 0.3 s, postcat -e 0.04 s per 1,000 ids in one process
but 2.6 ms per process, postsuper -h 0.4 s for all of them).

Every command is an argument list with `-c config_directory`, never a shell, with
a timeout. Queue ids reach postsuper on stdin only after matching Postfix's queue
id syntax: a hostile "id" (`ALL`, `-d`, a newline) is refused before anything runs.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
import subprocess
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from relaywatch.core.parse import QUEUE_ID
from relaywatch.model import PostfixError

# target kind -> the `relaywatch queue` option naming it
CLI_FLAGS = {"client": "--client", "network": "--network", "sender": "--sender", "sasl_user": "--sasl-user"}
POSTCAT_BATCH = 1000  # ids per postcat process: bounded command lines
MAX_VANISHED = 3  # each message that leaves the queue under postcat costs a 1 s pause
STILL = ("deferred", "hold")  # queues whose messages rarely leave within a second

_QID = re.compile(QUEUE_ID)
_ENVELOPE = re.compile(rf"^\*\*\* ENVELOPE RECORDS (?:\S*/)?({QUEUE_ID}) \*\*\*$")
_ATTRIBUTE = re.compile(r"^named_attribute: (log_client_address|client_address|sasl_username)=(.*)$")
_VANISHED = re.compile(rf"open queue file ({QUEUE_ID}): No such file")
_DONE = {"-h": "placed on hold", "-H": "released from hold", "-d": "removed"}


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """One `postqueue -j` record; `arrival_time` in seconds since the epoch, `size` in bytes."""

    qid: str
    queue_name: str
    sender: str
    recipients: tuple[str, ...]
    arrival_time: int
    size: int


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a queued message came from, as its envelope records say (None: local submission)."""

    client: str | None
    sasl_user: str | None


@dataclass(frozen=True, slots=True)
class Target:
    """Whose mail: kind is a key of CLI_FLAGS; `value` is canonical (see `target`)."""

    kind: str
    value: str

    def matches(self, msg: QueuedMessage, origin: Origin | None) -> bool:
        if self.kind == "sender":
            return msg.sender.lower() == self.value
        if origin is None:
            return False
        if self.kind == "sasl_user":
            return origin.sasl_user == self.value
        try:
            addr = ipaddress.ip_address(origin.client or "")
        except ValueError:
            return False
        if self.kind == "client":
            return addr == ipaddress.ip_address(self.value)
        return addr in ipaddress.ip_network(self.value)

    @property
    def option(self) -> str:
        """The `relaywatch queue` option selecting this target, shell-quoted."""
        return f"{CLI_FLAGS[self.kind]} {shlex.quote(self.value)}"

    def hint(self) -> str:
        """How the admin releases or deletes what a hold kept."""
        return (f"release them: relaywatch queue release {self.option}, "
                f"or delete them: relaywatch queue delete {self.option} --yes")

    def __str__(self) -> str:
        return f"{self.kind.replace('_', ' ')} {self.value}"


@dataclass(frozen=True, slots=True)
class Selection:
    """The target's messages, and how many queued messages were not looked up (over budget,
    or skipped after others left the queue under postcat)."""

    messages: tuple[QueuedMessage, ...]
    unchecked: int = 0


def target(kind: str, value: str) -> Target:
    """A validated target; ValueError says what is wrong with `value`."""
    if kind == "client":
        return Target(kind, str(ipaddress.ip_address(value)))
    if kind == "network":
        return Target(kind, str(ipaddress.ip_network(value)))  # host bits set: ValueError
    if kind in ("sender", "sasl_user"):
        if not value or re.search(r"\s", value):
            raise ValueError(f"{kind} {value!r}: empty or contains whitespace")
        return Target(kind, value.lower() if kind == "sender" else value)
    raise ValueError(f"unknown target kind {kind!r}; expected one of {', '.join(CLI_FLAGS)}")


def checked_qids(qids: Iterable[str]) -> list[str]:
    """`qids` unchanged if every one is a Postfix queue id; PostfixError (and nothing run) otherwise."""
    out = list(qids)
    bad = [q for q in out if not _QID.fullmatch(q)]
    if bad:
        raise PostfixError(f"refusing {len(bad)} invalid queue id(s) such as {bad[0]!r}: nothing was changed; "
                           "a queue id is 6+ hex digits or a long id (enable_long_queue_ids)")
    return out


def parse_postqueue_json(text: str) -> list[QueuedMessage]:
    """`postqueue -j` output (one JSON object per line) as messages; PostfixError on a bad record."""
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            msg = QueuedMessage(rec["queue_id"], rec["queue_name"], rec["sender"],
                                tuple(r["address"] for r in rec["recipients"]),
                                int(rec["arrival_time"]), int(rec["message_size"]))
            if not _QID.fullmatch(msg.qid):
                raise ValueError(f"bad queue id {msg.qid!r}")
        except (ValueError, KeyError, TypeError) as exc:
            raise PostfixError(f"postqueue -j record {n} is not what Postfix 3.x writes ({exc!r}): {line[:200]}; "
                               "is this Postfix older than 3.1?") from exc
        out.append(msg)
    return out


def parse_envelopes(text: str) -> dict[str, Origin]:
    """`postcat -e` output for many messages: each one's client address and SASL login.

    `log_client_address` is the original client when a content filter forwarded
    it (XFORWARD); `client_address` is the connection itself.
    """
    found: dict[str, dict[str, str]] = {}
    attrs: dict[str, str] | None = None
    for line in text.splitlines():
        if m := _ENVELOPE.match(line):
            attrs = found.setdefault(m[1], {})
        elif line.startswith("*** "):
            attrs = None  # message contents or the end: no more envelope records
        elif attrs is not None and (m := _ATTRIBUTE.match(line)):
            attrs.setdefault(m[1], m[2])
    return {qid: Origin(a.get("log_client_address") or a.get("client_address"), a.get("sasl_username"))
            for qid, a in found.items()}


class PostfixQueue:
    """postqueue, postcat and postsuper for one Postfix instance (root needed for the last two)."""

    def __init__(self, config_directory: str | Path | None, bindir: str = "/usr/sbin",
                 timeout: float = 120.0) -> None:
        self.config_directory = None if config_directory is None else str(config_directory)
        self.bindir = bindir
        self.timeout = timeout

    def _run(self, program: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [f"{self.bindir}/{program}", *(["-c", self.config_directory] if self.config_directory else []), *args]
        try:
            return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=self.timeout, check=False)
        except OSError as exc:
            raise PostfixError(f"cannot run {cmd[0]}: {exc}; is Postfix installed?") from exc
        except subprocess.TimeoutExpired as exc:
            raise PostfixError(f"{program} took longer than {self.timeout:g} s; is the queue huge "
                               "or the disk stalled?") from exc

    def messages(self) -> list[QueuedMessage]:
        """Everything in the queue now (incoming, active, deferred, hold)."""
        done = self._run("postqueue", "-j")
        if done.returncode != 0:
            raise PostfixError(f"postqueue -j failed (exit {done.returncode}): {done.stderr.strip() or 'no message'}; "
                               "is config_directory right, and is Postfix 3.1 or newer?")
        return parse_postqueue_json(done.stdout)

    def origins(self, qids: Sequence[str]) -> tuple[dict[str, Origin], int]:
        """The envelope origin of each message still queued (`postcat -e -q`, batched), and
        how many were not looked up because too many others left the queue meanwhile."""
        todo = checked_qids(qids)
        found: dict[str, Origin] = {}
        vanished = 0
        while todo:
            batch = todo[:POSTCAT_BATCH]
            done = self._run("postcat", "-e", "-q", *batch)
            found.update(parse_envelopes(done.stdout))
            if done.returncode == 0:
                todo = todo[len(batch):]
                continue
            m = _VANISHED.search(done.stderr)
            if m is None or m[1] not in batch:
                raise PostfixError(f"postcat -e failed (exit {done.returncode}): "
                                   f"{done.stderr.strip() or 'no message'}; it must run as root")
            # postcat stops at a message delivered meanwhile, after a 1 s pause (Postfix's msg_fatal)
            todo = todo[batch.index(m[1]) + 1:]
            vanished += 1
            if vanished == MAX_VANISHED:
                return found, len(todo)
        return found, 0

    def hold(self, qids: Iterable[str]) -> int:
        """Put messages on hold (`postsuper -h`): nothing more leaves; returns how many moved."""
        return self._postsuper("-h", qids)

    def release(self, qids: Iterable[str]) -> int:
        """Release held messages (`postsuper -H`) to the deferred queue."""
        return self._postsuper("-H", qids)

    def delete(self, qids: Iterable[str]) -> int:
        """Delete messages (`postsuper -d`), from whatever queue they are in."""
        return self._postsuper("-d", qids)

    def _postsuper(self, flag: str, qids: Iterable[str]) -> int:
        ids = checked_qids(qids)
        if not ids:
            return 0
        done = self._run("postsuper", flag, "-", stdin="".join(f"{q}\n" for q in ids))
        if done.returncode != 0:
            raise PostfixError(f"postsuper {flag} failed (exit {done.returncode}): "
                               f"{done.stderr.strip() or 'no message'}; it must run as root")
        # one "postsuper: QID: placed on hold" line per message it moved; ids no longer queued are skipped
        return len(re.findall(rf"^postsuper: {QUEUE_ID}: {_DONE[flag]}$", done.stderr, re.M))


def select(queue: PostfixQueue, who: Target, known: Collection[str] = (), *,
           queues: Collection[str] | None = None, postcat_limit: int | None = None) -> Selection:
    """The queued messages of `who` (only in `queues`, when given).

    `known`: queue ids the store tied to `who` from the log. Other messages are
    looked up with postcat unless more than `postcat_limit` of them are left;
    then they are counted as unchecked instead.
    """
    listing = [m for m in queue.messages() if queues is None or m.queue_name in queues]
    if who.kind == "sender":
        return Selection(tuple(m for m in listing if who.matches(m, None)))
    known = set(known)
    picked = [m for m in listing if m.qid in known]
    rest = [m for m in listing if m.qid not in known]
    if postcat_limit is not None and len(rest) > postcat_limit:
        unchecked = len(rest)
    else:
        rest.sort(key=lambda m: m.queue_name not in STILL)  # the mail that sits still first
        origins, unchecked = queue.origins([m.qid for m in rest]) if rest else ({}, 0)
        picked += [m for m in rest if who.matches(m, origins.get(m.qid))]
    return Selection(tuple(sorted(picked, key=lambda m: (m.arrival_time, m.qid))), unchecked)
