"""The Responder through `relaywatch replay --apply`, against a real private Postfix: what the
replay blocks is refused, and the mail it already queued is put on hold."""

from __future__ import annotations

import json
import subprocess

import pytest
from click.testing import CliRunner

from relaywatch.cli import main
from relaywatch.postfix.queue import PostfixQueue
from support.postfix_rig import UNREACHABLE_DOMAIN
from support.waiting import wait_for

FLOODER, INNOCENT = "127.0.0.78", "127.0.0.79"
FLOOD = "".join(
    f"Mar 16 02:{i // 60:02d}:{i % 60:02d} zebra postfix/smtpd[1]: {0x9D076AE17 + i:X}: client=unknown[{FLOODER}]\n"
    f"Mar 16 02:{i // 60:02d}:{i % 60:02d} zebra postfix/qmgr[2]: {0x9D076AE17 + i:X}: from=<a@b.example>, size=1, "
    "nrcpt=1 (queue active)\n"
    f"Mar 16 02:{i // 60:02d}:{i % 60:02d} zebra postfix/smtp[3]: {0x9D076AE17 + i:X}: to=<u{i}@far.example>, "
    "relay=none, delay=1, status=deferred (connect to mx.far.example[192.0.2.1]: Connection refused)\n"
    for i in range(70))


def queue_names(config_directory: str) -> dict[str, str]:
    return {m.qid: m.queue_name for m in PostfixQueue(config_directory).messages()}


@pytest.mark.postfix
def test_replay_apply_holds_the_queued_mail_of_what_it_blocked(postfix_instance, tmp_path):
    rig = postfix_instance
    cfg = tmp_path / "relaywatch.toml"
    cfg.write_text(f'[state]\ndatabase = "{tmp_path / "state.db"}"\n'
                   f'[postfix]\nconfig_directory = "{rig.config_directory}"\n'
                   f'client_access_map = "{rig.reject_list}"\nsasl_access_map = ""\n[allow]\nnetworks = []\n')
    mine, other = ([rig.send(client, "x@relaywatch.test", (f"u@{UNREACHABLE_DOMAIN}",))[1].rsplit(" ", 1)[1]]
                   for client in (FLOODER, INNOCENT))
    wait_for(lambda: all(queue_names(rig.config_directory).get(q) == "deferred" for q in mine + other), 10,
             "the mail to reach the deferred queue")
    log = tmp_path / "flood.log"
    log.write_text(FLOOD)
    try:
        result = CliRunner().invoke(main, ["replay", "--apply", "--year", "2003", "--format", "json", "-c",
                                           str(cfg), str(log)], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        assert [d["target"] for d in json.loads(result.stdout)["decisions"] if d["action"] == "block"] == [FLOODER]
        assert f"HOLD 1 messages of client {FLOODER}" in result.stderr
        names = queue_names(rig.config_directory)
        assert [names[q] for q in mine] == ["hold"] and [names[q] for q in other] == ["deferred"]
        assert rig.send(FLOODER)[0] == 554
    finally:
        CliRunner().invoke(main, ["unblock", FLOODER, "-c", str(cfg)])
        subprocess.run(["/usr/sbin/postsuper", "-c", rig.config_directory, "-d", "ALL"], capture_output=True)
