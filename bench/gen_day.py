#!/usr/bin/env python3
"""Deterministic generator of a realistic Postfix mail log day (stdlib only).

    python bench/gen_day.py --profile seed-day --out relaywatch/data/sample-2003-03-16.log.gz
    python bench/gen_day.py --profile busy --lines 1000000 --out /tmp/busy.log
    python bench/gen_day.py --profile seed-day --facts -        # print the facts of a run as JSON
    python bench/gen_day.py --self-check                        # SEED_DAY_FACTS still match the generator?

Options: --seed N (default 20030316), --format bsd|rfc3339, --lines N (approximate target),
--flood rotate|multi-rcpt|none, --style classic|modern, --facts FILE.  A name ending in .gz is
written gzip-compressed with mtime 0 and no file name in the header, so equal runs give equal bytes.
No wall clock is read; every random choice comes from `random.Random` streams seeded from --seed.
Lines are streamed through a time-ordered heap: memory stays small for any --lines.

Every message follows Postfix's lifecycle: smtpd `connect from` -> smtpd `QID: client=` -> cleanup
`QID: message-id=` -> qmgr `QID: from=<..>, size=N, nrcpt=N (queue active)` -> one delivery line per
recipient (postfix/local or postfix/smtp) -> qmgr `QID: removed`; smtpd `disconnect from` after the
last message of the session.  Deferred recipients are retried (qmgr `from=` repeated + another delivery
line) with Postfix's backoff; messages still deferred at 23:59:59 simply stay in the queue (no
`removed`).  Queue ids are built like Postfix's short ids: 5 hex digits of the microsecond of the
`client=` line + the queue file's inode in hex (inodes 0xAE01.. reused lowest-first once a message is
removed), so ids are unique while live and re-used later, like the real thing.  Process ids come from
per-daemon process pools (max_use 100, max_idle 100 s): one smtpd process serves one session at a time.

Common to both profiles: host `zebra`, 2003-03-16 00:00:00 - 23:59:59 local time (+09:00), local
domain woodelf.org, qmgr pid 24493, pickup pid 24492.  Styles: `classic` (default for seed-day) is the
Postfix 2.0 shape of the seed thread: `delay=N` with no `delays=`/`dsn=`, `relay=host[ip]` without port,
`connect to host[ip]: Connection refused (port 25)`, `disconnect from unknown[IP]` without counters,
`status=sent (mailbox)`, postfix-tls `setting up TLS connection from ..`, envelope addresses logged in
internal (unquoted) form.  `modern` (default for busy) is Postfix 3.x: `delays=`, `dsn=`, `:25`,
disconnect counters, `postfix/submission/smtpd` for SASL users, quoted (external) address form.

PROFILE seed-day (default seed 20030316, bsd, classic: 25,944 lines; every number below is also in
SEED_DAY_FACTS, which `--self-check` compares with a fresh run)
  * the flood (--flood rotate): first connect 01:59:38, last connect 02:59:35; 2,403 messages in 2,001
    sessions (one message every 1-2 s; a fifth of the sessions carry two), sender journeypark@hananet.net,
    nrcpt=1, random <name>@hanmail.net, from 984 clients unknown[218.144.X.Y] with X in 100..120 (each IP
    1-6 messages), delivered by postfix/smtp to mx1..mx10.hanmail.net[211.43.197.N].  First attempts:
    1,237 deferred (relay=none, Connection refused / server dropped connection), 1,118 sent, 48 bounced
    (`No such user` -> postfix/bounce non-delivery notification to journeypark@hananet.net; 75 in all).
    Deferred ones are retried all day (last flood delivery line 23:50:30); 10 never get through and are
    still queued at 23:59:59 (no `removed`).  The first messages reproduce the seed thread's own lines
    verbatim (SEED_LINES: smtpd[29327] unknown[218.144.108.161] 8D076AE17 at 01:59:38-41, 25CDEAE1C sent
    to spell013@hanmail.net at 02:02:51, 7B382AE29 message-id at 02:02:53).
  * the prober unknown[211.72.97.40]: 30 `NOQUEUE: reject: RCPT ... 554 5.7.1 <..>: Relay access denied`
    in 10 sessions, connects 14:20:05 .. 14:29:07, rejects 14:20:05 .. 14:29:10, helo=<218.45.71.9>.
  * other relay probes (connect time, client, rejects): 00:41:17 61.177.132.8 (1), 05:55:02 200.48.31.170
    (2), 09:13:40 66.90.88.14 (1), 11:47:21 212.174.95.23 (1), 17:08:55 80.55.21.9 (2), 21:36:12
    195.24.65.200 (1).  38 relay-denied rejects in all.
  * injections: hostile text inside otherwise ordinary sessions.  No IP named in the text (8.8.8.8,
    203.0.113.99, 9.9.9.9) and no real client here relays anything; none may ever be blocked.
      id   line time  real client      hostile text (line written by)
      I6   03:40:02   192.0.2.31       cleanup 13598AE01: message-id=<x> 4B757AE06: removed  (4B757AE06 = a LIVE
                                       deferred flood message, client 218.144.118.21; its later retries must count)
      I1   05:12:45   192.0.2.25       smtpd BEC86AE01: reject: RCPT .. User unknown .. helo=<client=unknown[8.8.8.8]>
      I2   07:41:09   192.0.2.26       smtpd NOQUEUE: reject: RCPT .. User unknown .. helo=<client=unknown[8.8.8.8]>
      I3   08:30:04   192.0.2.27       qmgr B396EAE01: from=<client=unknown[8.8.8.8]@evil.example> (delivered locally)
      I4   10:02:26   192.0.2.28       smtpd NOQUEUE: reject .. from=<client=unknown[8.8.8.8]@evil.example> ..
      I5   11:20:13   192.0.2.30       cleanup 5B5A8AE01: message-id=<x> 0A1B2C3D4: removed
      I7   13:04:59   198.51.100.7     warning: non-SMTP command from unknown[198.51.100.7]: GET / HTTP/1.1
                                       from unknown[203.0.113.99]
      I8   16:44:29   198.51.100.8     warning: non-SMTP command from unknown[198.51.100.8]:
                                       GET http://203.0.113.99/ HTTP/1.1 from unknown[203.0.113.99]
      I9   19:18:44   192.168.0.10     smtp DB140AE02: to=<x>, relay=mx.example[9.9.9.9]:25, delay=1, status=sent
                                       (250 Ok)@nifty.com>, relay=mx.nifty.com[..] .. status=sent (LAN message)
      I10  21:04:13   61.207.188.29    smtp CD25FAE02: to=<y>, relay=mx.example[9.9.9.9]:25, .. status=sent
                                       (250 2.0.0 Ok)@gmail.com>, relay=none, .. status=deferred (SASL zebra;
                                       sent on a later retry)
    In the classic style envelope addresses are logged unquoted, as Postfix <= 3.4 did
    (from=<client=unknown[8.8.8.8]@evil.example>); the modern style logs the quoted external form
    (from=<"client=unknown[8.8.8.8]"@evil.example>).  Exact lines: SEED_DAY_FACTS["injections"].
  * inbound: 229 messages (348 recipients; 20% with 2-5) in 214 sessions from google 209.85.0.0/16
    (mail-ot1-f41.google.com[209.85.210.41] and 5 more IPs), yahoo 98.137.0.0/16 (6 IPs, sonic*.consmr.mail.
    gq1.yahoo.com), outlook 40.107.0.0/16 (6 IPs, mail-*.outbound.protection.outlook.com) to @woodelf.org
    users, delivered relay=local (postmaster/webmaster/root are aliases of zebra).
  * LAN host unknown[192.168.0.10]: 242 messages (286 recipients, ~10/h, quiet 03:00-06:00) via postfix/smtp
    to Japanese ISPs, hotmail, gmail; status=sent (a few deferred by timeouts first).  Counts include I9.
  * SASL (sasl_method=PLAIN): zebra 7 messages from 4 IPs in 61.207.0.0/16, hanako 4 messages from 2 IPs in
    219.0.0.0/8 (counts include I10).
  * spam to unknown users: 41 sessions, 75 `550 5.1.1 .. User unknown` NOQUEUE rejects, some with
    `warning: hostname .. does not resolve to address ..` / `address not listed for hostname`.
  * local submission: cron.daily at 06:25:01 -> postfix/pickup `uid=0 from=<root>` -> local (no smtpd).
  * noise: postfix/anvil statistics every 10 min (396 lines), TLS lines, `connect to ..: Connection
    refused|timed out (port 25)`, dovecot POP3 logins of the LAN host every 15 min and 6 failed logins
    from the internet (142 lines), CRON hourly (25 lines with cron.daily), and 3 garbage lines:
    05:31:17 truncated (`.. postfix/smtpd[29810]: warning: 210.23`), 11:02:40 cut inside the timestamp
    (`Mar 16 11:0`), 17:45:09 two syslog writes merged (`.. connect from unMar 16 17:45:09 zebra CRON[..]`).

PROFILE busy (--lines N, default 1,000,000 -> 1,000,700 lines in ~7 s; modern style by default): the same
scripted events at the same times (flood start and seed lines, prober, probes, injections, garbage,
cron.daily) plus traffic scaled to N: ~50% inbound from up to 44 IPs per provider /16, ~10% outbound from
LAN hosts 192.168.0.10.. (one per ~230 messages/day), ~2% SASL users (zebra, hanako, user001..), ~5%
spam and random relay probes, ~25% flood (same hour, rate scaled: ~24,500 messages from 218.144.100-120.Y),
the rest noise.  Injection queue ids and a few counts differ from seed-day; `generate("busy")` returns
its facts.

--flood multi-rcpt: from 01:59:38 for one hour, one message every 1-2 s from 218.144.0.0/16 (X 0..255,
~1,900 IPs, each used 1-3 times), 8-24 @hanmail.net recipients per message (seed-day: ~95,000 lines).
--flood none: no flood.  --lines scales seed-day too (scripted events stay as they are).
"""

import argparse
import gzip
import heapq
import json
import random
import sys

DEFAULT_SEED = 20030316
HOST = "zebra"
MYHOSTNAME = "zebra.woodelf.org"
LOCAL_DOMAIN = "woodelf.org"
DATE = "2003-03-16"
UTC_OFFSET = "+09:00"
EPOCH0 = 1047740400  # 2003-03-16T00:00:00+09:00
US = 1_000_000
DAY_US = 86_400 * US
QMGR_PID = 24493
PICKUP_PID = 24492
FIRST_PID = 29190
SERVER_IP = "218.45.71.9"

FLOOD_SENDER = "journeypark@hananet.net"
FLOOD_DOMAIN = "hanmail.net"
FLOOD_START = (1 * 3600 + 59 * 60 + 38) * US
FLOOD_DURATION = 3600 * US
HANMAIL_MX = [("mx1.hanmail.net", "211.43.197.21"), ("mx2.hanmail.net", "211.43.197.34"),
              ("mx3.hanmail.net", "211.43.197.27"), ("mx4.hanmail.net", "211.43.197.41"),
              ("mx5.hanmail.net", "211.43.197.12"), ("mx6.hanmail.net", "211.43.197.58"),
              ("mx7.hanmail.net", "211.43.197.63"), ("mx8.hanmail.net", "211.43.197.84"),
              ("mx9.hanmail.net", "211.43.197.92"), ("mx10.hanmail.net", "211.43.197.15")]

PROBER_IP = "211.72.97.40"
PROBER_START = (14 * 3600 + 20 * 60 + 5) * US
# (time "HH:MM:SS" of connect, client ip, number of RCPT rejects)
PROBES = [("00:41:17", "61.177.132.8", 1), ("05:55:02", "200.48.31.170", 2),
          ("09:13:40", "66.90.88.14", 1), ("11:47:21", "212.174.95.23", 1),
          ("17:08:55", "80.55.21.9", 2), ("21:36:12", "195.24.65.200", 1)]
HOSTILE_IPS = ["8.8.8.8", "203.0.113.99", "9.9.9.9"]
GARBAGE = [("05:31:17", "truncated"), ("11:02:40", "cut-timestamp"), ("17:45:09", "merged")]

LOCAL_USERS = ["zebra", "hanako", "taro", "jiro", "info", "webmaster", "postmaster"]
LOCAL_WEIGHTS = [40, 25, 12, 8, 8, 4, 3]

