"""The configuration: defaults, the shipped example, and errors that name their key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from relaywatch import config
from relaywatch.core.rules import DEFAULT_RULES
from relaywatch.model import ConfigError

EXAMPLE = Path(__file__).parent.parent / "conf" / "relaywatch.toml"


def load_text(tmp_path: Path, text: str) -> config.Config:
    path = tmp_path / "relaywatch.toml"
    path.write_text(text)
    return config.load(path)


def test_no_file_means_defaults():
    assert config.load(None) == config.Config()


def test_the_example_uncommented_is_exactly_the_defaults(tmp_path):
    uncommented = re.sub(r"(?m)^# (?=\[|[a-z_]+ = )", "", EXAMPLE.read_text())
    assert tomllib.loads(uncommented)["rules"]["client"]["threshold"] == 60
    assert load_text(tmp_path, uncommented) == config.Config()


def test_every_default_rule_is_documented_in_the_example():
    text = EXAMPLE.read_text()
    for rule in DEFAULT_RULES:
        assert f"# [rules.{rule.name}]" in text


def test_values_are_read(tmp_path):
    cfg = load_text(tmp_path, """
[source]
path = "/var/log/maillog"
[postfix]
config_directory = "/etc/postfix-out"
local_domains = ["Woodelf.org", ".example.net"]
[allow]
networks = ["192.168.0.0/24"]
[block]
duration = "2h"
[rules.client]
threshold = 10
window = "5m"
[rules.sender]
enabled = false
[rules.night_owl]
dim = "sasl_user"
action = "alert"
threshold = 5
window = 60
""")
    assert cfg.source_path == "/var/log/maillog"
    assert cfg.config_directory == "/etc/postfix-out"
    assert cfg.local_domains == ("woodelf.org", ".example.net")
    assert [str(n) for n in cfg.allow_networks] == ["192.168.0.0/24"]
    assert cfg.block_s == 7200
    rules = {r.name: r for r in cfg.rules}
    assert (rules["client"].threshold, rules["client"].window_s, rules["client"].action) == (10, 300, "block")
    assert "sender" not in rules
    assert (rules["night_owl"].dim, rules["night_owl"].window_s) == ("sasl_user", 60)


@pytest.mark.parametrize("text, names", [
    ("[source]\npth = 'x'", "[source]: unknown key pth"),
    ("[sorce]\npath = 'x'", "unknown section [sorce]"),
    ("[allow]\nnetworks = ['300.1.2.3/8']", "[allow] networks"),
    ("[block]\nduration = 'soon'", "[block] duration"),
    ("[rules.client]\nthreshold = 0", "[rules.client] threshold"),
    ("[rules.client]\nthreshold = '60'", "[rules.client] threshold: expected int"),
    ("[rules.x]\ndim = 'moon'\nthreshold = 1\nwindow = 60", "[rules.x] dim"),
    ("[rules.x]\ndim = 'sender'\naction = 'block'\nthreshold = 1\nwindow = 60", "[rules.x] action"),
    ("[rules.x]\ndim = 'client'\nthreshold = 1", "[rules.x] window"),
    ("[queue]\nhold = 'yes'", "[queue] hold: expected bool"),
    ("[source\npath = 1", "not valid TOML"),
    ("[state]\ndatabase = '/var/lib/relaywatch/state.db'\npassword_file = '/etc/relaywatch/db-password'",
     "[state] password_file: set, but [state] database is a SQLite file"),
])
def test_errors_name_the_key(tmp_path, text, names):
    with pytest.raises(ConfigError) as err:
        load_text(tmp_path, text)
    assert names in str(err.value)
    assert err.value.exit_code == 78


def test_a_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml")


@pytest.mark.parametrize("value, seconds", [(600, 600), ("600", 600), ("10m", 600), ("1h", 3600), ("2d", 172800)])
def test_durations(value, seconds):
    assert config.parse_duration(value, "k") == seconds
