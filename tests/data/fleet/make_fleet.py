"""Writes the fleet logs of tests/test_central.py: three mail hosts, each its own log, and the same
day as a central rsyslog host received it. Run from the worktree: `python tests/data/fleet/make_fleet.py`.

The shapes are Postfix 3.7's for a relayed message (connect, client=, cleanup, qmgr from=, disconnect,
smtp to= status=sent, removed). The story, 2025-11-30 from 10:00 UTC:
- 45.155.205.17 relays 75 recipients in 8 minutes, round-robin over mx1, mx2 and mx3: 25 on each,
  under the client rule's 60 per 10 minutes on every host, over it for the fleet.
- innocents: 81.2.69.142 on mx1, 89.160.20.112 on mx2, 2a02:2e0:3fe:1001:302::1 on mx3 (40 each), and
  185.12.64.3 on all three (18 each: 54 for the fleet).
- queue ids collide: message i on every host has the same queue id (Postfix's are unique per host only).
- mx3's clock is 40 s behind the others'.
- mx1 rotated twice during the day: mail.log.2.gz, mail.log.1, mail.log (a message cut by each rotation).
"""

from __future__ import annotations

import gzip
import os
import time
from datetime import UTC, datetime

HERE = os.path.dirname(os.path.abspath(__file__))
START = datetime(2025, 11, 30, 10, 0, 0, tzinfo=UTC).timestamp()
HOSTS = ("mx1", "mx2", "mx3")
SKEW = {"mx1": 0.0, "mx2": 0.0, "mx3": -40.0}
ABUSER = "45.155.205.17"
INNOCENT = {"mx1": "81.2.69.142", "mx2": "89.160.20.112", "mx3": "2a02:2e0:3fe:1001:302::1"}
SHARED = "185.12.64.3"
RELAY = "mx.far-away.example[93.184.216.34]:25"


def messages() -> list[tuple[float, str, str, str, str]]:
    """(time, host, client, sender, recipient) of every relayed message, in true time order."""
    out = []
    for i in range(75):
        out.append((START + 30 + i * 6.4, HOSTS[i % 3], ABUSER, "offers@cheap-pills.example",
                    f"victim{i}@far-away.example"))
    for j, host in enumerate(HOSTS):
        for i in range(40):
            out.append((START + 5 + j + i * 14.3, host, INNOCENT[host], f"staff{i % 4}@{host}.example",
                        f"partner{i}@customers.example"))
        for i in range(18):
            out.append((START + 11 + j * 3 + i * 31.0, host, SHARED, "newsletter@club.example",
                        f"member{i}@members.example"))
    return sorted(out)


def lines() -> list[tuple[float, str, str]]:
    """(true time, host, line without its timestamp) of every log line, in true time order."""
    counter = dict.fromkeys(HOSTS, 0)
    out = []
    for t, host, client, sender, rcpt in messages():
        counter[host] += 1
        n = counter[host]
        qid = f"{0x3C5A10 + n:06X}{0xE7 + n % 7:02X}"  # the n-th message of every host has the same id
        pid = 4100 + n
        name = f"unknown[{client}]"
        out += [
            (t, host, f"postfix/smtpd[{pid}]: connect from {name}"),
            (t + 0.2, host, f"postfix/smtpd[{pid}]: {qid}: client={name}"),
            (t + 0.3, host, f"postfix/cleanup[{pid + 1}]: {qid}: message-id=<{n}.{host}@{sender.split('@')[1]}>"),
            (t + 0.4, host, f"postfix/qmgr[812]: {qid}: from=<{sender}>, size={1800 + n}, nrcpt=1 (queue active)"),
            (t + 0.5, host, f"postfix/smtpd[{pid}]: disconnect from {name} ehlo=1 mail=1 rcpt=1 data=1 quit=1"
                            " commands=5"),
            (t + 2.1, host, f"postfix/smtp[{pid + 2}]: {qid}: to=<{rcpt}>, relay={RELAY}, delay=1.9,"
                            f" delays=0.4/0.01/0.9/0.6, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as {n:X}Q)"),
            (t + 2.2, host, f"postfix/qmgr[812]: {qid}: removed"),
        ]
    return sorted(out, key=lambda x: x[0])


def bsd(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%b %e %H:%M:%S")


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "+00:00"


def write(path: str, text: list[str], compress: bool = False) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = ("\n".join(text) + "\n").encode()
    if compress:
        with open(path, "wb") as f, gzip.GzipFile(filename="", mode="wb", fileobj=f, mtime=0) as gz:
            gz.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)


def main() -> None:
    os.environ["TZ"] = "UTC"
    time.tzset()
    all_lines = lines()
    for host in HOSTS:  # each host's own log: its own clock, classic syslog stamps (no year)
        own = [f"{bsd(t + SKEW[host])} {host} {text}" for t, h, text in all_lines if h == host]
        if host == "mx1":
            third = len(own) // 3
            write(f"{HERE}/mx1/mail.log.2.gz", own[:third - 3], compress=True)
            write(f"{HERE}/mx1/mail.log.1", own[third - 3:2 * third - 2])
            write(f"{HERE}/mx1/mail.log", own[2 * third - 2:])
        else:
            write(f"{HERE}/{host}/mail.log", own)
    # the central rsyslog host: lines in the order they arrived, each stamped by its sender's clock
    write(f"{HERE}/central/syslog", [f"{rfc3339(t + SKEW[h])} {h} {text}" for t, h, text in all_lines])


if __name__ == "__main__":
    main()
