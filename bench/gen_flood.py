#!/usr/bin/env python3
"""Deterministic relay-flood days for the replay benchmark (stdlib only).

    python bench/gen_flood.py --shape rotate16 --out /tmp/rotate16.log       # ~400k lines, ~32 % relayed
    python bench/gen_flood.py --shape ipv6-48 --clients 300000 --out /tmp/v6.log   # ~1.5M lines

rotate16: an open relay abused from a whole /16 (218.144.0.0/16, the client rotating every session),
  each message to 2-4 recipients at big free-mail providers, long lines (quoted senders, long message
  ids, long remote replies), Postfix 3.x shapes; between the flood's messages ordinary inbound mail
  and `Relay access denied` probes.  About a third of the lines are relayed deliveries.
ipv6-48: `--clients` distinct IPv6 clients in one /48 (spread over 65,536 /64s), one relayed message
  each: connect, client=, qmgr from=, smtp to=, qmgr removed (5 lines a client), plus one heavy IPv4
  client relaying among them.
Both: host `mx`, BSD timestamps from Nov 27 00:00:00 spread over the day, every choice from
`random.Random(seed)`: equal arguments give equal bytes.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections.abc import Iterator

_MONTH_DAY = "Nov 27"
_QID_ALPHABET = "0123456789BCDFGHJKLMNPQRSTVWXYZbcdfghjklmnpqrstvwxyz"


def _stamp(sec: int) -> str:
    sec = min(sec, 86399)
    return f"{_MONTH_DAY} {sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"


def _qid(n: int) -> str:
    """A Postfix long queue id (base 52 time, 'z', base 51 inode): unique per n."""
    head, x = [], 1_700_000_000_000 + n
    while x:
        x, r = divmod(x, 52)
        head.append(_QID_ALPHABET[r])
    tail, y = [], 1000 + n
    while y:
        y, r = divmod(y, 51)
        tail.append(_QID_ALPHABET[r])
    return "".join(reversed(head)).rjust(10, "0") + "z" + "".join(reversed(tail))


def rotate16(lines: int, seed: int) -> Iterator[str]:
    rng = random.Random(f"{seed}:rotate16")
    est_messages = lines // 9
    n = i = 0
    while n < lines:
        i += 1
        sec = i * 86400 // max(est_messages, 1)
        t = _stamp(sec)
        pid = 4000 + i % 97
        kind = rng.random()
        if kind < 0.06:  # a probe
            ip = f"61.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            rcpt = f"user{rng.randint(0, 99999)}@victim{rng.randint(0, 999)}.example.net"
            yield f"{t} mx postfix/smtpd[{pid}]: connect from unknown[{ip}]"
            yield (f"{t} mx postfix/smtpd[{pid}]: NOQUEUE: reject: RCPT from unknown[{ip}]: 554 5.7.1 <{rcpt}>: "
                   f"Relay access denied; from=<probe{i}@spam.example.org> to=<{rcpt}> proto=ESMTP helo=<probe>")
            yield (f"{t} mx postfix/smtpd[{pid}]: disconnect from unknown[{ip}]"
                   " ehlo=1 mail=1 rcpt=0/1 quit=1 commands=3/4")
            n += 3
            continue
        qid = _qid(i)
        if kind < 0.14:  # inbound mail for a local user
            ip = f"209.85.{rng.randint(128, 255)}.{rng.randint(1, 254)}"
            name = f"mail-ot1-f{rng.randint(1, 99)}.google.com"
            rcpts = [f"user{rng.randint(0, 50)}@woodelf.org"]
            relay = "relay=local, delay=0.2, delays=0.1/0.01/0/0.09, dsn=2.0.0, status=sent (delivered to mailbox)"
            agent = "local"
        else:
            ip = f"218.144.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            name = "unknown"
            rcpts = [f"{rng.choice(('kim', 'lee', 'park', 'choi'))}{rng.randint(0, 999999)}@"
                     f"{rng.choice(('hanmail.net', 'naver.com', 'gmail.com', 'yahoo.co.kr'))}"
                     for _ in range(rng.randint(2, 4))]
            agent = "smtp"
            relay = ""
        sender = f'"promo.{rng.randint(0, 10**9)}.offer"@deals{rng.randint(0, 99)}.example.com'
        yield f"{t} mx postfix/smtpd[{pid}]: connect from {name}[{ip}]"
        yield f"{t} mx postfix/smtpd[{pid}]: {qid}: client={name}[{ip}]"
        yield (f"{t} mx postfix/cleanup[{pid + 1}]: {qid}: message-id=<{rng.getrandbits(64):016x}."
               f"{rng.getrandbits(64):016x}@bulk-{rng.randint(0, 9999)}.mailer.example.com>")
        yield (f"{t} mx postfix/qmgr[999]: {qid}: from=<{sender}>, size={rng.randint(2000, 90000)},"
               f" nrcpt={len(rcpts)} (queue active)")
        for rcpt in rcpts:
            if agent == "local":
                tail = relay
            else:
                dom = rcpt.split("@")[1]
                r = rng.random()
                mx = (f"mx{rng.randint(1, 4)}.{dom}"
                      f"[211.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}]:25")
                if r < 0.5:
                    tail = (f"relay={mx}, delay=1.4, delays=0.1/0/0.6/0.7, dsn=2.0.0, status=sent (250 2.0.0 OK "
                            f"{rng.randint(10**9, 10**10)} {rng.getrandbits(48):012x} - gsmtp queued as {qid})")
                elif r < 0.9:
                    tail = (f"relay={mx}, delay=31, delays=0.1/0/30/0, dsn=4.4.1, status=deferred (connect to {mx}: "
                            "Connection timed out; the remote server did not answer within the configured time)")
                else:
                    tail = (f"relay={mx}, delay=2.1, delays=0.1/0/1/1, dsn=5.1.1, status=bounced (host {mx} said: "
                            f"550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in virtual mailbox table "
                            "(in reply to RCPT TO command))")
            yield f"{t} mx postfix/{agent}[{pid + 2}]: {qid}: to=<{rcpt}>, {tail}"
        yield f"{t} mx postfix/qmgr[999]: {qid}: removed"
        yield (f"{t} mx postfix/smtpd[{pid}]: disconnect from {name}[{ip}] ehlo=1 mail=1 rcpt={len(rcpts)} data=1 "
               "quit=1 commands=5")
        n += 6 + len(rcpts)


def ipv6_48(clients: int, seed: int) -> Iterator[str]:
    rng = random.Random(f"{seed}:ipv6-48")
    heavy_every = max(1, clients // 200)
    for i in range(clients):
        t = _stamp(i * 86400 // clients)
        peers = [(_qid(i),
                  f"2a0b:4000:48:{i % 65536:x}:{rng.getrandbits(16):x}:{i >> 16:x}::{rng.randint(1, 65535):x}")]
        if i % heavy_every == 0:
            peers.append((_qid(10_000_000 + i), "81.2.69.160"))
        for qid, ip in peers:
            yield f"{t} mx postfix/smtpd[{1000 + i % 50}]: connect from unknown[{ip}]"
            yield f"{t} mx postfix/smtpd[{1000 + i % 50}]: {qid}: client=unknown[{ip}]"
            yield (f"{t} mx postfix/qmgr[999]: {qid}: from=<s{i}@spam{i % 1000}.example>, size=900,"
                   " nrcpt=1 (queue active)")
            yield (f"{t} mx postfix/smtp[{2000 + i % 50}]: {qid}: to=<v{i}@d{i % 5000}.example>, "
                   f"relay=mx.d{i % 5000}.example[81.3.{i % 250}.1]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, "
                   "status=sent (250 ok)")
            yield f"{t} mx postfix/qmgr[999]: {qid}: removed"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=["rotate16", "ipv6-48"], required=True)
    ap.add_argument("--lines", type=int, default=400_000, help="rotate16: approximate lines (default %(default)s)")
    ap.add_argument("--clients", type=int, default=300_000, help="ipv6-48: distinct clients (default %(default)s)")
    ap.add_argument("--seed", type=int, default=20261127)
    ap.add_argument("--out", default="-")
    a = ap.parse_args(argv)
    gen = rotate16(a.lines, a.seed) if a.shape == "rotate16" else ipv6_48(a.clients, a.seed)
    out = sys.stdout if a.out == "-" else open(a.out, "w", encoding="utf-8")
    try:
        for line in gen:
            out.write(line + "\n")
    finally:
        if out is not sys.stdout:
            out.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
