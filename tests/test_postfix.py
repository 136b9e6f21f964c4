"""relaywatch.postfix: keys, the access map file, and a real private Postfix."""

from __future__ import annotations

import os
import random
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from relaywatch.model import ConfigError, PostfixError
from relaywatch.postfix.commands import MapNotLoaded, Postfix, apply_blocks, default_database_type
from relaywatch.postfix.mapguard import BEGIN, END
from relaywatch.postfix.mapkeys import Block, InvalidBlock, MapSpec, reject_text, render_key
from relaywatch.postfix.maps import AccessMap, MapNotWritten
from support.postfix_rig import POSTMAP, PostfixRig

# --- MapSpec ----------------------------------------------------------------------


def test_mapspec_parse() -> None:
    assert MapSpec.parse("hash:/etc/postfix/reject_list", default_type="btree") == MapSpec(
        "hash", "/etc/postfix/reject_list"
    )
    assert MapSpec.parse(" /etc/postfix/reject_list ", default_type="lmdb") == MapSpec(
        "lmdb", "/etc/postfix/reject_list"
    )
    spec = MapSpec.parse("cdb:/etc/postfix/x", default_type="hash")
    assert (str(spec), spec.compiled) == ("cdb:/etc/postfix/x", "/etc/postfix/x.cdb")
    assert MapSpec.parse("cidr:/etc/postfix/x", default_type="hash").compiled is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("regexp:/etc/postfix/x", "not supported"),
        ("proxy:hash:/etc/postfix/x", "not supported"),
        ("hash:etc/postfix/x", "absolute"),
        ("hash:/etc/postfix/x, hash:/y", "absolute"),
        ("hash:/etc/postfix/reject_list.db", "not the compiled"),
    ],
)
def test_mapspec_refuses(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        MapSpec.parse(text, default_type="hash")


# --- keys -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "target", "map_type", "key"),
    [
        ("client", "218.144.108.161", "hash", "218.144.108.161"),
        ("client", "2001:DB8:0:0:0:0:0:1", "lmdb", "2001:db8::1"),
        ("subnet", "218.0.0.0/8", "hash", "218"),
        ("subnet", "218.144.0.0/16", "btree", "218.144"),
        ("subnet", "218.144.108.0/24", "cdb", "218.144.108"),
        ("subnet", "218.144.108.161/32", "hash", "218.144.108.161"),
        ("subnet", "218.144.96.0/20", "cidr", "218.144.96.0/20"),
        ("subnet", "218.144.0.0/16", "cidr", "218.144.0.0/16"),
        ("subnet", "2001:db8:1::/48", "hash", "2001:db8:1"),
        ("subnet", "2001:db8:0:1::/64", "hash", "2001:db8:0:1"),
        ("subnet", "2001:db8::/48", "cidr", "2001:db8::/48"),
        ("sasl_user", "Journeypark@hananet.example", "hash", "Journeypark@hananet.example"),
    ],
)
def test_render_key(kind: str, target: str, map_type: str, key: str) -> None:
    assert render_key(kind, target, map_type) == key


