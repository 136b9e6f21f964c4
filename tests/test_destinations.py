"""Local domains as Postfix knows them: real `postconf -x` and `postmap -q` on a config directory
in a temp dir (hash:, regexp:, inline: and file lists, the default virtual_alias_domains)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from relaywatch.core.destinations import DomainList, LocalDomains, Pattern, Source, split_list
from relaywatch.core.inference import Declined, LogInference, Reason, mailbox_provider, registered_domain
from relaywatch.model import PostfixError
from relaywatch.postfix import postconf as postconf_mod
from relaywatch.postfix.postconf import local_destinations, postfix_domains
from support.postfix_rig import POSTMAP, postfix_installed

needs_postfix = pytest.mark.skipif(
    not postfix_installed() and os.environ.get("RELAYWATCH_REQUIRE_POSTFIX") != "1",
    reason="Debian's postfix (postconf, postmap) is not installed")


def test_lists_split_like_postfix_keeping_inline_tables_whole():
    assert split_list("$myhostname, localhost  Example.ORG,!sub.gw.example inline:{ a.example, b.example }") == (
        Pattern("$myhostname"), Pattern("localhost"), Pattern("example.org"), Pattern("sub.gw.example", True),
        Pattern("inline:{ a.example, b.example }"))


def test_tables_are_asked_for_parents_as_postfix_asks_them():
    relay = DomainList("relay_domains", (), parent_style=True)
    virtual = DomainList("virtual_alias_domains", ())
    mydest = DomainList("mydestination", (), exact_only=True)
    assert relay.keys("a.b.example.org", "hash:/x") == ("a.b.example.org", "b.example.org", "example.org", "org")
    assert virtual.keys("a.example.org", "hash:/x") == ("a.example.org", ".example.org", ".org")
    assert mydest.keys("a.example.org", "hash:/x") == ("a.example.org",)
    assert relay.keys("a.example.org", "pcre:/x") == ("a.example.org",)
    assert relay.matches_name("lists.example.org", "example.org") and not virtual.matches_name(
        "lists.example.org", "example.org")
    assert virtual.matches_name("lists.example.org", ".example.org") and not mydest.matches_name(
        "lists.example.org", ".example.org")


def test_a_fixed_list_and_an_unknown_one():
    known = LocalDomains(["Example.org", ".example.net"], known=True)
    assert known.accepts("example.org") and known.accepts("a.example.net") and known.accepts("x.example") is False
    assert LocalDomains().accepts("example.org") is None


def test_a_private_next_hop_taking_many_domains_is_a_smarthost():
    inference = LogInference(max_hop_domains=3, max_unconfirmed=3)
    assert all(inference.handed_over("gw", f"d{i}.example", "10.0.0.5", True) for i in range(3))
    assert not inference.handed_over("gw", "d3.example", "10.0.0.5", True)
    assert not inference.is_local("gw", "d0.example")  # once it is a smarthost, no domain behind it is ours
    assert inference.handed_over("gw", "example.org", "10.0.0.6", True)
    assert not inference.handed_over("gw", "example.org", "81.2.69.160", False)
    assert not inference.is_local("gw", "example.org")  # not a fixed private next hop any more
    inference.delivered_locally("gw", "example.com", "delivered by virtual")
    assert [(i.domain, i.reason) for i in inference.inferred()] == [("example.com", Reason.LOCAL_DELIVERY)]


def test_a_private_next_hop_taking_a_mailbox_providers_mail_is_a_smarthost_at_once():
    inference = LogInference()
    assert inference.handed_over("mail", "example.org", "10.0.0.5", True)
    assert not inference.handed_over("mail", "gmail.com", "10.0.0.5", True)
    assert not inference.is_local("mail", "example.org")  # the primary it seemed to be was a relayhost
    assert inference.inferred() == []
    assert [(i.domain, i.reason) for i in inference.declined()] == [
        ("example.org", Declined.SMARTHOST), ("gmail.com", Declined.MAILBOX_PROVIDER)]
    assert all(map(mailbox_provider, ("yahoo.co.jp", "hotmail.fr", "googlemail.com", "web.de", "naver.com")))
    assert not any(map(mailbox_provider, ("example.org", "live-music.example", "gmail.example.org")))
    assert [registered_domain(d) for d in ("lists.example.org", "a.example.co.uk", "example.io")] == [
        "example.org", "example.co.uk", "example.io"]


def test_unrelated_domains_the_site_never_sends_from_make_a_smarthost():
    inference = LogInference()
    for domain in ("example.org", "lists.example.org", "example.co.uk"):  # two registered domains
        assert inference.handed_over("gw", domain, "10.20.0.5", True)
    inference.sent_from("gw", "example.net", "10.20.0.5", authenticated=False)  # the primary sends from it
    assert inference.handed_over("gw", "example.net", "10.20.0.5", True)
    inference.sent_from("gw", "example.com", "81.2.69.142", authenticated=True)  # a login sends from it
    assert inference.handed_over("gw", "example.com", "10.20.0.5", True)
    inference.sent_from("gw", "other.example", "10.9.9.9", authenticated=False)  # another private host: not it
    assert not inference.handed_over("gw", "other.example", "10.20.0.5", True)
    assert not inference.is_local("gw", "example.org")
    assert {i.reason for i in inference.declined()} == {Declined.SMARTHOST}
    assert "3 unrelated domains (example.co.uk, example.org, other.example)" in inference.declined()[0].evidence


PROVIDERS = ("gmail.com", "yahoo.com", "hotmail.com")


def flood_behind_smarthost(messages: int = 60) -> str:
    """The reviewer's log: clients rotating through one /16, 16 recipients each at three mailbox
    providers, every one handed to the private relayhost."""
    lines = []
    for k in range(messages):
        t, qid = f"Mar 12 09:{k * 5 // 60:02d}:{k * 5 % 60:02d}", f"1A{k + 0x100:04X}"
        ip = f"218.144.{100 + k % 16}.{k + 1}"
        lines += [f"{t} mail postfix/smtpd[{2900 + k}]: {qid}: client=unknown[{ip}]",
                  f"{t} mail postfix/qmgr[800]: {qid}: from=<x@hananet.net>, size=2412, nrcpt=16 (queue active)"]
        lines += [f"{t} mail postfix/smtp[950]: {qid}: to=<v{k}_{j}@{PROVIDERS[j % 3]}>,"
                  " relay=smarthost.lan[10.0.0.5]:25, delay=1.1, delays=0.1/0/0.4/0.6, dsn=2.0.0,"
                  f" status=sent (250 2.0.0 Ok: queued as {qid}Z)" for j in range(16)]
        lines.append(f"{t} mail postfix/qmgr[800]: {qid}: removed")
    return "\n".join(lines) + "\n"


def test_replay_blocks_an_open_relay_behind_a_private_smarthost_and_says_why(tmp_path):
    from relaywatch.config import from_dict
    from relaywatch.replay import replay
    from relaywatch.reports import report

    log = tmp_path / "smarthost.log"
    log.write_text(flood_behind_smarthost())
    result = replay([str(log)], from_dict({"postfix": {"config_directory": str(tmp_path / "nowhere")}}), year=2025)
    assert result.totals.relayed == 960 and result.inferred_local_domains == []
    assert any(d.action == "block" and d.target == "218.144.0.0/16" for d in result.decisions)
    text = report.to_text(result)
    assert "3 not inferred local, though handed to a private next hop:" in text
    assert "gmail.com: handed to the private next hop 10.0.0.5, but a public mailbox provider's domain" in text
    declined = json.loads(report.to_json(result))["local_domains"]["declined"]
    assert {(i["domain"], i["reason"]) for i in declined} == {
        ("gmail.com", "mailbox_provider"), ("yahoo.com", "mailbox_provider"), ("hotmail.com", "mailbox_provider")}


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """A Postfix config directory with its domains in every kind of list Postfix allows."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "virtual").write_text(
        "alias.example anything\n.deep.example anything\ninfo@alias.example friend@gmail.com\n")
    (etc / "relay_domains").write_text("gw.example OK\n")
    (etc / "vmailbox.re").write_text("/^mail[0-9]*\\.example\\.com$/ OK\n")
    (etc / "more_domains").write_text("# one per line\nfile.example\n")
    (etc / "main.cf").write_text(
        "compatibility_level = 3.6\n"
        "myhostname = mx.example.net\nmydomain = example.net\n"
        "mydestination = $myhostname, localhost.$mydomain, localhost\n"
        f"virtual_alias_maps = hash:{etc}/virtual\n"
        f"virtual_mailbox_domains = regexp:{etc}/vmailbox.re\n"
        f"relay_domains = !sub.gw.example, hash:{etc}/relay_domains, inline:{{ inline.example=OK }},"
        f" {etc}/more_domains\n")
    for table in ("virtual", "relay_domains"):
        subprocess.run([POSTMAP, "-c", str(etc), f"hash:{etc}/{table}"], check=True)
    return etc