# provider -> (net, [(name, ip)], sender domains, message-id style)
_GOOGLE = [("ot1", 210, 41), ("oi1", 167, 176), ("yw1", 219, 193), ("qk1", 222, 47),
           ("pl1", 214, 170), ("wm1", 221, 54), ("lf1", 167, 44), ("ed1", 208, 49)]
PROVIDERS = {
    "google": ("209.85.0.0/16", [f"mail-{p}-f{y}.google.com" for p, _x, y in _GOOGLE],
               [f"209.85.{x}.{y}" for _p, x, y in _GOOGLE], ["gmail.com"]),
    "yahoo": ("98.137.0.0/16", [f"sonic{a}-{b}.consmr.mail.gq1.yahoo.com" for a, b in
                               ((301, 21), (302, 8), (309, 14), (310, 32), (314, 19), (316, 11), (320, 7), (322, 5))],
              ["98.137.64.84", "98.137.65.31", "98.137.66.147", "98.137.68.32", "98.137.69.83",
               "98.137.65.148", "98.137.67.182", "98.137.68.149"], ["yahoo.com", "ymail.com"]),
    "outlook": ("40.107.0.0/16", [f"mail-{c}.outbound.protection.outlook.com" for c in
                                 ("os0jpn01on2043", "tycjpn01on2061", "ty2jpn01on2072", "os3jpn01on2090",
                                  "tyzapc01on2053", "sgaapc01on2071", "psaapc01on2048", "kl1apc01on2066")],
                ["40.107.113.43", "40.107.114.61", "40.107.22.72", "40.107.113.90", "40.107.96.53",
                 "40.107.215.71", "40.107.255.48", "40.107.132.66"], ["hotmail.com", "outlook.com", "outlook.jp"]),
}
PROVIDER_WEIGHTS = [("google", 45), ("yahoo", 25), ("outlook", 30)]

# destination domain -> ([(mx, ip)], reply style)
DOMAINS = {
    "nifty.com": ([("mx.nifty.com", "202.248.37.73"), ("mx2.nifty.com", "202.248.37.74")], "sendmail"),
    "biglobe.ne.jp": ([("mx.biglobe.ne.jp", "133.205.97.12")], "postfix"),
    "yahoo.co.jp": ([("mx1.mail.yahoo.co.jp", "210.81.150.1"), ("mx2.mail.yahoo.co.jp", "210.81.150.2")], "qmail"),
    "docomo.ne.jp": ([("mfsmax.docomo.ne.jp", "203.138.181.240")], "sendmail"),
    "ezweb.ne.jp": ([("lsean.ezweb.ne.jp", "222.15.69.198")], "postfix"),
    "hotmail.com": ([("mx1.hotmail.com", "65.54.252.99"), ("mx2.hotmail.com", "65.54.253.99")], "hotmail"),
    "gmail.com": ([("gmail-smtp-in.l.google.com", "74.125.203.26"),
                   ("alt1.gmail-smtp-in.l.google.com", "74.125.200.27")], "gmail"),
    "ocn.ne.jp": ([("mx.ocn.ne.jp", "153.149.228.13")], "postfix"),
    "so-net.ne.jp": ([("mx.so-net.ne.jp", "202.238.84.20")], "sendmail"),
    "plala.or.jp": ([("mx.plala.or.jp", "60.36.166.228")], "postfix"),
    "example.co.jp": ([("mail.example.co.jp", "192.0.2.80")], "postfix"),
    "hananet.net": ([("mail.hananet.net", "211.202.13.81")], "sendmail"),
}
LAN_DOMAINS = ["nifty.com", "biglobe.ne.jp", "yahoo.co.jp", "docomo.ne.jp", "ezweb.ne.jp", "hotmail.com",
               "gmail.com", "ocn.ne.jp", "so-net.ne.jp", "plala.or.jp", "example.co.jp"]
LAN_DOMAIN_WEIGHTS = [14, 10, 14, 12, 10, 8, 8, 8, 6, 5, 5]

SASL_NETS = {"zebra": ("p{a}-ipad{b:02d}tokyo.tokyo.ocn.ne.jp", "61.207"),
             "hanako": ("softbank{c:012d}.bbtec.net", "219.{o}")}

INBOUND_DIURNAL = [0.35, 0.3, 0.25, 0.25, 0.3, 0.4, 0.6, 0.9, 1.3, 1.5, 1.5, 1.4,
                   1.2, 1.4, 1.5, 1.5, 1.4, 1.3, 1.2, 1.1, 1.0, 0.9, 0.7, 0.5]
LAN_DIURNAL = [0.3, 0.2, 0.1, 0.0, 0.0, 0.0, 0.1, 0.4, 0.8, 1.2, 1.5, 1.5,
               1.3, 1.2, 1.4, 1.5, 1.4, 1.3, 1.5, 1.8, 2.0, 1.9, 1.4, 0.8]

SYL = ["kim", "lee", "park", "jung", "choi", "sun", "min", "ji", "hye", "young", "soo", "hee", "jin", "eun",
       "spell", "journey", "star", "love", "sky", "blue", "angel", "happy", "mi", "na", "ra", "ho", "woo"]
JP = ["sato", "suzuki", "takahashi", "tanaka", "ito", "watanabe", "yamamoto", "nakamura", "kobayashi", "kato",
      "yoshida", "yamada", "sasaki", "yamaguchi", "matsumoto", "inoue", "kimura", "hayashi", "shimizu", "mori",
      "ken", "yuki", "aya", "mai", "hiro", "taku", "nao", "emi", "sho", "kazu"]

# the seed thread's own flood lines, reproduced exactly by the first flood messages
PINNED = [
    dict(t_connect=(1, 59, 38, 0), ip="218.144.108.161", t_client=(1, 59, 39, 577654), inode=0xAE17,
         msgid="2003.03.14.18BE678400294823@hananet.net", size=725, t_cleanup=(1, 59, 41, 102311),
         t_qmgr=(1, 59, 41, 301587), smtpd=29327, cleanup=29328, smtp=29330,
         first=("deferred", [2, 5, 9], "refused")),
    dict(t_connect=(2, 2, 13, 611020), ip="218.144.112.37", t_client=(2, 2, 14, 154846), inode=0xAE1C,
         msgid="2003.03.14.18A3F1C0D2B94E17@hananet.net", size=731, rcpt="spell013@hanmail.net",
         t_cleanup=(2, 2, 15, 903102), t_qmgr=(2, 2, 16, 12440), smtp=29338,
         first=("sent", [4, 7, 1], "dropped"), t_done=(2, 2, 51, 220517), reply="h2FGwqTh027713"),
    dict(t_connect=(2, 2, 51, 870113), ip="218.144.103.219", t_client=(2, 2, 52, 504706), inode=0xAE29,
         msgid="2003.03.14.187E16C5692C4A80@hananet.net", size=744, t_cleanup=(2, 2, 53, 688201),
         t_qmgr=(2, 2, 53, 790032), cleanup=29333),
]
RESERVED_PIDS = {29327, 29328, 29330, 29333, 29338}
# the seed thread's Mar 16 lines; with --flood rotate the bsd output contains each of them verbatim
SEED_LINES = [
    "Mar 16 01:59:38 zebra postfix/smtpd[29327]: connect from unknown[218.144.108.161]",
    "Mar 16 01:59:39 zebra postfix/smtpd[29327]: 8D076AE17: client=unknown[218.144.108.161]",
    "Mar 16 01:59:41 zebra postfix/cleanup[29328]: 8D076AE17: message-id=<2003.03.14.18BE678400294823@hananet.net>",
    "Mar 16 01:59:41 zebra postfix/qmgr[24493]: 8D076AE17: from=<journeypark@hananet.net>, size=725, nrcpt=1"
    " (queue active)",
    "Mar 16 01:59:41 zebra postfix/smtp[29330]: connect to mx2.hanmail.net[211.43.197.34]: Connection refused"
    " (port 25)",
    "Mar 16 01:59:41 zebra postfix/smtp[29330]: connect to mx5.hanmail.net[211.43.197.12]: Connection refused"
    " (port 25)",
    "Mar 16 02:02:51 zebra postfix/smtp[29338]: 25CDEAE1C: to=<spell013@hanmail.net>, relay=mx1.hanmail.net"
    "[211.43.197.21], delay=37, status=sent (250 2.0.0 h2FGwqTh027713 Message accepted for delivery)",
    "Mar 16 02:02:53 zebra postfix/cleanup[29333]: 7B382AE29: message-id=<2003.03.14.187E16C5692C4A80@hananet.net>",
]
RESERVED_INODES = {0xAE17, 0xAE1C, 0xAE29}


def _hms(s):
    h, m, sec = (int(x) for x in s.split(":"))
    return (h * 3600 + m * 60 + sec) * US


def _tuple_us(t):
    h, m, s, us = t
    return (h * 3600 + m * 60 + s) * US + us


def clock(t):
    """'HH:MM:SS' of a time in microseconds since local midnight."""
    s = t // US
    return f"{s // 3600:02d}:{s // 60 % 60:02d}:{s % 60:02d}"


def _fmt_delay(x):
    if x < 0.01:
        return "0"
    if x < 1:
        return f"{x:.2f}".rstrip("0").rstrip(".")
    if x < 10:
        return f"{x:.1f}".rstrip("0").rstrip(".")
    return str(int(x))


B60 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwx"


class _Out:
    """Time-ordered line heap; lines are written once no earlier line can still appear."""

    def __init__(self, stream, fmt):
        self.heap = []
        self.seq = 0
        self.stream = stream
        self.rfc = fmt == "rfc3339"
        self.buf = []
        self.lines = 0
        self._sec = -1
        self._pre = ""

    def prefix(self, t):
        sec = t // US
        if sec != self._sec:
            self._sec = sec
            hms = f"{sec // 3600:02d}:{sec // 60 % 60:02d}:{sec % 60:02d}"
            self._pre = f"{DATE}T{hms}" if self.rfc else f"Mar 16 {hms} {HOST} "
        if self.rfc:
            return f"{self._pre}.{t % US:06d}{UTC_OFFSET} {HOST} "
        return self._pre

    def add(self, t, prog, pid, msg):
        if t >= DAY_US:
            return
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, f"{prog}[{pid}]: {msg}" if pid else f"{prog}: {msg}", False))

    def raw(self, t, line):
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, line, True))

    def flush(self, upto):
        heap, buf, pop = self.heap, self.buf, heapq.heappop
        while heap and heap[0][0] <= upto:
            t, _, body, raw = pop(heap)
            buf.append(body + "\n" if raw else self.prefix(t) + body + "\n")
        if len(buf) >= 4096:
            self._write()

    def _write(self):
        self.lines += len(self.buf)
        if self.stream is not None:
            self.stream.write("".join(self.buf).encode())
        self.buf.clear()

    def close(self):
        self.flush(1 << 62)
        self._write()


class _Proc:
    __slots__ = ("free_at", "pid", "uses")

    def __init__(self, pid):
        self.pid, self.free_at, self.uses = pid, 0, 0


class _Pool:
    """Processes of one Postfix daemon: reuse an idle one (max_idle 100 s, max_use 100) or spawn."""

    def __init__(self, sim, tag):
        self.sim, self.procs = sim, []

    def get(self, t, until, pid=None):
        alive, best = [], None
        for p in self.procs:
            if p.free_at <= t and (t - p.free_at > 100 * US or p.uses >= 100):
                self.sim.live_pids.discard(p.pid)
                continue
            alive.append(p)
            if pid is None and p.free_at <= t and (best is None or p.free_at > best.free_at) or pid is not None and p.pid == pid:
                best = p
        self.procs = alive
        if best is None:
            best = _Proc(self.sim.spawn(pid))
            alive.append(best)
        best.free_at = max(best.free_at, until)
        best.uses += 1
        return best.pid


class _Msg:
    __slots__ = (
        "arrival",
        "attempts",
        "bounced",
        "client",
        "doomed",
        "first",
        "inode",
        "kind",
        "nrcpt",
        "pending",
        "pin",
        "qid",
        "sender",
        "size",
    )

    def __init__(self, qid, inode, kind, sender, size, rcpts, arrival, client):
        self.qid, self.inode, self.kind, self.sender, self.size = qid, inode, kind, sender, size
        self.nrcpt, self.pending, self.arrival, self.client = len(rcpts), list(rcpts), arrival, client
        self.attempts, self.bounced, self.first, self.pin, self.doomed = 0, 0, True, None, False


