"""Build Postfix 3.x mail logs line by line, in the shapes Postfix writes, for replay tests.

`Log` collects whole message lifecycles (connect, client= or pickup, cleanup, qmgr,
one delivery line per recipient, removed, disconnect) and writes them sorted by time,
as rsyslog's RFC 3339 lines (`2025-...+00:00 host postfix/smtpd[pid]: ...`) or classic
BSD syslog lines (`Jun  2 10:00:00 host ...`, replay with year=2025).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from relaywatch.config import Config
from relaywatch.replay import replay
from relaywatch.reports.report import ReplayResult

T0 = datetime(2025, 6, 2, 9, 0, tzinfo=UTC).timestamp()  # a Monday morning

MX = {  # recipient domain -> its MX as Postfix logs the relay
    "gmail.com": "gmail-smtp-in.l.google.com[142.250.102.27]:25",
    "hanmail.net": "mx1.hanmail.net[211.231.108.46]:25",
    "outlook.com": "outlook-com.olc.protection.outlook.com[52.101.8.38]:25",
    "web.de": "mx-ha03.web.de[212.227.15.41]:25",
}


@dataclass
class Log:
    host: str = "mail"
    lines: list[tuple[float, int, str]] = field(default_factory=list)
    _qids: itertools.count = field(default_factory=lambda: itertools.count(0x3A1B0))
    _order: itertools.count = field(default_factory=itertools.count)

    def _add(self, t: float, prog: str, pid: int, text: str) -> None:
        self.lines.append((t, next(self._order), f"{self.host} postfix/{prog}[{pid}]: {text}"))

    def qid(self) -> str:
        return f"{next(self._qids):05X}C2{len(self.lines) % 4096:03X}"[:10]

    def smtp(self, t: float, client: str, rcpts: list[str], sender: str = "newsletter@shop.example.org",
             sasl: str | None = None, name: str = "unknown", status: str = "sent", port: str = "smtpd",
             amavis: bool = False) -> str:
        """One message from an SMTP client (`port` "submission/smtpd" for port 587), relayed to `rcpts`,
        with `amavis` through an after-queue content filter that re-injects with XFORWARD."""
        qid, pid = self.qid(), 20000 + len(self.lines) % 9000
        peer = f"{name}[{client}]"
        self._add(t, port, pid, f"connect from {peer}")
        auth = f", sasl_method=PLAIN, sasl_username={sasl}" if sasl else ""
        self._add(t + 0.2, port, pid, f"{qid}: client={peer}{auth}")
        self._add(t + 0.3, "cleanup", pid + 1, f"{qid}: message-id=<{qid}.{int(t)}@{sender.partition('@')[2]}>")
        self._add(t + 0.4, "qmgr", 1021, f"{qid}: from=<{sender}>, size=2811, nrcpt={len(rcpts)} (queue active)")
        self._add(t + 0.5, port, pid, f"disconnect from {peer} ehlo=1 mail=1 rcpt={len(rcpts)} data=1 quit=1"
                                      f" commands={4 + len(rcpts)}")
        if amavis:
            return self._filter(t + 0.6, qid, rcpts, sender, status, f"orig_client={peer}")
        self._deliver(t + 1.0, qid, rcpts, status)
        return qid

    def _filter(self, t: float, qid: str, rcpts: list[str], sender: str, status: str, xforward: str) -> str:
        """amavisd-new on 127.0.0.1:10024, re-injecting on 10025: the copy that leaves is a new queue file."""
        new, pid = self.qid(), 30000 + len(self.lines) % 9000
        self._add(t + 0.5, "smtpd", pid, "connect from localhost[127.0.0.1]")
        self._add(t + 0.6, "smtpd", pid, f"{new}: client=localhost[127.0.0.1], orig_queue_id={qid}"
                                         + (f", {xforward}" if xforward else ""))
        self._add(t + 0.7, "qmgr", 1021, f"{new}: from=<{sender}>, size=3342, nrcpt={len(rcpts)} (queue active)")
        self._add(t + 0.8, "smtpd", pid, "disconnect from localhost[127.0.0.1] ehlo=1 xforward=1 mail=1"
                                         f" rcpt={len(rcpts)} data=1 quit=1 commands={5 + len(rcpts)}")
        for r in rcpts:
            self._add(t + 0.9, "smtp", 6000, f"{qid}: to=<{r}>, relay=127.0.0.1[127.0.0.1]:10024, delay=1.3,"
                      " delays=0.4/0/0/0.9, dsn=2.0.0, status=sent (250 2.0.0 from MTA(smtp:[127.0.0.1]:10025):"
                      f" 250 2.0.0 Ok: queued as {new})")
        self._add(t + 1.0, "qmgr", 1021, f"{qid}: removed")
        self._deliver(t + 1.5, new, rcpts, status)
        return new

    def pickup(self, t: float, uid: int, sender: str, rcpts: list[str], status: str = "sent",
               amavis: bool = False) -> str:
        """One message submitted with sendmail (postfix/pickup), relayed to `rcpts`."""
        qid = self.qid()
        self._add(t, "pickup", 1020, f"{qid}: uid={uid} from=<{sender.partition('@')[0]}>")
        self._add(t + 0.1, "cleanup", 3001, f"{qid}: message-id=<{qid}.{int(t)}@{self.host}.example.org>")
        self._add(t + 0.2, "qmgr", 1021, f"{qid}: from=<{sender}>, size=1904, nrcpt={len(rcpts)} (queue active)")
        if amavis:
            return self._filter(t + 0.3, qid, rcpts, sender, status, "")
        self._deliver(t + 0.8, qid, rcpts, status)
        return qid

    def local(self, t: float, client: str, rcpts: list[str], sender: str, name: str = "unknown") -> str:
        """Inbound mail from `client` delivered into local mailboxes (relay=local)."""
        qid, pid = self.qid(), 20000 + len(self.lines) % 9000
        peer = f"{name}[{client}]"
        self._add(t, "smtpd", pid, f"connect from {peer}")
        self._add(t + 0.2, "smtpd", pid, f"{qid}: client={peer}")
        self._add(t + 0.4, "qmgr", 1021, f"{qid}: from=<{sender}>, size=5120, nrcpt={len(rcpts)} (queue active)")
        for i, r in enumerate(rcpts):
            self._add(t + 0.6 + i / 100, "local", 4000, f"{qid}: to=<{r}>, relay=local, delay=0.6,"
                      " delays=0.4/0/0/0.2, dsn=2.0.0, status=sent (delivered to mailbox)")
        self._add(t + 0.9, "qmgr", 1021, f"{qid}: removed")
        self._add(t + 1.0, "smtpd", pid, f"disconnect from {peer} ehlo=1 mail=1 rcpt=1 data=1 quit=1 commands=5")
        return qid

    def _deliver(self, t: float, qid: str, rcpts: list[str], status: str) -> None:
        for i, r in enumerate(rcpts):
            relay = MX.get(r.partition("@")[2], "mx.example-isp.de[85.13.140.20]:25")
            if status == "sent":
                tail = (f"relay={relay}, delay=1.1, delays=0.3/0/0.4/0.4, dsn=2.0.0, status=sent"
                        f" (250 2.0.0 Ok: queued as 4Xk{i:03d})")
            else:
                tail = (f"relay={relay}, delay=31, delays=0.3/0/30/0, dsn=4.4.1, status=deferred (connect to "
                        f"{relay.rpartition(':')[0]}: Connection timed out)")
            self._add(t + i / 50, "smtp", 5000 + i % 7, f"{qid}: to=<{r}>, {tail}")
        if status == "sent":
            self._add(t + len(rcpts) / 50 + 0.1, "qmgr", 1021, f"{qid}: removed")

    def text(self, style: str = "rfc3339") -> str:
        out = []
        for t, _, line in sorted(self.lines):
            when = datetime.fromtimestamp(t, UTC)
            if style == "bsd":
                stamp = f"{when:%b} {when.day:2d} {when:%H:%M:%S}"
            else:
                stamp = when.isoformat(timespec="microseconds")
            out.append(f"{stamp} {line}\n")
        return "".join(out)

    def replay(self, tmp_path: Path, config: Config | None = None, style: str = "rfc3339",
               own_addresses: tuple = ()) -> ReplayResult:
        path = tmp_path / f"mail-{style}.log"
        path.write_text(self.text(style))
        return replay([str(path)], config or Config(), year=2025 if style == "bsd" else None,
                      own_addresses=own_addresses)


def rcpts(n: int, domain: str = "gmail.com", tag: str = "r") -> list[str]:
    return [f"{tag}{i:04d}@{domain}" for i in range(n)]


def blocks(result: ReplayResult) -> list[tuple[str, str]]:
    return [(d.kind, d.target) for d in result.decisions if d.action == "block"]
