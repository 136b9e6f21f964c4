"""relaywatch never damages the system through a wrong map path (issue 13 item 4).

Pointed at main.cf, the first block appended REJECT lines to it and every new smtpd died;
pointed at a copy of /etc/shadow, the section was appended and a .db created, exit 0.
Each case below runs the real CLI against a private running Postfix: the refusal is a
configuration error (exit 78) naming the file, nothing is written, Postfix keeps working.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from relaywatch.cli import main
from relaywatch.postfix.mapguard import BEGIN, END, ForeignMap
from relaywatch.postfix.mapkeys import Block, MapSpec
from relaywatch.postfix.maps import AccessMap
from support.configs import rig_sections, sections, write_config

pytestmark = pytest.mark.postfix

SHADOW = ("root:$y$j9T$Qm1yV7fGx0bq$Wc5kOa1D8pJkq3H3x0yQ9nYbq9dV2u7cM0hX1sLk3Z5:19700:0:99999:7:::\n"
          "daemon:*:19700:0:99999:7:::\nzebra:$y$j9T$abc$def:19701:0:99999:7:::\n")


def config(tmp_path: Path, rig, client_map: str, sasl_map: str = "", postfix: dict | None = None) -> str:
    cfg = write_config(tmp_path / "rw.toml", rig_sections(rig, tmp_path, client_access_map=client_map, source=False),
                       {"postfix": {"sasl_access_map": sasl_map, **(postfix or {})}}, mode=0o600)
    return str(cfg)


def block(cfg: str, target: str = "127.0.0.9"):
    return CliRunner().invoke(main, ["block", target, "-c", cfg])


def files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file() and not p.is_symlink()}


def test_a_map_pointed_at_main_cf_is_refused_and_postfix_keeps_taking_mail(postfix_instance, tmp_path):
    etc = Path(postfix_instance.config_directory)
    before = files(etc)
    result = block(config(tmp_path, postfix_instance, f"hash:{etc}/main.cf"))
    assert result.exit_code == 78, result.output
    assert "main.cf is Postfix's own configuration file" in result.output
    assert files(etc) == before  # no line appended, no main.cf.db
    assert postfix_instance.send("127.0.0.10")[0] == 250  # new smtpd processes still start


def test_a_map_pointed_at_a_copy_of_shadow_is_refused(postfix_instance, tmp_path):
    etc = Path(postfix_instance.config_directory)
    shadow = etc / "shadow.copy"
    shadow.write_text(SHADOW)
    try:
        result = block(config(tmp_path, postfix_instance, f"hash:{shadow}"))
        assert result.exit_code == 78, result.output
        assert "is not relaywatch's map: it holds 3 line(s) of something else" in result.output
        assert BEGIN in result.output  # it says how to mark a real map
        assert shadow.read_text() == SHADOW and not Path(f"{shadow}.db").exists()
    finally:
        shadow.unlink()


def test_a_symlinked_map_is_refused_and_its_target_untouched(postfix_instance, tmp_path):
    etc = Path(postfix_instance.config_directory)
    outside = tmp_path / "outside"
    outside.write_text(f"{BEGIN}\n{END}\n")  # even a file that looks like relaywatch's
    link = etc / "reject_link"
    link.symlink_to(outside)
    try:
        result = block(config(tmp_path, postfix_instance, f"hash:{link}"))
        assert result.exit_code == 78, result.output
        assert "is a symbolic link" in result.output
        assert outside.read_text() == f"{BEGIN}\n{END}\n" and not Path(f"{link}.db").exists()
        assert not Path(f"{outside}.db").exists()
    finally:
        link.unlink()


def test_the_two_maps_equal_is_refused_naming_the_key(postfix_instance, tmp_path):
    spec = str(postfix_instance.reject_list)
    result = block(config(tmp_path, postfix_instance, spec, sasl_map=spec))
    assert result.exit_code == 78, result.output
    assert "[postfix] sasl_access_map names the same file as client_access_map" in result.output


def test_a_map_outside_the_allowed_directories_is_refused_unless_listed(postfix_instance, tmp_path):
    maps = tmp_path / "maps"
    maps.mkdir()
    result = block(config(tmp_path, postfix_instance, f"hash:{maps}/clients"))
    assert result.exit_code == 78, result.output
    assert "neither the Postfix configuration directory nor in [postfix] map_directories" in result.output
    assert list(maps.iterdir()) == []
    listed = config(tmp_path, postfix_instance, f"hash:{maps}/clients", postfix={"map_directories": [maps]})
    result = block(listed, "192.0.2.99")
    assert result.exit_code == 0, result.output
    assert "192.0.2.99 REJECT" in (maps / "clients").read_text()


def test_a_file_postfix_configuration_names_is_refused_even_when_empty(tmp_path):
    """A mynetworks file is configuration, not a map: writing REJECT lines into it would break mynetworks."""
    conf = tmp_path / "postfix"
    conf.mkdir()
    (conf / "trusted").write_text("")
    (conf / "main.cf").write_text(f"compatibility_level = 3.6\nmynetworks = 127.0.0.0/8, {conf}/trusted\n")
    (conf / "master.cf").write_text("")
    for name in ("main.cf", "master.cf"):  # postconf waits ~2 s on a fresh main.cf
        os.utime(conf / name, (time.time() - 60, time.time() - 60))
    cfg = write_config(tmp_path / "rw.toml", sections(database=tmp_path / "s.db", config_directory=conf,
                                                      client_access_map=f"hash:{conf}/trusted"), mode=0o600)
    result = CliRunner().invoke(main, ["block", "192.0.2.7", "-c", str(cfg)])
    assert result.exit_code == 78, result.output
    assert "is a file Postfix reads as configuration (mynetworks names it)" in result.output
    assert (conf / "trusted").read_text() == "" and not (conf / "trusted.db").exists()


def test_the_daemon_refuses_to_start_on_main_cf_with_exit_78(postfix_instance, tmp_path):
    etc = Path(postfix_instance.config_directory)
    cfg = config(tmp_path, postfix_instance, f"hash:{etc}/main.cf")
    (tmp_path / "mail.log").write_text("")
    with open(cfg, "a") as f:
        f.write(f'[source]\npath = "{tmp_path / "mail.log"}"\n')
    before = files(etc)
    done = subprocess.run([sys.executable, "-m", "relaywatch", "run", "-c", cfg], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 78, done.stderr
    assert "main.cf" in done.stderr and files(etc) == before


def test_a_map_that_became_foreign_after_start_is_not_written(tmp_path):
    """The rule holds at every write, on the file actually opened (not only at start)."""
    path = tmp_path / "reject_list"
    amap = AccessMap(MapSpec("hash", str(path)))
    path.write_text(SHADOW)
    with pytest.raises(ForeignMap):
        amap.write([Block("client", "192.0.2.9")])
    assert path.read_text() == SHADOW and sorted(os.listdir(tmp_path)) == ["reject_list"]
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ForeignMap, match="symbolic link"):
        amap.write([Block("client", "192.0.2.9")])
    assert not (tmp_path / "elsewhere").exists()
