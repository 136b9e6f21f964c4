"""The command group turns the RelaywatchError family into exit codes in one place (cli/main.py)."""

from __future__ import annotations

import ast
from pathlib import Path

import click
from click.testing import CliRunner

from relaywatch.cli import main

CLI = Path(__file__).parent.parent / "relaywatch" / "cli"
# What each command needs besides -c to get as far as loading its configuration.
ARGS = {"block": ["198.18.0.1"], "check": ["198.18.0.1"], "unblock": ["198.18.0.1"], "replay": ["--sample"],
        "queue hold": ["--client", "198.18.0.1"], "queue release": ["--client", "198.18.0.1"],
        "queue delete": ["--client", "198.18.0.1"]}


def commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out += commands(command, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def test_only_the_group_maps_errors_to_exit_codes():
    for path in CLI.glob("*.py"):
        if path.name == "main.py":
            continue
        tree = ast.parse(path.read_text())
        calls = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ExceptHandler) and node.type is not None:
                caught = {n.id for n in ast.walk(node.type) if isinstance(n, ast.Name)}
                if caught & {"RelaywatchError", "ConfigError", "PostfixError"}:  # only to make it a usage error
                    assert isinstance(node.body[-1], ast.Raise), f"{path.name}:{node.lineno} handles {caught}"
            if isinstance(node, ast.Attribute) and node.attr == "exit_code" and id(node) not in calls:
                raise AssertionError(f"{path.name}:{node.lineno} exits with an error's exit_code itself")


def test_a_broken_configuration_is_78_for_every_command(tmp_path):
    bad = tmp_path / "relaywatch.toml"
    bad.write_text('[block]\nduration = "soon"\n')
    names = commands(main)
    assert ("queue", "list") in names and ("run",) in names
    for name in names:
        result = CliRunner().invoke(main, [*name, "-c", str(bad), *ARGS.get(" ".join(name), [])])
        assert result.exit_code == 78, (name, result.output, result.stderr)
        if name != ("run",):  # the service logs it instead (its stderr is the journal)
            assert result.stderr.startswith(f"relaywatch: {bad}: [block] duration: 'soon'"), (name, result.stderr)
            assert result.stderr.count("\n") == 1 and not result.stdout, (name, result.output)