class Generator:
    def __init__(self, profile="seed-day", seed=DEFAULT_SEED, fmt="bsd", lines=None, flood=None, style=None,
                 stream=None):
        if profile not in ("seed-day", "busy"):
            raise ValueError(f"unknown profile {profile!r}")
        self.profile, self.seed, self.fmt = profile, seed, fmt
        self.flood_mode = flood or "rotate"
        self.style = style or ("classic" if profile == "seed-day" else "modern")
        self.modern = self.style == "modern"
        self.out = _Out(stream, fmt)
        self.tasks, self.tseq = [], 0
        self.live_pids = {QMGR_PID, PICKUP_PID}
        self.next_pid = FIRST_PID
        self.pid_rng = self._rng("pid")
        self.pools = {n: _Pool(self, n) for n in ("smtpd", "submission", "cleanup", "smtp", "local", "bounce")}
        self.anvil_pid = None
        self.free_inodes, self.next_inode, self.releases = [], 0xAE01, []
        self.live = {}
        self.facts = {"profile": profile, "seed": seed, "format": fmt, "style": self.style, "host": HOST,
                      "date": DATE, "utc_offset": UTC_OFFSET, "local_domain": LOCAL_DOMAIN}
        self.c = dict(inbound_sessions=0, inbound_messages=0, inbound_recipients=0, lan_messages=0,
                      lan_recipients=0, spam_sessions=0, spam_rejects=0, pickup=0, dovecot=0, cron=0, anvil=0,
                      flood_messages=0, flood_sessions=0, flood_sent=0, flood_deferred=0, flood_bounced=0,
                      first_sent=0, first_deferred=0, first_bounced=0, bounce_notifications=0,
                      probe_sessions=0, probe_rejects=0)
        self.sasl = {}
        self.flood_ips = {}
        self.flood_first = self.flood_last = None
        self.provider_ips = {}
        self.lan_ips = {}
        self.injections = []
        self.anvil_conn = {}
        self.anvil_open = {}
        self.probe_log, self.garbage_lines = [], []
        self.rot = {"active": [], "used": set()}
        self.flood_last_delivery = 0
        self.rng = {name: self._rng(name) for name in ("inbound", "lan", "sasl", "spam", "probe", "flood", "deliver",
                                                       "noise", "inject")}
        self.configure_lines(lines)

    # ---------------------------------------------------------------- infrastructure
    def _rng(self, name):
        return random.Random(f"{self.seed}:{self.profile}:{name}")

    def spawn(self, pid=None):
        if pid is not None:
            self.live_pids.add(pid)
            return pid
        while True:
            pid = self.next_pid
            self.next_pid += 1 + (self.pid_rng.random() < 0.3) + (self.pid_rng.random() < 0.1) * 3
            if self.next_pid > 32767:
                self.next_pid = 300
            if pid not in self.live_pids and pid not in RESERVED_PIDS:
                self.live_pids.add(pid)
                return pid

    def at(self, t, fn, *args):
        self.tseq += 1
        heapq.heappush(self.tasks, (t, self.tseq, fn, args))

    def log(self, t, prog, pid, msg):
        self.out.add(t, prog, pid, msg)

    def new_qid(self, t, inode=None):
        while self.releases and self.releases[0][0] <= t:
            heapq.heappush(self.free_inodes, heapq.heappop(self.releases)[1])
        while inode is None:
            if self.free_inodes:
                inode = heapq.heappop(self.free_inodes)
            else:
                inode, self.next_inode = self.next_inode, self.next_inode + 1
            if inode in RESERVED_INODES:
                inode = None
        qid = f"{t % US:05X}{inode:X}"
        if qid in self.live:  # same microsecond and inode: impossible in Postfix, skip the inode
            return self.new_qid(t + 1, None)
        return qid, inode

    def run(self):
        self._schedule_sources()
        out, tasks = self.out, self.tasks
        while tasks:
            t, _, fn, args = heapq.heappop(tasks)
            if t >= DAY_US:
                break
            out.flush(t)
            fn(t, *args)
        out.close()
        return self._finish_facts()

    def _source(self, t, gen, handler):
        handler(t, *gen[1])
        nxt = next(gen[0], None)
        if nxt is not None:
            gen[1] = nxt[1:]
            self.at(nxt[0], self._source, gen, handler)

    def add_source(self, iterator, handler):
        first = next(iterator, None)
        if first is not None:
            self.at(first[0], self._source, [iterator, first[1:]], handler)

    @staticmethod
    def poisson(rng, per_day, weights, start=0, end=DAY_US):
        """Arrival times with a diurnal profile (thinning)."""
        if per_day <= 0:
            return
        norm = sum(weights) / 24
        wmax = max(weights) / norm
        rate = per_day * wmax / DAY_US
        t = start
        while True:
            t += int(rng.expovariate(rate)) + 1
            if t >= end:
                return
            if rng.random() * wmax <= weights[t // (3600 * US)] / norm:
                yield t

    # ---------------------------------------------------------------- scaling
    def configure_lines(self, lines):
        """Scale normal traffic and the flood so the day has about `lines` lines."""
        if self.profile == "seed-day":
            k = 1.0 if lines is None else lines / SEED_NATURAL_LINES
            self.inbound_per_day = 210.0 * k
            self.lan_hosts = 1
            self.lan_per_host = 215.0 * k
            self.sasl_users = ["zebra", "hanako"]
            self.sasl_k = k
            self.spam_per_day = 40.0 * k
            self.random_probes = 0
            self.dovecot_hosts = 1
            self.provider_pool = 6
            self.flood_per_hour = 3600 / 1.5 * k
        else:
            n = (1_000_000 if lines is None else lines) * 1.09  # calibrated: lines per message below are estimates
            self.inbound_per_day = 0.50 * n / 8.3
            lan_msgs = 0.10 * n / 7.3
            self.lan_hosts = max(1, round(lan_msgs / 230))
            self.lan_per_host = lan_msgs / self.lan_hosts
            sasl_msgs = 0.02 * n / 7.6
            extra_users = max(0, round(sasl_msgs / 5.5) - 2)
            self.sasl_users = ["zebra", "hanako"] + [f"user{i:03d}" for i in range(1, extra_users + 1)]
            self.sasl_k = 1.0
            self.spam_per_day = 0.035 * n / 3.8
            self.random_probes = int(0.01 * n / 4.0)
            self.dovecot_hosts = min(self.lan_hosts, 40)
            self.provider_pool = max(6, min(60, int((n / 20000) ** 0.5 * 6)))
            per_msg = 10.2 if self.flood_mode == "rotate" else 34.0
            self.flood_per_hour = 0.25 * n / per_msg

    # ---------------------------------------------------------------- sources
    def _schedule_sources(self):
        self.add_source(self._inbound_times(), self.inbound_session)
        for i in range(self.lan_hosts):
            self.add_source(self._lan_times(i), self.lan_session)
        self.add_source(self._sasl_times(), self.sasl_session)
        self.add_source(self._spam_times(), self.spam_session)
        self.add_source(self._probe_times(), self.probe_session)
        if self.flood_mode != "none":
            self.add_source(self._flood_times(), self.flood_session)
        self.add_source(self._noise_times(), self.noise)
        for h, name in GARBAGE:
            self.at(_hms(h), self.garbage, name)
        for spec in INJECTIONS:
            self.at(_hms(spec[1]), self.injection, spec)
        self.at(10 * 60 * US, self.anvil_stats)
        self.at(_hms("06:25:01"), self.cron_daily)

    def _inbound_times(self):
        rng = self._rng("inbound-times")
        for t in self.poisson(rng, self.inbound_per_day, INBOUND_DIURNAL):
            yield (t,)

    def _lan_times(self, i):
        rng = self._rng(f"lan-times-{i}")
        for t in self.poisson(rng, self.lan_per_host, LAN_DIURNAL):
            yield (t, i)

    def _sasl_times(self):
        rng = self._rng("sasl-times")
        items = []
        for u in self.sasl_users:
            n = rng.randint(4, 7) if self.profile == "seed-day" else rng.randint(3, 8)
            n = max(1, round(n * self.sasl_k))
            for _ in range(n):
                items.append((rng.randrange(_hms("07:30:00"), _hms("23:30:00")), u))
        items.sort()
        for t, u in items:
            yield (t, u)

    def _spam_times(self):
        rng = self._rng("spam-times")
        for t in self.poisson(rng, self.spam_per_day, [1.0] * 24):
            yield (t,)

    def _probe_times(self):
        items = []
        for i in range(10):  # the prober: 10 sessions x 3 RCPT = 30 rejects in ten minutes
            items.append((PROBER_START + i * 60 * US + i * 331_117, "prober", PROBER_IP, 3))
        for h, ip, n in PROBES:
            items.append((_hms(h), "probe", ip, n))
        rng = self._rng("random-probes")
        for _ in range(self.random_probes):
            ip = f"{rng.choice([58, 59, 60, 61, 121, 122, 123, 200, 201, 202, 210, 211, 212, 213, 220, 221, 222])}." \
                 f"{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            items.append((rng.randrange(DAY_US), "random", ip, rng.choice([1, 1, 1, 2, 3])))
        items.sort()
        yield from items

    def _flood_times(self):
        rng = self._rng("flood-times")
        pins = [(_tuple_us(p["t_connect"]), p) for p in PINNED] if self.flood_mode == "rotate" else \
            [(_tuple_us(PINNED[0]["t_connect"]), PINNED[0])]
        mean = 3600 * US / self.flood_per_hour
        t = pins[0][0]
        end = FLOOD_START + FLOOD_DURATION
        yield (t, pins[0][1], 1)
        pi, n = 1, 1
        while True:  # one message every 1-2 s; a session with two messages takes two slots
            t += int(rng.uniform(0.667, 1.333) * mean) * n
            while pi < len(pins) and pins[pi][0] <= t:
                yield (pins[pi][0], pins[pi][1], 1)
                pi += 1
            if t >= end:
                return
            n = 1 if self.flood_mode == "multi-rcpt" or rng.random() < 0.8 else 2
            yield (t, None, n)

    def _noise_times(self):
        rng = self._rng("noise-times")
        items = []
        for h in range(24):
            items.append((h * 3600 * US + 17 * 60 * US + rng.randrange(US), "cron", None))
        polls = []
        for host in range(self.dovecot_hosts):
            t = _hms("07:00:00") + rng.randrange(600 * US)
            while t < DAY_US:
                polls.append((t, "pop3", host))
                t += 900 * US + rng.randrange(-20 * US, 20 * US)
        for _ in range(6):
            polls.append((rng.randrange(DAY_US), "pop3-fail", None))
        items.extend(polls)
        items.sort(key=lambda x: x[0])
        yield from items

    # ---------------------------------------------------------------- formatting helpers
    def addr(self, a):
        """Envelope address as Postfix logs it (external = quoted form only in the modern style)."""
        if self.modern and "@" in a:
            local, _, dom = a.rpartition("@")
            if any(ch in local for ch in ' "<>()[],;:\\'):
                return f'"{local}"@{dom}'
        return a

    def disconnect_text(self, client, counters):
        if not self.modern:
            return f"disconnect from {client}"
        parts, ok, total = [], 0, 0
        for name, good, n in counters:
            if n == 0:
                continue
            parts.append(f"{name}={good}" if good == n else f"{name}={good}/{n}")
            ok += good
            total += n
        parts.append(f"commands={ok}" if ok == total else f"commands={ok}/{total}")
        return f"disconnect from {client} " + " ".join(parts)

    def delivery(self, t, pid, prog, msg, rcpt, relay, status, text, dsn, conn=0.0, orig=None):
        delay = (t - msg.arrival) / US
        r = self.addr(rcpt)
        if orig:
            r += f">, orig_to=<{self.addr(orig)}"
        if not self.modern:
            line = f"{msg.qid}: to=<{r}>, relay={relay}, delay={int(delay)}, status={status} ({text})"
        else:
            rng = self.rng["deliver"]
            b = rng.uniform(0, 0.05)
            d = rng.uniform(0.01, 0.3) if status != "deferred" or relay != "none" else 0.0
            c = min(conn, max(0.0, delay - b - d))
            a = max(0.0, delay - b - c - d)
            line = (f"{msg.qid}: to=<{r}>, relay={relay}, delay={_fmt_delay(delay)}, delays={_fmt_delay(a)}/"
                    f"{_fmt_delay(b)}/{_fmt_delay(c)}/{_fmt_delay(d)}, dsn={dsn}, status={status} ({text})")
        self.log(t, prog, pid, line)
        return line

    def relay_name(self, mx, ip):
        return f"{mx}[{ip}]:25" if self.modern else f"{mx}[{ip}]"

    def connect_fail(self, mx, ip, why):
        if self.modern:
            if why == "dropped":
                return f"lost connection with {mx}[{ip}] while receiving the initial server greeting"
            return f"connect to {mx}[{ip}]:25: {why}"
        if why == "dropped":
            return f"connect to {mx}[{ip}]: server dropped connection without sending the initial SMTP greeting"
        return f"connect to {mx}[{ip}]: {why}"

    def reply(self, style, t, rng, rcpt):
        if style == "sendmail":
            return f"250 2.0.0 {self.sendmail_id(t, rng)} Message accepted for delivery"
        if style == "qmail":
            return f"250 ok {EPOCH0 + t // US} qp {rng.randint(1000, 65000)}"
        if style == "hotmail":
            return f"250 <{rng.getrandbits(32):08x}{rng.getrandbits(16):04x}@hotmail.com> Queued mail for delivery"
        if style == "gmail":
            tag = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20))
            return f"250 2.0.0 OK {EPOCH0 + t // US} {tag}.{rng.randint(100, 999)} - gsmtp"
        return f"250 2.0.0 Ok: queued as {rng.getrandbits(40):010X}" if self.modern else \
            f"250 Ok: queued as {rng.getrandbits(36):09X}"

    @staticmethod
    def sendmail_id(t, rng, skew=239):
        s = EPOCH0 + t // US - skew - 1047686400  # seconds since 2003-03-15T00:00:00 (remote clock, UTC)
        day = 15 + s // 86400
        s %= 86400
        return (f"h2{B60[day]}{B60[s // 3600]}{B60[s // 60 % 60]}{B60[s % 60]}"
                f"{rng.choice(B60[10:36])}{rng.choice(B60[36:])}{rng.randint(1000, 32000):06d}")

    @staticmethod
    def name(rng, pool=JP, digits=0.5):
        n = rng.choice(pool)
        if rng.random() < 0.4:
            n += rng.choice(["", ".", "_", "-"]) + rng.choice(pool)
        if rng.random() < digits:
            n += str(rng.randint(1, 999))
        return n

    # ---------------------------------------------------------------- smtpd sessions
    def session(self, t0, client, msgs, rng, *, service="smtpd", tls=False, warn=None, tail="quit",
                probes=(), helo=None, extra=None, n_extra=0, extra_rcpt=False):
        """One smtpd session: connect, [TLS], messages (client= / cleanup / qmgr, delivery scheduled),
        NOQUEUE relay rejects (`probes`: (from, to, helo)), `n_extra` lines written by `extra(times, ..)`,
        then disconnect.  The whole timeline is laid out first so the smtpd process is busy for all of it.
        msgs: dicts with sender, rcpts, size, msgid, kind and optionally rejected, sasl, helo, pin, force,
        record* hooks.  Returns the created _Msg objects."""
        name, ip = client
        cl = f"{name}[{ip}]"
        prog = "postfix/submission/smtpd" if service == "submission" else "postfix/smtpd"
        uniform = rng.uniform
        t = t0 + int(uniform(0.05, 0.6) * US)
        t_tls = None
        if tls:
            t_tls = t
            t += int(uniform(0.2, 0.5) * US)
        plan = []
        for m in msgs:
            pin = m.get("pin")
            if pin:
                tc, tm, tq = _tuple_us(pin["t_client"]), _tuple_us(pin["t_cleanup"]), _tuple_us(pin["t_qmgr"])
            else:
                tc = t + int(uniform(0.2, 1.4) * US)
                tm = tc + int((uniform(0.1, 1.2) + m["size"] / 40000 * uniform(0.5, 2)) * US)
                tq = tm + int(uniform(0.005, 0.25) * US)
            plan.append((tc, tm, tq))
            t = tm
        probe_ts = []
        for _ in probes:
            t += int(uniform(0.3, 1.5) * US)
            probe_ts.append(t)
        extra_ts = []
        for _ in range(n_extra):
            t += int(uniform(0.1, 0.8) * US)
            extra_ts.append(t)
        t_end = t + int(uniform(0.05, 0.9) * US)
        self.last_probe_ts = probe_ts
        pin0 = msgs[0].get("pin") if msgs else None
        pid = self.pools[service].get(t0, t_end, pin0.get("smtpd") if pin0 else None)
        self.anvil_connect(t0, ip, t_end)
        log = self.log
        if warn:
            log(t0, prog, pid, warn)
        log(t0, prog, pid, f"connect from {cl}")
        if tls:
            if self.modern:
                log(t_tls, prog, pid, f"Anonymous TLS connection established from {cl}: TLSv1.3 with cipher "
                    "TLS_AES_256_GCM_SHA384 (256/256 bits) key-exchange X25519 server-signature RSA-PSS "
                    "(2048 bits) server-digest SHA256")
            else:
                log(t_tls, prog, pid, f"setting up TLS connection from {cl}")
                log(t_tls + 150_000, prog, pid, f"TLS connection established from {cl}: TLSv1 with cipher "
                    "EDH-RSA-DES-CBC3-SHA (168/168 bits)")
        created = []
        n_ok = n_rcpt = n_mail = 0
        for m, (tc, tm, tq) in zip(msgs, plan, strict=False):
            n_mail += 1
            pin = m.get("pin")
            qid, inode = self.new_qid(tc, pin["inode"] if pin else None)
            sasl = m.get("sasl")
            log(tc, prog, pid, f"{qid}: client={cl}" + (f", sasl_method=PLAIN, sasl_username={sasl}" if sasl else ""))
            tr = tc
            for r in m.get("rejected", ()):
                tr += int(uniform(0.05, 0.3) * US)
                n_rcpt += 1
                line = (f"{qid}: reject: RCPT from {cl}: 550 5.1.1 <{self.addr(r)}>: Recipient address rejected: "
                        f"User unknown in local recipient table; from=<{self.addr(m['sender'])}> "
                        f"to=<{self.addr(r)}> proto=ESMTP helo=<{m.get('helo', helo or name)}>")
                log(tr, prog, pid, line)
                if m.get("record"):
                    m["record"](tr, prog, pid, line)
            n_rcpt += len(m["rcpts"])
            n_ok += len(m["rcpts"])
            cpid = self.pools["cleanup"].get(tc, tm + 20_000, pin.get("cleanup") if pin else None)
            line = f"{qid}: message-id={m['msgid']}" if m.get("raw_msgid") else f"{qid}: message-id=<{m['msgid']}>"
            log(tm, "postfix/cleanup", cpid, line)
            if m.get("record_msgid"):
                m["record_msgid"](tm, "postfix/cleanup", cpid, line)
            msg = _Msg(qid, inode, m["kind"], m["sender"], m["size"], m["rcpts"], tc, ip)
            msg.pin = pin or m.get("force")
            msg.doomed = m.get("doomed", False)
            self.live[qid] = msg
            line = f"{qid}: from=<{self.addr(m['sender'])}>, size={m['size']}, nrcpt={len(m['rcpts'])} (queue active)"
            log(tq, "postfix/qmgr", QMGR_PID, line)
            if m.get("record_from"):
                m["record_from"](tq, "postfix/qmgr", QMGR_PID, line)
            self.at(tq + int(uniform(0.002, 0.08) * US), self.deliver, msg, m.get("deliver_hook"))
            created.append(msg)
        for (s, r, h), tp in zip(probes, probe_ts, strict=False):
            n_rcpt += 1
            log(tp, prog, pid, f"NOQUEUE: reject: RCPT from {cl}: 554 5.7.1 <{self.addr(r)}>: Relay access denied; "
                f"from=<{self.addr(s)}> to=<{self.addr(r)}> proto=SMTP helo=<{h}>")
        if extra_rcpt:  # the extra lines are rejected RCPT commands
            n_rcpt += n_extra
        if (probes or extra_rcpt) and not msgs:
            n_mail = 1
        if extra:
            extra(extra_ts, prog, pid, cl)
        if tail == "lost":
            log(t_end, prog, pid, f"lost connection after RCPT from {cl}")
            counters = [("helo" if probes else "ehlo", 1, 1), ("mail", n_mail, n_mail), ("rcpt", n_ok, n_rcpt)]
        elif tail == "quit":
            e = 1 + tls
            auth = int(service == "submission")
            counters = [("ehlo", e, e), ("starttls", int(tls), int(tls)), ("auth", auth, auth),
                        ("mail", n_mail, n_mail), ("rcpt", n_ok, n_rcpt), ("data", len(msgs), len(msgs)),
                        ("quit", 1, 1)]
        else:  # the client only sent garbage
            counters = [("unknown", 0, 1)]
        log(t_end, prog, pid, self.disconnect_text(cl, counters))
        return created

    def msgid_for(self, style, t, rng, who="x"):
        if style == "gmail":
            alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
            return "CA+" + "".join(rng.choice(alphabet) for _ in range(40)) + "@mail.gmail.com"
        if style == "yahoo":
            ms = EPOCH0 * 1000 + t // 1000
            return f"{rng.randint(10**8, 10**9)}.{rng.randint(10**5, 10**6)}.{ms}@mail.yahoo.com"
        if style == "outlook":
            box = f"TYCPR01MB{rng.randint(10000, 99999)}"
            return f"{box}{rng.getrandbits(48):012X}@{box}.jpnprd01.prod.outlook.com"
        if style == "oe":
            ft = (EPOCH0 + 11644473600) * 10**7 + t * 10
            return f"{rng.randint(1, 0x40):04x}{ft >> 32:08x}${ft & 0xFFFFFFFF:08x}${who}@desktop"
        if style == "becky":
            s = t // US
            stamp = f"20030316{s // 3600:02d}{s // 60 % 60:02d}{s % 60:02d}"
            return f"{stamp}.{rng.getrandbits(16):04X}.{who.upper()}@{LOCAL_DOMAIN}"
        if style == "flood":
            return f"2003.03.14.18{rng.getrandbits(56):014X}@hananet.net"
        return f"{rng.getrandbits(64):016x}@{who}"

    def inbound_message(self, t, rng, provider):
        dom = rng.choice(PROVIDERS[provider][3])
        n = 1 if rng.random() < 0.8 else rng.randint(2, 5)
        rcpts = []
        while len(rcpts) < n:
            u = rng.choices(LOCAL_USERS, LOCAL_WEIGHTS)[0]
            if f"{u}@{LOCAL_DOMAIN}" not in rcpts:
                rcpts.append(f"{u}@{LOCAL_DOMAIN}")
        style = {"google": "gmail", "yahoo": "yahoo", "outlook": "outlook"}[provider]
        return dict(sender=f"{self.name(rng)}@{dom}", rcpts=rcpts, size=rng.randint(1800, 60000),
                    msgid=self.msgid_for(style, t, rng), kind="inbound")

    def provider_client(self, rng, provider):
        names, ips = PROVIDERS[provider][1], PROVIDERS[provider][2]
        k = rng.randrange(self.provider_pool)
        if k < len(names):
            return names[k], ips[k]
        # more IPs in the same /16 for the busy profile
        net = PROVIDERS[provider][0].split(".")
        x, y = 64 + (k * 37) % 180, 1 + (k * 53) % 250
        if provider == "google":
            return f"mail-{_GOOGLE[k % 8][0]}-f{y}.google.com", f"{net[0]}.{net[1]}.{x}.{y}"
        if provider == "yahoo":
            return f"sonic{300 + k}-{k % 40}.consmr.mail.gq1.yahoo.com", f"{net[0]}.{net[1]}.{x}.{y}"
        return f"mail-tycjpn01on{2000 + k}.outbound.protection.outlook.com", f"{net[0]}.{net[1]}.{x}.{y}"

    def inbound_session(self, t):
        rng = self.rng["inbound"]
        provider = rng.choices([p for p, _ in PROVIDER_WEIGHTS], [w for _, w in PROVIDER_WEIGHTS])[0]
        client = self.provider_client(rng, provider)
        self.provider_ips.setdefault(provider, {}).setdefault(client[1], client[0])
        msgs = [self.inbound_message(t, rng, provider) for _ in range(1 if rng.random() < 0.92 else 2)]
        if rng.random() < 0.02:
            msgs[0]["rejected"] = [f"{self.name(rng, JP, 0.2)}@{LOCAL_DOMAIN}"]
        self.c["inbound_sessions"] += 1
        self.c["inbound_messages"] += len(msgs)
        self.c["inbound_recipients"] += sum(len(m["rcpts"]) for m in msgs)
        p_tls = (0.85 if provider == "google" else 0.5) if self.modern else (0.3 if provider == "google" else 0.1)
        tls = rng.random() < p_tls
        self.session(t, client, msgs, rng, tls=tls)

    def lan_message(self, t, rng, host, sender, rcpt_override=None):
        n = 1 if rng.random() < 0.85 else rng.randint(2, 3)
        rcpts = []
        while len(rcpts) < n:
            d = rng.choices(LAN_DOMAINS, LAN_DOMAIN_WEIGHTS)[0]
            r = f"{self.name(rng)}@{d}"
            if r not in rcpts:
                rcpts.append(r)
        if rcpt_override:
            rcpts = [rcpt_override]
        iphex = "".join(f"{int(o):02x}" for o in reversed(host.split(".")))
        return dict(sender=sender, rcpts=rcpts, size=rng.randint(900, 30000),
                    msgid=self.msgid_for("oe", t, rng, iphex), kind="lan")

    def lan_session(self, t, i, rcpt_override=None, hook=None):
        rng = self.rng["lan"]
        host = f"192.168.0.{10 + i}"
        sender = f"{['zebra', 'hanako', 'taro', 'jiro'][i % 4] if i < 4 else f'pc{i:03d}'}@{LOCAL_DOMAIN}"
        m = self.lan_message(t, rng, host, sender, rcpt_override)
        if hook:
            m["deliver_hook"] = hook
        self.c["lan_messages"] += 1
        self.c["lan_recipients"] += len(m["rcpts"])
        self.lan_ips[host] = self.lan_ips.get(host, 0) + 1
        self.session(t, ("unknown", host), [m], rng)

    def sasl_client(self, rng, user):
        st = self.sasl.setdefault(user, {"messages": 0, "ips": [], "left": 0, "client": None})
        if st["left"] <= 0:
            if user == "zebra":
                a, b = rng.randint(1000, 9999), rng.randint(1, 30)
                ip = f"61.207.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
                client = (f"p{a}-ipad{b:02d}tokyo.tokyo.ocn.ne.jp", ip)
            elif user == "hanako":
                ip = (219, rng.randint(0, 63), rng.randint(0, 255), rng.randint(1, 254))
                client = (f"softbank{ip[0]:03d}{ip[1]:03d}{ip[2]:03d}{ip[3]:03d}.bbtec.net", ".".join(map(str, ip)))
            else:
                first = rng.choice([124, 125, 126, 180, 182])
                client = ("unknown", f"{first}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}")
            st["client"], st["left"] = client, rng.randint(1, 3)
            if client[1] not in st["ips"]:
                st["ips"].append(client[1])
        st["left"] -= 1
        return st["client"]

    def sasl_session(self, t, user, rcpt_override=None, hook=None, force=None):
        rng = self.rng["sasl"]
        client = self.sasl_client(rng, user)
        d = rng.choices(LAN_DOMAINS, LAN_DOMAIN_WEIGHTS)[0]
        rcpts = [rcpt_override or f"{self.name(rng)}@{d}"]
        m = dict(sender=f"{user}@{LOCAL_DOMAIN}", rcpts=rcpts, size=rng.randint(1200, 25000),
                 msgid=self.msgid_for("becky", t, rng, user), kind="sasl", sasl=user)
        if hook:
            m["deliver_hook"] = hook
        if force:
            m["force"] = force
        self.sasl[user]["messages"] += 1
        self.session(t, client, [m], rng, service="submission" if self.modern else "smtpd", tls=self.modern)

    def spam_session(self, t):
        rng = self.rng["spam"]
        ip = f"{rng.choice([58, 61, 80, 83, 85, 89, 116, 117, 118, 190, 200, 201, 210, 211, 213, 217, 220, 221])}." \
             f"{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        warn = None
        if rng.random() < 0.4:
            zone = rng.choice(["dynamic.example.net", "adsl.example.com", "pool.example.org"])
            ptr = f"{ip.replace('.', '-')}.{zone}"
            warn = f"warning: hostname {ptr} does not resolve to address {ip}"
        elif rng.random() < 0.1:
            warn = f"warning: {ip}: address not listed for hostname mail{rng.randint(1, 99)}.example.biz"
        sender = f"{self.name(rng, SYL)}@{rng.choice(['example.biz', 'example.info', 'mail.example.ru', 'example.br'])}"
        n = rng.choice([1, 1, 2, 3])
        self.c["spam_sessions"] += 1
        self.c["spam_rejects"] += n
        rng_helo = rng.choice([ip, "User", "localhost", f"[{ip}]", "mail.example.biz"])

        def extra(times, prog, pid, cl):
            for tt in times:
                r = f"{self.name(rng, JP, 0.3)}@{LOCAL_DOMAIN}"
                self.log(tt, prog, pid,
                         f"NOQUEUE: reject: RCPT from {cl}: 550 5.1.1 <{r}>: Recipient address rejected: User unknown"
                         f" in local recipient table; from=<{sender}> to=<{r}> proto=ESMTP helo=<{rng_helo}>")
        self.session(t, ("unknown", ip), [], rng, warn=warn, tail="lost" if rng.random() < 0.5 else "quit",
                     extra=extra, n_extra=n, extra_rcpt=True)

    def probe_session(self, t, kind, ip, n):
        rng = self.rng["probe"]
        if kind == "prober":
            probes = [(f"{u}@yahoo.com.tw", f"{u}@yahoo.com.tw", SERVER_IP) for u in
                      (self.name(rng, SYL, 0.9) for _ in range(n))]
        else:
            probes = []
            for _ in range(n):
                s = rng.choice([f"zebra@{LOCAL_DOMAIN}", f"{self.name(rng, SYL)}@hotmail.com", "spameri@tiscali.it"])
                r = rng.choice(["relaytest@abuse.net", "spameri@tiscali.it", f"{self.name(rng, SYL)}@aol.com"])
                probes.append((s, r, rng.choice([SERVER_IP, "User", f"[{SERVER_IP}]"])))
        self.c["probe_sessions"] += 1
        self.c["probe_rejects"] += n
        rec = self.probe_log
        self.session(t, ("unknown", ip), [], rng, probes=probes, tail="lost")
        if kind != "random":
            rec.append((kind, t, ip, n, self.last_probe_ts[0], self.last_probe_ts[-1]))

    # ---------------------------------------------------------------- the flood
    def flood_ip(self, rng):
        st = self.rot
        multi = self.flood_mode == "multi-rcpt"
        space = 256 * 254 if multi else 21 * 254
        expected = self.flood_per_hour * FLOOD_DURATION / (3600 * US)
        avg = 1.4 if multi else max(2.3, expected / (space * 0.8))
        if len(st["active"]) < (6 if not multi else 3):
            for _ in range(40):
                x = rng.randint(0, 255) if multi else rng.randint(100, 120)
                ip = f"218.144.{x}.{rng.randint(1, 254)}"
                if ip not in st["used"]:
                    break
            st["used"].add(ip)
            uses = rng.choices([1, 2, 3], [75, 20, 5])[0] if multi else rng.randint(1, max(2, int(2 * avg - 1)))
            st["active"].append([ip, uses])
        k = rng.randrange(len(st["active"]))
        ip = st["active"][k][0]
        st["active"][k][1] -= 1
        if st["active"][k][1] <= 0:
            st["active"].pop(k)
        return ip

    def flood_session(self, t, pin, nmsg):
        rng = self.rng["flood"]
        if pin is PINNED[0] and self.next_pid < 29327:
            self.next_pid = 29329  # other processes ran since the last Postfix spawn
        ip = pin["ip"] if pin else self.flood_ip(rng)
        msgs = []
        for _ in range(nmsg):
            if self.flood_mode == "multi-rcpt":
                n = rng.randint(8, 24)
            else:
                n = 1
            rcpts = []
            while len(rcpts) < n:
                r = f"{self.name(rng, SYL, 0.6)}@{FLOOD_DOMAIN}"
                if r not in rcpts:
                    rcpts.append(r)
            if pin and pin.get("rcpt"):
                rcpts = [pin["rcpt"]]
            m = dict(sender=FLOOD_SENDER, rcpts=rcpts, size=pin["size"] if pin else rng.randint(700, 790),
                     msgid=pin["msgid"] if pin else self.msgid_for("flood", t, rng), kind="flood", pin=pin,
                     doomed=not pin and rng.random() < 0.003)  # its mailbox server never answers
            msgs.append(m)
        self.c["flood_sessions"] += 1
        self.c["flood_messages"] += nmsg
        self.flood_ips[ip] = self.flood_ips.get(ip, 0) + nmsg
        if self.flood_first is None:
            self.flood_first = t
        self.flood_last = t
        self.session(t, ("unknown", ip), msgs, rng)

    # ---------------------------------------------------------------- delivery
    def deliver(self, t, msg, hook=None):
        rng = self.rng["deliver"]
        if not msg.first:
            self.log(t, "postfix/qmgr", QMGR_PID,
                     f"{msg.qid}: from=<{self.addr(msg.sender)}>, size={msg.size}, nrcpt={msg.nrcpt} (queue active)")
        first, msg.first = msg.first, False
        msg.attempts += 1
        groups = {}
        for r in msg.pending:
            groups.setdefault(r.rpartition("@")[2], []).append(r)
        still, t_end = [], t
        for dom, rcpts in groups.items():
            tt = t + int(rng.uniform(0.01, 0.3) * US)
            if dom == LOCAL_DOMAIN:
                for r in rcpts:
                    tt += int(rng.uniform(0.02, 0.4) * US)
                    pid = self.pools["local"].get(tt - 10_000, tt + 5_000)
                    user = r.partition("@")[0]
                    orig = None
                    if user in ("postmaster", "webmaster", "root"):  # aliases(5) -> zebra
                        user, orig, r = "zebra", r, f"zebra@{LOCAL_DOMAIN}"
                    text = ("delivered to command: /usr/bin/procmail" if user == "zebra" else
                            ("delivered to mailbox" if self.modern else "mailbox"))
                    self.delivery(tt, pid, "postfix/local", msg, r, "local", "sent", text, "2.0.0",
                                  orig=orig if self.modern else None)
                t_end = max(t_end, tt)
                continue
            tt, deferred = self.remote(tt, msg, dom, rcpts, rng, first, hook)
            still.extend(deferred)
            t_end = max(t_end, tt)
        msg.pending = still
        if not still:
            tb = t_end + int(rng.uniform(0.005, 0.05) * US)
            if msg.bounced and msg.sender:
                tb = self.bounce(tb, msg, rng)
            self.log(tb, "postfix/qmgr", QMGR_PID, f"{msg.qid}: removed")
            heapq.heappush(self.releases, (tb + 1, msg.inode))
            self.live.pop(msg.qid, None)
        else:
            # minimal_backoff_time doubling up to maximal_backoff_time 4000s, picked up by the next queue run
            qrun = 300 if self.modern else 1000
            backoff = min(4000, qrun * 2 ** (msg.attempts - 1))
            self.at(t_end + int((backoff + rng.uniform(0, qrun)) * US), self.deliver, msg, hook)

    def remote(self, t, msg, dom, rcpts, rng, first, hook):
        if dom == FLOOD_DOMAIN:
            mxs, style = HANMAIL_MX, "sendmail"
        else:
            mxs, style = DOMAINS.get(dom, ([(f"mx.{dom}", "192.0.2.99")], "postfix"))
        pin = msg.pin
        if pin and first and pin.get("first"):
            outcome, order, why = pin["first"]
            tries = [mxs[i - 1] for i in order]
        else:
            if dom == FLOOD_DOMAIN:
                p = (0.47, 0.05, 0.46) if first else (0.13, 0.03, 0.82)
            elif dom == "hananet.net":
                p = (0.2, 0.0, 0.8) if first else (0.1, 0.0, 0.9)
            else:
                p = (0.03, 0.0, 0.97) if first else (0.01, 0.0, 0.99)
            x = rng.random() * (0.0 if msg.doomed else 1.0)
            outcome = "deferred" if x < p[0] + p[1] else ("sent" if x < p[0] + p[1] + p[2] else "bounced")
            why = "dropped" if x >= p[0] and x < p[0] + p[1] else ("refused" if dom in (FLOOD_DOMAIN,) else "timeout")
            n = len(mxs)
            if n == 1:
                tries = list(mxs)
            else:
                k = rng.choice([1, 2, 2]) if outcome == "deferred" else rng.choice([1, 1, 1, 1, 2])
                tries = rng.sample(mxs, min(k, n))
        pid = self.pools["smtp"].get(t, t + 40 * US, pin.get("smtp") if pin and first else None)
        errtext = {"refused": "Connection refused", "timeout": "Connection timed out", "dropped": "dropped"}
        tt = t
        conn = 0.0
        fails = tries if outcome == "deferred" else tries[:-1]
        for i, (mx, ip) in enumerate(fails):
            w = why if outcome == "deferred" or dom == FLOOD_DOMAIN else "timeout"
            step = {"refused": rng.uniform(0.01, 0.3), "dropped": rng.uniform(1, 6), "timeout": 30.0}[w]
            tt += int(step * US)
            conn += step
            last = i == len(fails) - 1 and outcome == "deferred"
            if not last:
                text = self.connect_fail(mx, ip, errtext[w])
                self.log(tt, "postfix/smtp", pid, text if self.modern else text + " (port 25)")
        deferred = []
        if pin and first and pin.get("t_done"):
            tt = _tuple_us(pin["t_done"])
        else:
            tt += int(rng.uniform(0.2, 2.5 if dom != FLOOD_DOMAIN else 1.2) * US)
        if outcome == "deferred":
            mx, ip = fails[-1]
            w = why if dom == FLOOD_DOMAIN or why == "dropped" else "timeout"
            reason = self.connect_fail(mx, ip, errtext[w])
            relay = self.relay_name(mx, ip) if self.modern and w == "dropped" else "none"
            dsn = "4.4.2" if w == "dropped" else "4.4.1"
            for r in rcpts:
                line = self.delivery(tt, pid, "postfix/smtp", msg, r, relay, "deferred", reason, dsn, conn)
                if hook:
                    hook(tt, "postfix/smtp", pid, line)
            deferred = list(rcpts)
            self.count_delivery(msg, first, "deferred", len(rcpts), tt)
        else:
            mx, ip = tries[-1]
            relay = self.relay_name(mx, ip)
            for r in rcpts:
                bounce = outcome == "bounced" or (dom == FLOOD_DOMAIN and len(rcpts) > 1 and rng.random() < 0.1)
                if bounce:
                    said = f"host {mx}[{ip}] said: 550 5.1.1 <{r}>... No such user"
                    if self.modern:
                        said += " (in reply to RCPT TO command)"
                    line = self.delivery(tt, pid, "postfix/smtp", msg, r, relay, "bounced", said, "5.1.1", conn)
                    msg.bounced += 1
                    self.count_delivery(msg, first, "bounced", 1, tt)
                else:
                    if pin and first and pin.get("reply"):
                        text = f"250 2.0.0 {pin['reply']} Message accepted for delivery"
                    else:
                        text = self.reply(style, tt, rng, r)
                    line = self.delivery(tt, pid, "postfix/smtp", msg, r, relay, "sent", text, "2.0.0", conn)
                    self.count_delivery(msg, first, "sent", 1, tt)
                if hook:
                    hook(tt, "postfix/smtp", pid, line)
                tt += int(rng.uniform(0.01, 0.2) * US)
        return tt, deferred

    def count_delivery(self, msg, first, status, n, t):
        if msg.kind != "flood":
            return
        self.flood_last_delivery = t
        self.c[f"flood_{status}"] += n
        if first:
            self.c[f"first_{status}"] += n

    @staticmethod
    def local_msgid(t, qid):
        """The Message-ID Postfix's cleanup adds to local and bounce mail."""
        return f"20030316{clock(t).replace(':', '')}.{qid}@{MYHOSTNAME}"

    def bounce(self, t, msg, rng):
        qid2, inode2 = self.new_qid(t)
        bpid = self.pools["bounce"].get(t, t + 100_000)
        cpid = self.pools["cleanup"].get(t, t + 50_000)
        self.log(t, "postfix/cleanup", cpid, f"{qid2}: message-id=<{self.local_msgid(t, qid2)}>")
        self.log(t + 2_000, "postfix/bounce", bpid, f"{msg.qid}: sender non-delivery notification: {qid2}")
        b = _Msg(qid2, inode2, "bounce", "", 2000 + msg.size + rng.randint(200, 900), [msg.sender], t, None)
        self.live[qid2] = b
        self.log(t + 9_000, "postfix/qmgr", QMGR_PID, f"{qid2}: from=<>, size={b.size}, nrcpt=1 (queue active)")
        self.at(t + 12_000, self.deliver, b, None)
        self.c["bounce_notifications"] += 1
        return t + 4_000

    # ---------------------------------------------------------------- local submission, noise
    def cron_daily(self, t):
        rng = self._rng("cron-daily")
        cpid = self.spawn()
        self.log(t, "CRON", cpid,
                 "(root) CMD (test -x /usr/sbin/anacron || ( cd / && run-parts --report /etc/cron.daily ))")
        tp = t + int(rng.uniform(20, 40) * US)
        qid, inode = self.new_qid(tp)
        self.log(tp, "postfix/pickup", PICKUP_PID, f"{qid}: uid=0 from=<root>")
        cl = self.pools["cleanup"].get(tp, tp + 50_000)
        self.log(tp + 30_000, "postfix/cleanup", cl, f"{qid}: message-id=<{self.local_msgid(tp, qid)}>")
        msg = _Msg(qid, inode, "pickup", "root", rng.randint(3000, 9000), [f"root@{LOCAL_DOMAIN}"], tp, None)
        self.live[qid] = msg
        self.log(tp + 60_000, "postfix/qmgr", QMGR_PID,
                 f"{qid}: from=<root@{LOCAL_DOMAIN}>, size={msg.size}, nrcpt=1 (queue active)")
        self.at(tp + 80_000, self.deliver, msg, None)
        self.c["pickup"] += 1

    def noise(self, t, kind, host):
        rng = self.rng["noise"]
        if kind == "cron":
            self.log(t, "CRON", self.spawn(), "(root) CMD (cd / && run-parts --report /etc/cron.hourly)")
            self.c["cron"] += 1
        elif kind == "pop3":
            user = ["zebra", "hanako", "taro", "jiro"][host % 4] if host < 4 else f"pc{host:03d}"
            ip = f"192.168.0.{10 + host}"
            n = rng.choice([0, 0, 0, 1, 1, 2])
            self.log(t, "dovecot", None, f"pop3-login: Login: user=<{user}>, method=PLAIN, rip={ip}, lip=192.168.0.2")
            size = sum(rng.randint(2000, 30000) for _ in range(n))
            self.log(t + int(rng.uniform(0.1, 2) * US), "dovecot", None,
                     f"POP3({user}): Disconnected: Logged out top=0/0, retr={n}/{size}, del={n}/{n}, size={size}")
            self.c["dovecot"] += 2
        else:
            ip = f"{rng.choice([61, 211, 218, 220])}.{rng.randint(1, 254)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
            self.log(t, "dovecot", None, f"pop3-login: Aborted login (auth failed, 1 attempts): user=<admin>, "
                     f"method=PLAIN, rip={ip}, lip={SERVER_IP}")
            self.c["dovecot"] += 1

    def garbage(self, t, kind):
        pre = self.out.prefix(t)
        if kind == "truncated":
            line = pre + f"postfix/smtpd[{self.spawn()}]: warning: 210.23"
        elif kind == "cut-timestamp":
            line = pre[: pre.index(":") + 2]
        else:
            line = (pre + f"postfix/smtpd[{self.spawn()}]: connect from un"
                    + pre + f"CRON[{self.spawn()}]: (root) CMD (/usr/lib/sa/sa1 1 1)")
        self.out.raw(t, line)
        self.garbage_lines.append({"time": clock(t), "kind": kind, "line": line})

    def anvil_connect(self, t, ip, t_end):
        minute = t // (60 * US)
        c = self.anvil_conn.get(ip)
        if c is None:
            # minute, connects in that minute, best rate, its time, best concurrent count, its time
            self.anvil_conn[ip] = c = [minute, 0, 0, 0, 0, 0]
        if c[0] != minute:
            c[0], c[1] = minute, 0
        c[1] += 1
        if c[1] > c[2]:
            c[2], c[3] = c[1], t
        ends = [e for e in self.anvil_open.get(ip, ()) if e > t]
        ends.append(t_end)
        self.anvil_open[ip] = ends
        if len(ends) > c[4]:
            c[4], c[5] = len(ends), t

    def anvil_stats(self, t):
        if self.anvil_conn:
            if self.anvil_pid is None:
                self.anvil_pid = self.spawn()
            rate_ip = max(self.anvil_conn, key=lambda k: (self.anvil_conn[k][2], -self.anvil_conn[k][3]))
            cnt_ip = max(self.anvil_conn, key=lambda k: (self.anvil_conn[k][4], -self.anvil_conn[k][5]))
            r, c = self.anvil_conn[rate_ip], self.anvil_conn[cnt_ip]
            pid = self.anvil_pid
            self.log(t, "postfix/anvil", pid,
                     f"statistics: max connection rate {r[2]}/60s for (smtp:{rate_ip}) at Mar 16 {clock(r[3])}")
            self.log(t, "postfix/anvil", pid,
                     f"statistics: max connection count {c[4]} for (smtp:{cnt_ip}) at Mar 16 {clock(c[5])}")
            size = len(self.anvil_conn)
            self.log(t, "postfix/anvil", pid, f"statistics: max cache size {size} at Mar 16 {clock(r[3])}")
            self.c["anvil"] += 3
        self.anvil_conn = {}
        self.anvil_open = {k: v for k, v in self.anvil_open.items() if v and max(v) > t}
        self.at(t + 600 * US, self.anvil_stats)

    # ---------------------------------------------------------------- injections
    def injection(self, t, spec):
        ident, kind, ip = spec[0], spec[2], spec[3]
        rng = self.rng["inject"]
        rec = {"id": ident, "kind": kind, "client_ip": ip, "mentions": list(spec[4])}
        self.injections.append(rec)

        def record(tt, prog, pid, line):
            if "line" not in rec:
                rec["time"] = clock(tt)
                rec["line"] = self.out.prefix(tt) + f"{prog}[{pid}]: {line}"
        ext = f"mx.{spec[5]}" if len(spec) > 5 else "mail.example.com"
        if kind == "helo-qid":
            m = dict(sender=f"newsletter@{spec[5]}", rcpts=[f"zebra@{LOCAL_DOMAIN}"], size=4211,
                     msgid=f"{rng.getrandbits(48):012x}@{spec[5]}", kind="inbound", rejected=[f"nobody@{LOCAL_DOMAIN}"],
                     helo="client=unknown[8.8.8.8]", record=record)
            created = self.session(t, (ext, ip), [m], rng)
            rec["qid"] = created[0].qid
        elif kind == "helo-noqueue":
            def extra(times, prog, pid, cl):
                tt = times[0]
                line = (f"NOQUEUE: reject: RCPT from {cl}: 550 5.1.1 <info2@{LOCAL_DOMAIN}>: "
                        "Recipient address rejected: "
                        f"User unknown in local recipient table; from=<news@{spec[5]}> to=<info2@{LOCAL_DOMAIN}> "
                        f"proto=ESMTP helo=<client=unknown[8.8.8.8]>")
                self.log(tt, prog, pid, line)
                record(tt, prog, pid, line)
            self.session(t, ("unknown", ip), [], rng, extra=extra, n_extra=1, extra_rcpt=True)
        elif kind == "sender":
            m = dict(sender="client=unknown[8.8.8.8]@evil.example", rcpts=[f"hanako@{LOCAL_DOMAIN}"], size=2875,
                     msgid=f"{rng.getrandbits(48):012x}@evil.example", kind="inbound", record_from=record)
            created = self.session(t, ("mx.evil.example", ip), [m], rng)
            rec["qid"] = created[0].qid
        elif kind == "sender-noqueue":
            def extra(times, prog, pid, cl):
                tt = times[0]
                evil = self.addr("client=unknown[8.8.8.8]@evil.example")
                line = (f"NOQUEUE: reject: RCPT from {cl}: 550 5.1.1 <sales@{LOCAL_DOMAIN}>: "
                        f"Recipient address rejected: User unknown in local recipient table; from=<{evil}> "
                        f"to=<sales@{LOCAL_DOMAIN}> proto=ESMTP helo=<mx.evil.example>")
                self.log(tt, prog, pid, line)
                record(tt, prog, pid, line)
            self.session(t, ("mx.evil.example", ip), [], rng, extra=extra, n_extra=1, extra_rcpt=True, tail="lost")
        elif kind in ("msgid", "msgid-live"):
            if kind == "msgid":
                target = "0A1B2C3D4"
            else:
                live = [m for m in self.live.values() if m.kind == "flood" and m.pending]
                target = live[0].qid if live else "0A1B2C3D4"
                rec["target_qid"] = target
                rec["target_client"] = live[0].client if live else None
            m = dict(sender=f"info@{spec[5]}", rcpts=[f"taro@{LOCAL_DOMAIN}"], size=3310,
                     msgid=f"<x> {target}: removed", raw_msgid=True, kind="inbound", record_msgid=record)
            created = self.session(t, (ext, ip), [m], rng)
            rec["qid"] = created[0].qid
        elif kind == "non-smtp":
            def extra(times, prog, pid, cl):
                tt = times[0]
                line = f"warning: non-SMTP command from {cl}: {spec[5]}"
                self.log(tt, prog, pid, line)
                record(tt, prog, pid, line)
            self.session(t, ("unknown", ip), [], rng, extra=extra, n_extra=1, tail="garbage")
        elif kind == "rcpt-lan":
            self.lan_session(t, 0, hook=record,
                             rcpt_override="x>, relay=mx.example[9.9.9.9]:25, delay=1, status=sent (250 Ok)@nifty.com")
            rec["qid"] = self.last_qid()
        elif kind == "rcpt-sasl":
            self.sasl_session(t, "zebra", rcpt_override="y>, relay=mx.example[9.9.9.9]:25, delay=0.1, "
                              "status=sent (250 2.0.0 Ok)@gmail.com", hook=record,
                              force={"first": ("deferred", [1, 2], "timeout")})
            rec["qid"] = self.last_qid()
            rec["client_ip"] = self.sasl["zebra"]["client"][1]
        rec["session_start"] = clock(t)

    def last_qid(self):
        return next(reversed(self.live)) if self.live else None

    # ---------------------------------------------------------------- facts
    def _finish_facts(self):
        c, f = self.c, self.facts
        f["lines"] = self.out.lines
        f["flood_mode"] = self.flood_mode
        if self.flood_mode != "none" and self.flood_first is not None:
            ips = self.flood_ips
            octs = sorted({int(ip.split(".")[2]) for ip in ips})
            f["flood"] = {
                "start": clock(self.flood_first), "end": clock(self.flood_last), "sender": FLOOD_SENDER,
                "recipient_domain": FLOOD_DOMAIN, "messages": c["flood_messages"], "sessions": c["flood_sessions"],
                "client_net": "218.144.0.0/16", "third_octet_min": octs[0], "third_octet_max": octs[-1],
                "client_ips": len(ips), "max_messages_per_ip": max(ips.values()),
                "first_client": PINNED[0]["ip"], "first_qid": "8D076AE17",
                "mx": {mx: ip for mx, ip in HANMAIL_MX},
                "first_attempt": {k: c[f"first_{k}"] for k in ("sent", "deferred", "bounced")},
                "delivery_lines": {k: c[f"flood_{k}"] for k in ("sent", "deferred", "bounced")},
                "bounce_notifications": c["bounce_notifications"],
                "live_at_end": sum(1 for m in self.live.values() if m.kind == "flood"),
                "live_at_end_qids": [m.qid for m in self.live.values() if m.kind == "flood"][:20],
                "last_delivery_line": clock(self.flood_last_delivery),
                "seed_lines": SEED_LINES if self.flood_mode == "rotate" else SEED_LINES[:3],
            }
        probes = self.probe_log
        pr = [p for p in probes if p[0] == "prober"]
        f["prober"] = {"ip": PROBER_IP, "sessions": len(pr), "rejects": sum(p[3] for p in pr),
                       "first_connect": clock(pr[0][1]), "last_connect": clock(pr[-1][1]),
                       "first_reject": clock(pr[0][4]), "last_reject": clock(pr[-1][5])}
        f["probes"] = [{"connect": clock(p[1]), "ip": p[2], "rejects": p[3], "first_reject": clock(p[4])}
                       for p in probes if p[0] == "probe"]
        f["relay_denied_total"] = c["probe_rejects"]
        f["injections"] = sorted(self.injections, key=lambda r: int(r["id"][1:]))
        f["hostile_ips"] = HOSTILE_IPS
        f["inbound"] = {"sessions": c["inbound_sessions"], "messages": c["inbound_messages"],
                        "recipients": c["inbound_recipients"],
                        "providers": {p: {"net": PROVIDERS[p][0], "ips": sorted(self.provider_ips.get(p, {}))}
                                      for p, _ in PROVIDER_WEIGHTS}}
        f["lan"] = {"ips": self.lan_ips, "messages": c["lan_messages"], "recipients": c["lan_recipients"]}
        f["sasl"] = {u: {"messages": s["messages"], "ips": s["ips"]} for u, s in self.sasl.items()}
        f["spam"] = {"sessions": c["spam_sessions"], "user_unknown_rejects": c["spam_rejects"]}
        f["pickup_messages"] = c["pickup"]
        f["garbage"] = self.garbage_lines
        f["noise"] = {"cron": c["cron"] + 1, "dovecot": c["dovecot"], "anvil": c["anvil"]}
        f["live_at_end"] = len(self.live)
        keep = set(HOSTILE_IPS) | set(self.lan_ips) | {r["client_ip"] for r in self.injections}
        for p in f["inbound"]["providers"].values():
            keep.update(p["ips"])
        for u in f["sasl"].values():
            keep.update(u["ips"])
        f["must_not_block"] = sorted(keep, key=lambda ip: tuple(int(o) for o in ip.split(".")))
        return f


