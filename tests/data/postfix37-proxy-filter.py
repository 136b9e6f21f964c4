"""Writes tests/data/postfix37-proxy-filter.log: a real Postfix (tests/support/postfix_rig.py) with a before-queue
filter, relay restrictions and hostile envelopes. Run as root from the worktree; the log goes to stdout."""

import smtplib
import subprocess
import sys
import time
from pathlib import Path

sys.path[:0] = ["tests", "."]
from support import postfix_rig as pr  # noqa: E402 - after the sys.path line

rig = pr.PostfixRig.start()
try:
    etc = Path(rig.config_directory)
    front, filt, strict, deferp = pr.free_port(), pr.free_port(), pr.free_port(), pr.free_port()
    mc = (etc / "master.cf").read_text()
    mc += f"""127.0.0.1:{front} inet n - n - - smtpd
  -o smtpd_proxy_filter=127.0.0.1:{filt}
  -o smtpd_client_connection_count_limit=0
127.0.0.1:{filt} inet n - n - - smtpd
  -o syslog_name=postfix/{filt}
  -o smtpd_authorized_xforward_hosts=
  -o mynetworks=127.0.0.0/8
127.0.0.1:{strict} inet n - n - - smtpd
  -o mynetworks=127.0.0.1/32
  -o smtpd_helo_restrictions=check_helo_access,inline:{{{{evil.helo=REJECT}}}}
  -o smtpd_sender_restrictions=check_sender_access,inline:{{{{evil.example=REJECT}}}}
  -o smtpd_recipient_restrictions=check_recipient_access,inline:{{{{trap.example=REJECT}}}}
127.0.0.1:{deferp} inet n - n - - smtpd
  -o syslog_name=postfix-out/smtpd
  -o mynetworks=127.0.0.1/32
  -o smtpd_relay_restrictions=permit_mynetworks,defer_unauth_destination
"""
    (etc / "master.cf").write_text(mc)
    mcf = (etc/"main.cf").read_text().replace("mydestination =", "mydestination = local.example")
    mcf += "smtpd_helo_required = no\n"
    (etc/"main.cf").write_text(mcf)
    subprocess.run([pr.POSTFIX, "-c", rig.config_directory, "reload"], check=True)
    time.sleep(2)
    def sess(port, src, helo, sender, rcpts, data=False, xclient=None):
        with smtplib.SMTP("127.0.0.1", port, source_address=(src, 0), timeout=30) as s:
            s.ehlo(helo)
            if xclient:
                s.docmd("XCLIENT", xclient)
                s.ehlo(helo)
            s.mail(sender)
            ok = False
            for r in rcpts:
                c = s.rcpt(r)
                ok = ok or c[0] == 250
            if data and ok:
                s.data("Subject: t\r\n\r\nhi\r\n")
    sess(front, "127.0.0.7", "front.client.test", "alice@example.net", ["bob@far.example"], data=True)
    sess(front, "127.0.0.7", "front.client.test", "", ["bob@far.example", "carol@far2.example"], data=True)
    sess(front, "127.0.0.7", "front.client.test", "carol@example.net", ["dave@far.example"], data=True, xclient="ADDR=2001:4860:4860::8888 NAME=[UNAVAILABLE] LOGIN=carol")
    sess(strict, "127.0.0.9", "probe.test", "spam@example.net", ["victim@far.example"])
    sess(strict, "127.0.0.9", "probe.test", "", ['"odd local"@far.example'])
    sess(strict, "127.0.0.9", "x>: Relay access denied; from=<a@b> to=<x> proto=ESMTP helo=<y", "spam@example.net", ["victim@far.example"])
    sess(strict, "127.0.0.9", "probe.test", '"x>: Relay access denied;"@evil.example', ["postmaster@local.example"])
    sess(strict, "127.0.0.9", "probe.test", "a@b.example", ['"x>: Relay access denied; from=<a@b.example> to=<x"@trap.example'])
    sess(strict, "127.0.0.9", "evil.helo", "a@b.example", ['postmaster@local.example'])
    sess(deferp, "127.0.0.9", "probe.test", "spam@example.net", ["victim@far.example"])
    time.sleep(3)
    sys.stdout.write(rig.maillog.read_text())
finally:
    rig.stop()
