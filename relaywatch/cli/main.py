"""The `relaywatch` command group: logging, --version, and the one place errors become exit codes.

Exit codes: 0 ok, 1 runtime error, 2 usage, 3 the audit found an error-level hole, 78 bad configuration.
Commands raise the `RelaywatchError` family (its `exit_code`: 1, `ConfigError` 78) and click's usage
errors (2); `RelaywatchGroup.invoke` reports them. Other codes (check, status, audit) are the command's answer.
"""

from __future__ import annotations

import importlib
import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import click

from relaywatch import __version__
from relaywatch.cli.common import log
from relaywatch.model import RelaywatchError

# The service's stderr is the journal: its errors go out as log records, once.
LOGGED = frozenset({"run"})


# Each command's module is imported when the command is asked for: a replay does not load the
# daemon, the store's admin and the notifier (a third of a short replay's CPU, and 15 MiB).
COMMANDS = {"replay": ("replay", "replay"), "block": ("blocks", "block"), "check": ("blocks", "check"),
            "unblock": ("blocks", "unblock"), "blocks": ("blocks", "blocks"), "audit": ("admin", "audit"),
            "notify-test": ("admin", "notify_test"), "digest": ("report", "digest"), "run": ("daemon", "run"),
            "status": ("daemon", "status"), "queue": ("queue", "queue"), "report": ("report", "report_command"),
            "config": ("admin", "config_command"), "install-maps": ("admin", "install_maps_command")}


class RelaywatchGroup(click.Group):
    """Turns a RelaywatchError from any command into `relaywatch: message` on stderr and its exit code;
    loads each command (COMMANDS) when it is first asked for (`commands`: all of them)."""

    _loaded: dict[str, click.Command]

    @property  # click declares a plain attribute; this one loads on demand
    def commands(self) -> dict[str, click.Command]:
        for name in COMMANDS:
            self._load(name)
        return self._loaded

    @commands.setter
    def commands(self, value: MutableMapping[str, click.Command]) -> None:
        self._loaded = dict(value)

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        name = name or cmd.name
        if name is None:
            raise TypeError("Command has no name.")
        self._loaded[name] = cmd

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self._loaded, *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    def _load(self, name: str) -> click.Command | None:
        command = self._loaded.get(name)
        if command is None and name in COMMANDS:
            module, attr = COMMANDS[name]
            command = getattr(importlib.import_module(f"relaywatch.cli.{module}"), attr)
            assert isinstance(command, click.Command)
            self._loaded[name] = command
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RelaywatchError as exc:
            if ctx.invoked_subcommand in LOGGED:
                log.error("%s", exc)
            else:
                click.echo(f"relaywatch: {exc}", err=True)
            ctx.exit(exc.exit_code)


@click.group(cls=RelaywatchGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="relaywatch", message="%(prog)s %(version)s")
@click.option("-v", "--verbose", is_flag=True, help="Log debug details to stderr.")
def main(verbose: bool) -> None:
    """Watch a Postfix mail log for open-relay abuse and shut it down."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