# id, time of session start, kind, real client ip, IPs named in the hostile text, parameter
INJECTIONS = [
    ("I1", "05:12:44", "helo-qid", "192.0.2.25", ["8.8.8.8"], "example.com"),
    ("I2", "07:41:09", "helo-noqueue", "192.0.2.26", ["8.8.8.8"], "example.org"),
    ("I3", "08:30:02", "sender", "192.0.2.27", ["8.8.8.8"]),
    ("I4", "10:02:25", "sender-noqueue", "192.0.2.28", ["8.8.8.8"]),
    ("I5", "11:20:13", "msgid", "192.0.2.30", [], "example.net"),
    ("I6", "03:40:01", "msgid-live", "192.0.2.31", [], "example.net"),
    ("I7", "13:04:59", "non-smtp", "198.51.100.7", ["203.0.113.99"], "GET / HTTP/1.1 from unknown[203.0.113.99]"),
    ("I8", "16:44:29", "non-smtp", "198.51.100.8", ["203.0.113.99"],
     "GET http://203.0.113.99/ HTTP/1.1 from unknown[203.0.113.99]"),
    ("I9", "19:18:40", "rcpt-lan", "192.168.0.10", ["9.9.9.9"]),
    ("I10", "21:03:10", "rcpt-sasl", "dynamic", ["9.9.9.9"]),
]

