"""Never say a block is in force unless it is (issue 13 items 1, 2, 8).

The daemon runs as a real process against a private running Postfix; its notices go to a
real HTTP endpoint (the `sink` fixture). Each test makes the block fail to take effect the
way the issue found it (a read-only map directory, main.cf switched to permit_mynetworks
first while the daemon runs, the map rewritten behind the daemon's back) and checks what
the admin is told, what `relaywatch blocks` and `status` say, and that the daemon recovers.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaywatch.core.enforcement import LeakWatch
from relaywatch.postfix.mapguard import BEGIN, END
from support.configs import rig_sections, write_config
from support.facts import relayed
from support.postfix_rig import POSTFIX, POSTMAP, PostfixRig
from support.waiting import wait_for
from test_daemon import start

FLOODER = "127.0.0.9"


def rig_config(tmp_path: Path, rig: PostfixRig, sink, client_map: str, postfix: dict | None = None) -> Path:
    """The rig's daemon blocking into `client_map`, notifying `sink`, clients blocked at 10."""
    return write_config(tmp_path / "rw.toml", rig_sections(rig, tmp_path, client_access_map=client_map),
                        {"postfix": postfix or {},
                         "notify": {"urls": [sink.url("json", "/push")], "coalesce": "1s", "cooldown": "1s"},
                         "rules.client": {"threshold": 10}}, mode=0o600)


def told(sink) -> str:
    """Everything the admin's phone received so far (coalesced notices arrive as one digest)."""
    return "\n".join(f"{p.get('title', '')}\n{p.get('message', '')}" for p in sink.to("/push"))


def cli(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "relaywatch", *args, "-c", str(cfg)], capture_output=True,
                          text=True, timeout=60)


def flood_until(rig: PostfixRig, err: Path, text: str, timeout: float = 60) -> int:
    """New sessions from FLOODER (as a flood would open them) until the daemon's log shows `text`."""
    deadline, sent = time.monotonic() + timeout, 0
    while text not in err.read_text():
        assert time.monotonic() < deadline, err.read_text()
        rig.send(FLOODER, recipients=(f"victim{sent}@hanmail.example",))
        sent += 1
        time.sleep(0.05)
    return sent


def postfix(rig: PostfixRig, *args: str) -> None:
    subprocess.run([POSTFIX, "-c", rig.config_directory, *args], capture_output=True, timeout=60, check=True)


def set_main_cf(rig: PostfixRig, line: str) -> None:
    subprocess.run(["postconf", "-c", rig.config_directory, "-e", line], check=True)
    past = time.time() - 60  # see PostfixRig._start: a fresh main.cf makes every Postfix command wait
    os.utime(Path(rig.config_directory) / "main.cf", (past, past))
    postfix(rig, "reload")
    time.sleep(0.5)


