"""relaywatch.queue and `relaywatch queue`: recorded postqueue/postcat output, and a real private Postfix
whose mail to an unreachable domain waits in the deferred queue (tests/support/postfix_rig.py)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaywatch.cli import main
from relaywatch.model import PostfixError
from relaywatch.postfix.queue import (
    Origin,
    PostfixQueue,
    QueuedMessage,
    Target,
    checked_qids,
    parse_envelopes,
    parse_postqueue_json,
    select,
    target,
)
from relaywatch.store.sqlite import Store
from support.configs import rig_sections, write_config
from support.postfix_rig import UNREACHABLE_DOMAIN, PostfixRig
from support.waiting import wait_for

# Recorded from Postfix 3.7.11 (`postqueue -j`; the null sender shows as MAILER-DAEMON).
POSTQUEUE_J = """\
{"queue_name": "deferred", "queue_id": "4F1CD2109E8", "arrival_time": 1795825187, "message_size": 239, "forced_expire": false, "sender": "journeypark@hananet.example", "recipients": [{"address": "inn@unreachable.example", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:42317: Connection refused"}]}
{"queue_name": "hold", "queue_id": "6831720E163", "arrival_time": 1795825396, "message_size": 166, "forced_expire": false, "sender": "journeypark@hananet.example", "recipients": [{"address": "a@unreachable.example", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:42099: Connection refused"}, {"address": "b@unreachable.example", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:42099: Connection refused"}]}
{"queue_name": "deferred", "queue_id": "68F7F20E064", "arrival_time": 1795825396, "message_size": 203, "forced_expire": false, "sender": "MAILER-DAEMON", "recipients": [{"address": "c@unreachable.example", "delay_reason": "connect to 127.0.0.1[127.0.0.1]:42099: Connection refused"}]}
"""

# Recorded `postcat -e -q 6831720E163 68F7F20E064` (XCLIENT LOGIN= made the first SASL-authenticated).
POSTCAT_E = """\
*** ENVELOPE RECORDS hold/6831720E163 ***
message_size:             166             815               2               0             166               0
message_arrival_time: Sat Nov 28 00:23:16 2026
named_attribute: log_ident=6831720E163
named_attribute: rewrite_context=remote
named_attribute: sasl_method=XCLIENT
named_attribute: sasl_username=alice@woodelf.example
sender: journeypark@hananet.example
named_attribute: log_client_name=unknown
named_attribute: log_client_address=127.0.0.11
named_attribute: log_message_origin=unknown[127.0.0.11]
named_attribute: client_name=unknown
named_attribute: client_address=127.0.0.11
named_attribute: server_address=127.0.0.1
recipient: a@unreachable.example
*** MESSAGE CONTENTS hold/6831720E163 ***
*** HEADER EXTRACTED hold/6831720E163 ***
*** MESSAGE FILE END hold/6831720E163 ***
*** ENVELOPE RECORDS deferred/6/68F7F20E064 ***
message_size:             203             660               1               0             203               0
sender: 
named_attribute: log_client_address=127.0.0.12
named_attribute: client_address=127.0.0.12
recipient: c@unreachable.example
*** MESSAGE CONTENTS deferred/6/68F7F20E064 ***
*** MESSAGE FILE END deferred/6/68F7F20E064 ***
"""


def test_postqueue_json_records():
    held, bounce = parse_postqueue_json(POSTQUEUE_J)[1:]
    assert held == QueuedMessage("6831720E163", "hold", "journeypark@hananet.example",
                                 ("a@unreachable.example", "b@unreachable.example"), 1795825396, 166)
    assert (bounce.sender, bounce.queue_name, bounce.size) == ("MAILER-DAEMON", "deferred", 203)
    assert parse_postqueue_json("\n") == []


@pytest.mark.parametrize("line", [
    '{"queue_name": "deferred", "queue_id": "ALL", "arrival_time": 1, "message_size": 1, "sender": "", "recipients": []}',
    '{"queue_name": "deferred", "queue_id": "4F1CD2109E8"}',
    "postqueue: warning: Mail system is down",
])
def test_a_bad_postqueue_record_is_refused(line):
    with pytest.raises(PostfixError, match="record 1"):
        parse_postqueue_json(line + "\n")


def test_postcat_envelopes():
    assert parse_envelopes(POSTCAT_E) == {
        "6831720E163": Origin("127.0.0.11", "alice@woodelf.example"),
        "68F7F20E064": Origin("127.0.0.12", None)}
    # a content filter's re-injection: log_client_address (XFORWARD) names the real client
    forwarded = ("*** ENVELOPE RECORDS active/ABCDEF12 ***\nnamed_attribute: client_address=127.0.0.1\n"
                 "named_attribute: log_client_address=203.0.113.5\n*** MESSAGE CONTENTS active/ABCDEF12 ***\n"
                 "named_attribute: client_address=6.6.6.6\n")
    assert parse_envelopes(forwarded) == {"ABCDEF12": Origin("203.0.113.5", None)}


@pytest.mark.parametrize("qid", ["ALL", "-d", "", "4F1CD2109E8\nALL", "4F1CD2109E8 ", "../hold/4F1CD2109E8",
                                 "4f1cd2109e8", "deferred", "ABC"])
def test_hostile_queue_ids_are_refused(qid):
    with pytest.raises(PostfixError, match="invalid queue id"):
        checked_qids(["4F1CD2109E8", qid])


def test_long_and_short_queue_ids_pass():
    assert checked_qids(["4F1CD2109E8", "4XGDkL0ZpFz9sDq"]) == ["4F1CD2109E8", "4XGDkL0ZpFz9sDq"]


def test_a_hostile_qid_never_reaches_postsuper(tmp_path):
    """A stand-in postsuper records every call: a refused batch makes none, a good one is an argument list."""
    calls = tmp_path / "calls"
    fake = tmp_path / "postsuper"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\ncat >> {calls}\n'
                    'echo "postsuper: 4F1CD2109E8: placed on hold" >&2\n')
    fake.chmod(0o755)
    queue = PostfixQueue("/etc/pf; rm -rf /", bindir=str(tmp_path))
    with pytest.raises(PostfixError):
        queue.hold(["4F1CD2109E8", "ALL"])
    assert not calls.exists()
    assert queue.hold([]) == 0 and not calls.exists()
    assert queue.hold(["4F1CD2109E8"]) == 1
    assert calls.read_text() == "-c /etc/pf; rm -rf / -h -\n4F1CD2109E8\n"


def test_postcat_resumes_after_mail_that_left_and_gives_up_after_three(tmp_path):
    """A stand-in postcat that, like the real one, stops at the first id no longer queued."""
    fake = tmp_path / "postcat"
    fake.write_text("#!/bin/sh\nshift 2\nfor q in \"$@\"; do case $q in DEAD*) "
                    "echo \"postcat: fatal: open queue file $q: No such file or directory\" >&2; exit 1;; esac\n"
                    "printf '*** ENVELOPE RECORDS deferred/%s ***\\n"
                    "named_attribute: client_address=10.0.0.1\\n' $q; done\n")
    fake.chmod(0o755)
    queue = PostfixQueue(None, bindir=str(tmp_path))
    found, unchecked = queue.origins(["AAAAAA", "DEAD01", "BBBBBB"])
    assert (sorted(found), unchecked) == (["AAAAAA", "BBBBBB"], 0)
    found, unchecked = queue.origins(["AAAAAA", "DEAD01", "BBBBBB", "DEAD02", "DEAD03", "CCCCCC", "DDDDDD"])
    assert (sorted(found), unchecked) == (["AAAAAA", "BBBBBB"], 2)


def test_targets_are_validated_and_matched():
    assert target("client", "2001:DB8::1") == Target("client", "2001:db8::1")
    assert target("sender", "Spam@Hananet.Example").value == "spam@hananet.example"
    for kind, value in [("network", "218.144.1.1/16"), ("client", "unknown[1.2.3.4]"), ("sasl_user", "a b"),
                        ("sender", ""), ("destination", "x")]:
        with pytest.raises(ValueError):
            target(kind, value)
    msg = QueuedMessage("ABCDEF", "deferred", "Spam@hananet.example", (), 0, 1)
    assert target("sender", "spam@hananet.example").matches(msg, None)
    assert target("network", "218.144.0.0/16").matches(msg, Origin("218.144.108.161", None))
    assert not target("client", "218.144.108.161").matches(msg, Origin(None, None))  # a local submission
    assert target("sasl_user", "alice").matches(msg, Origin("1.2.3.4", "alice"))
    assert target("client", "1.2.3.4").hint() == ("release them: relaywatch queue release --client 1.2.3.4, "
                                                  "or delete them: relaywatch queue delete --client 1.2.3.4 --yes")


class FakeQueue(PostfixQueue):
    """The queue as two dicts, counting postcat lookups: select's budget without a Postfix."""

    def __init__(self, origins: dict[str, Origin]) -> None:
        super().__init__(None)
        self._origins = origins
        self.looked_up: list[str] = []

    def messages(self) -> list[QueuedMessage]:
        return [QueuedMessage(q, "deferred", "a@b.example", ("c@d.example",), i, 1)
                for i, q in enumerate(self._origins)]

    def origins(self, qids):
        self.looked_up += qids
        return {q: self._origins[q] for q in qids}, 0


def test_select_trusts_the_store_and_looks_up_the_rest_within_budget():
    queue = FakeQueue({"AAAAAA": Origin("127.0.0.1", None), "BBBBBB": Origin("10.0.0.9", None),
                       "CCCCCC": Origin("10.0.0.1", None)})
    who = Target("client", "10.0.0.9")
    # the store says AAAAAA came from 10.0.0.9 (a content filter re-injected it on loopback)
    assert [m.qid for m in select(queue, who, ["AAAAAA"]).messages] == ["AAAAAA", "BBBBBB"]
    assert queue.looked_up == ["BBBBBB", "CCCCCC"]
    over = select(queue, who, ["AAAAAA"], postcat_limit=1)
    assert ([m.qid for m in over.messages], over.unchecked) == (["AAAAAA"], 2)


# --- against a real Postfix ---------------------------------------------------------------

FLOODER, INNOCENT, AUTHED = "127.0.0.9", "127.0.0.10", "127.0.0.11"




def postqueue(rig: PostfixRig) -> dict[str, str]:
    """queue id -> queue name, straight from postqueue -j (not through relaywatch)."""
    out = subprocess.run(["/usr/sbin/postqueue", "-c", rig.config_directory, "-j"],
                         capture_output=True, text=True, check=True).stdout
    return {r["queue_id"]: r["queue_name"] for r in map(json.loads, out.splitlines())}


def send(rig: PostfixRig, client: str, n: int, sender: str, **kw: str) -> list[str]:
    """n messages to the unreachable domain; their queue ids."""
    qids = []
    for i in range(n):
        code, reply = rig.send(client, sender, (f"u{i}@{UNREACHABLE_DOMAIN}",), **kw)
        assert code == 250, reply
        qids.append(reply.rsplit(" ", 1)[1])
    return qids


@pytest.fixture
def queued(postfix_instance):
    """Mail from a flooder, an innocent client and a SASL login, all waiting in the deferred queue."""
    rig = postfix_instance
    ids = {"flooder": send(rig, FLOODER, 4, "spam@hananet.example"),
           "innocent": send(rig, INNOCENT, 2, "innocent@relaywatch.test"),
           "alice": send(rig, AUTHED, 1, "alice@woodelf.example", xclient_login="alice@woodelf.example")}
    wait_for(lambda: all(postqueue(rig).get(q) == "deferred" for qs in ids.values() for q in qs), 10,
             "the mail to reach the deferred queue")
    yield ids
    subprocess.run(["/usr/sbin/postsuper", "-c", rig.config_directory, "-d", "ALL"], capture_output=True, check=True)


@pytest.fixture
def rw(postfix_instance, tmp_path):
    return str(write_config(tmp_path / "relaywatch.toml", rig_sections(postfix_instance, tmp_path, source=False)))


def run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.mark.postfix
def test_hold_release_and_delete_a_clients_queued_mail(postfix_instance, queued, rw):
    flooder, innocent = set(queued["flooder"]), set(queued["innocent"] + queued["alice"])
    listed = json.loads(run("queue", "list", "--client", FLOODER, "--json", "-c", rw).output)
    assert {m["queue_id"] for m in listed["messages"]} == flooder and listed["count"] == 4

    result = run("queue", "hold", "--client", FLOODER, "-c", rw)
    assert result.output.startswith(f"held 4 messages of client {FLOODER}; release them: relaywatch queue release")
    names = postqueue(postfix_instance)
    assert {q for q, name in names.items() if name == "hold"} == flooder
    assert all(names[q] == "deferred" for q in innocent)
    assert run("queue", "hold", "--client", FLOODER, "-c", rw).output == f"held 0 messages of client {FLOODER}\n"

    assert run("queue", "release", "--client", FLOODER, "-c", rw).output == f"released 4 messages of client {FLOODER}\n"
    assert set(postqueue(postfix_instance).values()) == {"deferred"}

    dry = run("queue", "delete", "--client", FLOODER, "-c", rw)
    assert dry.exit_code == 2
    assert dry.output.endswith(f"would delete 4 messages of client {FLOODER}; add --yes to delete them\n")
    assert flooder <= set(postqueue(postfix_instance))
    deleted = run("queue", "delete", "--client", FLOODER, "--yes", "-c", rw)
    assert deleted.output == f"deleted 4 messages of client {FLOODER}\n"
    assert set(postqueue(postfix_instance)) == innocent


@pytest.mark.postfix
def test_select_by_network_sender_and_sasl_user(queued, rw):
    def listed(*args: str) -> set[str]:
        return {m["queue_id"] for m in json.loads(run("queue", "list", *args, "--json", "-c", rw).output)["messages"]}

    assert listed("--network", "127.0.0.8/31") == set(queued["flooder"])
    assert listed("--sender", "SPAM@hananet.example") == set(queued["flooder"])
    assert listed("--sasl-user", "alice@woodelf.example") == set(queued["alice"])
    assert listed() == {q for qs in queued.values() for q in qs}
    assert run("queue", "list", "--sasl-user", "alice@woodelf.example", "-c", rw).output.endswith(
        "1 queued messages of sasl user alice@woodelf.example\n")


@pytest.mark.postfix
def test_the_store_ties_mail_postcat_cannot(queued, rw, tmp_path):
    """A content filter re-injects on loopback: only the log knows the real client."""
    [filtered] = queued["alice"]
    store = Store(tmp_path / "state.db")
    store.commit_batch([], origins=([(filtered, "203.0.113.5", None, time.time())], []))
    store.close()
    assert run("queue", "hold", "--client", "203.0.113.5", "-c", rw).output.startswith(
        "held 1 messages of client 203.0.113.5")


@pytest.mark.postfix
def test_postcat_goes_on_past_a_message_that_left_and_nothing_hostile_runs(postfix_instance, queued):
    queue = PostfixQueue(postfix_instance.config_directory)
    first, second = queued["innocent"]
    found, unchecked = queue.origins([first, "ABCDEF123", second])
    assert set(found) == {first, second} and unchecked == 0
    with pytest.raises(PostfixError):
        queue.delete([first, "ALL"])
    assert len(postqueue(postfix_instance)) == 7


@pytest.mark.postfix
def test_the_daemon_holds_what_the_flooder_queued(postfix_instance, queued, rw, sink, tmp_path):
    rig = postfix_instance
    cfg = write_config(Path(rw), rig_sections(rig, tmp_path),
                       {"notify": {"urls": [sink.url("json", "/hook")], "coalesce": "1s"},
                        "rules.client": {"threshold": 10}})
    err = tmp_path / "daemon.err"
    proc = subprocess.Popen([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)],
                            stderr=err.open("ab"), stdout=subprocess.DEVNULL)
    try:
        wait_for(lambda: "following file:" in err.read_text(), what="the daemon to start")
        flood = []
        for i in range(200):
            code, reply = rig.send(FLOODER, "spam@hananet.example", (f"v{i}@{UNREACHABLE_DOMAIN}",))
            if code == 554:
                break
            flood.append(reply.rsplit(" ", 1)[1])
            time.sleep(0.02)
        assert code == 554, err.read_text()
        line = wait_for(lambda: [x for x in err.read_text().splitlines() if "HOLD" in x], what="the hold")[0]
        # the flood, tied to the flooder by the log, and what it queued before the daemon started (postcat)
        mine = set(flood) | set(queued["flooder"])
        names = postqueue(rig)
        assert {q for q, name in names.items() if name == "hold"} == mine, err.read_text()
        assert line.endswith(f"HOLD {len(mine)} messages of client {FLOODER}")
        assert all(names[q] == "deferred" for q in queued["innocent"] + queued["alice"])
        [notice] = sink.wait_for("/hook", 1)
        assert f"Queued messages held: {len(mine)}." in notice["message"]
        assert f"relaywatch queue release --client {FLOODER}" in notice["message"]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert run("queue", "release", "--client", FLOODER, "-c", rw).output == \
            f"released {len(mine)} messages of client {FLOODER}\n"
    finally:
        if proc.poll() is None:
            proc.kill()
        run("unblock", FLOODER, "-c", rw)
    print(f"{len(flood)} flood messages held")
