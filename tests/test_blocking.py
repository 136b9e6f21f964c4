"""Blocking for real: the store, the CLI and a private running Postfix (tests/support/postfix_rig.py)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaywatch.cli import main
from relaywatch.postfix.commands import Postfix
from relaywatch.postfix.mapguard import BEGIN, END
from relaywatch.postfix.mapkeys import InvalidBlock
from relaywatch.respond.blocking import (
    MAX_BLOCK_S,
    Blocker,
    MapState,
    maps_from_config,
    target_kind,
)
from relaywatch.store.sqlite import Store
from support.configs import rig_sections, sections, write_config

pytestmark = pytest.mark.postfix

FLOOD = "\n".join(
    f"Mar 16 02:{i // 60:02d}:{i % 60:02d} zebra postfix/smtpd[1]: {0x8D076AE17 + i:X}: client=unknown[127.0.0.77]\n"
    f"Mar 16 02:{i // 60:02d}:{i % 60:02d} zebra postfix/qmgr[2]: {0x8D076AE17 + i:X}: from=<a@b.example>, size=1, nrcpt=1 (queue active)\n"
    f"Mar 16 02:{i // 60:02d}:{i % 60:02d} zebra postfix/smtp[3]: {0x8D076AE17 + i:X}: to=<u{i}@far.example>, relay=none, delay=1, status=deferred (connect to mx.far.example[192.0.2.1]: Connection refused)"
    for i in range(70)) + "\n"


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def rw(postfix_instance, tmp_path):
    """A relaywatch config for the private Postfix, with loopback blockable (it is allowlisted by default)."""
    cfg = write_config(tmp_path / "relaywatch.toml", rig_sections(postfix_instance, tmp_path, source=False))
    yield str(cfg)
    CliRunner().invoke(main, ["unblock", "127.0.0.9", "-c", str(cfg)])
    CliRunner().invoke(main, ["unblock", "127.0.0.77", "-c", str(cfg)])


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_block_refuses_new_sessions_and_unblock_restores(postfix_instance, rw):
    assert postfix_instance.send("127.0.0.9")[0] == 250
    result = run("block", "127.0.0.9", "--reason", "test", "-c", rw)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("blocked client 127.0.0.9 until ")
    assert "WARNING" not in result.output
    assert postfix_instance.send("127.0.0.9")[0] == 554
    assert postfix_instance.send("127.0.0.10")[0] == 250
    listed = json.loads(run("blocks", "--json", "-c", rw).output)
    assert listed["pending"] is None
    assert [(b["kind"], b["target"], b["rule"]) for b in listed["blocks"]] == [("client", "127.0.0.9", "manual")]
    assert run("unblock", "127.0.0.9", "-c", rw).output == "unblocked client 127.0.0.9\n"
    assert postfix_instance.send("127.0.0.9")[0] == 250


def test_a_subnet_block_refuses_every_client_inside(postfix_instance, rw):
    assert run("block", "127.0.9.0/24", "-c", rw).exit_code == 0
    try:
        assert "127.0.9 REJECT" in Path(postfix_instance.reject_list.path).read_text()
        assert postfix_instance.send("127.0.9.5")[0] == 554
        assert postfix_instance.send("127.0.9.200")[0] == 554
        assert postfix_instance.send("127.0.10.5")[0] == 250
    finally:
        run("unblock", "127.0.9.0/24", "-c", rw)
    assert postfix_instance.send("127.0.9.5")[0] == 250


def test_the_admins_own_entries_survive(postfix_instance, rw):
    path = Path(postfix_instance.reject_list.path)
    mine = "# my own\nhananet.net REJECT\n127.0.0.33 REJECT go away\n"  # then relaywatch's markers, by hand
    original = path.read_text() if path.exists() else ""
    path.write_text(mine + (original if BEGIN in original else f"{BEGIN}\n{END}\n"))
    try:
        assert run("block", "127.0.0.9", "-c", rw).exit_code == 0
        assert path.read_text().startswith(mine)
        assert postfix_instance.send("127.0.0.33")[0] == 554  # the admin's entry is in force too
        assert run("unblock", "127.0.0.9", "-c", rw).exit_code == 0
        assert path.read_text().startswith(mine)
    finally:
        path.write_text(path.read_text().replace(mine, ""))
        Postfix(postfix_instance.config_directory).postmap(postfix_instance.reject_list)


def test_replay_apply_blocks_what_the_replay_decided(postfix_instance, rw, tmp_path):
    log = tmp_path / "flood.log"
    log.write_text(FLOOD)
    result = run("replay", "--apply", "--year", "2003", "--format", "json", "-c", rw, str(log))
    assert result.exit_code == 0, result.output
    assert [d["target"] for d in json.loads(result.output)["decisions"] if d["action"] == "block"] == ["127.0.0.77"]
    assert postfix_instance.send("127.0.0.77")[0] == 554
    [row] = json.loads(run("blocks", "--json", "-c", rw).output)["blocks"]
    assert row["rule"] == "client" and "relayed recipients" in row["reason"]


def test_a_failing_postmap_keeps_the_old_map_and_the_block_pending(postfix_instance, rw, tmp_path):
    spec = postfix_instance.reject_list
    assert run("block", "127.0.0.9", "-c", rw).exit_code == 0
    before = (Path(spec.path).read_bytes(), Path(spec.compiled).read_bytes())
    # postmap must create the staged .db; a directory in its place makes the real postmap fail,
    # where a full disk or a read-only file system would.
    obstacle = Path(spec.path).with_name(f".{Path(spec.path).name}.relaywatch-new.db")
    obstacle.mkdir()
    try:
        result = CliRunner().invoke(main, ["block", "127.0.0.10", "-c", rw])
        assert result.exit_code == 1
        assert "pending" in result.output and "postmap" in result.output
        assert (Path(spec.path).read_bytes(), Path(spec.compiled).read_bytes()) == before
        assert postfix_instance.send("127.0.0.9")[0] == 554
        assert postfix_instance.send("127.0.0.10")[0] == 250
        assert "PENDING" in run("blocks", "-c", rw).output
    finally:
        obstacle.rmdir()
    assert run("unblock", "127.0.0.9", "-c", rw).exit_code == 0  # the next change retries the pending one
    assert postfix_instance.send("127.0.0.10")[0] == 554
    assert postfix_instance.send("127.0.0.9")[0] == 250
    assert run("unblock", "127.0.0.10", "-c", rw).exit_code == 0


def test_a_block_postfix_would_not_enforce_is_warned_about(tmp_path):
    conf = tmp_path / "postfix"
    conf.mkdir()
    (conf / "main.cf").write_text(
        "compatibility_level = 3.6\nmynetworks = 127.0.0.0/8, 218.0.0.0/8\n"
        f"smtpd_client_restrictions = permit_mynetworks, check_client_access hash:{conf}/reject_list\n"
        "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n")
    shutil.copy("/usr/share/postfix/master.cf.dist", conf / "master.cf")
    os.utime(conf / "main.cf", (1_000_000_000, 1_000_000_000))  # postconf waits for a main.cf this fresh
    cfg = write_config(tmp_path / "rw.toml", sections(database=tmp_path / "s.db", config_directory=conf,
                                                      client_access_map=f"hash:{conf}/reject_list"))
    result = CliRunner().invoke(main, ["block", "218.144.108.161", "-c", str(cfg)])
    assert "WARNING: Postfix will not enforce this block" in result.output
    assert "permit_mynetworks" in result.output


# --- the store side, with a fake clock -----------------------------------------------


def blocker(postfix_instance, tmp_path, clock) -> Blocker:
    maps = maps_from_config(str(postfix_instance.reject_list), "", "hash",
                            config_directory=postfix_instance.config_directory)
    return Blocker(Store(tmp_path / "state.db"), Postfix(postfix_instance.config_directory), maps, 3600, clock)


def test_blocks_expire_and_repeat_offenders_get_longer(postfix_instance, tmp_path):
    clock = Clock()
    b = blocker(postfix_instance, tmp_path, clock)
    first = b.block("client", "127.0.0.9", "flood", rule="client")
    assert first.until - first.since == 3600 and b.sync()
    assert postfix_instance.send("127.0.0.9")[0] == 554
    clock.now += 3601
    assert [x.target for x in b.expire()] == ["127.0.0.9"] and b.sync()
    assert postfix_instance.send("127.0.0.9")[0] == 250
    second = b.block("client", "127.0.0.9", "flood again", rule="client")
    assert second.until - second.since == 7200 and second.offences == 2
    again = b.block("client", "127.0.0.9", "still flooding", rule="client")
    assert again == second  # a block in force is not renewed by the detector
    for _ in range(12):
        b.unblock("client", "127.0.0.9")
        last = b.block("client", "127.0.0.9", "x", rule="client")
    assert last.until - last.since == MAX_BLOCK_S
    permanent = b.block("client", "127.0.0.9", "x", permanent=True)
    assert permanent.until is None
    b.unblock("client", "127.0.0.9")
    assert b.sync()


def test_nothing_unvalidated_reaches_the_map(postfix_instance, tmp_path):
    b = blocker(postfix_instance, tmp_path, Clock())
    for kind, target in [("client", "client=unknown[8.8.8.8]"), ("subnet", "0.0.0.0/0"),
                         ("client", "1.2.3.4 OK"), ("subnet", "10.1.2.0/23")]:
        with pytest.raises(InvalidBlock):
            b.block(kind, target, "x")
    assert b.store.blocks() == []
    with pytest.raises(Exception, match="sasl_access_map"):
        b.block("sasl_user", "alice", "x")


@pytest.mark.parametrize("text, expected", [
    ("203.0.113.5", ("client", "203.0.113.5")), ("2001:DB8::1", ("client", "2001:db8::1")),
    ("218.144.0.0/16", ("subnet", "218.144.0.0/16")), ("alice@woodelf.org", ("sasl_user", "alice@woodelf.org"))])
def test_target_kind(text, expected):
    assert target_kind(text) == expected


def test_a_network_with_host_bits_is_refused():
    with pytest.raises(InvalidBlock, match="not a network"):
        target_kind("218.144.1.1/16")


def test_a_map_directory_others_can_write_is_refused(tmp_path):
    from relaywatch.model import ConfigError

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="map directory"):
        maps_from_config(f"hash:{shared}/clients", "", "hash", config_directory=None, map_directories=[str(shared)])


def test_unblocks_and_expiries_are_remembered_for_the_report(postfix_instance, tmp_path):
    clock = Clock()
    b = blocker(postfix_instance, tmp_path, clock)
    b.block("client", "127.0.0.9", "flood", rule="client")
    b.block("client", "127.0.0.11", "flood", rule="client")
    clock.now += 60
    b.unblock("client", "127.0.0.9")
    clock.now += 3600
    b.expire()
    lifted = [(d.time - 1_000_000, d.target, d.rule) for d in b.store.decisions() if d.action == "unblock"]
    assert lifted == [(60, "127.0.0.9", "manual"), (3600, "127.0.0.11", "expired")]
    assert b.sync()


def test_off_the_loop_a_hash_block_is_in_force_without_the_reload_and_a_failed_reload_is_retried_in_line(
        postfix_instance, tmp_path):
    """The daemon's blocker reloads Postfix in a thread of its own: the block is in force once postmap
    replaced the map (postmap -q answers it, smtpd reopens a changed map before its next session).
    A reload that fails there makes the blocker due; that sync reloads in line and reports the fault."""
    fake = tmp_path / "postfix"
    fake.write_text("#!/bin/sh\necho 'postfix: fatal: reload refused for the test' >&2\nexit 1\n")
    fake.chmod(0o755)
    clock = Clock()
    b = blocker(postfix_instance, tmp_path, clock)
    b.postfix = Postfix(postfix_instance.config_directory, postfix_bin=str(fake))
    b.reload_off_loop = True
    b.block("client", "127.0.0.9", "flood", rule="client")
    assert b.sync()  # in force: the reload's outcome is not waited for
    assert postfix_instance.send("127.0.0.9")[0] == 554
    assert not b.pending
    b.close()
    assert b.due()
    failed = b.sync()
    assert failed.state is MapState.NOT_LOADED and failed.fault_began and "reload refused for the test" in failed.error
    assert b.pending and b.last_error
    b.postfix = Postfix(postfix_instance.config_directory)
    clock.now += 2
    assert b.due() and b.sync() and not b.pending
    b.unblock("client", "127.0.0.9")
    assert b.sync()
    b.close()
    assert not b.due()


def test_a_reload_that_fails_off_the_loop_at_shutdown_is_said_and_left_pending_for_the_next_start(
        postfix_instance, tmp_path, caplog):
    """The daemon closes its blocker on SIGTERM and SIGHUP: a reload failing in its thread just then
    was dropped (nothing logged, nothing pending in the store, so the next start did not reload)."""
    fake = tmp_path / "postfix"
    fake.write_text("#!/bin/sh\necho 'postfix: fatal: reload refused for the test' >&2\nexit 1\n")
    fake.chmod(0o755)
    b = blocker(postfix_instance, tmp_path, Clock())
    b.postfix = Postfix(postfix_instance.config_directory, postfix_bin=str(fake))
    b.reload_off_loop = True
    b.block("client", "127.0.0.9", "flood", rule="client")
    assert b.sync() and not b.pending
    with caplog.at_level(logging.WARNING, logger="relaywatch"):
        b.close()
    assert "reload refused for the test" in caplog.text
    assert blocker(postfix_instance, tmp_path, Clock()).pending  # the next start writes and reloads again