@needs_postfix
def test_postfix_answers_for_every_list_and_table_type(etc):
    domains = postfix_domains(etc)
    local = ["mx.example.net", "localhost", "alias.example", "mail2.example.com", "gw.example", "lists.gw.example",
             "a.deep.example", "inline.example", "file.example"]
    foreign = ["gmail.com", "sub.gw.example", "deep.example", "example.net", "x.mx.example.net"]
    assert {d: domains.accepts(d) for d in local + foreign} == {d: d in local for d in local + foreign}


@needs_postfix
def test_answers_are_cached_until_they_age(etc):
    now = [0.0]
    domains = postfix_domains(etc, clock=lambda: now[0])
    assert domains.accepts("new.example") is False
    (etc / "relay_domains").write_text("gw.example OK\nnew.example OK\n")
    subprocess.run([POSTMAP, "-c", str(etc), f"hash:{etc}/relay_domains"], check=True)
    asked = domains.questions
    assert domains.accepts("new.example") is False and domains.questions == asked  # from the cache
    now[0] += domains.max_age_s + 1
    assert domains.accepts("new.example") is True


@needs_postfix
def test_a_table_postfix_cannot_read_answers_nothing_and_is_asked_again(etc, caplog):
    main = etc / "main.cf"
    main.write_text(main.read_text() + f"virtual_mailbox_domains = hash:{etc}/missing\n")
    now = [0.0]
    domains = postfix_domains(etc, clock=lambda: now[0])
    assert domains.accepts("gmail.com") is None
    assert domains.accepts("gw.example") is True  # another list says so
    assert "cannot ask Postfix" in caplog.text and "missing" in caplog.text
    (etc / "missing").write_text("other.example OK\n")
    subprocess.run([POSTMAP, "-c", str(etc), f"hash:{etc}/missing"], check=True)
    assert domains.accepts("gmail.com") is None  # not cached, and the failing table rests a while
    now[0] += 61
    assert domains.accepts("gmail.com") is False  # asked again