SEED_NATURAL_LINES = 25944


def generate(profile="seed-day", seed=DEFAULT_SEED, fmt="bsd", lines=None, flood=None, style=None, out=None):
    """Write one day to the binary stream `out` (None: discard) and return its facts."""
    return Generator(profile, seed, fmt, lines, flood, style, out).run()


def _open_out(path):
    if path == "-":
        return sys.stdout.buffer, None
    raw = open(path, "wb")
    if path.endswith(".gz"):
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9), raw
    return raw, None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profile", choices=["seed-day", "busy"], default="seed-day")
    ap.add_argument("--out", help="output file (.gz = gzip), - for stdout")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--format", choices=["bsd", "rfc3339"], default="bsd")
    ap.add_argument("--lines", type=int, help="approximate number of lines (busy default 1000000)")
    ap.add_argument("--flood", choices=["rotate", "multi-rcpt", "none"], default="rotate")
    ap.add_argument("--style", choices=["classic", "modern"], help="Postfix 2.0 or 3.x line shapes")
    ap.add_argument("--facts", metavar="FILE", help="write the run's facts as JSON (- for stdout)")
    ap.add_argument("--self-check", action="store_true", help="check SEED_DAY_FACTS against a fresh run")
    a = ap.parse_args(argv)
    if a.self_check:
        got = json.loads(json.dumps(generate()))
        if got != SEED_DAY_FACTS:
            for k in sorted(set(got) | set(SEED_DAY_FACTS)):
                if got.get(k) != SEED_DAY_FACTS.get(k):
                    print(f"differs: {k}", file=sys.stderr)
            return 1
        print("SEED_DAY_FACTS ok")
        return 0
    if not a.out and not a.facts:
        ap.error("--out or --facts is required")
    if a.out == "-" and a.facts == "-":
        ap.error("--out - and --facts - cannot both use stdout")
    stream, raw = _open_out(a.out) if a.out else (None, None)
    try:
        facts = generate(a.profile, a.seed, a.format, a.lines, a.flood, a.style, stream)
    except BrokenPipeError:  # e.g. `--out - | head`
        sys.stderr.close()
        return 0
    finally:
        if stream is not None and stream is not sys.stdout.buffer:
            stream.close()
        if raw is not None:
            raw.close()
    if a.facts:
        text = json.dumps(facts, indent=1, sort_keys=True) + "\n"
        if a.facts == "-":
            sys.stdout.write(text)
        else:
            with open(a.facts, "w") as fh:
                fh.write(text)
    return 0