def refused(rig: PostfixRig, ip: str = FLOODER, timeout: float = 20) -> bool:
    """A new session from `ip` gets 554 within `timeout` (reload is asynchronous)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if rig.send(ip)[0] == 554:
            return True
        time.sleep(0.2)
    return False


@pytest.fixture
def daemon_proc() -> Iterator[list[subprocess.Popen]]:
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture
def ro_map_dir(tmp_path, postfix_instance) -> Iterator[Path]:
    """A map directory on its own tmpfs, so that it can be made read-only even for root."""
    mnt = tmp_path / "maps"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "relaywatch-maps", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    rig = postfix_instance
    (mnt / "reject_list").write_text("")
    subprocess.run([POSTMAP, "-c", rig.config_directory, f"hash:{mnt}/reject_list"], check=True)
    set_main_cf(rig, f"smtpd_client_restrictions = check_client_access hash:{mnt}/reject_list")
    try:
        yield mnt
    finally:
        set_main_cf(rig, f"smtpd_client_restrictions = check_client_access {rig.reject_list}")
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.postfix
def test_a_read_only_map_directory_is_reported_and_the_block_applied_once_it_is_fixed(
        postfix_instance, ro_map_dir, tmp_path, sink, daemon_proc):
    rig = postfix_instance
    cfg = rig_config(tmp_path, rig, sink, f"hash:{ro_map_dir}/reject_list",
                     postfix={"map_directories": [ro_map_dir]})
    err = tmp_path / "daemon.err"
    subprocess.run(["mount", "-o", "remount,ro", str(ro_map_dir)], check=True)
    daemon_proc.append(start(cfg, err))
    wait_for(lambda: "following file:" in err.read_text(), what="the daemon to start")
    flood_until(rig, err, f"BLOCK client {FLOODER}")

    sink.wait_for("/push", 1, timeout=20)
    wait_for(lambda: "blocks NOT in force" in told(sink), 20, "the fault notice")
    # the block's own notice is of another kind (its own cooldown): it may come as a push of its own
    wait_for(lambda: f"blocked {FLOODER} - NOT in force" in told(sink), 20, "the block notice")
    text = told(sink)
    assert "NOT IN FORCE: could not write" in text and "Read-only file system" in text
    assert "In force: the map holds it" not in text  # the old notice said "In effect" here
    assert rig.send(FLOODER)[0] == 250  # and that is the truth
    listed = json.loads(cli(cfg, "blocks", "--json").stdout)
    assert listed["pending"]["state"] == "not written"
    assert [(b["target"], b["in_map"]) for b in listed["blocks"]] == [(FLOODER, False)]

    # Several retries happen (1 s, 2 s, 4 s ...) but the fault is told once, not per retry.
    wait_for(lambda: err.read_text().count("blocks are not in force") >= 3, 20, "three failed attempts")
    subprocess.run(["mount", "-o", "remount,rw", str(ro_map_dir)], check=True)
    fixed = time.monotonic()
    assert refused(rig)
    in_force_s = time.monotonic() - fixed
    wait_for(lambda: "blocks in force again" in told(sink), 20, "the notice that the block is in force")
    assert told(sink).count("blocks NOT in force") == 1
    listed = json.loads(cli(cfg, "blocks", "--json").stdout)
    assert listed["pending"] is None and listed["blocks"][0]["in_map"] is True
    cli(cfg, "unblock", FLOODER)
    print(f"refused {in_force_s:.1f} s after the map directory became writable")


@pytest.mark.postfix
def test_a_block_postfix_stopped_enforcing_while_the_daemon_ran_is_an_alarm(postfix_instance, tmp_path, sink,
                                                                             daemon_proc):
    rig = postfix_instance
    cfg = rig_config(tmp_path, rig, sink, str(rig.reject_list))
    err = tmp_path / "daemon.err"
    daemon_proc.append(start(cfg, err))
    wait_for(lambda: "following file:" in err.read_text(), what="the daemon to start")
    # The admin's change while relaywatch runs: mynetworks (loopback here) is permitted first.
    set_main_cf(rig, f"smtpd_client_restrictions = permit_mynetworks, check_client_access {rig.reject_list}")
    try:
        flood_until(rig, err, f"BLOCK client {FLOODER}")
        wait_for(lambda: f"blocked {FLOODER}" in told(sink), 20, "the block notice")
        text = told(sink)
        assert f"blocked {FLOODER} - NOT enforced" in text and "permit_mynetworks" in text
        assert "In force: the map holds it" not in text

        # Whatever the configuration says, the log says the mail still goes through: an alarm.
        flood_until(rig, err, f"the block of client {FLOODER} is NOT enforced")
        wait_for(lambda: f"block of {FLOODER} NOT enforced" in told(sink), 20, "the alarm")
        assert "were queued after its block took effect" in told(sink)
        status = json.loads(cli(cfg, "status", "--json").stdout)
        [alarm] = status["not_enforced"]
        assert alarm["target"] == FLOODER and alarm["messages"] >= 3
        assert "NOT ENFORCED" in cli(cfg, "status").stdout
        with sqlite3.connect(tmp_path / "state.db") as conn:  # recorded for the digest and the report
            rows = conn.execute("SELECT target, count FROM decisions WHERE rule = 'block_not_enforced'").fetchall()
        assert [r[0] for r in rows] == [FLOODER] and rows[0][1] >= 3
    finally:
        set_main_cf(rig, f"smtpd_client_restrictions = check_client_access {rig.reject_list}")
        cli(cfg, "unblock", FLOODER)


@pytest.mark.postfix
def test_a_map_rewritten_behind_the_daemons_back_is_noticed_and_restored(postfix_instance, tmp_path, sink,
                                                                         daemon_proc):
    rig = postfix_instance
    path = Path(rig.reject_list.path)
    cfg = rig_config(tmp_path, rig, sink, str(rig.reject_list))
    assert cli(cfg, "block", FLOODER).returncode == 0
    assert refused(rig)

    def admin_rewrites() -> None:
        """The admin's editor drops relaywatch's lines; postmap and reload, as the admin would."""
        path.write_text(f"# edited by hand\n{BEGIN}\n{END}\n")
        subprocess.run([POSTMAP, "-c", rig.config_directory, str(rig.reject_list)], check=True)
        postfix(rig, "reload")

    try:
        admin_rewrites()
        assert not refused(rig, timeout=2)
        listed = cli(cfg, "blocks", "--json")
        assert [(b["target"], b["in_map"]) for b in json.loads(listed.stdout)["blocks"]] == [(FLOODER, False)]
        assert "NOT IN THE MAP" in cli(cfg, "blocks").stdout  # the old listing said it was in force

        err = tmp_path / "daemon.err"
        daemon_proc.append(start(cfg, err))
        wait_for(lambda: "following file:" in err.read_text(), what="the daemon to start")
        assert refused(rig)  # restored at start
        admin_rewrites()  # and again while it runs
        wait_for(lambda: "changed behind relaywatch's back" in told(sink), 20, "the notice")
        assert refused(rig)
        assert path.read_text().startswith("# edited by hand\n")  # the admin's own lines are kept
        assert json.loads(cli(cfg, "blocks", "--json").stdout)["blocks"][0]["in_map"] is True
    finally:
        cli(cfg, "unblock", FLOODER)


# --- the log check alone (pure) ------------------------------------------------------------------


def test_the_leak_watch_counts_mail_queued_after_the_grace_once_per_message():
    watch = LeakWatch(grace_s=5, min_leaked=3)
    watch.watch({("client", "203.0.113.9"): 1000.0, ("subnet", "198.51.100.0/24"): 1000.0,
                 ("sasl_user", "journeypark"): 1000.0})
    for i, t in enumerate((990, 1002, 1004)):  # before the block, or within a session opened before it
        watch.observe(relayed(t + 1, "203.0.113.9", qid=f"A{i}", queued=t))
    assert watch.take() == []
    for i in range(3):
        watch.observe(relayed(1006 + i + 1, "203.0.113.9", qid=f"B{i}", queued=1006 + i))
        # a second recipient: one message
        watch.observe(relayed(1006 + i + 1, "203.0.113.9", qid=f"B{i}", queued=1006 + i))
    watch.observe(relayed(1010 + 1, "198.51.100.7", qid="C1", queued=1010))
    watch.observe(relayed(1010 + 1, "192.0.2.1", qid="D1", queued=1010, sasl="journeypark"))
    [leak] = watch.take()
    assert (leak.kind, leak.target, leak.count, leak.new, leak.first, leak.last) == (
        "client", "203.0.113.9", 3, True, 1006, 1008)
    assert watch.take() == []  # nothing new
    watch.observe(relayed(1020 + 1, "203.0.113.9", qid="B9", queued=1020))
    [again] = watch.take()
    assert again.count == 4 and not again.new  # counted on, alarmed once
    watch.watch({})
    watch.observe(relayed(2000 + 1, "203.0.113.9", qid="E1", queued=2000))
    assert watch.take() == []
