"""`relaywatch status` and the daemon's choice of source (issue 16 items 5 and 8): a real store,
a real daemon process, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaywatch.cli import main
from relaywatch.sources.choose import Lag, Reason, choose, describe_position, lag
from relaywatch.store.records import DaemonStatus
from relaywatch.store.sqlite import Store
from support.configs import sections, write_config
from support.waiting import wait_for

LINE = ("2026-11-27T23:06:12.123456+00:00 mx postfix/smtpd[1]: 8D076AE17: client=unknown[203.0.113.5]\n")


def status(cfg: Path, *args: str):
    return CliRunner().invoke(main, ["status", "-c", str(cfg), *args], catch_exceptions=False)


def daemon(cfg: Path, err: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)],
                            stderr=open(err, "ab"), stdout=subprocess.DEVNULL)




def config(tmp_path: Path, source: str | None) -> Path:
    cfg = tmp_path / "rw.toml"
    cfg.write_text((f'[source]\npath = "{source}"\n' if source else "")
                   + f'[state]\ndatabase = "{tmp_path}/state.db"\n'
                   f'[postfix]\nconfig_directory = "{tmp_path}"\nclient_access_map = "hash:{tmp_path}/c"\n'
                   'sasl_access_map = ""\n')
    return cfg


def test_the_choice_of_source():
    assert choose("/var/log/mail.log", explicit=False, exists=True).reason is Reason.CONFIGURED
    fallback = choose("/var/log/mail.log", explicit=False, exists=False)
    assert fallback.path == "journal" and "following the systemd journal instead" in fallback.note
    waiting = choose("/var/log/mail.log", explicit=True, exists=False)
    assert waiting.path == "/var/log/mail.log" and "nothing is read until it appears" in waiting.note
    assert choose("journal", explicit=True, exists=False).reason is Reason.CONFIGURED


def test_positions_read_like_positions():
    cursor = "s=0123456789abcdef0123456789abcdef;i=1f3a;b=9d8c7b6a5f4e3d2c1b0a;m=12ab;t=5f1e2d3c4b5a6;x=deadbeefcafe"
    assert describe_position("journal", {"cursor": cursor}) == "journal cursor s=01234567;i=1f3a;t=5f1e2d3c"
    assert describe_position("file:/var/log/mail.log", {"device": 1, "inode": 42, "offset": 123456, "head": "x"}) \
        == "/var/log/mail.log, offset 123,456 (inode 42)"
    assert "not opened yet" in describe_position("file:/x", {"inode": None, "offset": 0})


def test_lag_is_how_far_behind_the_reader_is(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text(LINE * 10)
    st = log.stat()
    at = {"device": st.st_dev, "inode": st.st_ino, "offset": len(LINE) * 4, "head": None}
    assert lag(f"file:{log}", at, caught_up=False, last_log_time=0, now=1e9) == Lag(unread_bytes=len(LINE) * 6)
    # the time since the last log line is not the lag: a quiet log read to its end is caught up
    assert lag("journal", {"cursor": "s=1"}, caught_up=True, last_log_time=0, now=1e9).text() == "caught up"
    assert lag("journal", {"cursor": "s=1"}, caught_up=False, last_log_time=1e9 - 42, now=1e9).behind_s == 42


def test_status_exit_codes_follow_the_lsb(tmp_path):
    cfg = config(tmp_path, str(tmp_path / "mail.log"))
    assert status(cfg).exit_code == 4  # no state: unknown
    store = Store(tmp_path / "state.db")
    store.status.put(DaemonStatus(pid=None, source=f"file:{tmp_path}/mail.log", stopped=time.time()))
    assert status(cfg).exit_code == 3  # not running (it was 0 before)
    store.status.put(DaemonStatus(pid=os.getpid(), heartbeat=time.time(), source="journal", caught_up=True,
                                  last_line_at=time.time() - 5))
    store.commit_batch([], [], ("journal", {"cursor": "s=abcdef0123456789;i=99;b=00;t=5f1e2d3c4b5a6"}))
    result = status(cfg)
    assert result.exit_code == 0
    assert "reading journal cursor s=abcdef01;i=99;t=5f1e2d3c" in result.output
    assert "caught up" in result.output and "last line read 5 s ago" in result.output
    assert '{"cursor"' not in result.output  # no raw JSON position any more
    store.close()


def test_an_explicit_file_that_does_not_exist_is_waited_for_and_status_says_so(tmp_path):
    maillog = tmp_path / "mail.log"
    cfg = config(tmp_path, str(maillog))
    err = tmp_path / "daemon.err"
    proc = daemon(cfg, err)
    try:
        wait_for(lambda: "nothing is read until it appears" in err.read_text(), what="the warning")
        wait_for(lambda: status(cfg).exit_code == 0, what="a heartbeat")
        text = status(cfg).output
        assert "not opened yet (it does not exist)" in text and "nothing is read until it appears" in text
        assert "no line read yet" in text
        maillog.write_text(LINE * 3)
        info = wait_for(lambda: (i := json.loads(status(cfg, "--json").output))["lines"] == 3 and i["lag_bytes"] == 0
                        and i, what="the lines to be read")
        assert info["source"] == f"file:{maillog}" and "last line read" in info["arriving"]
        assert info["lag_text"] == "caught up"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert status(cfg).exit_code == 3


@pytest.mark.skipif(os.path.exists("/var/log/mail.log"), reason="this host has /var/log/mail.log")
def test_without_mail_log_the_default_source_falls_back_to_the_journal(tmp_path):
    cfg = config(tmp_path, None)  # [source] path not set: the default /var/log/mail.log
    err = tmp_path / "daemon.err"
    readable = subprocess.run(["journalctl", "-m", "-n", "1", "-o", "verbose"], capture_output=True, text=True)
    journal = readable.returncode == 0 and "No journal files" not in readable.stderr + readable.stdout
    proc = daemon(cfg, err)
    try:
        wait_for(lambda: "/var/log/mail.log does not exist" in err.read_text(), what="the fallback")
        assert "following the systemd journal instead" in err.read_text()
        if journal:  # a host with a journal: it is followed, and status says so
            info = wait_for(lambda: status(cfg, "--json").exit_code == 0 and json.loads(status(cfg, "--json").output),
                            what="a heartbeat")
            assert info["source"] == "journal" and "journal instead" in info["source_note"]
            proc.send_signal(signal.SIGTERM)
        # neither a mail log nor a journal (this machine): a clear refusal, not a silent idle watch
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    if not journal:
        assert code == 78
        text = err.read_text()
        assert "[source] path: /var/log/mail.log does not exist and the journal cannot be read" in text
        assert text.count("journal cannot be read") == 1 and text.count("set [source] path to Postfix's log") == 1, text


def test_audit_says_what_is_read_and_whether_lines_arrive(tmp_path):
    import shutil

    conf = tmp_path / "postfix"
    conf.mkdir()
    shutil.copy("/usr/share/postfix/master.cf.dist", conf / "master.cf")
    (conf / "main.cf").write_text("compatibility_level = 3.6\nmynetworks = 127.0.0.0/8\n"
                                  f"smtpd_client_restrictions = check_client_access hash:{conf}/c, permit_mynetworks\n")
    os.utime(conf / "main.cf", (1_000_000_000, 1_000_000_000))
    cfg = tmp_path / "rw.toml"
    missing = tmp_path / "mail.log"
    write_config(cfg, sections(maillog=missing, database=f"{tmp_path}/s.db", config_directory=conf,
                               client_access_map=f"hash:{conf}/c"))
    doc = json.loads(CliRunner().invoke(main, ["audit", "--format", "json", "-c", str(cfg)]).output)
    [source] = [f for f in doc["findings"] if f["code"] == "source"]
    assert source["severity"] == "warning" and source["title"] == (
        f"relaywatch reads {missing}: the daemon is not running")
    assert "nothing is read until it appears" in source["explanation"]
    store = Store(tmp_path / "s.db")
    store.status.put(DaemonStatus(pid=os.getpid(), heartbeat=time.time(), source="journal",
                                  last_line_at=time.time() - 3 * 3600))
    store.close()
    cfg.write_text(cfg.read_text().replace(f'[source]\npath = "{missing}"\n', ""))  # the default, missing here
    if os.path.exists("/var/log/mail.log"):
        return
    text = CliRunner().invoke(main, ["audit", "-c", str(cfg)]).output
    assert ("WARNING source: relaywatch reads the systemd journal: last line read 3.0 h ago (is Postfix logging "
            "here?)") in text


def test_a_restarted_daemon_does_not_resend_an_unchanged_audit_and_a_block_does_not_wait(tmp_path, sink):
    """Issue 16 item 3, through the daemon and its store: the start-up audit notice is sent once across
    restarts, and a block right after it goes out at once (it waited for the audit's 5 min cooldown)."""
    import shutil

    from relaywatch import config as config_mod
    from relaywatch.daemon import Daemon
    from relaywatch.model import Decision
    from relaywatch.respond.responder import Outcome

    conf = tmp_path / "postfix"
    conf.mkdir()
    shutil.copy("/usr/share/postfix/master.cf.dist", conf / "master.cf")
    (conf / "main.cf").write_text("compatibility_level = 3.6\nmynetworks = 127.0.0.0/8, 218.0.0.0/8\n"
                                  f"smtpd_client_restrictions = permit_mynetworks, check_client_access hash:{conf}/c\n"
                                  "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n")
    os.utime(conf / "main.cf", (1_000_000_000, 1_000_000_000))
    maillog = tmp_path / "mail.log"
    maillog.write_text("")
    cfg_path = tmp_path / "rw.toml"
    write_config(cfg_path, sections(maillog=maillog, database=f"{tmp_path}/s.db", config_directory=conf,
                                    client_access_map=f"hash:{conf}/c", allow_networks=[]),
                 {"notify": {"urls": [sink.url("json", "/phone")], "coalesce": "1s", "cooldown": "5m"}}, mode=0o600)
    cfg = config_mod.load(cfg_path)
    first = Daemon(str(cfg_path), cfg)
    try:
        first.responder.audit()
        [audit] = sink.wait_for("/phone", 1)
        assert "hole(s) in Postfix" in audit["title"]
        first.responder.follow_up([Outcome(Decision(time.time(), "block", "client", "203.0.113.5", "client", 60, 600),
                                           "60 relayed recipients in 10 min (rule client)")])
        block = sink.wait_for("/phone", 2, timeout=10)[1]
        assert "blocked 203.0.113.5" in block["title"]
    finally:
        first.close()
    again = Daemon(str(cfg_path), cfg)  # a restart (or SIGHUP: the same audit)
    try:
        again.responder.audit()
        time.sleep(1.5)
    finally:
        again.close()
    assert len(sink.to("/phone")) == 2