@needs_postfix
def test_the_sources_in_order(etc, tmp_path):
    assert local_destinations(("a.example",), ("b.example",), etc)[1] is Source.OPTION
    assert local_destinations((), ("b.example",), etc)[1] is Source.CONFIG
    destinations, source, _ = local_destinations((), (), etc)
    assert source is Source.POSTFIX and destinations.accepts("gw.example")
    destinations, source, detail = local_destinations((), (), tmp_path / "nowhere")
    assert source is Source.LOG and destinations.known is False and "postconf" in detail


def recording_postconf(tmp_path: Path) -> tuple[Path, Path]:
    """An executable `postconf` that only writes down that it ran (and fails as a real one would)."""
    binary, ran = tmp_path / "bin" / "postconf", tmp_path / "ran"
    binary.parent.mkdir()
    binary.write_text(f'#!/bin/sh\necho "$@" >> {ran}\nexit 1\n')
    binary.chmod(0o755)
    return binary, ran


@needs_postfix
def test_without_main_cf_postconf_is_not_run_and_its_words_are_kept(tmp_path, monkeypatch):
    """Issue 15: a replay where DIR/main.cf does not exist ran postconf twice, each failing after
    Postfix's one-second sleep. Now no process runs (a postconf that writes down each start proves
    it), and the reason a report shows is word for word what postconf itself says."""
    nowhere = tmp_path / "nowhere"
    real = subprocess.run(["postconf", "-c", str(nowhere), "-x", "mydestination"], capture_output=True, text=True)
    binary, ran = recording_postconf(tmp_path)
    monkeypatch.setattr(postconf_mod, "POSTCONF", str(binary))
    _, source, detail = local_destinations((), (), nowhere)
    assert source is Source.LOG
    assert detail == f"postconf -c {nowhere}: {real.stderr.strip().rpartition('fatal: ')[2]}"
    assert "main.cf: No such file or directory" in detail
    assert not ran.exists()
    (nowhere / "main.cf").parent.mkdir()
    (nowhere / "main.cf").write_text("")
    with pytest.raises(PostfixError):  # with a main.cf it does run
        postconf_mod.postconf(nowhere)
    assert ran.read_text().startswith(f"-c {nowhere} ")


