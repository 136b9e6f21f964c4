"""The notifier with real apprise against real HTTP servers on 127.0.0.1.

A path containing "fail" answers 500; the `hang` server accepts connections
and never answers. Coalescing is tested with an injected clock, so a slow
machine cannot split a burst.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time

import pytest

from relaywatch.model import ConfigError, Decision
from relaywatch.notify.notices import PREFIX as P
from relaywatch.notify.notices import Notice, NoticeKind, notice_for_decision, notice_for_text
from relaywatch.notify.notifier import Notifier
from relaywatch.notify.send import redact, send_test
from support.http_sink import Hang, Sink

SECRETS = ("s3cretpw", "k3y123abc", "t0ken99")

BLOCK = Decision(
    time=1_700_000_000.0, action="block", kind="subnet", target="218.144.0.0/16", rule="wide_subnet",
    count=412, window_s=600, clients=9,
    evidence=(
        "Nov 14 22:13:01 mx postfix/smtp[811]: 4Tq1: to=<a@victim.example>, relay=mx.victim.example[1.2.3.4]:25",
        "Nov 14 22:13:02 mx postfix/smtpd[812]: 4Tq2: client=unknown[218.144.7.9]",
        "Nov 14 22:13:03 mx postfix/smtp[813]: 4Tq2: to=<b@victim.example>, status=sent",
    ),
    sample_qids=("4Tq1", "4Tq2"),
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def wait_until(pred, timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def decision(i: int) -> Decision:
    return Decision(time=1_700_000_000.0 + i, action="block", kind="client", target=f"203.0.113.{i}",
                    rule="client", count=60 + i, window_s=600)


# --- formatting --------------------------------------------------------------


def test_block_notice_says_what_why_and_how_to_undo() -> None:
    n = notice_for_decision(BLOCK, held=37)
    assert n.title == P + "blocked 218.144.0.0/16"
    assert n.severity == "warning"
    assert n.tags == ("block", "subnet", "warning")
    assert "Blocked subnet 218.144.0.0/16 at " in n.body
    assert "412 relayed recipients from 9 clients in 10 min (rule wide_subnet)" in n.body
    assert "In force: the map holds it and Postfix reloaded; new SMTP sessions are refused" in n.body
    assert "Queued messages held: 37." in n.body
    assert "Undo: relaywatch unblock 218.144.0.0/16" in n.body
    assert "  | Nov 14 22:13:02 mx postfix/smtpd[812]: 4Tq2: client=unknown[218.144.7.9]" in n.body
    assert "Queue IDs: 4Tq1, 4Tq2" in n.body


def test_ineffective_block_is_a_failure_with_the_warning() -> None:
    trap = "218.144.0.0/16 is inside mynetworks (permit_mynetworks comes first): Postfix still relays for it."
    n = notice_for_decision(BLOCK, effective=trap, bypassed_on=["main.cf", "submission"])
    assert n.title == P + "blocked 218.144.0.0/16 - NOT enforced"
    assert n.severity == "failure" and "failure" in n.tags
    assert f"NOT ENFORCED: {trap}" in n.body
    # main.cf enforces it, one master.cf service does not: that service is named, the block is not "useless"
    one = notice_for_decision(BLOCK, effective="Not enforced by master.cf service(s) submission ...",
                              bypassed_on=["submission"])
    assert one.title == P + "blocked 218.144.0.0/16 - bypassed on submission"
    assert "Queued messages held" not in n.body  # unknown, so not claimed


def test_a_block_not_in_force_says_so_and_why() -> None:
    why = "could not write /etc/postfix/relaywatch_clients: Read-only file system"
    n = notice_for_decision(BLOCK, not_in_force=why)
    assert n.title == f"{P}blocked 218.144.0.0/16 - NOT in force"
    assert n.severity == "failure"
    assert "NOT IN FORCE: could not write /etc/postfix/relaywatch_clients: Read-only file system" in n.body
    assert "In force" not in n.body


def test_alert_and_text_notices() -> None:
    probe = Decision(time=0.0, action="alert", kind="client", target="198.51.100.7", rule="relay_probe",
                     count=25, window_s=600)
    n = notice_for_decision(probe)
    assert n.title == P + "alert 198.51.100.7"
    assert n.severity == "info"
    assert "25 relay attempts refused in 10 min (rule relay_probe)" in n.body
    assert "Undo" not in n.body
    sasl = notice_for_decision(Decision(time=0.0, action="block", kind="sasl_user", target="bob o'hara",
                                        rule="sasl_user", count=150, window_s=3600))
    assert sasl.title == P + "blocked SASL user bob o'hara"
    assert "in 1 h (rule sasl_user)" in sasl.body
    assert """Undo: relaywatch unblock 'bob o'"'"'hara'""" in sasl.body
    t = notice_for_text("failure", "daemon stopped", "postfix log unreadable\n", ("error",))
    assert t == Notice("failure", P + "daemon stopped", "postfix log unreadable", ("error",), kind=NoticeKind.ERROR)
    with pytest.raises(ValueError):
        notice_for_text("urgent", "x", "y")


def test_redact_hides_secrets() -> None:
    url = "json://user:s3cretpw@127.0.0.1:8080/hook?-apikey=k3y123abc&+Authorization=Bearer%20t0ken99&cto=2"
    shown = redact(url)
    assert shown == "json://user:****@127.0.0.1:8080/hook?-apikey=****&+Authorization=****&cto=2"
    ntfy = redact("ntfys://ntfy.example.com/topic?token=tk_s3cretpw")
    assert ntfy.startswith("ntfys://") and ntfy.endswith("@ntfy.example.com/topic?token=****") and "s3cret" not in ntfy
    assert "AAsecretTOKENvalue" not in redact("tgram://123456789:AAsecretTOKENvalue/4242")
    assert redact("nosuchservice://user:s3cretpw@host/x") == "nosuchservice://..."


# --- delivery ----------------------------------------------------------------


def test_block_notification_arrives_over_json_and_form(sink: Sink) -> None:
    notice = notice_for_decision(BLOCK, held=37)
    with Notifier((sink.url("json", "/json"), sink.url("form", "/form")), coalesce_s=0) as notifier:
        notifier.submit(notice)
        [as_json] = sink.wait_for("/json", 1)
        [as_form] = sink.wait_for("/form", 1)
    for payload in (as_json, as_form):
        assert payload["title"] == P + "blocked 218.144.0.0/16"
        assert payload["message"] == notice.body
        assert payload["type"] == "warning"
    assert notifier.status()["sent"] == 2


def test_a_burst_is_one_digest(sink: Sink) -> None:
    clock = FakeClock()
    with Notifier((sink.url("json", "/chat"),), coalesce_s=0.2, cooldown_s=60, clock=clock) as notifier:
        for i in range(50):
            notifier.submit(notice_for_decision(decision(i)))
        clock.now = 1.0  # the coalescing window is over
        [digest] = sink.wait_for("/chat", 1)
    assert len(sink.to("/chat")) == 1
    assert digest["title"] == P + "blocked 203.0.113.0 (+49 block)"  # the worst (here: the first) leads
    assert digest["type"] == "warning"
    assert "- blocked 203.0.113.0\n" in digest["message"] and "more\n" in digest["message"]
    assert "Undo: relaywatch unblock 203.0.113.0" in digest["message"]
    assert len((digest["title"] + digest["message"]).encode()) < 1024  # one lock screen, not fifty
    assert notifier.status() | {"last_success": None} == {
        "targets": [{"url": f"json://127.0.0.1:{sink.port}/chat", "tags": []}],
        "sent": 1, "failed": 0, "dropped": 0, "pending": 0, "last_error": None, "last_success": None}


def test_cooldown_merges_later_notices_into_the_next_digest(sink: Sink) -> None:
    clock = FakeClock()
    with Notifier((sink.url("json", "/phone"),), coalesce_s=0, cooldown_s=100, clock=clock) as notifier:
        notifier.submit(notice_for_text("warning", "first", "a"))
        sink.wait_for("/phone", 1)
        clock.now = 1
        notifier.submit(notice_for_text("warning", "second", "b"))
        clock.now = 101  # cooldown over; the next notice wakes the worker
        notifier.submit(notice_for_text("failure", "third", "c"))
        first, merged = sink.wait_for("/phone", 2)
    assert len(sink.to("/phone")) == 2
    assert first["title"] == P + "first"
    assert merged["title"] == P + "third (+1 other)" and merged["type"] == "failure"
    assert merged["message"].startswith("- third\n- second\n")  # the failure first


def test_a_failing_target_is_retried_then_counted_and_redacted(sink: Sink, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    url = sink.url("json", "/fail").replace("://", "://user:s3cretpw@") + \
        "?-apikey=k3y123abc&+Authorization=Bearer%20t0ken99"
    with Notifier((url,), coalesce_s=0, retries=2, backoff_s=0.01) as notifier:
        notifier.submit(notice_for_decision(BLOCK))
        wait_until(lambda: notifier.status()["failed"] == 1)
        status = notifier.status()
    assert len(sink.to("/fail")) == 3  # one try and two retries, no more
    assert status["sent"] == 0 and status["pending"] == 0
    shown = f"json://user:****@127.0.0.1:{sink.port}/fail?-apikey=****&+Authorization=****"
    assert status["targets"] == [{"url": shown, "tags": []}]
    assert f"{shown}: failure: " in status["last_error"] and "error=500" in status["last_error"]
    assert "failed after 3 attempts" in caplog.text
    assert "Loaded JSON URL" in caplog.text  # apprise's own debug line, scrubbed
    for secret in SECRETS:
        assert secret not in caplog.text and secret not in str(status)


def test_a_hanging_target_times_out_without_holding_anyone_up(sink: Sink, hang: Hang) -> None:
    hung = f"json://127.0.0.1:{hang.port}/hook"
    notifier = Notifier((hung, sink.url("json", "/good")), coalesce_s=0, cooldown_s=0, timeout_s=0.5,
                        retries=0, queue_size=3)
    notifier.submit(notice_for_decision(BLOCK))
    assert hang.accepted.wait(5)
    sink.wait_for("/good", 1)  # delivered while the other target hangs
    for i in range(5):  # the worker is busy: three fit the queue, two are dropped, none waits
        notifier.submit(notice_for_decision(decision(i)))
    during = notifier.status()
    wait_until(lambda: notifier.status()["failed"] == 1)
    notifier.close(timeout=3)
    assert during["failed"] == 0 and during["dropped"] == 2
    status = notifier.status()
    assert f" json://127.0.0.1:{hang.port}/hook: timeout" in status["last_error"]
    assert status["failed"] == 2 and status["sent"] == 2 and status["pending"] == 0
    assert sink.to("/good")[1]["title"] == P + "blocked 203.0.113.0 (+2 block)"


def test_close_delivers_what_is_pending(sink: Sink) -> None:
    notifier = Notifier((sink.url("form", "/chat"),), coalesce_s=3600)
    for word in ("one", "two", "three"):
        notifier.submit(notice_for_text("info", word, word))
    assert notifier.status()["pending"] == 3
    notifier.close(timeout=5)
    [digest] = sink.to("/chat")
    assert digest["message"].startswith("- one\n- two\n- three\n")
    assert notifier.status()["pending"] == 0
    notifier.submit(notice_for_text("info", "late", "after close"))
    assert notifier.status()["dropped"] == 1


def test_tags_route_notices_from_a_config_file(sink: Sink, tmp_path) -> None:
    config = tmp_path / "apprise.yml"
    config.write_text(f"""
