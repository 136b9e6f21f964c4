"""The inline policy service without Postfix: answers from state, the budget, the relaying
history, and a real socket server under malformed and hostile clients."""

from __future__ import annotations

import ipaddress
import socket
import time
from pathlib import Path

import pytest

from relaywatch.config import from_dict
from relaywatch.core.correlate import LocalDomains
from relaywatch.core.inline import Blocked, Budget, InlinePolicy, parse_request
from relaywatch.model import ConfigError, Relayed
from relaywatch.policyd import MAX_REQUEST, InlineService, PolicyServer
from relaywatch.store.relayers import RelayHistory, day_number
from support.postfix_rig import free_port

T0 = 1_700_000_000.0


def request(client: str = "218.144.108.161", recipient: str = "victim@hanmail.example", sasl: str = "",
            state: str = "RCPT") -> bytes:
    return (f"request=smtpd_access_policy\nprotocol_state={state}\nprotocol_name=ESMTP\nclient_address={client}\n"
            f"client_name=unknown\nhelo_name=x\nsender=journeypark@hananet.example\nrecipient={recipient}\n"
            f"sasl_username={sasl}\nqueue_id=\ninstance=1.2.3\n").encode()


def policy(limit: int = 10, local: tuple[str, ...] = ("example.org",), **kw) -> InlinePolicy:
    return InlinePolicy(LocalDomains(local, known=True), Budget(limit, 600), **kw)


def answers(p: InlinePolicy, n: int, t: float = T0, **kw) -> list[str]:
    return [p.answer(parse_request(request(**kw)), t + i)[0].split()[0] for i in range(n)]


def test_requests_relaywatch_cannot_read_get_dunno():
    for raw in (b"", b"\x00\xff\xfe" * 100, b"request=smtpd_access_policy\n", request(client="999.1.1.1"),
                request(client="unknown"), request().replace(b"smtpd_access_policy", b"junk"),
                b"=\n==\nrequest\n", request(recipient="\udcff".encode("utf-8", "surrogatepass"))):
        assert policy().answer(parse_request(raw), T0)[0] == "DUNNO", raw


def test_a_blocked_client_subnet_or_login_is_refused_and_only_they():
    p = policy()
    p.blocked = Blocked.of([("client", "203.0.113.5"), ("subnet", "218.144.0.0/16"), ("sasl_user", "alice"),
                            ("subnet", "2001:db8:5::/48"), ("sender", "x@y")])
    assert p.answer(parse_request(request("218.144.108.161", "a@example.org")), T0)[0].startswith("REJECT 5.7.1")
    assert p.answer(parse_request(request("218.144.255.1")), T0)[0].startswith("REJECT")
    assert p.answer(parse_request(request("203.0.113.5")), T0)[0].startswith("REJECT")
    assert p.answer(parse_request(request("2001:db8:5:ffff::1")), T0)[0].startswith("REJECT")
    assert p.answer(parse_request(request("61.1.1.1", sasl="alice")), T0)[0].startswith("REJECT")
    for ok in ("218.145.0.1", "203.0.113.6", "2001:db8:6::1"):
        assert p.answer(parse_request(request(ok, "a@example.org")), T0)[0] == "DUNNO"


def test_an_unknown_relayer_gets_its_budget_then_a_defer_and_one_alert():
    p = policy()
    got = [p.answer(parse_request(request()), T0 + i) for i in range(25)]
    assert [a.split()[0] for a, _ in got] == ["DUNNO"] * 10 + ["DEFER_IF_PERMIT"] * 15
    assert got[10][0].startswith("DEFER_IF_PERMIT 4.7.1 ")
    crossed = [c for _, c in got if c is not None]
    assert len(crossed) == 1 and crossed[0].target == "218.144.108.161" and crossed[0].kind == "client"
    assert crossed[0].count == 10 and "over budget" in crossed[0].evidence[-1]
    assert answers(p, 1, T0 + 700)[0] == "DUNNO"  # the window slid