@pytest.mark.parametrize(
    ("kind", "target", "map_type"),
    [
        # What a log line or a careless caller might hand us.
        ("client", "client=unknown[8.8.8.8]", "hash"),
        ("client", "unknown[8.8.8.8]", "hash"),
        ("client", "1.2.3.4 OK", "hash"),
        ("client", "1.2.3.4\n0.0.0.0/0 OK", "cidr"),
        ("client", " 1.2.3.4", "hash"),
        ("client", "1.2.3.4/32", "hash"),
        ("client", "01.2.3.4", "hash"),
        ("client", "", "hash"),
        ("client", "hananet.net", "hash"),
        ("client", "fe80::1%eth0", "hash"),
        ("client", "::ffff:1.2.3.4", "hash"),
        ("client", "::1.2.3.4", "hash"),
        ("subnet", "0.0.0.0/0", "cidr"),
        ("subnet", "::/0", "cidr"),
        ("subnet", "128.0.0.0/1", "cidr"),
        ("subnet", "2000::/3", "cidr"),
        ("subnet", "218.144.108.161/24", "hash"),  # host bits set
        ("subnet", "218.144.0.0/16 OK", "hash"),
        ("subnet", "10.0.0.0/8\n0.0.0.0/0", "cidr"),
        ("subnet", "218.144.96.0/20", "hash"),  # no partial key: needs cidr
        ("subnet", "2001:db8:10::/44", "hash"),
        ("subnet", "2001:db8::/48", "hash"),  # prints as 2001:db8::..., never 2001:db8:0:
        ("subnet", "2001:db8:0:0:1::/80", "hash"),
        ("sasl_user", "bob smith", "hash"),
        ("sasl_user", "bob\nmallory OK", "hash"),
        ("sasl_user", "bob\t", "hash"),
        ("sasl_user", "b\x00b", "hash"),
        ("sasl_user", "#bob", "hash"),
        ("sasl_user", ":bob", "hash"),
        ("sasl_user", "@example.com", "hash"),
        ("sasl_user", "bob@", "hash"),
        ("sasl_user", "", "hash"),
        ("sasl_user", "x" * 256, "hash"),
        ("sasl_user", "bøb", "hash"),
        ("sasl_user", "bob", "cidr"),
        ("sender", "journeypark@hananet.net", "hash"),
        ("client", "1.2.3.4", "regexp"),
    ],
)
def test_render_key_refuses(kind: str, target: str, map_type: str) -> None:
    with pytest.raises(InvalidBlock) as info:
        render_key(kind, target, map_type)
    assert isinstance(info.value, ValueError)


def test_refused_subnet_says_to_use_cidr() -> None:
    with pytest.raises(InvalidBlock, match="cidr: map"):
        render_key("subnet", "218.144.96.0/20", "hash")
    with pytest.raises(InvalidBlock, match="cidr: map"):
        render_key("subnet", "2001:db8:10::/44", "hash")


def test_reject_text_is_one_safe_line() -> None:
    assert reject_text("") == "blocked by relaywatch"
    text = reject_text("relay to hanmail.net\r\n554 ${evil} \\x \u00e9\x00 end")
    assert text == "blocked by relaywatch: relay to hanmail.net 554 ??evil? ?x ?? end"
    assert len(reject_text("x" * 1000)) < 250


# --- AccessMap on real files ------------------------------------------------------

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="keeping owners needs root (chown)")

ADMIN = b"# zebra's own list (2003)\r\nhananet.net REJECT\n\xe9\xff odd bytes REJECT\n211.202.13.81 REJECT"
# The admin's own map, marked for relaywatch by hand (an empty section after the admin's lines).
MARKED = ADMIN + f"\n{BEGIN}\n{END}\n".encode()


def section(path: Path) -> list[str]:
    lines = path.read_text(errors="replace").splitlines()
    return lines[lines.index(BEGIN) + 1 : lines.index(END)]


def test_admin_entries_survive_byte_for_byte(tmp_path: Path) -> None:
    path = tmp_path / "reject_list"
    path.write_bytes(MARKED)
    amap = AccessMap(MapSpec("hash", str(path)))
    assert amap.write([Block("client", "218.144.108.161", "relay")])
    assert path.read_bytes().startswith(ADMIN + b"\n" + BEGIN.encode())
    # Admin lines after the section survive as well.
    path.write_bytes(path.read_bytes() + b"hanmail.net REJECT\n")
    assert amap.write([Block("subnet", "218.144.0.0/16", "relay")])
    data = path.read_bytes()
    assert data.startswith(ADMIN + b"\n" + BEGIN.encode()) and data.endswith(END.encode() + b"\nhanmail.net REJECT\n")
    assert section(path) == ["218.144 REJECT blocked by relaywatch: relay"]


