"""The `relaywatch` command group: logging, --version, and the one place errors become exit codes.

Exit codes: 0 ok, 1 runtime error, 2 usage, 3 the audit found an error-level hole, 78 bad configuration.
Commands raise the `RelaywatchError` family (its `exit_code`: 1, `ConfigError` 78) and click's usage
errors (2); `RelaywatchGroup.invoke` reports them. Other codes (check, status, audit) are the command's answer.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from relaywatch import __version__
from relaywatch.cli import admin, blocks, daemon, queue, replay, report
from relaywatch.cli.common import log
from relaywatch.model import RelaywatchError

# The service's stderr is the journal: its errors go out as log records, once.
LOGGED = frozenset({"run"})


class RelaywatchGroup(click.Group):
    """Turns a RelaywatchError from any command into `relaywatch: message` on stderr and its exit code."""

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


for _command in (replay.replay, blocks.block, blocks.check, blocks.unblock, blocks.blocks, admin.audit,
                 admin.notify_test, report.digest, daemon.run, daemon.status, queue.queue, report.report_command,
                 admin.config_command, admin.install_maps_command):
    main.add_command(_command)
