"""Shared fixtures. `postfix_instance`: a private, running Postfix (tests/support/postfix_rig.py);
`sink` and `hang`: real HTTP endpoints on 127.0.0.1 for notifications (tests/support/http_sink.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from support.http_sink import Hang, Sink
from support.postfix_rig import PostfixRig, postfix_installed


@pytest.fixture(scope="module")
def postfix_instance(request: pytest.FixtureRequest) -> Iterator[PostfixRig]:
    """One private Postfix per test module (and per map type: parametrize it
    indirectly with "hash", "cidr", ...). Skips without Postfix or root, unless
    RELAYWATCH_REQUIRE_POSTFIX=1 (CI), where that is a failure."""
    missing = None
    if not postfix_installed():
        missing = "Debian's postfix is not installed (/usr/sbin/postfix, postmap, smtp-sink)"
    elif os.geteuid() != 0:
        missing = "a private Postfix instance needs root"
    if missing:
        if os.environ.get("RELAYWATCH_REQUIRE_POSTFIX") == "1":
            pytest.fail(f"RELAYWATCH_REQUIRE_POSTFIX=1 but {missing}", pytrace=False)
        pytest.skip(missing)
    rig = PostfixRig.start(getattr(request, "param", "hash"))
    try:
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def sink() -> Iterator[Sink]:
    """Records what Apprise's json:// and form:// targets post; a path with "fail" answers 500."""
    s = Sink()
    yield s
    s.server.shutdown()
    s.server.server_close()


@pytest.fixture
def hang() -> Iterator[Hang]:
    """Accepts connections and never answers."""
    h = Hang()
    yield h
    h.close()
