"""The daemon as a real process: exactly-once across SIGKILL, signals, status, and a real Postfix flood."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from relaywatch.config import load
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.engine import Pipeline
from relaywatch.store.sqlite import Store
from support.configs import daemon_sections, rig_sections, sections, write_config
from support.waiting import wait_for

ROOT = Path(__file__).parent.parent


def start(cfg: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)],
                            stderr=open(log, "ab"), stdout=subprocess.DEVNULL)




def position(db: Path, source: str) -> dict | None:
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db) as conn:
            row = conn.execute("SELECT value FROM positions WHERE source = ?", [source]).fetchone()
    except sqlite3.OperationalError:
        return None
    return json.loads(row[0]) if row else None


def counts(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT dim, bucket, key, n FROM counts ORDER BY 1, 2, 3").fetchall()


@pytest.fixture(scope="module")
def day(tmp_path_factory) -> list[bytes]:
    path = tmp_path_factory.mktemp("day") / "day.log"
    subprocess.run([sys.executable, str(ROOT / "bench" / "gen_day.py"), "--profile", "seed-day", "--format",
                    "rfc3339", "--out", str(path)], check=True, stdout=subprocess.DEVNULL)
    return path.read_bytes().splitlines(keepends=True)


def test_sigkill_at_any_moment_loses_and_repeats_nothing(tmp_path, day):
    maillog, db = tmp_path / "mail.log", tmp_path / "state.db"
    maillog.write_bytes(b"")
    # a day-long window keeps the daemon from pruning any of the day's counts
    daily = {"rules.daily": {"dim": "client", "action": "alert", "threshold": 100000, "window": "1d"}}
    cfg = write_config(tmp_path / "rw.toml", daemon_sections(tmp_path), daily)
    rng = random.Random(7)
    data = b"".join(day)
    cut, kills = 0, 0
    proc = start(cfg, tmp_path / "daemon.err")
    try:
        wait_for(lambda: position(db, f"file:{maillog}"), what="the first position")
        while cut < len(data):
            step = rng.randrange(1, 200_000)
            with open(maillog, "ab") as f:
                f.write(data[cut:cut + step])  # often ends inside a line: the daemon must wait for its end
            cut += step
            time.sleep(rng.random() * 0.3)
            if rng.random() < 0.5:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                kills += 1
                proc = start(cfg, tmp_path / "daemon.err")
        wait_for(lambda: (position(db, f"file:{maillog}") or {}).get("offset") == len(data), 60, "the end of the log")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert kills >= 3

    replayed = Store(tmp_path / "replay.db")
    pipeline = Pipeline(load(cfg), replayed)
    parser = LineParser(YearResolver(2003))
    for line in data.decode().splitlines():
        pipeline.feed(line, parser)
    pipeline.flush()
    replayed.close()
    assert counts(db) == counts(tmp_path / "replay.db")
    # every relayed recipient once: under its client address, or its SASL login when authenticated
    assert sum(n for dim, _, _, n in counts(db) if dim in ("client", "sasl_user")) == 2700


def test_sighup_with_a_broken_config_keeps_the_old_one_and_sigterm_exits_0(tmp_path):
    maillog, db = tmp_path / "mail.log", tmp_path / "state.db"
    maillog.write_text("")
    cfg = tmp_path / "rw.toml"
    write_config(cfg, sections(maillog=maillog, database=db, config_directory=tmp_path,
                               client_access_map=f"hash:{tmp_path}/c"))
    good = cfg.read_text()
    err = tmp_path / "daemon.err"
    proc = start(cfg, err)
    try:
        wait_for(lambda: "following file:" in err.read_text(), what="the daemon to start")
        cfg.write_text(good + "[rules.client]\nthreshold = 0\n")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "keeping the old configuration" in err.read_text(), what="the reload to be refused")
        assert "[rules.client] threshold" in err.read_text()
        cfg.write_text(good)
        status = subprocess.run([sys.executable, "-m", "relaywatch", "status", "--json", "-c", str(cfg)],
                                capture_output=True, text=True, check=True)
        info = json.loads(status.stdout)
        assert info["running"] and info["pid"] == proc.pid and info["source"] == f"file:{maillog}"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = subprocess.run([sys.executable, "-m", "relaywatch", "status", "--json", "-c", str(cfg)],
                             capture_output=True, text=True)
    assert stopped.returncode == 3 and not json.loads(stopped.stdout)["running"]  # LSB: not running


def test_a_bad_config_exits_78(tmp_path):
    cfg = tmp_path / "rw.toml"
    cfg.write_text("[source]\npath = 3\n")
    done = subprocess.run([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)], capture_output=True, text=True)
    assert done.returncode == 78 and "[source] path" in done.stderr


@pytest.mark.postfix
def test_a_relay_flood_against_a_real_postfix_is_refused_within_seconds(postfix_instance, tmp_path):
    db = tmp_path / "state.db"
    cfg = write_config(tmp_path / "rw.toml", rig_sections(postfix_instance, tmp_path, database=db))
    err = tmp_path / "daemon.err"
    proc = start(cfg, err)
    try:
        wait_for(lambda: "following file:" in err.read_text(), what="the daemon to start")
        refused_at = None
        started = time.monotonic()
        for i in range(400):  # 20 messages a second, each in a new session, as a flood would
            code, _ = postfix_instance.send("127.0.0.9", recipients=[f"victim{i}@hanmail.example"])
            if code == 554:
                refused_at = time.monotonic() - started
                break
            time.sleep(0.05)
        assert refused_at is not None, err.read_text()
        assert postfix_instance.send("127.0.0.10")[0] == 250
        assert "BLOCK client 127.0.0.9" in err.read_text()
        listed = subprocess.run([sys.executable, "-m", "relaywatch", "blocks", "--json", "-c", str(cfg)],
                                capture_output=True, text=True, check=True)
        assert [b["target"] for b in json.loads(listed.stdout)["blocks"]] == ["127.0.0.9"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run([sys.executable, "-m", "relaywatch", "unblock", "127.0.0.9", "-c", str(cfg)],
                       capture_output=True)
    print(f"refused {refused_at:.1f} s after the flood began")
