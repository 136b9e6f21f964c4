"""relaywatch install-maps: relaywatch's lookups go in front of the admin's lists, which survive.

The pure planner on list shapes admins really write, then the command against a real private
Postfix (main.cf with an RBL, postgrey and a policy service; a master.cf submission service
with its own -o overrides) whose smtpd must then refuse a blocked client inside mynetworks.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaywatch.cli import main
from relaywatch.postfix.install_maps import front, map_specs, plan_edits
from relaywatch.postfix.mapkeys import MapSpec
from support.postfix_rig import PostfixRig, free_port

CLIENTS = MapSpec("hash", "/etc/postfix/relaywatch_clients")
SASL = MapSpec("hash", "/etc/postfix/relaywatch_sasl")
MAPS = {"client": CLIENTS, "sasl": SASL}
CLIENT_LIST = "smtpd_client_restrictions"
RBL = "permit_mynetworks, reject_rbl_client zen.spamhaus.org, check_policy_service inet:127.0.0.1:10023"


def test_the_lookup_goes_in_front_and_the_admins_text_stays() -> None:
    new = front(RBL, {}, CLIENT_LIST, "client", CLIENTS, ", ")
    assert new == f"check_client_access hash:/etc/postfix/relaywatch_clients, {RBL}"
    assert front(new, {}, CLIENT_LIST, "client", CLIENTS, ", ") is None  # idempotent


def test_an_empty_list_gets_just_the_lookup() -> None:
    expected = "check_client_access hash:/etc/postfix/relaywatch_clients"
    assert front("", {}, CLIENT_LIST, "client", CLIENTS, ", ") == expected


def test_a_lookup_behind_permit_mynetworks_is_moved_not_doubled() -> None:
    """The 2003 trap: the map was there, after the permit that let the /8 through."""
    value = "permit_mynetworks, check_client_access hash:/etc/postfix/relaywatch_clients, reject_rbl_client bl.example"
    assert front(value, {}, CLIENT_LIST, "client", CLIENTS, ", ") == (
        "check_client_access hash:/etc/postfix/relaywatch_clients, permit_mynetworks, reject_rbl_client bl.example")


def test_a_bare_path_with_the_default_type_counts_as_the_same_map() -> None:
    value = "check_client_access /etc/postfix/relaywatch_clients, permit_mynetworks"
    assert front(value, {"default_database_type": "hash"}, CLIENT_LIST, "client", CLIENTS, ", ") is None


def test_another_client_map_first_is_not_ours() -> None:
    """An admin's own whitelist map that says OK first would skip relaywatch's: ours goes in front."""
    value = "check_client_access hash:/etc/postfix/client_ok, permit_mynetworks"
    assert front(value, {}, CLIENT_LIST, "client", CLIENTS, ", ") == (
        f"check_client_access hash:/etc/postfix/relaywatch_clients, {value}")


def test_master_cf_values_are_written_without_spaces() -> None:
    """postconf -P writes a value with spaces as `-o { ... }`; commas need no quoting at all."""
    new = front("permit_sasl_authenticated, reject", {}, "smtpd_recipient_restrictions", "sasl", SASL, ",")
    assert new == "check_sasl_access,hash:/etc/postfix/relaywatch_sasl,permit_sasl_authenticated,reject"


def test_main_cf_and_every_overriding_service_but_loopback_reinjection() -> None:
    main_cf = {CLIENT_LIST: RBL, "smtpd_recipient_restrictions": "permit_mynetworks, reject_unauth_destination"}
    services = {
        "submission/inet": {"smtpd_recipient_restrictions": "", "smtpd_client_restrictions": "$mua_client_restrictions",
                            "smtpd_relay_restrictions": "permit_sasl_authenticated,reject"},
        "smtps/inet": {"syslog_name": "postfix/smtps"},  # overrides no list: main.cf's apply
        "127.0.0.1:10025/inet": {"smtpd_client_restrictions": "",
                                 "smtpd_recipient_restrictions": "permit_mynetworks,reject"},
    }
    edits, skipped = plan_edits(main_cf, services, MAPS)
    assert [(e.scope, e.param) for e in edits] == [
        ("main.cf", CLIENT_LIST), ("main.cf", "smtpd_recipient_restrictions"),
        ("submission/inet", CLIENT_LIST), ("submission/inet", "smtpd_recipient_restrictions")]
    assert edits[2].new == "check_client_access,hash:/etc/postfix/relaywatch_clients,$mua_client_restrictions"
    assert edits[3].new == "check_sasl_access,hash:/etc/postfix/relaywatch_sasl"
    assert edits[0].argv("/etc/postfix") == [
        "/usr/sbin/postconf", "-c", "/etc/postfix", "-e",
        f"smtpd_client_restrictions = check_client_access hash:/etc/postfix/relaywatch_clients, {RBL}"]
    assert edits[3].argv("/etc/postfix")[-2:] == [
        "-P", "submission/inet/smtpd_recipient_restrictions=check_sasl_access,hash:/etc/postfix/relaywatch_sasl"]
    assert len(skipped) == 1 and skipped[0].startswith("127.0.0.1:10025/inet")
    applied = {**main_cf, **{e.param: e.new for e in edits if e.scope == "main.cf"}}
    assert plan_edits(applied, {"submission/inet": {e.param: e.new for e in edits[2:]}}, MAPS) == ([], [])


def test_no_sasl_map_configured_means_no_sasl_lookup() -> None:
    maps = map_specs("hash:/etc/postfix/relaywatch_clients", "", "hash")
    edits, _ = plan_edits({}, {}, maps)
    assert [e.param for e in edits] == [CLIENT_LIST]


# --- against a real Postfix ---------------------------------------------------------------

# A submission-style service (on a free port rather than 587, which the host may use).
SUBMISSION = """\
{port} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_client_restrictions=$mua_client_restrictions
  -o smtpd_recipient_restrictions=
  -o {{ smtpd_relay_restrictions = permit_sasl_authenticated, reject }}