def test_section_is_replaced_sorted_and_deduplicated(tmp_path: Path) -> None:
    path = tmp_path / "reject_list"
    blocks = [
        Block("client", "218.144.108.161", "b"),
        Block("client", "218.144.108.161", "a"),
        Block("client", "2001:db8::1", ""),
        Block("subnet", "218.144.0.0/16", "net"),
        Block("sasl_user", "journeypark", "stolen"),
    ]
    amap = AccessMap(MapSpec("hash", str(path)))
    assert amap.write(blocks)
    first = path.read_bytes()
    assert section(path) == [
        "2001:db8::1 REJECT blocked by relaywatch",
        "218.144 REJECT blocked by relaywatch: net",
        "218.144.108.161 REJECT blocked by relaywatch: a",
        "journeypark REJECT blocked by relaywatch: stolen",
    ]
    random.Random(3).shuffle(blocks)
    assert not amap.write(blocks)
    assert path.read_bytes() == first
    assert amap.write([])
    assert path.read_text() == f"{BEGIN}\n{END}\n"


def test_unchanged_write_touches_nothing(tmp_path: Path) -> None:
    path = tmp_path / "reject_list"
    amap = AccessMap(MapSpec("cidr", str(path)))
    amap.write([Block("subnet", "218.144.96.0/20")])
    before = path.stat()
    time.sleep(0.01)
    assert not amap.write([Block("subnet", "218.144.96.0/20")])
    after = path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


@needs_root
def test_owner_and_mode_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "reject_list"
    path.write_bytes(MARKED)
    os.chown(path, 65534, 65534)
    os.chmod(path, 0o640)
    AccessMap(MapSpec("hash", str(path))).write([Block("client", "218.144.108.161")])
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o640)


def test_new_file_is_ours_and_0644(tmp_path: Path) -> None:
    path = tmp_path / "reject_list"
    assert AccessMap(MapSpec("hash", str(path))).write([Block("client", "218.144.108.161")])
    st = path.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), os.getegid(), 0o644)
    assert sorted(os.listdir(tmp_path)) == ["reject_list"]