def test_rotating_clients_of_one_24_share_its_budget_but_a_lan_does_not():
    p = policy()
    assert answers(p, 10, client="218.144.108.1") == ["DUNNO"] * 10
    assert answers(p, 1, T0 + 20, client="218.144.108.99") == ["DEFER_IF_PERMIT"]
    assert answers(p, 1, T0 + 20, client="218.144.109.99") == ["DUNNO"]
    lan = policy()
    for i in range(1, 30):
        assert answers(lan, 1, T0 + i, client=f"192.168.1.{i}") == ["DUNNO"]
    v6 = policy()
    got = [v6.answer(parse_request(request(f"2a00:1450:4001:81c::{i:x}")), T0 + i)[0].split()[0] for i in range(12)]
    assert got == ["DUNNO"] * 10 + ["DEFER_IF_PERMIT"] * 2


def test_known_authenticated_allowed_and_local_mail_keep_the_normal_thresholds():
    p = policy(allow=[ipaddress.ip_network("10.0.0.0/8")], known_networks=[ipaddress.ip_network("61.0.0.0/16")])
    p.known = frozenset({"218.144.108.161", "2a00:1450:4001:81c::/64"})
    assert set(answers(p, 30)) == {"DUNNO"}
    assert set(answers(p, 30, client="2a00:1450:4001:81c::99")) == {"DUNNO"}
    assert set(answers(p, 30, client="61.0.5.5")) == {"DUNNO"}
    assert set(answers(p, 30, client="10.1.1.1")) == {"DUNNO"}
    assert set(answers(p, 30, client="61.1.1.1", sasl="bob")) == {"DUNNO"}
    assert set(answers(p, 30, client="61.1.1.2", recipient="postmaster@example.org")) == {"DUNNO"}
    assert set(answers(p, 5, client="61.1.1.3", state="END-OF-MESSAGE")) == {"DUNNO"}


def test_unknown_local_domains_turn_the_budget_off_but_not_the_blocks():
    p = InlinePolicy(LocalDomains(), Budget(10, 600))
    p.blocked = Blocked.of([("client", "61.1.1.1")])
    assert set(answers(p, 30)) == {"DUNNO"}
    assert answers(p, 1, client="61.1.1.1") == ["REJECT"]


def test_the_service_and_the_log_count_the_same_recipients_once():
    p = policy()
    assert answers(p, 6) == ["DUNNO"] * 6
    for i in range(6):  # the log shows the same six recipients relayed
        p.logged("218.144.108.161", None, T0 + 10 + i)
    assert answers(p, 5, T0 + 20) == ["DUNNO"] * 4 + ["DEFER_IF_PERMIT"]
    q = policy()  # what the service did not see (it was down) counts from the log
    for i in range(10):
        q.logged("218.144.108.161", None, T0 + i)
    q.logged("218.144.108.161", "alice", T0)  # authenticated: not counted
    assert answers(q, 1, T0 + 20) == ["DEFER_IF_PERMIT"]


def test_the_budget_keeps_a_bounded_number_of_keys():
    b = Budget(10, 600, max_keys=1000)
    p = InlinePolicy(LocalDomains((), known=True), b)
    for i in range(20_000):
        p.answer(parse_request(request(f"2a00:{i:x}::1")), T0 + i * 0.01)
    assert len(b._answered) <= 1000 and len(b._evidence) <= 2000


def test_relay_history_knows_a_client_from_an_earlier_day_without_strikes(tmp_path: Path):
    h = RelayHistory(tmp_path / "state.db")
    yesterday, today = T0 - 86400, T0
    h.saw("61.1.1.1", yesterday)
    h.saw("61.1.1.2", yesterday)
    h.strike("61.1.1.2", yesterday)
    h.saw("61.1.1.3", today)
    h.flush()
    h.close()
    h = RelayHistory(tmp_path / "state.db")
    assert h.known(day_number(today)) == {"61.1.1.1"}
    assert h.known(day_number(today) + 1) == {"61.1.1.1", "61.1.1.3"}
    h.close()


