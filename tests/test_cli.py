"""The command line, through click's runner: exit codes, formats, help for every command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaywatch.cli import main

README = Path(__file__).parent.parent / "README.md"
FLOOD = "\n".join(
    line
    for i in range(80)
    for line in (
        f"Mar 16 02:{i // 60:02d}:{i % 60:02d} zebra postfix/smtpd[1]: {0x8D076AE17 + i:X}: client=unknown[203.0.113.5]",
        f"Mar 16 02:{i // 60:02d}:{i % 60:02d} zebra postfix/qmgr[2]: {0x8D076AE17 + i:X}: from=<journeypark@hananet.net>, size=725, nrcpt=1 (queue active)",
        f"Mar 16 02:{i // 60:02d}:{i % 60:02d} zebra postfix/smtp[3]: {0x8D076AE17 + i:X}: to=<u{i}@hanmail.net>, relay=none, delay=1, status=deferred (connect to mx2.hanmail.net[211.43.197.34]: Connection refused)",
    )
) + "\n"


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def test_every_command_has_help_and_is_in_the_readme():
    readme = README.read_text()
    for name, command in main.commands.items():
        result = invoke(name, "--help")
        assert result.exit_code == 0 and command.help, name
        assert f"relaywatch {name}" in readme, f"README does not mention `relaywatch {name}`"


def test_replay_json_contract(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text(FLOOD)
    result = invoke("replay", "--format", "json", "--year", "2003", str(log))
    assert result.exit_code == 0
    out = json.loads(result.output)
    assert (out["lines"], out["unparsed"], out["messages"], out["relayed"]) == (240, 0, 80, 80)
    [block] = [d for d in out["decisions"] if d["action"] == "block"]
    assert {k: block[k] for k in ("action", "kind", "target", "rule", "count", "window_s")} == {
        "action": "block", "kind": "client", "target": "203.0.113.5", "rule": "client", "count": 60, "window_s": 600}
    assert block["time"].startswith("2003-03-16T")
    assert block["evidence"] and block["sample_qids"]
    assert out["top"]["clients"] == [{"key": "203.0.113.5", "count": 80}]


def test_replay_text_says_dry_run_and_shows_the_block(tmp_path):
    log = tmp_path / "mail.log"
    log.write_text(FLOOD)
    result = invoke("replay", "--year", "2003", str(log))
    assert result.exit_code == 0
    assert "dry run, nothing was changed" in result.output
    assert "would block client      203.0.113.5" in result.output


def test_replay_reads_stdin():
    result = invoke("replay", "--format", "json", "--year", "2003", "-", input=FLOOD)
    assert json.loads(result.output)["relayed"] == 80


def test_hostile_input_ends_well_and_blocks_nobody(tmp_path):
    log = tmp_path / "hostile.log"
    log.write_bytes(
        b"\x00\x01\x02garbage\n"
        + b"A" * 100_000 + b"\n"
        + b"Mar 16 02:00:00 zebra postfix/smtpd[1]: 1A2B3C4D5E: client=unknown[8.8.8.8\n"
        + b"Mar 16 02:00:00 zebra postfix/smtpd[1]: warning: non-SMTP command from unknown[198.51.100.7]: "
          b"GET / client=unknown[8.8.8.8]\n"
        + "\n".join(
            f"Mar 16 02:00:{i:02d} zebra postfix/smtpd[1]: NOQUEUE: reject: RCPT from unknown[198.51.100.7]: "
            f"450 4.7.1 <x>: Helo command rejected: Host not found; from=<a> to=<b> proto=ESMTP "
            f"helo=<client=unknown[8.8.8.8]> 554 5.7.1 <y>: Relay access denied;" for i in range(50)).encode()
        + b"\nMar 16 02:01:00 zebra postfix/smtp"
    )
    result = invoke("replay", "--format", "json", "--year", "2003", str(log))
    assert result.exit_code == 0
    out = json.loads(result.output)
    assert out["unparsed"] == 4
    # the reply is "Helo command rejected": "Relay access denied" in the HELO is no relay probe (issue 12 item 5)
    assert out["decisions"] == [] and out["relay_denied"] == 0
    assert "8.8.8.8" not in json.dumps(out["top"])


def test_a_bad_config_exits_78_and_names_the_key(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[rules.client]\nthreshold = -1\n")
    result = CliRunner().invoke(main, ["replay", "--config", str(cfg), "--sample"])
    assert result.exit_code == 78
    assert "[rules.client] threshold" in result.output


def test_a_missing_log_exits_1(tmp_path):
    result = CliRunner().invoke(main, ["replay", str(tmp_path / "nope.log")])
    assert result.exit_code == 1 and "nope.log" in result.output


@pytest.mark.parametrize("args", [[], ["--sample", "x.log"]])
def test_usage_errors_exit_2(args):
    assert CliRunner().invoke(main, ["replay", *args]).exit_code == 2


def test_notify_test_reports_each_target(sink, tmp_path):
    good, bad = sink.url("json", "/chat"), sink.url("json", "/fail")
    cfg = tmp_path / "rw.toml"
    cfg.write_text(f'[notify]\nurls = ["{good}", "{bad}"]\ntimeout = "5s"\nretries = 0\n')
    result = CliRunner().invoke(main, ["notify-test", "--config", str(cfg)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("ok ") and "/chat" in lines[0]
    assert lines[1].startswith("FAILED") and "/fail" in lines[1]
    assert "relaywatch" in sink.wait_for("/chat", 1)[0]["title"].lower()


def test_replay_notify_sends_one_digest(sink, tmp_path):
    log = tmp_path / "mail.log"
    log.write_text(FLOOD)
    cfg = tmp_path / "rw.toml"
    cfg.write_text(f'[notify]\nurls = ["{sink.url("json", "/chat")}"]\n')
    result = invoke("replay", "--notify", "--year", "2003", "--config", str(cfg), str(log))
    assert result.exit_code == 0
    [message] = sink.wait_for("/chat", 1)
    assert "203.0.113.5" in message["title"] + message["message"]
    # a dry run changed nothing: it says what would have been blocked, and offers no undo
    assert "would have blocked 203.0.113.5" in message["title"]
    assert "Undo" not in message["message"] and "unblock" not in message["message"]
    assert "nothing was changed" in message["message"]


def test_read_only_commands_create_no_database(tmp_path):
    cfg = tmp_path / "rw.toml"
    db = tmp_path / "state" / "state.db"
    cfg.write_text(f'[state]\ndatabase = "{db}"\n')
    assert invoke("blocks", "-c", str(cfg)).output == "no blocks in force\n"
    result = CliRunner().invoke(main, ["status", "-c", str(cfg)])
    assert result.exit_code == 4 and "has not run" in result.output  # LSB: status unknown
    assert not db.parent.exists()


@pytest.mark.parametrize("args, hint", [
    (["block", "203.0.113.5", "--for", "soon"], "--for"),
    (["block", "218.144.1.1/16"], "TARGET"),
    (["notify-test", "--url", "nosuchservice://user:pw@host"], "--url"),
    (["check", "10.0.0.1/8"], "TARGET"),
])
def test_bad_command_line_values_are_usage_errors(tmp_path, args, hint):
    cfg = tmp_path / "rw.toml"
    cfg.write_text(f'[state]\ndatabase = "{tmp_path / "s.db"}"\n')
    result = CliRunner().invoke(main, [*args, "-c", str(cfg)])
    assert result.exit_code == 2, result.output  # usage, not 78 (a configuration error)
    assert hint in result.output
    assert not (tmp_path / "s.db").exists()