@pytest.mark.parametrize(
    "content",
    [
        ADMIN + b"\n" + BEGIN.encode() + b"\n1.2.3.4 REJECT\n",  # no END
        ADMIN + b"\n" + END.encode() + b"\n" + BEGIN.encode() + b"\n",  # out of order
        (BEGIN + "\n" + END + "\n").encode() * 2,  # twice
    ],
)
def test_damaged_markers_refused_and_file_untouched(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "reject_list"
    path.write_bytes(content)
    with pytest.raises(PostfixError, match="fix the file by hand"):
        AccessMap(MapSpec("hash", str(path))).write([Block("client", "1.2.3.4")])
    assert path.read_bytes() == content


def test_one_hostile_block_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "reject_list"
    path.write_bytes(MARKED)
    with pytest.raises(InvalidBlock):
        AccessMap(MapSpec("hash", str(path))).write(
            [Block("client", "218.144.108.161"), Block("client", "client=unknown[8.8.8.8]")]
        )
    assert path.read_bytes() == MARKED
    assert os.listdir(tmp_path) == ["reject_list"]


def test_failed_build_leaves_files_in_force(tmp_path: Path) -> None:
    path = tmp_path / "reject_list"
    amap = AccessMap(MapSpec("hash", str(path)))
    amap.write([Block("client", "1.2.3.4")], lambda spec: Path(str(spec.compiled)).write_bytes(b"old db"))
    old = path.read_bytes()

    def failing_postmap(spec: MapSpec) -> None:
        Path(str(spec.compiled)).write_bytes(b"half a db")
        raise PostfixError("postmap failed")

    with pytest.raises(PostfixError, match="postmap failed"):
        amap.write([Block("client", "5.6.7.8")], failing_postmap)
    assert path.read_bytes() == old
    assert Path(f"{path}.db").read_bytes() == b"old db"
    assert sorted(os.listdir(tmp_path)) == ["reject_list", "reject_list.db"]


@needs_root
def test_compiled_map_renamed_into_place_keeping_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "reject_list"
    amap = AccessMap(MapSpec("hash", str(path)))
    amap.write([], lambda spec: Path(str(spec.compiled)).write_bytes(b"db 1"))
    os.chown(f"{path}.db", 0, 65534)
    os.chmod(f"{path}.db", 0o640)
    assert amap.write([Block("client", "1.2.3.4")], lambda spec: Path(str(spec.compiled)).write_bytes(b"db 2"))
    st = os.stat(f"{path}.db")
    assert (Path(f"{path}.db").read_bytes(), st.st_gid, stat.S_IMODE(st.st_mode)) == (b"db 2", 65534, 0o640)
    # A compiled map missing (or older than its source) is rebuilt though nothing changed.
    os.unlink(f"{path}.db")
    assert amap.write([Block("client", "1.2.3.4")], lambda spec: Path(str(spec.compiled)).write_bytes(b"db 3"))
    assert Path(f"{path}.db").read_bytes() == b"db 3"


def test_commands_that_cannot_run_raise_postfix_error(tmp_path: Path) -> None:
    with pytest.raises(PostfixError, match="cannot run"):
        Postfix(str(tmp_path), postfix_bin=str(tmp_path / "no-postfix")).reload()
    with pytest.raises(PostfixError, match="postmap hash:.* failed"):
        Postfix(str(tmp_path), postmap_bin="/bin/false").postmap(MapSpec("hash", str(tmp_path / "x")))


# --- against a real private Postfix -----------------------------------------------


@dataclass
class Live:
    rig: PostfixRig
    access_map: AccessMap
    postfix: Postfix

    def apply(self, *blocks: Block) -> bool:
        before = self.rig.smtpd_pids()
        changed = apply_blocks(self.access_map, self.postfix, blocks)
        if changed:  # reload is asynchronous: let the old smtpd processes go
            self.rig.wait_for_exit(before)
        return changed

    def code(self, ip: str, xclient: str | None = None) -> int:
        """The reply code a NEW session from `ip` gets for relayed mail."""
        return self.rig.send(ip, xclient_addr=xclient)[0]


@pytest.fixture
def live(postfix_instance: PostfixRig) -> Live:
    Path(postfix_instance.reject_list.path).write_bytes(b"")  # drop what an earlier test left
    pf = Postfix(postfix_instance.config_directory)
    state = Live(postfix_instance, AccessMap(postfix_instance.reject_list), pf)
    before = postfix_instance.smtpd_pids()
    apply_blocks(state.access_map, pf, [], force=True)
    postfix_instance.wait_for_exit(before)
    return state


@pytest.mark.postfix
def test_block_refuses_new_sessions_and_unblock_restores(live: Live) -> None:
    assert live.code("127.0.0.9") == 250  # the open relay, on loopback
    assert live.apply(Block("client", "127.0.0.9", "relayed 500 messages to hanmail.net"))
    code, message = live.rig.send("127.0.0.9")
    assert code == 554
    assert "Client host rejected: blocked by relaywatch: relayed 500 messages" in message
    assert live.code("127.0.0.10") == 250
    assert live.apply()
    assert live.code("127.0.0.9") == 250


@pytest.mark.postfix
def test_subnet_partial_keys(live: Live) -> None:
    live.apply(Block("subnet", "127.0.9.0/24"), Block("subnet", "127.1.0.0/16"))
    assert section(live.access_map.path) == [f"{key} REJECT blocked by relaywatch" for key in ("127.0.9", "127.1")]
    refused = [live.code(ip) for ip in ("127.0.9.5", "127.0.9.200", "127.1.2.3")]
    accepted = [live.code(ip) for ip in ("127.0.10.5", "127.0.0.9", "127.2.1.3")]
    assert (refused, accepted) == ([554] * 3, [250] * 3)


@pytest.mark.postfix
def test_ipv6_partial_keys_match_as_postfix_prints_addresses(live: Live) -> None:
    # Why render_key refuses 2001:db8::/48 for hash maps: Postfix prints 2001:db8:0:0::5
    # as "2001:db8::5", so a partial key "2001:db8:0" (written here by hand) never matches.
    live.access_map.path.write_text(f"2001:db8:0 REJECT naive key\n{BEGIN}\n{END}\n")
    live.apply(Block("subnet", "2001:db8:1::/48"), Block("subnet", "2001:db8:0:7::/64"))
    # XCLIENT makes smtpd judge another client address; no IPv6 packet is sent.
    addrs = ("2001:db8:1::5", "2001:db8:1:ffff::1", "2001:db8:0:7::1", "2001:db8:2::5", "2001:db8::5")
    assert [live.code("127.0.0.2", f"IPV6:{a}") for a in addrs] == [554, 554, 554, 250, 250]


@pytest.mark.postfix
@pytest.mark.parametrize("postfix_instance", ["cidr"], indirect=True)
def test_cidr_map(live: Live) -> None:
    assert live.access_map.spec.type == "cidr"
    live.apply(Block("client", "127.0.0.9"), Block("subnet", "127.0.8.0/21"), Block("subnet", "2001:db8:10::/44"))
    assert section(live.access_map.path) == [
        "127.0.0.9 REJECT blocked by relaywatch",
        "127.0.8.0/21 REJECT blocked by relaywatch",
        "2001:db8:10::/44 REJECT blocked by relaywatch",
    ]
    assert [live.code(ip) for ip in ("127.0.0.9", "127.0.15.1", "127.0.0.10", "127.0.16.1")] == [554, 554, 250, 250]
    assert live.code("127.0.0.2", "IPV6:2001:db8:1f::1") == 554
    assert live.code("127.0.0.2", "IPV6:2001:db8:20::1") == 250
    live.apply()
    assert live.code("127.0.0.9") == 250


@pytest.mark.postfix
def test_admin_entries_survive_and_stay_in_force(live: Live) -> None:
    admin = b"# zebra, 2003-03-20\nhananet.net REJECT\n127.0.0.11 REJECT admin says no\n"
    live.access_map.path.write_bytes(admin + f"{BEGIN}\n{END}\n".encode())  # marked for relaywatch
    live.apply(Block("client", "127.0.0.9"))
    assert live.access_map.path.read_bytes().startswith(admin + BEGIN.encode())
    assert (live.code("127.0.0.9"), live.code("127.0.0.11")) == (554, 554)
    assert "admin says no" in live.rig.send("127.0.0.11")[1]
    live.apply()
    assert live.access_map.path.read_bytes() == admin + f"{BEGIN}\n{END}\n".encode()
    assert (live.code("127.0.0.9"), live.code("127.0.0.11")) == (250, 554)


@pytest.mark.postfix
def test_failing_postmap_leaves_the_old_map_in_force(live: Live) -> None:
    live.apply(Block("client", "127.0.0.9"))
    source, compiled = live.access_map.path.read_bytes(), Path(f"{live.access_map.path}.db").read_bytes()
    # The fault: a directory where postmap must create its output. Root is not
    # stopped by permissions, but this makes the real postmap fail half-way, after
    # the new source is written and while creating the database - the same
    # place a full disk, a read-only or broken filesystem, or a missing map
    # type package (postfix-lmdb) makes it fail.
    os.mkdir(str(live.access_map.staged.compiled))
    try:
        not_written = r"postmap .* failed .*Is a directory.*the map files Postfix reads were not changed"
        with pytest.raises(PostfixError, match=not_written):
            live.apply(Block("client", "127.0.0.9"), Block("client", "127.0.0.10"))
        assert live.access_map.path.read_bytes() == source
        assert Path(f"{live.access_map.path}.db").read_bytes() == compiled
        assert (live.code("127.0.0.9"), live.code("127.0.0.10")) == (554, 250)
    finally:
        os.rmdir(str(live.access_map.staged.compiled))
    # The caller keeps the block pending and retries; now it goes through.
    assert live.apply(Block("client", "127.0.0.9"), Block("client", "127.0.0.10"))
    assert (live.code("127.0.0.9"), live.code("127.0.0.10")) == (554, 554)


class CountingPostfix(Postfix):
    """The real commands, counted."""

    calls: list[str]

    def postmap(self, spec: MapSpec) -> None:
        self.calls.append("postmap")
        super().postmap(spec)

    def reload(self) -> None:
        self.calls.append("reload")
        super().reload()


@pytest.mark.postfix
def test_many_blocks_cost_one_postmap_and_one_reload(live: Live) -> None:
    pf = CountingPostfix(live.rig.config_directory)
    pf.calls = []
    blocks = [Block("client", f"127.0.{i // 250 + 20}.{i % 250 + 1}", "burst") for i in range(500)]
    assert apply_blocks(live.access_map, pf, blocks)
    assert pf.calls == ["postmap", "reload"]
    assert not apply_blocks(live.access_map, pf, reversed(blocks))
    assert pf.calls == ["postmap", "reload"]
    assert live.postfix.is_running()


@pytest.mark.postfix
def test_sasl_key_and_default_type(live: Live) -> None:
    live.apply(Block("sasl_user", "Journeypark@hananet.example", "password stolen"))
    looked_up = subprocess.run(
        [POSTMAP, "-c", live.rig.config_directory, "-q", "journeypark@hananet.example", str(live.access_map.spec)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert looked_up.stdout.strip() == "REJECT blocked by relaywatch: password stolen"
    assert default_database_type(live.rig.config_directory) == "hash"


@pytest.mark.postfix
def test_reload_of_a_stopped_postfix_says_so(postfix_instance: PostfixRig, tmp_path: Path) -> None:
    # An instance that was never started (the running one is only needed for the skip logic).
    (tmp_path / "main.cf").write_text(f"compatibility_level = 3.6\nqueue_directory = {tmp_path}\n")
    (tmp_path / "master.cf").write_text("")
    for name in ("main.cf", "master.cf"):  # see PostfixRig: a fresh main.cf costs ~2 s
        os.utime(tmp_path / name, (time.time() - 60, time.time() - 60))
    stopped = Postfix(str(tmp_path))
    assert not stopped.is_running()
    with pytest.raises(MapNotLoaded, match="Postfix is not running. The map file holds the new blocks; Postfix "
                                           "reads it when it starts"):
        stopped.reload()


@pytest.mark.postfix
def test_a_broken_main_cf_is_not_called_a_stopped_postfix(live: Live, tmp_path: Path) -> None:
    """Issue 13 item 3: with main.cf broken and Postfix running, the old message said "Postfix is
    not running". Each outcome is worded from what was found, and never contradicts itself.
    A cidr map needs no postmap, so the failing step is the reload (a hash map's postmap fails first)."""
    main_cf = Path(live.rig.config_directory) / "main.cf"
    good = main_cf.read_bytes()
    stat_before = main_cf.stat()
    cidr = AccessMap(MapSpec("cidr", f"{live.rig.config_directory}/reject.cidr"))
    assert live.postfix.master_pid()  # learnt while main.cf could be read, as the daemon's first sync does
    fresh = Postfix(live.rig.config_directory)  # one that never saw a readable main.cf
    try:
        main_cf.write_bytes(good + b"this line is broken\n")
        os.utime(main_cf, (stat_before.st_atime, stat_before.st_mtime))
        with pytest.raises(MapNotLoaded) as caught:
            apply_blocks(cidr, live.postfix, [Block("client", "127.0.0.9")])
        text = str(caught.value)
        assert "Postfix's configuration cannot be read" in text and "missing '='" in text
        assert f"Postfix is still running (master pid {live.postfix.master_pid()})" in text
        assert "not running" not in text
        assert "The map file holds the new blocks" in text and "not changed" not in text
        with pytest.raises(MapNotLoaded, match="whether Postfix runs is unknown"):
            apply_blocks(cidr, fresh, [Block("client", "127.0.0.9")], force=True)
        with pytest.raises(MapNotWritten, match="missing '='.*the map files Postfix reads were not changed"):
            apply_blocks(live.access_map, live.postfix, [Block("client", "127.0.0.9")])
    finally:
        main_cf.write_bytes(good)
        os.utime(main_cf, (stat_before.st_atime, stat_before.st_mtime))
        os.unlink(cidr.path)
    assert not apply_blocks(live.access_map, live.postfix, [])  # the hash map was left as it was


def test_a_failed_postmap_never_claims_the_new_map_is_in_place(tmp_path: Path) -> None:
    def failing(spec: MapSpec) -> None:
        raise MapNotWritten("postmap failed (exit 1): disk full; the map files Postfix reads were not changed")

    path = tmp_path / "reject_list"
    amap = AccessMap(MapSpec("hash", str(path)))
    with pytest.raises(MapNotWritten) as caught:
        amap.write([Block("client", "192.0.2.1")], failing)
    assert "holds the new blocks" not in str(caught.value) and "in place" not in str(caught.value)
    assert not path.exists()