urls:
  - {sink.url("json", "/phone")}:
      tag: block, failure
  - {sink.url("form", "/chat")}:
      tag: digest
""")
    clock = FakeClock()
    with Notifier((sink.url("json", "/all"),), str(config), coalesce_s=1, clock=clock) as notifier:
        assert [t["tags"] for t in notifier.status()["targets"]] == [[], ["block", "failure"], ["digest"]]
        notifier.submit(notice_for_decision(BLOCK))
        notifier.submit(notice_for_text("info", "daily digest", "3 blocks today", ("digest",)))
        clock.now = 2
        sink.wait_for("/all", 1)
        sink.wait_for("/phone", 1)
        sink.wait_for("/chat", 1)
    assert [p["title"] for p in sink.to("/phone")] == [P + "blocked 218.144.0.0/16"]
    assert [p["title"] for p in sink.to("/chat")] == [P + "daily digest"]
    assert [p["title"] for p in sink.to("/all")] == [P + "blocked 218.144.0.0/16 (+1 digest)"]


def test_send_test_reports_each_target(sink: Sink) -> None:
    results = send_test((sink.url("json", "/ok"), sink.url("form", "/fail?token=s3cretpw")), timeout_s=2)
    assert [(r.url, r.ok) for r in results] == [
        (f"json://127.0.0.1:{sink.port}/ok", True), (f"form://127.0.0.1:{sink.port}/fail?token=****", False)]
    assert "error=500" in results[1].error
    assert sink.to("/ok")[0]["title"] == P + "test notification"


def test_bad_configuration_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"#2 \(nosuchservice://\.\.\.\): not a valid Apprise URL") as e:
        Notifier(("json://127.0.0.1:9/x", "nosuchservice://user:s3cretpw@host"))
    assert "s3cretpw" not in str(e.value)
    with pytest.raises(ConfigError, match="No such file"):
        send_test(config_file=str(tmp_path / "missing.yml"))
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no usable Apprise URL"):
        Notifier(config_file=str(tmp_path / "empty.txt"))


def test_without_targets_apprise_is_never_imported() -> None:
    code = ("import sys; from relaywatch.notify.notifier import Notifier\n"
            "from relaywatch.notify.notices import notice_for_text as t\n"
            "n = Notifier(); n.submit(t('info', 'x', 'y')); n.close()\n"
            "assert n.status()['sent'] == 0 and 'apprise' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- issue 16: kinds, memory across restarts, the lock screen ---------------------


def test_a_block_never_waits_behind_the_cooldown_of_another_kind(sink: Sink) -> None:
    clock = FakeClock()
    with Notifier((sink.url("json", "/phone"),), coalesce_s=0, cooldown_s=300, clock=clock) as notifier:
        notifier.submit(notice_for_text("failure", "2 hole(s) in Postfix", "...", kind=NoticeKind.AUDIT))
        sink.wait_for("/phone", 1)
        clock.now = 1  # 4 min 59 s of the audit notice's cooldown left
        notifier.submit(notice_for_decision(BLOCK))
        audit, block = sink.wait_for("/phone", 2)
        assert block["title"] == P + "blocked 218.144.0.0/16"
        clock.now = 2  # a second block within the cooldown of the first one waits for it
        notifier.submit(notice_for_decision(decision(1)))
        time.sleep(0.3)
        assert len(sink.to("/phone")) == 2
        clock.now = 302
        notifier.submit(notice_for_decision(decision(2)))
        sink.wait_for("/phone", 3)
    assert sink.to("/phone")[2]["title"] == P + "blocked 203.0.113.1 (+1 block)"


def test_an_unchanged_audit_notice_is_not_sent_again_after_a_restart(sink: Sink) -> None:
    def audit(body: str):
        return notice_for_text("failure", "1 hole(s) in Postfix", body, kind=NoticeKind.AUDIT, key="audit")

    url = sink.url("json", "/phone")
    with Notifier((url,), coalesce_s=0) as first:
        first.submit(audit("mynetworks trusts 33,554,432 public IPv4 addresses"))
        sink.wait_for("/phone", 1)
        wait_until(lambda: first.state()["sent"] != {})
    state = json.loads(json.dumps(first.state()))  # what the daemon keeps in the store
    assert state["sent"].keys() == {"audit"} and "audit" in state["cooldowns"][url]
    with Notifier((url,), coalesce_s=0, cooldown_s=0, state=state) as again:
        again.submit(audit("mynetworks trusts 33,554,432 public IPv4 addresses"))  # a restart, same findings
        again.submit(notice_for_decision(BLOCK))
        sink.wait_for("/phone", 2)
        time.sleep(0.2)
        again.submit(audit("the map is consulted after permit_mynetworks"))  # changed: sent
        sink.wait_for("/phone", 3)
        again.forget("audit")  # fixed, then broken again the same way: sent again
        again.submit(audit("the map is consulted after permit_mynetworks"))
        sink.wait_for("/phone", 4)
    titles = [p["title"] for p in sink.to("/phone")]
    assert titles == [P + "1 hole(s) in Postfix", P + "blocked 218.144.0.0/16", P + "1 hole(s) in Postfix",
                      P + "1 hole(s) in Postfix"]


def test_restored_cooldowns_still_hold_after_a_restart(sink: Sink) -> None:
    url = sink.url("json", "/phone")
    with Notifier((url,), coalesce_s=0, cooldown_s=300) as first:
        first.submit(notice_for_decision(decision(1)))
        sink.wait_for("/phone", 1)
        wait_until(lambda: first.state()["cooldowns"] != {})
    with Notifier((url,), coalesce_s=0, cooldown_s=300, state=first.state()) as again:
        again.submit(notice_for_decision(decision(2)))
        time.sleep(0.3)
        assert len(sink.to("/phone")) == 1  # waits for the cooldown the first run started
        again.submit(notice_for_text("info", "daily digest", "quiet day", ("digest",)))
        sink.wait_for("/phone", 2)  # another kind goes out at once


def test_a_dry_run_notice_says_would_and_offers_no_undo() -> None:
    n = notice_for_decision(BLOCK, dry_run=True)
    assert n.title == P + "would have blocked 218.144.0.0/16 (replay)"
    assert n.body.startswith("Would have blocked subnet 218.144.0.0/16 at ")
    assert "nothing was changed" in n.body and "Undo" not in n.body and "unblock" not in n.body
    assert n.severity == "info"


def test_a_notice_names_the_host_shows_the_clients_and_fits_a_lock_screen() -> None:
    import socket

    host = socket.gethostname().split(".")[0]
    long_line = "Nov 14 22:13:01 mx postfix/smtp[811]: 4Tq1: to=<" + "a" * 900 + "@victim.example>, status=sent"
    flood = Decision(time=1_700_000_000.0, action="block", kind="subnet", target="218.144.0.0/16",
                     rule="wide_subnet", count=2403, window_s=600, clients=9,
                     evidence=(long_line, long_line, "Nov 14 22:13:02 mx postfix/smtpd[812]: 4Tq2: "
                               "client=unknown[218.144.7.9]", long_line),
                     sample_qids=tuple(f"4Tq{i}" for i in range(9)))
    clients = [(f"218.144.{i}.9", 300 - i) for i in range(9)]
    n = notice_for_decision(flood, held=1200, undo="relaywatch unblock 218.144.0.0/16", clients=clients)
    assert n.title.startswith(f"relaywatch@{host}: blocked 218.144.0.0/16")
    assert len((n.title + n.body).encode()) < 1024
    first = n.body.splitlines()[0]
    assert first.startswith("Blocked subnet 218.144.0.0/16 at ") and "2,403 relayed recipients from 9 clients" in first
    assert "Clients: 218.144.0.9 (300), 218.144.1.9 (299)" in n.body and "and 4 more" in n.body
    evidence = n.body.split("Evidence:\n", 1)[1].splitlines()
    assert "client=unknown[218.144.7.9]" in evidence[0]  # who comes before where to
    assert "Undo: relaywatch unblock 218.144.0.0/16" in n.body  # never cut: evidence goes first
    assert notice_for_text("info", "relaywatch: digest", "x").title == f"relaywatch@{host}: digest"


def test_subnet_clients_come_from_the_window_counts() -> None:
    from relaywatch.notify.notices import subnet_clients

    counts = [("client", 1, "218.144.7.9", 40), ("client", 2, "218.144.7.9", 20), ("client", 2, "218.145.0.1", 99),
              ("sender", 2, "x@example.com", 60), ("client", 2, "218.144.200.3", 61), ("client", 2, "bogus", 5)]
    assert subnet_clients(BLOCK, counts) == [("218.144.200.3", 61), ("218.144.7.9", 60)]
    assert subnet_clients(decision(1), counts) == []
