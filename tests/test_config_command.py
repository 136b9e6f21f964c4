"""relaywatch config: the effective configuration (a loadable TOML), --check (exit 78 naming the key),
--example (the shipped example, from the installed package), --version."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from click.testing import CliRunner

import relaywatch
from relaywatch import config as config_mod
from relaywatch.cli import main
from relaywatch.reports import effective_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "conf" / "relaywatch.toml"

NON_DEFAULT = """\
[source]
path = "journal"
[state]
database = "/srv/rw/state.db"
[postfix]
config_directory = "/etc/postfix-out"
client_access_map = "cidr:/etc/postfix-out/rw_clients"
sasl_access_map = ""
local_domains = ["example.org", ".example.net"]
syslog_names = ["postfix-out"]
[allow]
networks = ["10.0.0.0/8", "2001:db8::/32"]
sasl_users = ["newsletter"]
[block]
duration = "90s"
[notify]
urls = ["json://127.0.0.1:9/x"]
config = "/etc/relaywatch/apprise.yml"
coalesce = "30s"
cooldown = "1h"
timeout = "5s"
retries = 1
digest_at = "07:30"
[queue]
hold = false
[rules.subnet]
enabled = false
[rules.client]
threshold = 30
window = "2d"
[rules.mine]
dim = "sender"
threshold = 5
window = "1w"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "relaywatch.toml"
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_every_config_field_is_printed() -> None:
    assert effective_config.unlisted_fields() == set()


def test_the_printed_configuration_loads_back_into_the_same_one(tmp_path: Path) -> None:
    path = _write(tmp_path, NON_DEFAULT)
    cfg = config_mod.load(path)
    assert cfg != config_mod.Config()
    out = CliRunner().invoke(main, ["config", "-c", str(path)])
    assert out.exit_code == 0, out.output
    assert config_mod.from_dict(tomllib.loads(out.output)) == cfg
    assert "[rules.subnet]\nenabled = false" in out.output and 'window = "2d"' in out.output


def test_defaults_are_printed_when_there_is_no_file() -> None:
    text = effective_config.render(config_mod.Config(), "defaults")
    assert config_mod.from_dict(tomllib.loads(text)) == config_mod.Config()
    assert 'path = "/var/log/mail.log"' in text and 'duration = "1d"' in text


def test_an_unset_source_path_stays_unset_in_the_printed_configuration() -> None:
    """`relaywatch config > relaywatch.toml` must not turn the default into a set path: a set path is
    waited for, so on Debian 12 without rsyslog the daemon would read nothing instead of the journal."""
    text = effective_config.render(config_mod.Config(), "defaults")
    assert not config_mod.from_dict(tomllib.loads(text)).source_explicit
    assert "else the systemd journal" in text
    explicit = config_mod.from_dict({"source": {"path": "/var/log/mail.log"}})
    assert config_mod.from_dict(tomllib.loads(effective_config.render(explicit, "a file"))).source_explicit


def test_notification_tokens_are_masked(tmp_path: Path) -> None:
    path = _write(tmp_path, '[notify]\nurls = ["tgram://123456:SECRETTOKEN/987"]\n')
    out = CliRunner().invoke(main, ["config", "-c", str(path)])
    assert out.exit_code == 0 and "SECRETTOKEN" not in out.output and "tgram://" in out.output


def test_the_keys_are_those_of_the_example() -> None:
    """Every key the example documents is printed, and nothing else (the example is the reference)."""
    documented = set()
    section = ""
    for line in EXAMPLE.read_text().splitlines():
        if m := re.fullmatch(r"\[(\w+)\]", line):
            section = m[1]
        elif line.startswith("# [rules."):
            section = ""  # the rule tables: written from Rule, checked by the round trip
        elif (m := re.fullmatch(r"# (\w+) = .*", line)) and section:
            documented.add((section, m[1]))
    assert documented == {(s, k) for s, k, _, _ in effective_config.KEYS}


def test_check_ok_and_bad_exit_78_naming_the_key(tmp_path: Path) -> None:
    good = _write(tmp_path, NON_DEFAULT)
    ok = CliRunner().invoke(main, ["config", "--check", "-c", str(good)])
    assert ok.exit_code == 0 and ok.output == f"{good}: OK\n"
    for text, key in (('[block]\nduration = "soon"\n', "[block] duration"),
                      ('[postfix]\nclient_access_map = "hash:relative/path"\n', "[postfix] client_access_map"),
                      ('[notify]\nretrys = 3\n', "retrys")):
        bad = _write(tmp_path, text)
        out = CliRunner().invoke(main, ["config", "--check", "-c", str(bad)])
        assert out.exit_code == 78, (text, out.output)
        assert key in out.output


def test_example_is_the_shipped_file() -> None:
    out = CliRunner().invoke(main, ["config", "--example"])
    assert out.exit_code == 0 and out.output == EXAMPLE.read_text()
    config_mod.from_dict(tomllib.loads(out.output))  # valid, all defaults


def test_version() -> None:
    out = CliRunner().invoke(main, ["--version"])
    assert out.exit_code == 0 and out.output == f"relaywatch {relaywatch.__version__}\n"
