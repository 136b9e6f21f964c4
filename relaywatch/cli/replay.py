"""`relaywatch replay`: old logs through the same pipeline as the daemon, reported; --apply/--notify act on them."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from relaywatch import config as config_mod
from relaywatch.cli.common import blocker as make_blocker
from relaywatch.cli.common import config_option, load, log, write_atomically
from relaywatch.model import Decision
from relaywatch.postfix import hostaddrs
from relaywatch.replay import replay as run_replay
from relaywatch.reports import report
from relaywatch.reports.report import ReplayResult
from relaywatch.sources.sample import SAMPLE, SAMPLE_YEAR, sample_log
from relaywatch.store.sqlite import Store


@click.command()
@click.argument("logs", nargs=-1, type=click.Path(allow_dash=True))
@config_option
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the report to this file (default: stdout).")
@click.option("--year", type=click.IntRange(1970, 2200), help="Year of the first line (classic syslog has none).")
@click.option("--apply", is_flag=True, help="Perform the decisions (default: dry run, report only).")
@click.option("--sample", is_flag=True, help=f"Replay the bundled sample day ({SAMPLE}).")
@click.option("--notify", "notify", is_flag=True, help="Send the decisions to the [notify] targets (one digest).")
@click.option("--local-domain", "local_domains", multiple=True, metavar="DOMAIN",
              help="A domain the logged server accepts mail for (repeatable; .example.com: its subdomains). "
                   "Default: [postfix] local_domains, else Postfix's own lists, else inferred from the log.")
def replay(logs: tuple[str, ...], config_path: str | None, fmt: str, output: str | None, year: int | None,
           apply: bool, sample: bool, notify: bool, local_domains: tuple[str, ...]) -> None:
    """Replay old logs (plain, .gz, .bz2, .xz or - for stdin) and report what relaywatch would do.

    Give a rotated set oldest first. Classic syslog lines carry no year: it is
    taken from --year, else from each file's modification time.
    """
    if sample == bool(logs):
        raise click.UsageError("give LOG files to replay, or --sample for the bundled sample day")
    cfg = load(config_path)
    if sample:
        with sample_log() as path:
            result = _run(cfg, [path], year or SAMPLE_YEAR, local_domains)
    else:
        result = _run(cfg, list(logs), year, local_domains)
    pending = _apply(cfg, result.decisions) if apply else False
    if notify:
        _notify(cfg, result.decisions, dry_run=not apply)
    if fmt == "html":
        from relaywatch.reports.html import render_html

        text = render_html(result, result.timeline, dry_run=not apply)
    else:
        text = report.to_json(result) if fmt == "json" else report.to_text(result, dry_run=not apply)
    if output:
        write_atomically(output, text)
    else:
        click.echo(text, nl=False)
    if pending:
        click.echo(f"relaywatch: the blocks are recorded but pending: {pending}", err=True)
        sys.exit(1)


def _notify(cfg: config_mod.Config, decisions: Sequence[Decision], dry_run: bool) -> None:
    from relaywatch.notify.send import Notifier, notice_for_decision

    if not cfg.notify_urls and not cfg.notify_config:
        raise click.UsageError("--notify needs [notify] urls or config in the configuration")
    with Notifier(cfg.notify_urls, cfg.notify_config, coalesce_s=0, timeout_s=cfg.notify_timeout_s,
                  retries=cfg.notify_retries) as notifier:
        for d in decisions:
            notifier.submit(notice_for_decision(d, dry_run=dry_run))


def _apply(cfg: config_mod.Config, decisions: Sequence[Decision]) -> str | None:
    """Block now what the replay decided to block; the error text if the maps could not be written."""
    store = Store(cfg.database)
    blocker = make_blocker(cfg, store)
    for d in decisions:
        if d.action == "block":
            blocker.block(d.kind, d.target, report.describe(d), rule=d.rule)
    return None if blocker.sync() else blocker.last_error


def _run(cfg: config_mod.Config, paths: list[str], year: int | None, local_domains: tuple[str, ...]) -> ReplayResult:
    tty = sys.stderr.isatty()

    def progress(lines: int) -> None:
        click.echo(f"\r  {lines:,} lines read", err=True, nl=False)

    def announce(decisions: Sequence[Decision]) -> None:
        for d in decisions:
            log.debug("%s %s %s %s (rule %s, %d in %ds)", report.iso(d.time), d.action, d.kind, d.target, d.rule,
                      d.count, d.window_s)

    own = hostaddrs.for_replay(cfg.config_directory)
    result = run_replay(paths, cfg, year, on_decisions=announce, on_progress=progress if tty else None,
                        local_domains=tuple(d.lower() for d in local_domains), own_addresses=own)
    if tty:
        click.echo("\r" + " " * 30 + "\r", err=True, nl=False)
    return result