def test_a_relayed_fact_feeds_the_history_and_the_budget(tmp_path: Path):
    service = InlineService("127.0.0.1:1", policy(local=()), RelayHistory(tmp_path / "s.db"), clock=lambda: T0)
    for i in range(10):
        service.observe(Relayed(T0 + i, "Q1", "61.2.2.2", None, "a@b", f"v{i}@hanmail.example", "hanmail.example",
                                "sent"))
    assert service.handle(request("61.2.2.2")).startswith(b"action=DEFER_IF_PERMIT")
    service.history.flush()
    assert service.history.known(day_number(T0) + 1) == {"61.2.2.2"}
    decisions = service.tick(T0, list)
    assert [(d.rule, d.target, d.action) for d in decisions] == [("inline_budget", "61.2.2.2", "alert")]
    service.history.flush()
    assert service.history.known(day_number(T0) + 1) == frozenset()  # struck: never known
    service.history.close()


def test_policy_config_is_checked_and_names_its_key():
    cfg = from_dict({"policy": {"listen": "127.0.0.1:10040", "budget": 5, "window": "5m", "known": ["61.0.0.0/8"]}})
    assert (cfg.policy_listen, cfg.policy_budget, cfg.policy_window_s) == ("127.0.0.1:10040", 5, 300)
    for bad, key in (({"listen": "0.0.0.0:10040"}, "listen"), ({"listen": "nonsense"}, "listen"),
                     ({"budget": -1}, "budget"), ({"known": ["x"]}, "known"), ({"window": "soon"}, "window"),
                     ({"max_connections": 0}, "max_connections"), ({"colour": 1}, "colour")):
        with pytest.raises(ConfigError, match=key):
            from_dict({"policy": bad})


# --- the real socket server --------------------------------------------------------------------


@pytest.fixture
def server():
    p = policy()
    p.blocked = Blocked.of([("client", "203.0.113.5")])
    service = InlineService(f"127.0.0.1:{free_port()}", p, None, max_connections=200)
    service.start([("client", "203.0.113.5")])
    yield service
    service.close()


def connect(service: InlineService) -> socket.socket:
    host, port = service.server.listen.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def ask(sock: socket.socket, raw: bytes) -> bytes:
    sock.sendall(raw + b"\n")
    out = b""
    while not out.endswith(b"\n\n"):
        chunk = sock.recv(4096)
        if not chunk:
            return out
        out += chunk
    return out


def test_the_server_answers_several_requests_per_connection_in_pieces(server):
    with connect(server) as s:
        assert ask(s, request("203.0.113.5")).startswith(b"action=REJECT 5.7.1 ")
        raw = request("61.3.3.3") + b"\n"
        for i in range(0, len(raw), 7):  # one byte-trickle request, then two in one write
            s.sendall(raw[i:i + 7])
            time.sleep(0.001)
        assert s.recv(4096) == b"action=DUNNO\n\n"
        s.sendall(raw + raw)
        got = b""
        while got.count(b"\n\n") < 2:
            got += s.recv(4096)
        assert got == b"action=DUNNO\n\n" * 2


def test_hostile_clients_get_dunno_or_a_dropped_connection_and_the_server_lives(server):
    with connect(server) as s:  # binary and missing fields
        assert ask(s, bytes(range(1, 256)).replace(b"\n", b"") + b"\n") == b"action=DUNNO\n\n"
        assert ask(s, b"request=smtpd_access_policy\n") == b"action=DUNNO\n\n"
    with connect(server) as s:  # an endless attribute
        s.sendall(b"request=smtpd_access_policy\nsender=" + b"a" * (MAX_REQUEST + 10))
        s.settimeout(5)
        assert s.recv(4096) == b""
    flood = []
    for _ in range(600):  # more connections than the cap: the rest are closed at once
        flood.append(socket.create_connection(("127.0.0.1", int(server.server.listen.rsplit(":", 1)[1]))))
    time.sleep(0.2)
    assert len(server.server.conns) <= 200
    closed = 0
    for s in flood[-100:]:
        s.settimeout(5)
        try:
            closed += s.recv(1) == b""
        except ConnectionResetError:
            closed += 1
    assert closed == 100
    for s in flood:
        s.close()
    time.sleep(0.2)
    with connect(server) as s:
        assert ask(s, request("203.0.113.5")).startswith(b"action=REJECT")
    assert server.server._thread is not None and server.server._thread.is_alive()


def test_a_bug_in_answering_is_a_dunno_not_a_dead_server(server, monkeypatch):
    def broken(req, now):
        raise RuntimeError("bug")
    monkeypatch.setattr(server.policy, "answer", broken)
    with connect(server) as s:
        assert ask(s, request()) == b"action=DUNNO\n\n"
        assert ask(s, request()) == b"action=DUNNO\n\n"
    assert server.server.failed == 2


