"""build(config) on SIGHUP, through a real daemon process: the new configuration is taken whole
(notification targets, syslog_names) or refused whole with the reason, the old one going on."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from relaywatch.notify.notices import PREFIX
from support.waiting import wait_for
from test_daemon_faults import config, messages, started, stop


def notifying(tmp_path: Path, url: str, postfix: str = "") -> str:
    """The daemon's config text: an alert for 3 messages of one sender, told to `url` at once."""
    text = config(tmp_path, extra={"rules.sender": {"threshold": 3},
                                   "notify": {"urls": [url], "coalesce": "1s", "cooldown": "1s"}}).read_text()
    return text.replace('local_domains = ["woodelf.org"]\n', f'local_domains = ["woodelf.org"]\n{postfix}')


def reload(proc, err: Path, said: str) -> None:
    before = err.read_text().count(said)
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: err.read_text().count(said) > before, what=said)


def test_sighup_sends_the_next_notice_to_the_new_endpoint(tmp_path, sink):
    cfg = tmp_path / "rw.toml"
    cfg.write_text(notifying(tmp_path, sink.url("json", "/old")))
    err = tmp_path / "daemon.err"
    proc = started(cfg, err)
    try:
        cfg.write_text(notifying(tmp_path, sink.url("json", "/new")))
        reload(proc, err, "configuration reloaded")
        (tmp_path / "mail.log").write_text(messages(3, client="203.0.113.61", sender="a@woodelf.org"))
        [told] = sink.wait_for("/new", 1, timeout=15)
        assert told["title"] == f"{PREFIX}alert sender a@woodelf.org"
        assert sink.to("/old") == []
    finally:
        stop(proc)


def test_sighup_reads_lines_under_the_new_syslog_name(tmp_path, sink):
    cfg = tmp_path / "rw.toml"
    cfg.write_text(notifying(tmp_path, sink.url("json", "/push"), 'syslog_names = ["postfix-in"]\n'))
    err = tmp_path / "daemon.err"
    proc = started(cfg, err)
    maillog = tmp_path / "mail.log"
    try:
        cfg.write_text(notifying(tmp_path, sink.url("json", "/push"), 'syslog_names = ["postfix-out"]\n'))
        reload(proc, err, "configuration reloaded")
        renamed = messages(3, client="203.0.113.62", sender="b@woodelf.org").replace(" postfix/", " postfix-out/")
        maillog.write_text(renamed)
        [told] = sink.wait_for("/push", 1, timeout=15)
        assert told["title"] == f"{PREFIX}alert sender b@woodelf.org"
    finally:
        stop(proc)


@pytest.mark.parametrize("breaks, reason", [
    # load() takes it; building the blocker refuses a map outside the directories relaywatch may write
    (lambda text, tmp: text.replace(f'hash:{tmp}/clients', f'hash:{tmp}/elsewhere/deeper/clients'),
     "nor in [postfix] map_directories"),
    # a valid configuration whose database the running daemon cannot switch to
    (lambda text, tmp: text.replace(f'database = "{tmp}/state.db"', f'database = "{tmp}/other.db"'),
     "[state] database changed: that takes a restart"),
])
def test_a_new_configuration_that_cannot_be_built_keeps_everything_old(tmp_path, sink, breaks, reason):
    cfg = tmp_path / "rw.toml"
    cfg.write_text(notifying(tmp_path, sink.url("json", "/old")))
    err = tmp_path / "daemon.err"
    proc = started(cfg, err)
    try:
        cfg.write_text(breaks(notifying(tmp_path, sink.url("json", "/new"), 'syslog_names = ["postfix-out"]\n'),
                              tmp_path))
        reload(proc, err, "SIGHUP: keeping the old configuration")
        assert reason in err.read_text() and "configuration reloaded" not in err.read_text()
        (tmp_path / "mail.log").write_text(messages(3, client="203.0.113.63", sender="c@woodelf.org"))
        [told] = sink.wait_for("/old", 1, timeout=15)  # the old targets, the old syslog name
        assert told["title"] == f"{PREFIX}alert sender c@woodelf.org"
        assert sink.to("/new") == []
        assert proc.poll() is None
    finally:
        stop(proc)
