"""The inline policy service against a real Postfix: `check_policy_service` ahead of
`permit_mynetworks` in smtpd_recipient_restrictions, answered by a real `relaywatch run`.

One story in order (one Postfix, one state database): a flood in long sessions from a client
that never relayed, a known relayer beside it, a block that bites in a session already open,
relaywatch killed with SIGKILL while mail flows (Postfix keeps accepting; the map still refuses
the blocked client), and a restarted relaywatch answering from the same state again.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relaywatch.store.relayers import RelayHistory
from relaywatch.store.sqlite import Store
from support.configs import rig_sections, write_config
from support.postfix_rig import POSTFIX, REMOTE_RCPT, PostfixRig, free_port
from support.waiting import wait_for

pytestmark = pytest.mark.postfix

# The exact settings README "Stopping it inline" gives (Postfix 3.0+ per-service form).
RESTRICTIONS = ("check_policy_service {{ inet:127.0.0.1:{port}, default_action=DUNNO, timeout=2s, try_limit=1 }},"
                " permit_mynetworks, reject_unauth_destination")


def relaywatch(*args: str, cfg: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relaywatch", *args, "-c", str(cfg)], capture_output=True,
                          text=True, timeout=60)


def start(cfg: Path, err: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)],
                            stderr=open(err, "ab"), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    before = err.read_text().count("policy service listening")
    while err.read_text().count("policy service listening") == before:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(err.read_text())
        time.sleep(0.05)
    return proc


def configure(rig: PostfixRig, port: int) -> None:
    # smtpd_error_sleep_time: Postfix's tarpit (1 s per refusal past the 10th) would only make this slow
    subprocess.run(["postconf", "-c", rig.config_directory, "-e",
                    f"smtpd_recipient_restrictions = {RESTRICTIONS.format(port=port)}",
                    "smtpd_error_sleep_time = 0"], check=True)
    past = time.time() - 60  # see PostfixRig._start: a fresh main.cf makes Postfix commands wait
    os.utime(Path(rig.config_directory) / "main.cf", (past, past))
    old = rig.smtpd_pids()
    subprocess.run([POSTFIX, "-c", rig.config_directory, "reload"], capture_output=True, check=True, timeout=60)
    rig.wait_for_exit(old)


class Session:
    """A long SMTP session: many messages, one recipient each; refusals are returned, not raised.
    Postfix hangs up after smtpd_hard_error_limit (20) refusals: then it reconnects, as a flooder does."""

    def __init__(self, rig: PostfixRig, source_ip: str) -> None:
        self.rig, self.source_ip = rig, source_ip
        self.connects = 0
        self._connect()

    def _connect(self) -> None:
        self.smtp = smtplib.SMTP("127.0.0.1", self.rig.port, source_address=(self.source_ip, 0), timeout=30)
        self.smtp.ehlo("client.relaywatch.test")
        self.connects += 1

    def message(self, rcpt: str = REMOTE_RCPT) -> tuple[int, str]:
        try:
            return self._message(rcpt)
        except smtplib.SMTPServerDisconnected:
            self._connect()
            return self._message(rcpt)

    def _message(self, rcpt: str) -> tuple[int, str]:
        """The RCPT reply when refused, else DATA's."""
        self.smtp.mail("journeypark@hananet.example")
        code, msg = self.smtp.rcpt(rcpt)
        if code >= 400:
            self.smtp.rset()
            return code, msg.decode()
        code, msg = self.smtp.data("Subject: relaywatch test\r\n\r\nhello\r\n")
        return code, msg.decode()

    def close(self) -> None:
        try:
            self.smtp.quit()
        except smtplib.SMTPException:
            self.smtp.close()


def daemon_meta(db: Path) -> dict:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT value FROM meta WHERE key = 'daemon'").fetchone()
    return json.loads(row[0]) if row else {}




