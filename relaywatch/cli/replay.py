"""`relaywatch replay`: old logs through the same pipeline as the daemon, reported; --apply/--notify act on them."""

from __future__ import annotations

import atexit
import gc
import sys
from collections.abc import Sequence

import click

from relaywatch import config as config_mod
from relaywatch.cli.common import config_option, load, log, write_atomically
from relaywatch.model import Decision
from relaywatch.postfix import hostaddrs
from relaywatch.replay import replay as run_replay
from relaywatch.reports import report
from relaywatch.reports.report import ReplayResult
from relaywatch.sources.sample import SAMPLE, SAMPLE_YEAR, sample_log
from relaywatch.wording import iso


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

    Several hosts' logs (or a central syslog file) are replayed as one fleet, merged by time;
    one host's rotated files are read oldest first (README, "Several mail hosts"). Classic
    syslog lines carry no year: it is taken from --year, else from each file's modification time.
    """
    if sample == bool(logs):
        raise click.UsageError("give LOG files to replay, or --sample for the bundled sample day")
    cfg = load(config_path)
    if sample:
        with sample_log() as path:
            result = _run(cfg, [path], year or SAMPLE_YEAR, local_domains, panels=fmt != "json")
    else:
        result = _run(cfg, list(logs), year, local_domains, panels=fmt != "json")
    pending = _act(cfg, result.decisions, apply, notify) if apply or notify else None
    if fmt == "html":
        from relaywatch.reports.html import render_html

        fleet = report.hosts_text(result)
        text = render_html(result, result.timeline, notes=[fleet] if fleet else [], dry_run=not apply)
    else:
        text = report.to_json(result) if fmt == "json" else report.to_text(result, dry_run=not apply)
    if output:
        write_atomically(output, text)
    else:
        click.echo(text, nl=False)
    # The process ends with the report: the collector's last passes at exit would walk (and free one by
    # one) the replay's windows, cycles and all, for nothing (1 % of a seed replay). Frozen, they are skipped.
    atexit.unregister(gc.freeze)
    atexit.register(gc.freeze)
    if pending:
        click.echo(f"relaywatch: the blocks are recorded but pending: {pending}", err=True)
        sys.exit(1)


def _act(cfg: config_mod.Config, decisions: Sequence[Decision], apply: bool, notify: bool) -> str | None:
    """Block what the replay decided to block and hold its queued mail (--apply), tell the [notify]
    targets (--notify); why the blocks are not in force when the maps could not be written."""
    from relaywatch.build import blocker_for, notifier_for, responder_for
    from relaywatch.store.sqlite import Store

    if notify and not cfg.notify_urls and not cfg.notify_config:
        raise click.UsageError("--notify needs [notify] urls or config in the configuration")
    store = Store(cfg.database) if apply else Store(None)
    notifier = None
    try:
        blocker = blocker_for(cfg, store) if apply else None
        notifier = notifier_for(cfg, coalesce=False) if notify else None
        outcomes = responder_for(cfg, store, blocker, notifier).act(decisions)
        for held in (o.held for o in outcomes if o.held is not None and o.held.count != 0):
            for _, text in held.messages():
                click.echo(f"relaywatch: {text}", err=True)
        return None if blocker is None or blocker.sync() else blocker.last_error
    finally:
        if notifier is not None:
            notifier.close()
        store.close()


def _run(cfg: config_mod.Config, paths: list[str], year: int | None, local_domains: tuple[str, ...],
         panels: bool = True) -> ReplayResult:
    tty = sys.stderr.isatty()

    def progress(lines: int) -> None:
        click.echo(f"\r  {lines:,} lines read", err=True, nl=False)

    def announce(decisions: Sequence[Decision]) -> None:
        for d in decisions:
            log.debug("%s %s %s %s (rule %s, %d in %ds)", iso(d.time), d.action, d.kind, d.target, d.rule,
                      d.count, d.window_s)

    own = hostaddrs.for_replay(cfg.config_directory)
    result = run_replay(paths, cfg, year, on_decisions=announce, on_progress=progress if tty else None,
                        local_domains=tuple(d.lower() for d in local_domains), own_addresses=own, panels=panels)
    if tty:
        click.echo("\r" + " " * 30 + "\r", err=True, nl=False)
    return result
