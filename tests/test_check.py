"""`relaywatch block` and `relaywatch check` (issue 16 items 6, 7, 12) against a private running Postfix."""

from __future__ import annotations

import json
import os
import shutil
import time
from datetime import date

import pytest
from click.testing import CliRunner

from relaywatch.cli import main
from relaywatch.reports.digest import DayStats
from relaywatch.store.sqlite import Store
from support.configs import sections, write_config

pytestmark = pytest.mark.postfix


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def rw(postfix_instance, tmp_path):
    """A config for the private Postfix with the default [allow] (loopback): the rig's clients are all
    loopback, so blocking them takes --force, which is what an admin testing on loopback would do."""
    cfg = write_config(tmp_path / "relaywatch.toml",
                       sections(database=tmp_path / "state.db", config_directory=postfix_instance.config_directory,
                                client_access_map=postfix_instance.reject_list, sasl_access_map=f"hash:{tmp_path}/sasl",
                                map_directories=[tmp_path]),
                       {"allow": {"sasl_users": ["backup-robot"]}})
    yield str(cfg)
    for target in ("127.0.9.0/24", "127.0.0.1", "127.0.0.0/24", "127.0.0.12"):
        CliRunner().invoke(main, ["unblock", target, "-c", str(cfg)])


def test_block_refuses_what_allow_protects_unless_forced(postfix_instance, rw, tmp_path):
    for target, entry in [("127.0.0.1", "[allow] networks (127.0.0.0/8)"),
                          ("127.0.0.0/24", "[allow] networks (127.0.0.0/8)"),
                          ("backup-robot", "[allow] sasl_users")]:
        result = run("block", target, "-c", rw)
        assert result.exit_code == 1 and entry in result.output and "--force" in result.output, result.output
    assert run("blocks", "-c", rw).output == "no blocks in force\n"
    assert postfix_instance.send("127.0.0.1")[0] == 250
    forced = run("block", "127.0.0.1", "--force", "-c", rw)
    assert forced.exit_code == 0, forced.output
    assert forced.output.startswith("blocked client 127.0.0.1 until ")
    assert "an SMTP client address" in forced.output and "despite [allow] networks" in forced.output
    assert postfix_instance.send("127.0.0.1")[0] == 554
    why = run("check", "127.0.0.1", "-c", rw).output  # no --reason: no "blocked by hand: blocked by hand"
    assert "why: manual: blocked by hand\n" in why and "hand: blocked by hand" not in why, why
    assert "| blocked by hand" not in why  # the why, not repeated as evidence


def test_an_address_looking_sasl_name_needs_sasl_user(postfix_instance, rw):
    result = run("block", "spammer@example.com", "-c", rw)
    assert result.exit_code == 2 and "looks like an e-mail address" in result.output and "--sasl-user" in result.output
    assert run("blocks", "-c", rw).output == "no blocks in force\n"
    ok = run("block", "spammer@example.com", "--sasl-user", "-c", rw)
    assert ok.exit_code == 0, ok.output
    assert ok.output.startswith("blocked sasl_user spammer@example.com until ") and "a SASL login" in ok.output
    assert run("unblock", "spammer@example.com", "-c", rw).exit_code == 0


def test_manual_blocks_are_in_the_digest_and_the_report(postfix_instance, rw, tmp_path):
    store = Store(tmp_path / "state.db")
    store.days.put_current(DayStats.for_time(time.time()).to_dict())  # as a running daemon keeps it
    store.close()
    assert run("block", "127.0.0.12", "--force", "--reason", "phished password", "-c", rw).exit_code == 0
    assert run("unblock", "127.0.0.12", "-c", rw).exit_code == 0
    today = date.today().isoformat()
    digest = run("digest", "--day", today, "-c", rw).output
    assert "Blocks: 1," in digest
    assert "block client 127.0.0.12: blocked by hand: phished password" in digest
    assert "unblock client 127.0.0.12: lifted by hand" in digest
    report = json.loads(run("report", "--format", "json", "-c", rw).output)
    assert [(d["action"], d["target"], d["rule"]) for d in report["decisions"]] == [
        ("block", "127.0.0.12", "manual"), ("unblock", "127.0.0.12", "manual")]
    text = run("report", "-c", rw).output
    assert "blocked by hand: phished password" in text


def test_check_names_the_covering_block_and_whether_postfix_enforces_it(postfix_instance, rw):
    assert run("block", "127.0.9.0/24", "--force", "--reason", "rotating flood", "-c", rw).exit_code == 0
    inside = run("check", "127.0.9.7", "-c", rw)
    assert inside.exit_code == 0, inside.output
    lines = inside.output.splitlines()
    assert lines[0] == "client 127.0.9.7: BLOCKED"
    assert lines[1].startswith("  by subnet 127.0.9.0/24: since ") and ", until " in lines[1]
    assert "why: manual: blocked by hand: rotating flood" in inside.output
    assert "undo: relaywatch unblock 127.0.9.0/24" in inside.output
    assert "allowed by [allow] networks (127.0.0.0/8)" in inside.output
    assert "Postfix enforces a block of it" in inside.output
    assert postfix_instance.send("127.0.9.7")[0] == 554  # and it really does
    address_only = run("unblock", "127.0.9.7", "-c", rw)  # the address has no block of its own
    assert address_only.exit_code == 0 and address_only.output == (
        "client 127.0.9.7 was not blocked\n"
        "  but it is refused by the block of subnet 127.0.9.0/24: relaywatch unblock 127.0.9.0/24\n")
    doc = json.loads(run("check", "127.0.9.7", "--json", "-c", rw).output)
    assert doc["blocked"] and doc["enforced"] is True
    assert [b["target"] for b in doc["blocks"]] == ["127.0.9.0/24"]
    assert doc["blocks"][0]["decision"]["evidence"] == ["blocked by hand: rotating flood"]
    outside = run("check", "127.0.10.1", "-c", rw)
    assert outside.exit_code == 3 and outside.output.startswith("client 127.0.10.1: not blocked")
    assert "Postfix would enforce a block of it" in outside.output  # not "enforces": nothing is blocked
    wider = run("check", "127.0.0.0/16", "-c", rw)
    assert wider.exit_code == 3 and "partly: subnet 127.0.9.0/24 inside it are blocked" in wider.output
    assert run("check", "nobody", "--json", "-c", rw).exit_code == 3


def test_check_says_when_postfix_would_not_enforce(tmp_path):
    conf = tmp_path / "postfix"
    conf.mkdir()
    (conf / "main.cf").write_text(
        "compatibility_level = 3.6\nmynetworks = 127.0.0.0/8, 218.0.0.0/8\n"
        f"smtpd_client_restrictions = permit_mynetworks, check_client_access hash:{conf}/reject_list\n"
        "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n")
    shutil.copy("/usr/share/postfix/master.cf.dist", conf / "master.cf")
    os.utime(conf / "main.cf", (1_000_000_000, 1_000_000_000))
    cfg = write_config(tmp_path / "rw.toml", sections(database=tmp_path / "s.db", config_directory=conf,
                                                      client_access_map=f"hash:{conf}/reject_list"))
    result = run("check", "218.144.108.161", "-c", str(cfg))
    assert result.exit_code == 3
    assert "Postfix would NOT enforce a block of it" in result.output and "permit_mynetworks" in result.output
