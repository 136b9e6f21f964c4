"""The daemon reads the local domains from Postfix as replay does: a real Postfix config directory
with relay_domains in a hash: table, and a live log mixing every innocent family with one abuser."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from support.configs import sections, write_config
from support.postfix_rig import POSTMAP
from support.waiting import wait_for
from test_daemon import start

POSTCONF = "/usr/sbin/postconf"


def stamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds")


def live_log(t0: float) -> list[str]:
    """70 messages of each family within a few minutes, as a busy morning writes them."""
    lines: list[str] = []
    for i in range(70):
        t = stamp(t0 + i * 2)
        q = f"{i:02X}"
        # a gateway relaying inbound mail for its relay_domains to a primary in another data centre
        lines += [f"{t} gw postfix/smtpd[11]: 1A{q}000001: client=mail-wr1-f54.google.com[209.85.221.54]",
                  f"{t} gw postfix/qmgr[12]: 1A{q}000001: from=<f{i}@gmail.com>, size=900, nrcpt=1 (queue active)",
                  f"{t} gw postfix/smtp[13]: 1A{q}000001: to=<user{i}@example.org>, relay=mx1.example.org"
                  f"[81.2.69.160]:25, delay=0.5, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 5B{q}00001)"]
        # mailcow: LMTP into a dovecot container, for a domain no list names
        lines += [f"{t} gw postfix/smtpd[21]: 2A{q}000002: client=mail-ot1-f41.google.com[209.85.210.41]",
                  f"{t} gw postfix/qmgr[12]: 2A{q}000002: from=<g{i}@gmail.com>, size=900, nrcpt=1 (queue active)",
                  f"{t} gw postfix/lmtp[22]: 2A{q}000002: to=<u{i}@example.com>, relay=dovecot[172.22.1.250]:24,"
                  f" delay=0.3, dsn=2.0.0, status=sent (250 2.0.0 <u{i}@example.com> gFnBE1ZtR2c0AQAAsvNUgQ Saved)"]
        # two SASL users' outbound mail through a content filter on the LAN (10.0.0.20)
        client, user = ("91.12.29.46", "ann") if i % 2 else ("81.2.69.142", "bob")
        lines += [f"{t} gw postfix/submission/smtpd[31]: 3A{q}000003: client=unknown[{client}],"
                  f" sasl_method=PLAIN, sasl_username={user}",
                  f"{t} gw postfix/qmgr[12]: 3A{q}000003: from=<{user}@example.org>, size=900, nrcpt=1 (queue active)",
                  f"{t} gw postfix/10025/smtpd[32]: 4A{q}000004: client=amavis.lan[10.0.0.20]",
                  f"{t} gw postfix/qmgr[12]: 4A{q}000004: from=<{user}@example.org>, size=990, nrcpt=1 (queue active)",
                  f"{t} gw postfix/amavis/smtp[33]: 3A{q}000003: to=<friend{i}@gmail.com>, relay=10.0.0.20[10.0.0.20]"
                  ":10024, delay=1, dsn=2.0.0, status=sent (250 2.0.0 from MTA(smtp:[10.0.0.10]:10025): 250 2.0.0 Ok:"
                  f" queued as 4A{q}000004)",
                  f"{t} gw postfix/smtp[34]: 4A{q}000004: to=<friend{i}@gmail.com>, relay=gmail-smtp-in.l.google.com"
                  "[142.250.102.27]:25, delay=0.5, dsn=2.0.0, status=sent (250 2.0.0 OK gsmtp)"]
        # the abuser
        lines += [f"{t} gw postfix/smtpd[41]: 5A{q}000005: client=unknown[45.95.169.23]",
                  f"{t} gw postfix/qmgr[12]: 5A{q}000005: from=<promo@cheap.example>, size=900, nrcpt=1 (queue active)",
                  f"{t} gw postfix/smtp[42]: 5A{q}000005: to=<v{i}@hanmail.net>, relay=mx1.hanmail.net"
                  "[211.231.106.11]:25, delay=0.5, dsn=2.0.0, status=sent (250 2.0.0 Ok)"]
    return lines


def test_the_daemon_asks_postfix_for_relay_domains_and_blocks_only_the_abuser(postfix_instance, tmp_path):
    etc = postfix_instance.config_directory
    (Path(etc) / "relay_domains").write_text("example.org OK\n")
    subprocess.run([POSTMAP, "-c", etc, f"hash:{etc}/relay_domains"], check=True)
    subprocess.run([POSTCONF, "-c", etc, "-e", f"relay_domains = hash:{etc}/relay_domains"], check=True)
    log = tmp_path / "mail.log"
    log.write_text("")
    db, cfg = tmp_path / "state.db", tmp_path / "rw.toml"
    write_config(cfg, sections(maillog=log, database=db, config_directory=etc,
                               client_access_map=postfix_instance.reject_list, allow_networks=[]))
    err = tmp_path / "daemon.err"
    proc = start(cfg, err)
    try:
        wait_for(lambda: "following file:" in err.read_text(), what="the daemon to start")
        with log.open("a") as f:
            f.write("\n".join(live_log(time.time() - 180)) + "\n")
        wait_for(lambda: "BLOCK client 45.95.169.23" in err.read_text(), what="the abuser's block")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    listed = subprocess.run([sys.executable, "-m", "relaywatch", "blocks", "--json", "-c", str(cfg)],
                            capture_output=True, text=True, check=True)
    assert [b["target"] for b in json.loads(listed.stdout)["blocks"]] == ["45.95.169.23"], err.read_text()
    assert "inferred from the log" not in err.read_text()  # Postfix answered
    subprocess.run([sys.executable, "-m", "relaywatch", "unblock", "45.95.169.23", "-c", str(cfg)],
                   capture_output=True)
