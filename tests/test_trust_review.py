"""A postmaster's review of issue 12 (trust): defects found by replaying hand-made logs of
real deployment shapes, each pinned by a test that failed before its fix."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from relaywatch.postfix import postconf
from relaywatch.postfix.postconf import postfix_domains
from support.postfix_rig import POSTMAP, postfix_installed

needs_postfix = pytest.mark.skipif(
    not postfix_installed() and os.environ.get("RELAYWATCH_REQUIRE_POSTFIX") != "1",
    reason="Debian's postfix (postconf, postmap) is not installed")


@needs_postfix
def test_a_table_postfix_cannot_read_is_not_asked_for_every_domain(tmp_path: Path, monkeypatch) -> None:
    """`virtual_alias_maps = hash:...` whose .db is missing (or unreadable by relaywatch): each
    failing `postmap -q` takes a second (Postfix sleeps before a fatal exit). Asked once per
    delivery, it stalled a replay of 960 deliveries for 16 minutes, and would stall the daemon."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "relay_domains.re").write_text("/^(sub\\.)?example\\.(org|net)$/ OK\n")
    (etc / "main.cf").write_text(
        "compatibility_level = 3.6\nmyhostname = gw.example.org\nmydestination = $myhostname, localhost\n"
        f"virtual_alias_maps = hash:{etc}/virtual\nrelay_domains = regexp:{etc}/relay_domains.re\n")
    calls = tmp_path / "calls"
    wrapper = tmp_path / "postmap"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec {POSTMAP} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(postconf, "POSTMAP", str(wrapper))
    domains = postfix_domains(etc)
    assert domains.accepts("sub.example.net") is True  # the regexp relay_domains still answers
    for i in range(5):
        assert domains.accepts(f"d{i}.example.com") is None  # the alias table cannot say
    asked_virtual = [line for line in calls.read_text().splitlines() if "virtual" in line]
    assert len(asked_virtual) == 1
