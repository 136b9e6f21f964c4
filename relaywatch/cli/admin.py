"""Setting up and checking: `relaywatch audit`, `config`, `install-maps` and `notify-test`."""

from __future__ import annotations

import os
import sys
import time

import click

from relaywatch import config as config_mod
from relaywatch.cli.common import (
    DEFAULT_CONFIG,
    config_option,
    config_path_or_default,
    load,
)
from relaywatch.model import ConfigError, Finding, RelaywatchError
from relaywatch.postfix.commands import default_database_type
from relaywatch.store.sqlite import Store


@click.command()
@config_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--address", "addresses", multiple=True, metavar="IP",
              help="Also say whether this address may relay (repeatable).")
def audit(config_path: str | None, fmt: str, addresses: tuple[str, ...]) -> None:
    """Find the holes in Postfix's configuration: mynetworks, restriction order, stale maps.

    Exit status 3 when an error-level finding exists (usable from cron and CI).
    """
    from relaywatch.postfix import audit as audit_mod
    from relaywatch.postfix.audit_blocks import AuditMaps

    try:
        cfg = load(config_path)
        maps = AuditMaps(cfg.client_access_map, cfg.sasl_access_map or None, cfg.policy_listen or None)
        findings = audit_mod.run_audit(cfg.config_directory, maps, addresses)
        findings.append(_source_finding(cfg))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--address") from None
    click.echo(audit_mod.to_json(findings) if fmt == "json" else audit_mod.format_text(findings), nl=False)
    sys.exit(audit_mod.exit_code(findings))


def _source_finding(cfg: config_mod.Config) -> Finding:
    """What the daemon reads and whether lines arrive (from its state, never creating one)."""
    from relaywatch.sources.choose import finding

    daemon = None
    if os.path.exists(cfg.database):
        store = Store(cfg.database)
        try:
            status = store.status.get()
            daemon = status.to_json() if status is not None else None
        finally:
            store.close()
    return finding(cfg.source_path, cfg.source_explicit, os.path.exists(cfg.source_path), daemon, time.time())


@click.command("notify-test")
@config_option
@click.option("--url", "urls", multiple=True, help="Test this Apprise URL instead of the configured ones.")
def notify_test(config_path: str | None, urls: tuple[str, ...]) -> None:
    """Send a test message to every notification target and say which one got it."""
    from relaywatch.notify.send import send_test

    cfg = load(config_path)
    if not urls and not cfg.notify_urls and not cfg.notify_config:
        raise click.UsageError("no targets: set [notify] urls or config, or give --url")
    try:
        results = send_test(urls or cfg.notify_urls, None if urls else cfg.notify_config,
                            timeout_s=cfg.notify_timeout_s)
    except ConfigError as exc:
        if urls:  # the URL on the command line is wrong, not the configuration
            raise click.BadParameter(str(exc).replace("notify urls #", "#"), param_hint="--url") from None
        raise
    for r in results:
        click.echo(f"{'ok    ' if r.ok else 'FAILED'} {r.url}{'' if r.ok else f': {r.error}'}")
    if not all(r.ok for r in results):
        sys.exit(1)


@click.command("config")
@config_option
@click.option("--check", is_flag=True, help="Only validate it: exit 0 if usable, 78 naming the bad key if not.")
@click.option("--example", is_flag=True, help="Print the commented example relaywatch.toml shipped with relaywatch.")
def config_command(config_path: str | None, check: bool, example: bool) -> None:
    """Print the effective configuration, defaults included (like postconf); --check validates it."""
    from relaywatch.notify.send import redact
    from relaywatch.reports import effective_config

    if check and example:
        raise click.UsageError("--check and --example exclude each other")
    if example:
        click.echo(effective_config.example(), nl=False)
        return
    path = config_path_or_default(config_path)
    cfg = config_mod.load(path)
    if check:
        from relaywatch.postfix.install_maps import map_specs

        map_specs(cfg.client_access_map, cfg.sasl_access_map, "hash")
    source = path or f"no {DEFAULT_CONFIG}, so the built-in defaults"
    if check:
        click.echo(f"{source}: OK")
        return
    click.echo(effective_config.render(cfg, source, redact), nl=False)


@click.command("install-maps")
@config_option
@click.option("--dry-run", is_flag=True, help="Print the exact commands, change nothing.")
def install_maps_command(config_path: str | None, dry_run: bool) -> None:
    """Put relaywatch's lookups in front of Postfix's restriction lists, keeping every other entry.

    check_client_access goes first in smtpd_client_restrictions, check_sasl_access first in
    smtpd_recipient_restrictions, in main.cf and in each master.cf service that overrides them.
    Missing map files are created empty and compiled; Postfix is reloaded. A second run changes nothing.
    For pgsql: maps it writes the .cf files (mode 0640 root:postfix) for a read-only role and prints
    the SQL that creates the role, for the database owner to run.
    """
    from relaywatch.postfix import install_maps

    try:
        cfg = load(config_path)
        maps = install_maps.map_specs(cfg.client_access_map, cfg.sasl_access_map,
                                      default_database_type(cfg.config_directory))
        plan = install_maps.plan(cfg.config_directory, maps, cfg.database)
        if not plan.changes:
            for line in install_maps.describe(plan, cfg.config_directory, dry_run=False):
                click.echo(line)
            click.echo("nothing to change: relaywatch's lookups already come first and the maps exist")
        elif dry_run:
            for line in install_maps.describe(plan, cfg.config_directory):
                click.echo(line)
        else:
            install_maps.execute(plan, cfg.config_directory, click.echo)
    except OSError as exc:
        raise RelaywatchError(f"cannot create the map file: {exc}") from exc
