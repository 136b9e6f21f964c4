"""The audit: pure cases on parameter dicts, then real configuration directories via `postconf -c`."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from relaywatch.model import PostfixError
from relaywatch.postfix import audit_eval as ev
from relaywatch.postfix import mynetworks as mn
from relaywatch.postfix.audit import (
    Finding,
    audit,
    exit_code,
    format_text,
    run_audit,
    to_json,
)
from relaywatch.postfix.audit_blocks import AuditMaps, block_ineffective_reason

REJECT_LIST = "hash:/etc/postfix/reject_list"
SASL_MAP = "hash:/etc/postfix/sasl_block"
MAPS = AuditMaps(REJECT_LIST, SASL_MAP)
# The seed: mynetworks with two public /8s, and permit_mynetworks ahead of the reject_list.
SEED = {
    "mynetworks": "192.168.0.0/24, 127.0.0.0/8, 210.0.0.0/8, 218.0.0.0/8",
    "smtpd_client_restrictions": f"permit_mynetworks,check_client_access {REJECT_LIST},permit",
    "smtpd_relay_restrictions": "",
    "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination",
    "default_database_type": "hash",
    "smtpd_sasl_auth_enable": "no",
}
GOOD = {
    **SEED,
    "mynetworks": "127.0.0.0/8, [::1]/128, 93.184.216.34/32",
    "smtpd_client_restrictions": f"check_client_access {REJECT_LIST}, permit_mynetworks",
    "smtpd_relay_restrictions": "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination",
    "smtpd_recipient_restrictions": "",
}


def codes(findings: list[Finding], severity: str | None = None) -> set[str]:
    return {f.code for f in findings if severity in (None, f.severity)}


def one(findings: list[Finding], code: str) -> Finding:
    [found] = [f for f in findings if f.code == code]
    return found


# --- mynetworks ----------------------------------------------------------------------------


def test_seed_counts_the_two_slash_eights_as_33_million_public_addresses() -> None:
    found = audit(SEED, {}, AuditMaps(REJECT_LIST))
    f = one(found, "mynetworks-public")
    assert f.severity == "error"
    assert f.details["public_ipv4"] == 33_554_432
    assert f.details["entries"] == {"210.0.0.0/8": 16_777_216, "218.0.0.0/8": 16_777_216}
    assert "mynetworks = 192.168.0.0/24, 127.0.0.0/8" in f.fix


def test_correct_config_has_no_error_and_names_the_single_public_host() -> None:
    found = audit(GOOD, {}, AuditMaps(REJECT_LIST))
    assert codes(found, "error") == set()
    assert one(found, "mynetworks-public-small").details["public_ipv4"] == 1
    assert exit_code(found) == 0


@pytest.mark.parametrize("mynetworks", ["127.0.0.0/8, 0.0.0.0/0", "[::]/0", "0.0.0.0/1, 128.0.0.0/1"])
def test_the_whole_internet(mynetworks: str) -> None:
    found = audit({**GOOD, "mynetworks": mynetworks}, {}, AuditMaps())
    assert "mynetworks-everything" in codes(found, "error")
    assert "mynetworks-public" not in codes(found)


def test_ipv6_counts_and_documentation_space_is_not_public() -> None:
    found = audit({**GOOD, "mynetworks": "[::1]/128, [2001:db8::]/32, [2a00:1450::]/32"}, {}, AuditMaps())
    f = one(found, "mynetworks-public")
    assert f.details["public_ipv6"] == 2**96
    assert f.details["public_ipv4"] == 0
    small = audit({**GOOD, "mynetworks": "[2001:db8::]/32, [2a00:1450:4001::]/64"}, {}, AuditMaps())
    assert one(small, "mynetworks-public-small").severity == "info"


def test_negation_first_match_wins() -> None:
    before = mn.evaluate("!218.144.108.161, 218.0.0.0/8")
    assert mn.size(mn.inter(list(before.trusted), mn.PUBLIC)) == 2**24 - 1
    assert mn.membership(before, ipaddress.ip_network("218.144.108.161")) == "no"
    after = mn.evaluate("218.0.0.0/8, !218.144.108.161")
    assert mn.membership(after, ipaddress.ip_network("218.144.108.161")) == "yes"
    found = audit({**GOOD, "mynetworks": "218.0.0.0/8, !218.144.108.161"}, {}, AuditMaps())
    assert "!218.144.108.161" in one(found, "mynetworks-unchecked").details["entries"]
    assert "!218.144.108.161" not in one(found, "relay-selftest").details["services"]["main.cf"]["relayed"]
    assert "218.144.108.161" in one(found, "relay-selftest").details["services"]["main.cf"]["relayed"]


def test_host_bits_are_a_lookup_error_and_the_fix_is_the_host_not_the_slash_eight() -> None:
    trust = mn.evaluate("127.0.0.0/8, 210.1.2.3/8")
    assert mn.membership(trust, ipaddress.ip_network("127.0.0.1")) == "yes"
    assert mn.membership(trust, ipaddress.ip_network("210.9.9.9")) == "error"
    assert mn.membership(trust, ipaddress.ip_network("8.8.8.8")) == "error"  # every later IPv4 client: 451
    assert mn.membership(trust, ipaddress.ip_network("2a00::1")) == "no"  # only IPv4 clients reach the error
    found = audit({**GOOD, "mynetworks": "127.0.0.0/8, 210.1.2.3/8"}, {}, AuditMaps())
    f = one(found, "mynetworks-invalid")
    assert "replace 210.1.2.3/8 with 210.1.2.3 " in f.fix and "210.0.0.0/8" in f.fix
    assert "mynetworks-public" not in codes(found)  # Postfix 3 trusts none of it: it answers 451
    assert one(found, "relay-selftest").severity == "info"


def test_unbracketed_ipv6_and_partial_network_break_lookups() -> None:
    found = audit({**GOOD, "mynetworks": "127.0.0.0/8, 2001:db8::/32, 192.168.1/24"}, {}, AuditMaps())
    f = one(found, "mynetworks-invalid")
    assert "replace 2001:db8::/32 with [2001:db8::]/32" in f.fix
    assert f.details["entries"] == ["2001:db8::/32", "192.168.1/24"]
    trust = mn.evaluate("127.0.0.0/8, 192.168.1/24")
    assert mn.membership(trust, ipaddress.ip_network("8.8.8.8")) == "error"
    assert mn.membership(trust, ipaddress.ip_network("2a00::1")) == "no"
    assert mn.membership(mn.evaluate("192.168.1"), ipaddress.ip_network("192.168.1.5")) == "no"


def test_tables_hostnames_files_and_partial_octets_are_reported_not_crashed_on() -> None:
    value = "127.0.0.0/8, hash:/etc/postfix/network_table, example.com, /etc/postfix/nets, 192.168.1"
    found = audit({**SEED, "mynetworks": value}, {}, AuditMaps(REJECT_LIST))
    entries = one(found, "mynetworks-unchecked").details["entries"]
    assert set(entries) == {"hash:/etc/postfix/network_table", "example.com", "/etc/postfix/nets", "192.168.1"}
    selftest = one(found, "relay-selftest")
    assert selftest.severity == "info"  # nothing is *known* to relay ...
    assert len(selftest.details["services"]["main.cf"]["unknown"]) == len(mn.SAMPLES)  # ... but nothing is proven
    reason = block_ineffective_reason({**SEED, "mynetworks": value}, {}, "client", "8.8.8.8", AuditMaps(REJECT_LIST))
    assert reason is not None and "possibly inside mynetworks" in reason and "cannot evaluate" in reason


def test_mynetworks_style_only_when_mynetworks_is_derived() -> None:
    params = {**GOOD, "mynetworks_style": "class", "mynetworks": "127.0.0.0/8 93.0.0.0/8"}
    assert "mynetworks-style" in codes(audit(params, {}, AuditMaps(), explicit=frozenset()))
    assert "mynetworks-style" not in codes(audit(params, {}, AuditMaps(), explicit=frozenset({"mynetworks"})))
    host = {**params, "mynetworks_style": "host", "mynetworks": "127.0.0.1/32 93.184.216.34/32"}
    assert "mynetworks-style" not in codes(audit(host, {}, AuditMaps(), explicit=frozenset()))


# --- restriction order ---------------------------------------------------------------------


def test_seed_ordering_names_list_position_and_corrected_line() -> None:
    f = one(audit(SEED, {}, AuditMaps(REJECT_LIST)), "client-block-bypassed-mynetworks")
    assert f.severity == "error"
    assert "smtpd_client_restrictions position 1 `permit_mynetworks` permits before the map at position 2" in (
        f.explanation)
    assert f.fix.splitlines()[0] == (
        f"smtpd_client_restrictions = check_client_access {REJECT_LIST}, permit_mynetworks, permit")


@pytest.mark.parametrize("list_name", ["smtpd_client_restrictions", "smtpd_relay_restrictions",
                                       "smtpd_recipient_restrictions", "smtpd_sender_restrictions"])
def test_permit_mynetworks_before_the_map_in_each_list(list_name: str) -> None:
    params = {**GOOD, "smtpd_client_restrictions": "", "smtpd_relay_restrictions": "",
              "smtpd_recipient_restrictions": "reject_unauth_destination",
              list_name: f"permit_mynetworks, check_client_access {REJECT_LIST}, reject_unauth_destination"}
    f = one(audit(params, {}, AuditMaps(REJECT_LIST)), "client-block-bypassed-mynetworks")
    assert f.details["references"] == [[list_name, 2, f"check_client_access {REJECT_LIST}"]]
    assert f.fix.startswith(f"{list_name} = check_client_access {REJECT_LIST}, permit_mynetworks,")


@pytest.mark.parametrize("client, relay, recipient", [
    # A reject in an earlier list wins over a permit in a later one.
    (f"check_client_access {REJECT_LIST}", "permit_mynetworks, reject_unauth_destination", ""),
    # A permit ends only its own list: the map in the recipient list is still read.
    ("permit_mynetworks", "permit_mynetworks, reject_unauth_destination",
     f"check_client_access {REJECT_LIST}, permit_mynetworks"),
    # A bare table in smtpd_client_restrictions is check_client_access.
    (f"{REJECT_LIST}, permit_mynetworks", "permit_mynetworks, reject_unauth_destination", ""),
])
def test_orderings_where_the_block_works(client: str, relay: str, recipient: str) -> None:
    params = {**GOOD, "smtpd_client_restrictions": client, "smtpd_relay_restrictions": relay,
              "smtpd_recipient_restrictions": recipient}
    found = audit(params, {}, AuditMaps(REJECT_LIST))
    assert not {c for c in codes(found) if c.startswith("client-")}
    assert block_ineffective_reason(params, {}, "client", "127.0.0.1", AuditMaps(REJECT_LIST)) is None


@pytest.mark.parametrize("client, code", [
    (f"permit, check_client_access {REJECT_LIST}", "client-block-bypassed"),
    (f"warn_if_reject check_client_access {REJECT_LIST}", "client-block-bypassed"),
    ("permit_mynetworks", "client-map-unreferenced"),
])
def test_orderings_that_disable_the_block_for_everyone(client: str, code: str) -> None:
    params = {**GOOD, "smtpd_client_restrictions": client}
    f = one(audit(params, {}, AuditMaps(REJECT_LIST)), code)
    assert f.severity == "error"
    assert "client-block-bypassed-mynetworks" not in codes(audit(params, {}, AuditMaps(REJECT_LIST)))
    assert f.fix.startswith(f"smtpd_client_restrictions = check_client_access {REJECT_LIST}")


def test_helo_restrictions_bind_only_when_helo_is_required() -> None:
    params = {**GOOD, "smtpd_client_restrictions": "", "smtpd_helo_restrictions": f"check_client_access {REJECT_LIST}"}
    assert "client-block-bypassed" in codes(audit(params, {}, AuditMaps(REJECT_LIST)))  # a client may skip HELO
    required = {**params, "smtpd_helo_required": "yes"}
    assert not {c for c in codes(audit(required, {}, AuditMaps(REJECT_LIST))) if c.startswith("client-")}


def test_permit_auth_destination_lets_a_blocked_client_deliver_inbound() -> None:
    params = {**GOOD, "smtpd_client_restrictions": "",
              "smtpd_recipient_restrictions": f"permit_auth_destination, check_client_access {REJECT_LIST}"}
    assert "client-block-bypassed" in codes(audit(params, {}, AuditMaps(REJECT_LIST)), "error")


def test_restriction_class_is_expanded_in_place() -> None:
    params = {**GOOD, "smtpd_restriction_classes": "local_first",
              "local_first": f"permit_mynetworks, check_client_access {REJECT_LIST}",
              "smtpd_client_restrictions": "local_first"}
    f = one(audit(params, {}, AuditMaps(REJECT_LIST)), "client-block-bypassed-mynetworks")
    assert "(from class local_first)" in f.explanation


def test_loopback_only_mynetworks_makes_the_bypass_a_warning() -> None:
    params = {**SEED, "mynetworks": "127.0.0.0/8 [::1]/128"}
    assert one(audit(params, {}, AuditMaps(REJECT_LIST)), "client-block-bypassed-mynetworks").severity == "warning"


def test_map_type_mismatch_and_unreferenced_sasl_map() -> None:
    params = {**GOOD, "smtpd_client_restrictions": "check_client_access cidr:/etc/postfix/reject_list",
              "smtpd_sasl_auth_enable": "yes"}
    found = audit(params, {}, MAPS)
    f = one(found, "map-type-mismatch")
    assert f.details["postfix"] == "cidr:/etc/postfix/reject_list"
    assert "client-map-unreferenced" not in codes(found)  # same file: Postfix does read it
    assert "sasl-map-unreferenced" in codes(found, "error")
    assert "sasl-map-unused" in codes(audit(GOOD, {}, MAPS))


SUBMISSION = {"submission/inet": {
    "syslog_name": "postfix/submission",
    "smtpd_sasl_auth_enable": "yes",
    "smtpd_client_restrictions": "$mua_client_restrictions",
    "smtpd_recipient_restrictions": f"permit_sasl_authenticated, check_sasl_access {SASL_MAP}, reject",
}}


def test_submission_override_permits_sasl_before_check_sasl_access() -> None:
    params = {**GOOD, "mua_client_restrictions": "permit_sasl_authenticated, reject"}
    found = audit(params, SUBMISSION, MAPS)
    f = one(found, "sasl-block-bypassed")
    assert f.details["scope"] == "submission/inet"
    assert f.fix.splitlines()[0] == ("master.cf, service submission/inet:  -o { smtpd_recipient_restrictions = "
                                     f"check_sasl_access {SASL_MAP}, permit_sasl_authenticated, reject }}")
    # $mua_client_restrictions was expanded: authenticated clients skip the client map on submission.
    assert one(found, "client-block-bypassed-sasl").severity == "warning"
    assert "smtpd_client_restrictions position 1 `permit_sasl_authenticated`" in one(
        found, "client-block-bypassed-sasl").explanation
    reason = block_ineffective_reason(params, SUBMISSION, "sasl_user", "alice", MAPS)
    assert reason is not None and "submission/inet" in reason
    fixed = {"submission/inet": {**SUBMISSION["submission/inet"], "smtpd_recipient_restrictions":
                                 f"check_sasl_access {SASL_MAP}, permit_sasl_authenticated, reject"}}
    assert block_ineffective_reason(params, fixed, "sasl_user", "alice", MAPS) is None
    assert "sasl-block-bypassed" not in codes(audit(params, fixed, MAPS))


def test_loopback_reinjection_service_is_left_alone() -> None:
    services = {"127.0.0.1:10025/inet": {"mynetworks": "127.0.0.0/8", "smtpd_relay_restrictions": "",
                                         "smtpd_client_restrictions": "permit_mynetworks, reject",
                                         "smtpd_recipient_restrictions": "permit_mynetworks, reject"}}
    found = audit(GOOD, services, AuditMaps(REJECT_LIST))
    assert [f.code for f in found if f.details.get("scope") == "127.0.0.1:10025/inet"] == []
    assert list(one(found, "relay-selftest").details["services"]) == ["main.cf"]
    exposed = {"2525/inet": services["127.0.0.1:10025/inet"]}
    assert one(audit(GOOD, exposed, AuditMaps(REJECT_LIST)), "client-block-bypassed-mynetworks").severity == "warning"


def test_block_warning_skips_the_loopback_reinjection_service_like_the_audit() -> None:
    """`relaywatch block` said "Postfix will not enforce this block ... 127.0.0.1:10025/inet" while
    `audit` and `install-maps` leave that service alone: no blocked client ever reaches it."""
    lists = {"mynetworks": "10.0.0.0/8", "smtpd_client_restrictions": "permit_mynetworks, reject",
             "smtpd_recipient_restrictions": "permit_mynetworks, reject"}
    reinjection = {"127.0.0.1:10025/inet": lists}
    assert block_ineffective_reason(GOOD, reinjection, "client", "10.1.2.3", AuditMaps(REJECT_LIST)) is None
    reason = block_ineffective_reason(GOOD, {"2525/inet": lists}, "client", "10.1.2.3", AuditMaps(REJECT_LIST))
    assert reason is not None and "2525/inet" in reason


# --- open relay structure and self-test -----------------------------------------------------


@pytest.mark.parametrize("relay, recipient, open_", [
    ("", "permit_mynetworks, permit", True),
    ("permit, reject_unauth_destination", "", True),
    ("warn_if_reject reject_unauth_destination", "", True),
    ("permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination", "", False),
    ("permit_mynetworks", "reject_unauth_destination", False),
    ("permit_mynetworks, permit", "reject_unauth_destination", False),  # a permit does not skip the next list
])
def test_relay_guard(relay: str, recipient: str, open_: bool) -> None:
    params = {**GOOD, "smtpd_client_restrictions": "", "smtpd_relay_restrictions": relay,
              "smtpd_recipient_restrictions": recipient}
    found = audit(params, {}, AuditMaps())
    assert ("relay-unguarded" in codes(found, "error")) is open_
    relayed = one(found, "relay-selftest").details["services"]["main.cf"]["relayed"]
    assert (len(relayed) == len(mn.SAMPLES)) is open_


def test_selftest_names_the_seed_trap_and_extra_addresses() -> None:
    found = audit(SEED, {}, AuditMaps(REJECT_LIST), extra_addresses=("218.1.1.1", "8.8.8.8"))
    f = one(found, "relay-selftest")
    assert f.severity == "error"
    assert f.title.startswith(f"4 of {len(mn.SAMPLES)} sample public addresses")
    res = f.details["services"]["main.cf"]
    assert {"218.144.108.161", "210.196.249.130"} <= set(res["relayed"])
    assert "208.31.42.77" not in res["relayed"]
    assert res["extra_relayed"] == ["218.1.1.1"]
    assert "208.31.42.77" in f.explanation
    assert len(mn.SAMPLES) > 250 and len({s.split(".")[0] for s in mn.SAMPLES if "." in s}) > 200


def test_block_reason_for_client_subnet_and_bad_kind() -> None:
    seed_maps = AuditMaps(REJECT_LIST)
    reason = block_ineffective_reason(SEED, {}, "client", "218.144.108.161", seed_maps)
    assert reason is not None and "inside mynetworks" in reason
    assert f"smtpd_client_restrictions = check_client_access {REJECT_LIST}, permit_mynetworks, permit" in reason
    assert block_ineffective_reason(SEED, {}, "client", "8.8.8.8", seed_maps) is None
    assert block_ineffective_reason(SEED, {}, "subnet", "218.144.0.0/16", seed_maps) is not None
    assert block_ineffective_reason(SEED, {}, "subnet", "8.8.0.0/16", seed_maps) is None
    assert block_ineffective_reason(GOOD, {}, "client", "127.0.0.1", seed_maps) is None
    with pytest.raises(ValueError):
        block_ineffective_reason(SEED, {}, "sender", "x@example.com", seed_maps)
    with pytest.raises(ValueError):
        block_ineffective_reason(SEED, {}, "sasl_user", "alice", seed_maps)  # no sasl map configured


def test_output_formats_and_exit_code() -> None:
    found = audit(SEED, {}, AuditMaps(REJECT_LIST))
    text = format_text(found)
    assert text.index("ERROR") < text.index("relay-selftest")
    assert "      smtpd_client_restrictions = check_client_access" in text
    data = json.loads(to_json(found))
    assert data["exit_code"] == exit_code(found) == 3
    assert data["counts"]["error"] == 3
    assert {f["code"] for f in data["findings"]} == codes(found)


def test_list_tokenizer_keeps_braces_together() -> None:
    assert ev.split_list("a, b\tc {x, y} inline:{ k=v, j=w },d") == ["a", "b", "c", "{x, y}", "inline:{ k=v, j=w }",
                                                                      "d"]


# --- real Postfix configuration directories (postconf -c DIR) -------------------------------


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    if shutil.which("postconf") is None:
        if os.environ.get("RELAYWATCH_REQUIRE_POSTFIX"):
            pytest.fail("postconf not found but RELAYWATCH_REQUIRE_POSTFIX is set")
        pytest.skip("Postfix is not installed")
    shutil.copy("/usr/share/postfix/master.cf.dist", tmp_path / "master.cf")
    return tmp_path


def write_conf(d: Path, main: str, master_extra: str = "", postmap: tuple[str, ...] = ("reject_list",)) -> None:
    (d / "main.cf").write_text(main.replace("DIR", str(d)))
    with open(d / "master.cf", "a") as f:
        f.write(master_extra.replace("DIR", str(d)))
    # Postfix re-reads main.cf in 300 ms naps until its mtime is ~2 s old (a half-written file guard).
    for name in ("main.cf", "master.cf"):
        stat = (d / name).stat()
        os.utime(d / name, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**10))
    for name in postmap:
        (d / name).write_text("192.0.2.9 REJECT\n")
        subprocess.run(["postmap", "-c", str(d), f"hash:{d / name}"], check=True)


def test_real_seed_like_config_reports_both_holes(confdir: Path) -> None:
    write_conf(confdir, "mynetworks = 127.0.0.0/8, 210.0.0.0/8, 218.0.0.0/8\n"
               "smtpd_client_restrictions = permit_mynetworks, check_client_access hash:DIR/reject_list\n")
    found = run_audit(str(confdir), AuditMaps(f"hash:{confdir}/reject_list"))
    errors = codes(found, "error")
    assert {"mynetworks-public", "client-block-bypassed-mynetworks", "relay-selftest"} <= errors
    assert one(found, "mynetworks-public").details["public_ipv4"] == 33_554_432
    assert exit_code(found) == 3
    # No compatibility_level: Postfix's backwards-compatible smtpd_relay_restrictions is empty, and
    # smtpd_recipient_restrictions is empty by default: nothing guards relaying.
    assert "relay-unguarded" in errors


def test_real_correct_config_has_no_error(confdir: Path) -> None:
    write_conf(confdir, "compatibility_level = 3.6\n"
               "mynetworks = 127.0.0.0/8, [::1]/128, 93.184.216.34/32\n"
               "smtpd_client_restrictions = check_client_access hash:DIR/reject_list, permit_mynetworks\n")
    found = run_audit(str(confdir), AuditMaps(f"hash:{confdir}/reject_list"))
    assert codes(found, "error") == set(), format_text(found)
    assert exit_code(found) == 0
    assert one(found, "relay-selftest").title.startswith(f"0 of {len(mn.SAMPLES)}")


def test_real_submission_override_is_found(confdir: Path) -> None:
    write_conf(confdir, "compatibility_level = 3.6\nmynetworks = 127.0.0.0/8\n"
               "mua_client_restrictions = permit_sasl_authenticated, reject\n"
               "smtpd_client_restrictions = check_client_access hash:DIR/reject_list, permit_mynetworks\n",
               "submission inet n - y - - smtpd\n"
               "  -o smtpd_sasl_auth_enable=yes\n"
               "  -o smtpd_client_restrictions=$mua_client_restrictions\n"
               "  -o { smtpd_recipient_restrictions = permit_sasl_authenticated, "
               "check_sasl_access hash:DIR/sasl_block, reject }\n", postmap=("reject_list", "sasl_block"))
    found = run_audit(str(confdir), AuditMaps(f"hash:{confdir}/reject_list", f"hash:{confdir}/sasl_block"))
    f = one(found, "sasl-block-bypassed")
    assert f.details["scope"] == "submission/inet"
    assert f.details["permitted_by"][0][:2] == ["smtpd_client_restrictions", 1]
    assert "client-block-bypassed-sasl" in codes(found)  # needs $mua_client_restrictions expanded
    assert "mynetworks-style" not in codes(found)


def test_real_map_files_forgotten_postmap(confdir: Path) -> None:
    write_conf(confdir, "compatibility_level = 3.6\nmynetworks = 127.0.0.0/8\n"
               "smtpd_client_restrictions = check_client_access hash:DIR/reject_list\n")
    maps = AuditMaps(f"hash:{confdir}/reject_list")
    assert not codes(run_audit(str(confdir), maps)) & {"map-db-stale", "map-db-missing"}
    db = confdir / "reject_list.db"
    os.utime(confdir / "reject_list", ns=(db.stat().st_mtime_ns + 10**9,) * 2)
    assert one(run_audit(str(confdir), maps), "map-db-stale").severity == "error"
    db.unlink()
    assert f"postmap hash:{confdir}/reject_list" in one(run_audit(str(confdir), maps), "map-db-missing").fix


def test_real_mynetworks_style_default_is_derived_from_interfaces(confdir: Path) -> None:
    write_conf(confdir, "mynetworks_style = class\n", postmap=())
    found = run_audit(str(confdir), AuditMaps())
    style = [f for f in found if f.code == "mynetworks-style"]
    mynetworks = subprocess.run(["postconf", "-c", str(confdir), "-hx", "mynetworks"], capture_output=True,
                                text=True, check=True).stdout
    public = mn.inter(list(mn.evaluate(mynetworks).trusted), mn.PUBLIC)
    assert bool(style) is bool(public)  # only when this host has a public interface


def test_real_missing_main_cf_raises(tmp_path: Path, confdir: Path) -> None:
    with pytest.raises(PostfixError):
        run_audit(str(tmp_path / "nowhere"), AuditMaps())


def test_a_bypassing_service_is_named_instead_of_calling_the_block_useless() -> None:
    params = {**GOOD, "mua_client_restrictions": "permit_sasl_authenticated, reject"}
    found = audit(params, SUBMISSION, MAPS)
    f = one(found, "sasl-block-bypassed")
    assert f.title == ("[submission/inet] the master.cf service submission/inet bypasses relaywatch's sasl block "
                       "for an authenticated user")
    reason = block_ineffective_reason(params, SUBMISSION, "sasl_user", "alice", MAPS)
    assert reason.startswith("Not enforced by master.cf service(s) submission/inet (main.cf's own restrictions "
                             "do enforce it).")
    everywhere = block_ineffective_reason(SEED, {}, "client", "218.144.108.161", AuditMaps(REJECT_LIST))
    assert everywhere.startswith("Not enforced by main.cf's restrictions.")
    text = format_text(audit(SEED, {}, AuditMaps(REJECT_LIST)))
    assert "does nothing" not in text and "seed" not in text.lower()
    assert "main.cf's restrictions (every smtpd service that does not override them) bypass" in text