def test_a_unix_socket_is_created_private_and_removed(tmp_path: Path):
    path = tmp_path / "policy"
    path_s = str(path)
    service = InlineService(path_s, policy(), None)
    service.start([])
    try:
        assert path.is_socket() and path.stat().st_mode & 0o777 == 0o660
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path_s)
            assert ask(s, request(recipient="x@example.org")) == b"action=DUNNO\n\n"
    finally:
        service.close()
    assert not path.exists()
    stale = PolicyServer(path_s, lambda raw: b"action=DUNNO\n\n")  # a socket left by SIGKILL is replaced
    socket.socket(socket.AF_UNIX).bind(path_s)
    stale.start()
    stale.stop()


# --- the audit ----------------------------------------------------------------------------------


def policy_findings(restrictions: str, **params: str) -> set[str]:
    from relaywatch.postfix.audit import audit
    from relaywatch.postfix.audit_blocks import AuditMaps
    p = {"mynetworks": "127.0.0.0/8", "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
         "smtpd_recipient_restrictions": restrictions, **params}
    found = audit(p, {}, AuditMaps("hash:/etc/postfix/c", None, "127.0.0.1:10040"))
    return {f.code for f in found if f.code.startswith("policy")}


def test_the_audit_warns_when_the_service_fails_closed_or_comes_after_permit_mynetworks():
    ok = "check_policy_service { inet:127.0.0.1:10040, default_action=DUNNO, timeout=2s }, permit_mynetworks"
    assert policy_findings(ok) == {"policy-service"}
    assert policy_findings("check_policy_service inet:127.0.0.1:10040, permit_mynetworks") == {
        "policy-service", "policy-fail-closed"}
    assert policy_findings("check_policy_service inet:127.0.0.1:10040",
                           smtpd_policy_service_default_action="DUNNO") == {"policy-service"}
    assert policy_findings("check_policy_service { inet:127.0.0.1:10040, default_action = DEFER }") == {
        "policy-service", "policy-fail-closed"}
    assert policy_findings("permit_mynetworks, " + ok.split(", permit")[0]) == {"policy-service",
                                                                              "policy-after-permit"}
    assert policy_findings("permit_mynetworks, check_policy_service inet:127.0.0.1:9998") == {"policy-unused"}


def test_the_audits_policy_fix_keeps_the_admins_own_list():
    """The fix used to be a whole new smtpd_recipient_restrictions: pasted in, it threw away the admin's
    check_sasl_access, RBLs and postgrey (issue 16 item 4's trap, again)."""
    from relaywatch.postfix.audit import audit
    from relaywatch.postfix.audit_blocks import AuditMaps
    own = ("check_sasl_access hash:/etc/postfix/relaywatch_sasl, permit_mynetworks, reject_unauth_destination, "
           "reject_rbl_client zen.spamhaus.org, check_policy_service inet:127.0.0.1:10023")
    p = {"mynetworks": "127.0.0.0/8", "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
         "smtpd_recipient_restrictions": own}
    maps = AuditMaps("hash:/etc/postfix/c", None, "127.0.0.1:10040")
    [unused] = [f for f in audit(p, {}, maps) if f.code == "policy-unused"]
    assert unused.fix == ("smtpd_recipient_restrictions = check_policy_service { inet:127.0.0.1:10040, "
                          f"default_action=DUNNO, timeout=2s, try_limit=1 }}, {own}\npostfix reload")
    closed = {**p, "smtpd_recipient_restrictions": "permit_mynetworks, check_policy_service inet:127.0.0.1:10040, "
                                                   "reject_rbl_client zen.spamhaus.org"}
    fixes = {f.code: f.fix for f in audit(closed, {}, maps)}
    assert fixes["policy-after-permit"] == fixes["policy-fail-closed"] == (
        "smtpd_recipient_restrictions = check_policy_service { inet:127.0.0.1:10040, default_action=DUNNO, "
        "timeout=2s, try_limit=1 }, permit_mynetworks, reject_rbl_client zen.spamhaus.org\npostfix reload")