def test_without_postfix_the_error_says_so_rather_than_naming_main_cf(tmp_path, monkeypatch):
    """Review of issue 15: on a host without Postfix and without DIR/main.cf, the reason named main.cf
    (the no-wait path answered first). A missing postconf is named, looked up without a start."""
    nowhere, empty, sbin = tmp_path / "nowhere", tmp_path / "empty", tmp_path / "sbin"
    empty.mkdir()
    sbin.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # the module's own name, "postconf", looked up on PATH
    monkeypatch.setattr(postconf_mod, "SBIN", (str(sbin),))  # then in Postfix's directories: not there either
    _, source, detail = local_destinations((), (), nowhere)
    assert source is Source.LOG
    assert detail == f"postconf -c {nowhere}: postconf not found: is Postfix installed? (not in {empty}:{sbin})"
    (sbin / "postconf").write_text("#!/bin/sh\n")  # there, but not executable: not found either
    with pytest.raises(PostfixError, match=r"^postconf not found: is Postfix installed\?"):
        postconf_mod.postconf(nowhere)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(PostfixError, match=rf"^postmap not found: is Postfix installed\? \(not in {sbin}\)$"):
        postconf_mod.postmap_lookup("hash:/nowhere/table", ("x",))


@needs_postfix
def test_a_login_whose_path_lacks_sbin_still_finds_postfix(tmp_path, monkeypatch):
    """Review: Debian's PATH for a non-root login has no /usr/sbin, where postconf lives; "postconf not
    found: is Postfix installed?" would then be false. Postfix's own directories are looked in after PATH."""
    monkeypatch.setenv("PATH", "/usr/local/bin:/usr/bin:/bin")
    assert not any(os.path.exists(f"{d}/postconf") for d in ("/usr/local/bin", "/usr/bin", "/bin"))
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text("mydestination = example.net\n")
    assert postconf_mod.postconf(etc, ("mydestination",))["mydestination"] == "example.net"


def test_a_postconf_path_that_is_not_there_is_named(tmp_path, monkeypatch):
    missing = tmp_path / "sbin" / "postconf"
    monkeypatch.setattr(postconf_mod, "POSTCONF", str(missing))
    for config_directory in (tmp_path / "nowhere", None):  # with or without -c, main.cf or none
        with pytest.raises(PostfixError) as caught:
            postconf_mod.postconf(config_directory)
        assert str(caught.value) == f"{missing} not found: is Postfix installed? (no such executable file)"


