"""Metadata and packaging agree with each other: one version, one license, one install path.

The .deb itself is built, installed, run, linted and purged by .ci/deb (too slow for a unit test).
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys
import tomllib
from importlib.metadata import metadata
from pathlib import Path

import relaywatch
from relaywatch.cli import main

ROOT = Path(__file__).resolve().parent.parent
PACKAGING = ROOT / "packaging"
VENV = "/opt/venvs/relaywatch"


def _unit(name: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((PACKAGING / name).read_text())
    return parser


def test_one_version_everywhere() -> None:
    changelog = (PACKAGING / "debian" / "changelog").read_text().splitlines()[0]
    assert re.match(rf"relaywatch \({re.escape(relaywatch.__version__)}\) ", changelog)
    assert metadata("relaywatch")["Version"] == relaywatch.__version__


def test_license_is_mit_everywhere() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert not any(c.startswith("License ::") for c in project["classifiers"])  # PEP 639: the expression only
    assert "License: Expat" in (PACKAGING / "debian" / "copyright").read_text()
    assert metadata("relaywatch")["License-Expression"] == "MIT"


def test_the_units_run_the_packaged_program() -> None:
    rules = (PACKAGING / "debian" / "rules").read_text()
    assert f"VENV := {VENV}" in rules
    service = _unit("relaywatch.service")["Service"]
    assert service["ExecStart"].startswith(f"{VENV}/bin/relaywatch run ")
    assert service["ConfigurationDirectoryMode"] == "0750"
    digest = _unit("relaywatch-digest.service")["Service"]
    assert digest["ExecStart"].startswith(f"{VENV}/bin/relaywatch digest --send ")
    assert _unit("relaywatch-digest.timer")["Timer"]["Persistent"] == "true"
    for name in ("relaywatch.service", "relaywatch-digest.service", "relaywatch-digest.timer"):
        assert f"packaging/{name}" in rules
    assert (PACKAGING / "debian" / "relaywatch.links").read_text().split() == [
        f"{VENV.lstrip('/')}/bin/relaywatch", "usr/bin/relaywatch"]


def test_the_man_page_documents_every_command() -> None:
    page = subprocess.run([sys.executable, str(PACKAGING / "manpage.py")], capture_output=True, text=True,
                          check=True, env={"SOURCE_DATE_EPOCH": "1700000000", "PATH": "/usr/bin:/bin"}).stdout
    assert page.startswith('.TH RELAYWATCH 1 "2023-11-14"')
    for name in main.commands:
        assert f".SS relaywatch {name.replace('-', chr(92) + '-')}" in page, name
    assert "install\\-maps" in page and "\\-\\-dry\\-run" in page
    assert not any(line.startswith(("'", ".  ")) for line in page.splitlines())  # no stray roff requests


def test_the_ci_floors_pin_what_pyproject_declares() -> None:
    """.ci/floors turns every `>=X` into `==X`; a requirement it cannot pin is an error there."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for req in project["dependencies"] + project["optional-dependencies"]["test"]:
        assert re.fullmatch(r"[A-Za-z0-9_.-]+>=[0-9][0-9.]*", req), req
