"""Issue 12 item 4: the host's own addresses, from its interfaces and from Postfix (a real postconf)."""

from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaywatch.cli import main
from relaywatch.postfix import hostaddrs
from support.maillog import T0, Log, rcpts

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 144.76.10.0/26 2 0 2
           |-- 144.76.10.0
              /26 link UNICAST
           |-- 144.76.10.20
              /32 host LOCAL
        |-- 144.76.10.63
           /32 link BROADCAST
Local:
  +-- 0.0.0.0/0 3 0 5
           |-- 127.0.0.1
              /32 host LOCAL
"""
IF_INET6 = """00000000000000000000000000000001 01 80 10 80       lo
2a0104f80c0c12340000000000000002 02 40 00 80     eth0
fe800000000000009e6b00fffe1a2b3c 02 40 20 80     eth0
"""

needs_postconf = pytest.mark.skipif(shutil.which("postconf") is None, reason="Postfix's postconf is not installed")


def test_the_interfaces_addresses_are_read_from_proc(tmp_path):
    (tmp_path / "fib_trie").write_text(FIB_TRIE)
    (tmp_path / "if_inet6").write_text(IF_INET6)
    assert hostaddrs.interface_addresses(tmp_path) == {
        "127.0.0.1", "144.76.10.20", "::1", "2a01:4f8:c0c:1234::2", "fe80::9e6b:ff:fe1a:2b3c"}


def test_an_unreadable_proc_finds_nothing_and_says_so(tmp_path, caplog):
    assert hostaddrs.interface_addresses(tmp_path / "missing") == set()
    assert "[allow] own_addresses" in caplog.text


def test_postfix_interface_parameters_name_addresses_and_keywords():
    params = {"inet_interfaces": "127.0.0.1, [2a01:4f8:c0c:1234::2], all",
              "proxy_interfaces": "198.18.0.1 loopback-only\n 85.13.140.7"}
    assert hostaddrs.postfix_addresses(params, resolve=False) == {
        "127.0.0.1", "2a01:4f8:c0c:1234::2", "198.18.0.1", "85.13.140.7"}
    assert hostaddrs.postfix_addresses({"inet_interfaces": "all", "proxy_interfaces": ""}) == set()


def postfix_dir(tmp_path: Path, main_cf: str) -> Path:
    d = tmp_path / "postfix"
    d.mkdir()
    (d / "main.cf").write_text(main_cf)
    (d / "master.cf").write_text("")
    return d


@needs_postconf
def test_replay_reads_inet_and_proxy_interfaces_through_postconf(tmp_path):
    d = postfix_dir(tmp_path, "inet_interfaces = 127.0.0.1, [::1]\n"
                              "proxy_interfaces = 144.76.10.20 [2a01:4f8:c0c:1234::2]\n")
    assert [n.compressed for n in hostaddrs.for_replay(str(d))] == [
        "127.0.0.1/32", "144.76.10.20/32", "::1/128", "2a01:4f8:c0c:1234::2/128"]
    assert hostaddrs.for_replay(None) == ()


@needs_postconf
def test_the_daemon_adds_the_machines_interfaces(tmp_path):
    d = postfix_dir(tmp_path, "inet_interfaces = all\nproxy_interfaces = 144.76.10.21\n")
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "fib_trie").write_text(FIB_TRIE)
    (proc / "if_inet6").write_text(IF_INET6)
    nets = hostaddrs.for_daemon(str(d), proc)
    assert {ipaddress.ip_network("144.76.10.20/32"), ipaddress.ip_network("144.76.10.21/32"),
            ipaddress.ip_network("2a01:4f8:c0c:1234::2/128")} <= set(nets)


@needs_postconf
def test_replay_never_blocks_the_address_postfix_listens_on(tmp_path):
    """A list manager posting through the server's public address (the NAT in front of it:
    proxy_interfaces). Without a configuration the same log blocks that address."""
    log = Log()
    for k in range(12):
        log.smtp(T0 + k * 120, "144.76.10.20", rcpts(50, "gmail.com", f"member{k}."),
                 sender="list-owner@lists.example.org", name="lists.example.org")
    path = tmp_path / "mail.log"
    path.write_text(log.text())
    d = postfix_dir(tmp_path, "inet_interfaces = loopback-only\nproxy_interfaces = 144.76.10.20\n")
    conf = tmp_path / "relaywatch.toml"
    conf.write_text(f'[postfix]\nconfig_directory = "{d}"\n')
    conf.chmod(0o600)
    elsewhere = tmp_path / "elsewhere.toml"
    elsewhere.write_text('[postfix]\nconfig_directory = ""\n')
    elsewhere.chmod(0o600)
    runner = CliRunner()
    blocked = runner.invoke(main, ["replay", "-c", str(elsewhere), str(path)])
    assert blocked.exit_code == 0 and "would block client      144.76.10.20" in blocked.output
    own = runner.invoke(main, ["replay", "-c", str(conf), str(path)])
    assert own.exit_code == 0, own.output
    assert "would block" not in own.output
    listed = tmp_path / "listed.toml"
    listed.write_text('[postfix]\nconfig_directory = ""\n[allow]\nown_addresses = ["144.76.10.16/29"]\n')
    listed.chmod(0o600)
    assert "would block" not in runner.invoke(main, ["replay", "-c", str(listed), str(path)]).output


@needs_postconf
def test_another_hosts_configuration_is_refused_by_postconf_and_the_replay_says_what_to_do(tmp_path, caplog):
    d = postfix_dir(tmp_path, "inet_interfaces = 144.76.10.20\n")  # not an address of this machine
    assert hostaddrs.for_replay(str(d)) == ()
    assert "[allow] own_addresses" in caplog.text and "WARNING" in caplog.text