def gateway_day(n: int = 80) -> str:
    """A filtering gateway's morning: Google delivers n messages for example.org, relayed to the
    primary on the site's network (as in tests/data/deployments/gateway-relay-domains.log)."""
    lines = []
    for i in range(n):
        qid, t = f"{0x6A3B81C0000 + i:011X}", f"2025-03-04T10:{i // 10:02d}:{i % 10 * 5:02d}.100000+00:00"
        lines += [
            f"{t} gw1 postfix/smtpd[2101]: {qid}: client=mail-wr1-f54.google.com[209.85.221.54]",
            f"{t} gw1 postfix/qmgr[900]: {qid}: from=<friend{i}@gmail.com>, size=4242, nrcpt=1 (queue active)",
            f"{t} gw1 postfix/smtp[2103]: {qid}: to=<user{i}@example.org>, relay=mail.example.org[81.2.69.160]:25,"
            " delay=0.5, delays=0.15/0.01/0.12/0.22, dsn=2.0.0, status=sent (250 2.0.0 Ok: queued as 7F3A2200C1)",
            f"{t} gw1 postfix/qmgr[900]: {qid}: removed",
        ]
    return "\n".join(lines) + "\n"


@needs_postfix
def test_replay_reads_relay_domains_from_postfix_and_says_where_they_came_from(etc, tmp_path):
    (etc / "relay_domains").write_text("example.org OK\n")
    subprocess.run([POSTMAP, "-c", str(etc), f"hash:{etc}/relay_domains"], check=True)
    log = tmp_path / "gw.log"
    log.write_text(gateway_day())

    def replay(*args: str, directory: Path = etc) -> dict:
        cfg = tmp_path / "rw.toml"
        cfg.write_text(f'[postfix]\nconfig_directory = "{directory}"\n[allow]\nnetworks = []\n')
        done = subprocess.run([sys.executable, "-m", "relaywatch", "replay", "--format", "json", "-c", str(cfg),
                               str(log), *args], capture_output=True, text=True, check=True)
        return json.loads(done.stdout)

    on_host = replay()
    assert (on_host["relayed"], on_host["decisions"]) == (0, [])
    assert on_host["local_domains"]["source"] == "postfix" and on_host["local_domains"]["inferred"] == []
    off_host = replay(directory=tmp_path / "nowhere")  # a public primary: the log alone cannot tell
    assert off_host["relayed"] == 80 and off_host["local_domains"]["source"] == "log"
    assert any(d["kind"] == "client" and d["target"] == "209.85.221.54" for d in off_host["decisions"])
    told = replay("--local-domain", "Example.ORG", directory=tmp_path / "nowhere")
    assert (told["relayed"], told["decisions"], told["local_domains"]["source"]) == (0, [], "option")


def test_replay_says_which_domains_it_inferred_and_why(tmp_path):
    from relaywatch.config import from_dict
    from relaywatch.replay import replay
    from relaywatch.reports import report

    log = Path(__file__).parent / "data" / "deployments" / "gateway-relay-domains.log"
    result = replay([str(log)], from_dict({"postfix": {"config_directory": str(tmp_path / "nowhere")}}))
    text = report.to_text(result)
    assert "local domains: none known (postconf -c" in text and "3 inferred from the log:" in text
    assert "example.org: always handed to the private next hop 10.20.0.5\n" in text
    inferred = json.loads(report.to_json(result))["local_domains"]["inferred"]
    assert {"domain": "example.net", "reason": "private_next_hop",
            "evidence": "always handed to the private next hop fd12:3456:789a::25"} in [
        {k: v for k, v in i.items() if k != "host"} for i in inferred]
    assert result.totals.relayed == 3  # the abuser's two, and the primary's outbound one
