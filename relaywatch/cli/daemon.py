"""`relaywatch run` (the systemd service) and `relaywatch status` (what it is doing)."""

from __future__ import annotations

import sys
import time

import click

from relaywatch import config as config_mod
from relaywatch.cli.common import (
    config_option,
    config_path_or_default,
    has_state,
    load,
    recorded_store,
)


@click.command()
@config_option
def run(config_path: str | None) -> None:
    """Follow the live mail log and act on it: the systemd service (SIGHUP reloads the config)."""
    from relaywatch.daemon import Daemon

    config_path = config_path_or_default(config_path)
    daemon = Daemon(config_path, config_mod.load(config_path))
    sys.exit(daemon.run())


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@config_option
def status(as_json: bool, config_path: str | None) -> None:
    """Whether the daemon runs, what it reads and how far behind, busiest counters, blocks in force.

    Exit status as `systemctl status`: 0 running, 3 not running, 4 unknown (no state yet).
    """
    from relaywatch.reports import status as status_mod

    cfg = load(config_path)
    if not has_state(cfg):  # no state yet: "unknown" in systemctl's terms
        click.echo(f"relaywatch: {cfg.database} does not exist: relaywatch has not run with this "
                   "configuration", err=True)
        sys.exit(status_mod.Lsb.UNKNOWN)
    info = status_mod.gather(recorded_store(cfg), time.time())
    click.echo(status_mod.to_json(info) if as_json else status_mod.to_text(info), nl=as_json)
    sys.exit(status_mod.exit_code(info))