127.0.0.1:10025 inet n - n - - smtpd
  -o smtpd_client_restrictions=
  -o smtpd_recipient_restrictions=permit_mynetworks,reject
"""


def _postconf(rig: PostfixRig, *args: str) -> str:
    return subprocess.run(["/usr/sbin/postconf", "-c", rig.config_directory, *args], capture_output=True,
                          text=True, check=True).stdout


@pytest.fixture(scope="module")
def admin_rig(postfix_instance: PostfixRig, tmp_path_factory: pytest.TempPathFactory) -> tuple[PostfixRig, Path, str]:
    """The rig with an admin's lists: the rig's own reject map, an RBL, postgrey, SPF policy, submission."""
    rig = postfix_instance
    etc = rig.config_directory
    _postconf(rig, "-e", f"smtpd_client_restrictions = permit_mynetworks, check_client_access {rig.reject_list}, "
                         "reject_rbl_client zen.spamhaus.org")
    _postconf(rig, "-e", "smtpd_recipient_restrictions = permit_mynetworks, permit_sasl_authenticated, "
                         "reject_unauth_destination, "
                         "check_policy_service inet:127.0.0.1:10023, check_policy_service unix:private/policyd-spf")
    _postconf(rig, "-e", "mua_client_restrictions = permit_sasl_authenticated, reject")
    with open(f"{etc}/master.cf", "a", encoding="utf-8") as f:
        f.write(SUBMISSION.format(port=free_port()))
    past = os.stat(f"{etc}/main.cf").st_mtime - 60
    os.utime(f"{etc}/main.cf", (past, past))  # see postfix_rig: a just-changed main.cf slows every command
    cfg = tmp_path_factory.mktemp("install-maps") / "relaywatch.toml"
    cfg.write_text(f'[postfix]\nconfig_directory = "{etc}"\nclient_access_map = "hash:{etc}/relaywatch_clients"\n'
                   f'sasl_access_map = "hash:{etc}/relaywatch_sasl"\n')
    cfg.chmod(0o600)
    return rig, cfg, master_cf_service(rig)


def master_cf_service(rig: PostfixRig) -> str:
    return next(line.split()[0] for line in Path(f"{rig.config_directory}/master.cf").read_text().splitlines()
                if line.endswith(" smtpd") and not line.startswith("127."))


@pytest.mark.postfix
def test_install_maps_on_a_real_postfix(admin_rig: tuple[PostfixRig, Path, str]) -> None:
    rig, cfg, sub = admin_rig
    etc = rig.config_directory
    before_main, before_master = _postconf(rig, "-n"), Path(f"{etc}/master.cf").read_text()

    dry = CliRunner().invoke(main, ["install-maps", "--dry-run", "-c", str(cfg)])
    assert dry.exit_code == 0, dry.output
    assert (_postconf(rig, "-n"), Path(f"{etc}/master.cf").read_text()) == (before_main, before_master)
    assert not os.path.exists(f"{etc}/relaywatch_clients")
    printed = [line for line in dry.output.splitlines() if not line.startswith("#")]

    done = subprocess.run([sys.executable, "-m", "relaywatch", "install-maps", "-c", str(cfg)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    ran = [line for line in done.stdout.splitlines() if not line.startswith("created ")]
    assert ran == printed  # the dry run printed exactly what runs

    client = _postconf(rig, "-h", "smtpd_client_restrictions").strip()
    assert client == (f"check_client_access hash:{etc}/relaywatch_clients, permit_mynetworks, "
                      f"check_client_access {rig.reject_list}, reject_rbl_client zen.spamhaus.org")
    recipient = _postconf(rig, "-h", "smtpd_recipient_restrictions").strip()
    assert recipient.startswith(f"check_sasl_access hash:{etc}/relaywatch_sasl, permit_mynetworks, ")
    assert "check_policy_service inet:127.0.0.1:10023, check_policy_service unix:private/policyd-spf" in recipient
    services = _postconf(rig, "-P")
    assert (f"{sub}/inet/smtpd_client_restrictions = check_client_access,hash:{etc}/relaywatch_clients,"
            "$mua_client_restrictions") in services
    assert f"{sub}/inet/smtpd_recipient_restrictions = check_sasl_access,hash:{etc}/relaywatch_sasl\n" in services
    assert f"{sub}/inet/smtpd_relay_restrictions = permit_sasl_authenticated, reject" in services
    assert "127.0.0.1:10025/inet/smtpd_client_restrictions =\n" in services  # re-injection untouched
    for name in ("relaywatch_clients", "relaywatch_sasl"):
        assert os.path.getsize(f"{etc}/{name}") == 0 and os.path.exists(f"{etc}/{name}.db")

    after = (_postconf(rig, "-n"), Path(f"{etc}/master.cf").read_text())
    again = CliRunner().invoke(main, ["install-maps", "-c", str(cfg)])
    assert again.exit_code == 0 and "nothing to change" in again.output
    assert (_postconf(rig, "-n"), Path(f"{etc}/master.cf").read_text()) == after

    audit = CliRunner().invoke(main, ["audit", "-c", str(cfg), "--format", "json"])
    assert '"error": 0' in audit.output, audit.output

    # The lookup really is read first: a blocked client inside mynetworks is refused, others relay.
    pids = rig.smtpd_pids()
    Path(f"{etc}/relaywatch_clients").write_text("127.0.0.9 REJECT blocked by relaywatch\n")
    subprocess.run(["/usr/sbin/postmap", "-c", etc, f"hash:{etc}/relaywatch_clients"], check=True)
    subprocess.run(["/usr/sbin/postfix", "-c", etc, "reload"], check=True, capture_output=True)
    rig.wait_for_exit(pids)
    code, text = rig.send("127.0.0.9")
    assert code == 554 and "blocked by relaywatch" in text
    assert rig.send("127.0.0.10")[0] == 250