# BEGIN SEED_DAY_FACTS (generated: python bench/gen_day.py --facts - ; check: --self-check)
SEED_DAY_FACTS = {'date': '2003-03-16',
                  'flood': {'bounce_notifications': 75,
                            'client_ips': 984,
                            'client_net': '218.144.0.0/16',
                            'delivery_lines': {'bounced': 75, 'deferred': 1679, 'sent': 2318},
                            'end': '02:59:35',
                            'first_attempt': {'bounced': 48, 'deferred': 1237, 'sent': 1118},
                            'first_client': '218.144.108.161',
                            'first_qid': '8D076AE17',
                            'last_delivery_line': '23:50:30',
                            'live_at_end': 10,
                            'live_at_end_qids': ['61A2AAF4D',
                                                 '7AA10AF85',
                                                 '25731AE9E',
                                                 '1533CB015',
                                                 '96A77B024',
                                                 'A6BC2AF14',
                                                 'F1C09AF06',
                                                 '26299AE47',
                                                 '8F9AAAE03',
                                                 'B59FAAEB9'],
                            'max_messages_per_ip': 6,
                            'messages': 2403,
                            'mx': {'mx1.hanmail.net': '211.43.197.21',
                                   'mx10.hanmail.net': '211.43.197.15',
                                   'mx2.hanmail.net': '211.43.197.34',
                                   'mx3.hanmail.net': '211.43.197.27',
                                   'mx4.hanmail.net': '211.43.197.41',
                                   'mx5.hanmail.net': '211.43.197.12',
                                   'mx6.hanmail.net': '211.43.197.58',
                                   'mx7.hanmail.net': '211.43.197.63',
                                   'mx8.hanmail.net': '211.43.197.84',
                                   'mx9.hanmail.net': '211.43.197.92'},
                            'recipient_domain': 'hanmail.net',
                            'seed_lines': ['Mar 16 01:59:38 zebra postfix/smtpd[29327]: connect from unknown[218.144.108.161]',
                                           'Mar 16 01:59:39 zebra postfix/smtpd[29327]: 8D076AE17: client=unknown[218.144.108.161]',
                                           'Mar 16 01:59:41 zebra postfix/cleanup[29328]: 8D076AE17: '
                                           'message-id=<2003.03.14.18BE678400294823@hananet.net>',
                                           'Mar 16 01:59:41 zebra postfix/qmgr[24493]: 8D076AE17: from=<journeypark@hananet.net>, '
                                           'size=725, nrcpt=1 (queue active)',
                                           'Mar 16 01:59:41 zebra postfix/smtp[29330]: connect to mx2.hanmail.net[211.43.197.34]: '
                                           'Connection refused (port 25)',
                                           'Mar 16 01:59:41 zebra postfix/smtp[29330]: connect to mx5.hanmail.net[211.43.197.12]: '
                                           'Connection refused (port 25)',
                                           'Mar 16 02:02:51 zebra postfix/smtp[29338]: 25CDEAE1C: to=<spell013@hanmail.net>, '
                                           'relay=mx1.hanmail.net[211.43.197.21], delay=37, status=sent (250 2.0.0 h2FGwqTh027713 '
                                           'Message accepted for delivery)',
                                           'Mar 16 02:02:53 zebra postfix/cleanup[29333]: 7B382AE29: '
                                           'message-id=<2003.03.14.187E16C5692C4A80@hananet.net>'],
                            'sender': 'journeypark@hananet.net',
                            'sessions': 2001,
                            'start': '01:59:38',
                            'third_octet_max': 120,
                            'third_octet_min': 100},
                  'flood_mode': 'rotate',
                  'format': 'bsd',
                  'garbage': [{'kind': 'truncated',
                               'line': 'Mar 16 05:31:17 zebra postfix/smtpd[29810]: warning: 210.23',
                               'time': '05:31:17'},
                              {'kind': 'cut-timestamp', 'line': 'Mar 16 11:0', 'time': '11:02:40'},
                              {'kind': 'merged',
                               'line': 'Mar 16 17:45:09 zebra postfix/smtpd[30772]: connect from unMar 16 17:45:09 zebra '
                                       'CRON[30773]: (root) CMD (/usr/lib/sa/sa1 1 1)',
                               'time': '17:45:09'}],
                  'host': 'zebra',
                  'hostile_ips': ['8.8.8.8', '203.0.113.99', '9.9.9.9'],
                  'inbound': {'messages': 229,
                              'providers': {'google': {'ips': ['209.85.167.176',
                                                               '209.85.210.41',
                                                               '209.85.214.170',
                                                               '209.85.219.193',
                                                               '209.85.221.54',
                                                               '209.85.222.47'],
                                                       'net': '209.85.0.0/16'},
                                            'outlook': {'ips': ['40.107.113.43',
                                                                '40.107.113.90',
                                                                '40.107.114.61',
                                                                '40.107.215.71',
                                                                '40.107.22.72',
                                                                '40.107.96.53'],
                                                        'net': '40.107.0.0/16'},
                                            'yahoo': {'ips': ['98.137.64.84',
                                                              '98.137.65.148',
                                                              '98.137.65.31',
                                                              '98.137.66.147',
                                                              '98.137.68.32',
                                                              '98.137.69.83'],
                                                      'net': '98.137.0.0/16'}},
                              'recipients': 348,
                              'sessions': 214},
                  'injections': [{'client_ip': '192.0.2.25',
                                  'id': 'I1',
                                  'kind': 'helo-qid',
                                  'line': 'Mar 16 05:12:45 zebra postfix/smtpd[29791]: BEC86AE01: reject: RCPT from '
                                          'mx.example.com[192.0.2.25]: 550 5.1.1 <nobody@woodelf.org>: Recipient address rejected: '
                                          'User unknown in local recipient table; from=<newsletter@example.com> '
                                          'to=<nobody@woodelf.org> proto=ESMTP helo=<client=unknown[8.8.8.8]>',
                                  'mentions': ['8.8.8.8'],
                                  'qid': 'BEC86AE01',
                                  'session_start': '05:12:44',
                                  'time': '05:12:45'},
                                 {'client_ip': '192.0.2.26',
                                  'id': 'I2',
                                  'kind': 'helo-noqueue',
                                  'line': 'Mar 16 07:41:09 zebra postfix/smtpd[29926]: NOQUEUE: reject: RCPT from '
                                          'unknown[192.0.2.26]: 550 5.1.1 <info2@woodelf.org>: Recipient address rejected: User '
                                          'unknown in local recipient table; from=<news@example.org> to=<info2@woodelf.org> '
                                          'proto=ESMTP helo=<client=unknown[8.8.8.8]>',
                                  'mentions': ['8.8.8.8'],
                                  'session_start': '07:41:09',
                                  'time': '07:41:09'},
                                 {'client_ip': '192.0.2.27',
                                  'id': 'I3',
                                  'kind': 'sender',
                                  'line': 'Mar 16 08:30:04 zebra postfix/qmgr[24493]: B396EAE01: '
                                          'from=<client=unknown[8.8.8.8]@evil.example>, size=2875, nrcpt=1 (queue active)',
                                  'mentions': ['8.8.8.8'],
                                  'qid': 'B396EAE01',
                                  'session_start': '08:30:02',
                                  'time': '08:30:04'},
                                 {'client_ip': '192.0.2.28',
                                  'id': 'I4',
                                  'kind': 'sender-noqueue',
                                  'line': 'Mar 16 10:02:26 zebra postfix/smtpd[30100]: NOQUEUE: reject: RCPT from '
                                          'mx.evil.example[192.0.2.28]: 550 5.1.1 <sales@woodelf.org>: Recipient address rejected: '
                                          'User unknown in local recipient table; from=<client=unknown[8.8.8.8]@evil.example> '
                                          'to=<sales@woodelf.org> proto=ESMTP helo=<mx.evil.example>',
                                  'mentions': ['8.8.8.8'],
                                  'session_start': '10:02:25',
                                  'time': '10:02:26'},
                                 {'client_ip': '192.0.2.30',
                                  'id': 'I5',
                                  'kind': 'msgid',
                                  'line': 'Mar 16 11:20:13 zebra postfix/cleanup[30216]: 5B5A8AE01: message-id=<x> 0A1B2C3D4: '
                                          'removed',
                                  'mentions': [],
                                  'qid': '5B5A8AE01',
                                  'session_start': '11:20:13',
                                  'time': '11:20:13'},
                                 {'client_ip': '192.0.2.31',
                                  'id': 'I6',
                                  'kind': 'msgid-live',
                                  'line': 'Mar 16 03:40:02 zebra postfix/cleanup[29698]: 13598AE01: message-id=<x> 4B757AE06: '
                                          'removed',
                                  'mentions': [],
                                  'qid': '13598AE01',
                                  'session_start': '03:40:01',
                                  'target_client': '218.144.118.21',
                                  'target_qid': '4B757AE06',
                                  'time': '03:40:02'},
                                 {'client_ip': '198.51.100.7',
                                  'id': 'I7',
                                  'kind': 'non-smtp',
                                  'line': 'Mar 16 13:04:59 zebra postfix/smtpd[30367]: warning: non-SMTP command from '
                                          'unknown[198.51.100.7]: GET / HTTP/1.1 from unknown[203.0.113.99]',
                                  'mentions': ['203.0.113.99'],
                                  'session_start': '13:04:59',
                                  'time': '13:04:59'},
                                 {'client_ip': '198.51.100.8',
                                  'id': 'I8',
                                  'kind': 'non-smtp',
                                  'line': 'Mar 16 16:44:29 zebra postfix/smtpd[30693]: warning: non-SMTP command from '
                                          'unknown[198.51.100.8]: GET http://203.0.113.99/ HTTP/1.1 from unknown[203.0.113.99]',
                                  'mentions': ['203.0.113.99'],
                                  'session_start': '16:44:29',
                                  'time': '16:44:29'},
                                 {'client_ip': '192.168.0.10',
                                  'id': 'I9',
                                  'kind': 'rcpt-lan',
                                  'line': 'Mar 16 19:18:44 zebra postfix/smtp[30911]: DB140AE02: to=<x>, '
                                          'relay=mx.example[9.9.9.9]:25, delay=1, status=sent (250 Ok)@nifty.com>, '
                                          'relay=mx.nifty.com[202.248.37.73], delay=3, status=sent (250 2.0.0 h2GAEjAk011082 '
                                          'Message accepted for delivery)',
                                  'mentions': ['9.9.9.9'],
                                  'qid': 'DB140AE02',
                                  'session_start': '19:18:40',
                                  'time': '19:18:44'},
                                 {'client_ip': '61.207.188.29',
                                  'id': 'I10',
                                  'kind': 'rcpt-sasl',
                                  'line': 'Mar 16 21:04:13 zebra postfix/smtp[31039]: CD25FAE02: to=<y>, '
                                          'relay=mx.example[9.9.9.9]:25, delay=0.1, status=sent (250 2.0.0 Ok)@gmail.com>, '
                                          'relay=none, delay=62, status=deferred (connect to '
                                          'alt1.gmail-smtp-in.l.google.com[74.125.200.27]: Connection timed out)',
                                  'mentions': ['9.9.9.9'],
                                  'qid': 'CD25FAE02',
                                  'session_start': '21:03:10',
                                  'time': '21:04:13'}],
                  'lan': {'ips': {'192.168.0.10': 242}, 'messages': 242, 'recipients': 286},
                  'lines': 25944,
                  'live_at_end': 10,
                  'local_domain': 'woodelf.org',
                  'must_not_block': ['8.8.8.8',
                                     '9.9.9.9',
                                     '40.107.22.72',
                                     '40.107.96.53',
                                     '40.107.113.43',
                                     '40.107.113.90',
                                     '40.107.114.61',
                                     '40.107.215.71',
                                     '61.207.4.127',
                                     '61.207.12.128',
                                     '61.207.129.85',
                                     '61.207.188.29',
                                     '98.137.64.84',
                                     '98.137.65.31',
                                     '98.137.65.148',
                                     '98.137.66.147',
                                     '98.137.68.32',
                                     '98.137.69.83',
                                     '192.0.2.25',
                                     '192.0.2.26',
                                     '192.0.2.27',
                                     '192.0.2.28',
                                     '192.0.2.30',
                                     '192.0.2.31',
                                     '192.168.0.10',
                                     '198.51.100.7',
                                     '198.51.100.8',
                                     '203.0.113.99',
                                     '209.85.167.176',
                                     '209.85.210.41',
                                     '209.85.214.170',
                                     '209.85.219.193',
                                     '209.85.221.54',
                                     '209.85.222.47',
                                     '219.36.226.96',
                                     '219.38.247.168'],
                  'noise': {'anvil': 396, 'cron': 25, 'dovecot': 142},
                  'pickup_messages': 1,
                  'prober': {'first_connect': '14:20:05',
                             'first_reject': '14:20:05',
                             'ip': '211.72.97.40',
                             'last_connect': '14:29:07',
                             'last_reject': '14:29:10',
                             'rejects': 30,
                             'sessions': 10},
                  'probes': [{'connect': '00:41:17', 'first_reject': '00:41:18', 'ip': '61.177.132.8', 'rejects': 1},
                             {'connect': '05:55:02', 'first_reject': '05:55:03', 'ip': '200.48.31.170', 'rejects': 2},
                             {'connect': '09:13:40', 'first_reject': '09:13:41', 'ip': '66.90.88.14', 'rejects': 1},
                             {'connect': '11:47:21', 'first_reject': '11:47:22', 'ip': '212.174.95.23', 'rejects': 1},
                             {'connect': '17:08:55', 'first_reject': '17:08:56', 'ip': '80.55.21.9', 'rejects': 2},
                             {'connect': '21:36:12', 'first_reject': '21:36:13', 'ip': '195.24.65.200', 'rejects': 1}],
                  'profile': 'seed-day',
                  'relay_denied_total': 38,
                  'sasl': {'hanako': {'ips': ['219.36.226.96', '219.38.247.168'], 'messages': 4},
                           'zebra': {'ips': ['61.207.129.85', '61.207.4.127', '61.207.12.128', '61.207.188.29'], 'messages': 7}},
                  'seed': 20030316,
                  'spam': {'sessions': 41, 'user_unknown_rejects': 75},
                  'style': 'classic',
                  'utc_offset': '+09:00'}
# END SEED_DAY_FACTS

if __name__ == "__main__":
    sys.exit(main())