def test_the_service_stops_a_flood_in_open_sessions_and_fails_open(postfix_instance, tmp_path):
    rig = postfix_instance
    port = free_port()
    configure(rig, port)
    db, cfg, err = tmp_path / "state.db", tmp_path / "rw.toml", tmp_path / "daemon.err"
    # listed as known relayers: a block must still beat that, and they keep sending
    write_config(cfg, rig_sections(rig, tmp_path, database=db),
                 {"policy": {"listen": f"127.0.0.1:{port}", "known": ["127.0.0.30", "127.0.0.40", "127.0.0.50"]}})
    db.parent.chmod(0o700)
    Store(str(db)).close()  # relaywatch's own database (the daemon refuses one it did not make)
    history = RelayHistory(db)  # 127.0.0.20 relayed yesterday: a known relayer
    history.saw("127.0.0.20", time.time() - 86400)
    history.flush()
    history.close()
    err.write_text("")
    proc = start(cfg, err)
    try:
        # A client that never relayed floods in long sessions: 10 get through, in all.
        flood, known = Session(rig, "127.0.0.9"), Session(rig, "127.0.0.20")
        replies = [flood.message(f"victim{i}@hanmail.example") for i in range(200)]
        accepted = sum(code == 250 for code, _ in replies)
        assert accepted == 10, replies[:12]
        assert all(code == 450 and "4.7.1" in text and "relaywatch" in text for code, text in replies[10:])
        # the known relayer, in its own long session meanwhile, is not held to the budget
        assert [known.message(f"friend{i}@hanmail.example")[0] for i in range(30)] == [250] * 30
        known.close()
        # the usual decision and notice: stored, with the evidence
        wait_for(lambda: "ALERT client 127.0.0.9" in err.read_text(), what="the alert")
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT target, rule, count, evidence FROM decisions WHERE rule = 'inline_budget'"
                                ).fetchall()
        assert [(t, r, n) for t, r, n, _ in rows] == [("127.0.0.9", "inline_budget", 10)]
        assert "victim10@hanmail.example" in rows[0][3] and "over budget" in rows[0][3]
        wait_for(lambda: (daemon_meta(db).get("policy") or {}).get("answered", 0) >= 230, what="the status")

        # A block bites in a session that is already open, at its next RCPT.
        victim = Session(rig, "127.0.0.30")
        assert victim.message()[0] == 250
        done = relaywatch("block", "127.0.0.30", "--reason", "test", cfg=cfg)
        assert done.returncode == 0, done.stderr
        code, text = wait_for(lambda: r if (r := victim.message())[0] != 250 else None, 10, "the block")
        assert code == 554 and "relaywatch: client blocked" in text
        victim.close()
        flood.close()

        # SIGKILL while mail flows: Postfix goes on accepting (default_action=DUNNO), the map
        # still refuses the blocked client's new sessions.
        flowing = Session(rig, "127.0.0.40")
        assert flowing.message()[0] == 250
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert [flowing.message(f"after{i}@hanmail.example")[0] for i in range(15)] == [250] * 15
        assert rig.send("127.0.0.41", recipients=("x@hanmail.example",))[0] == 250
        assert rig.send("127.0.0.30")[0] == 554

        # Blocked while relaywatch was down, in a session open since then: the restarted
        # service refuses its next RCPT, and the flooder's budget is still spent.
        late = Session(rig, "127.0.0.50")
        assert late.message()[0] == 250
        assert relaywatch("block", "127.0.0.50", cfg=cfg).returncode == 0
        proc = start(cfg, err)
        code, text = late.message()
        assert code == 554 and "relaywatch" in text
        late.close()
        again = Session(rig, "127.0.0.9")
        assert again.message("one-more@hanmail.example")[0] == 450
        again.close()
        flowing.close()
        maillog = rig.maillog.read_text()
        assert "problem talking to server 127.0.0.1:" in maillog  # Postfix asked the dead service...
        assert "fatal" not in maillog and "unknown attribute" not in maillog  # ...and took the settings
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
