"""`relaywatch report` (a period the daemon recorded) and `relaywatch digest` (one day of it)."""

from __future__ import annotations

import sys
import time
from datetime import date, timedelta

import click

from relaywatch.cli.common import config_option, load, recorded_store, write_atomically
from relaywatch.reports import recorded


def _day_option(value: str | None, name: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date as YYYY-MM-DD", param_hint=name) from None


@click.command("report")
@click.option("--since", metavar="YYYY-MM-DD", help="First day of the period (default: 6 days before --until).")
@click.option("--until", metavar="YYYY-MM-DD", help="Last day of the period, included (default: today, local time).")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "html"]), default="text", show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Write the report to this file (default: stdout).")
@config_option
def report_command(since: str | None, until: str | None, fmt: str, output: str | None,
                   config_path: str | None) -> None:
    """Report a period of what the daemon recorded (default: the last 7 days), like replay's report.

    Built from the daemon's daily records: hourly counts, and top tables that are
    approximate past the rows each day keeps.
    """
    last = _day_option(until, "--until") or date.today()
    first = _day_option(since, "--since") or last - timedelta(days=6)
    if first > last:
        raise click.UsageError(f"--since {first} is after --until {last}")
    cfg = load(config_path)
    text = recorded.render(recorded.period(recorded_store(cfg), first, last, cfg.rules, time.time()), fmt)
    if output:
        write_atomically(output, text if text.endswith("\n") else text + "\n")
    else:
        click.echo(text, nl=not text.endswith("\n"))


@click.command()
@click.option("--day", metavar="YYYY-MM-DD", help="The day to show (default: yesterday, local time).")
@click.option("--send", is_flag=True, help="Also send it to the [notify] targets (those tagged for it).")
@config_option
def digest(day: str | None, send: bool, config_path: str | None) -> None:
    """Print the daily digest of a day the daemon recorded (default: yesterday); --send notifies it."""
    from relaywatch.notify.notices import notice_for_text
    from relaywatch.notify.send import send_now
    from relaywatch.reports.digest import unusual

    wanted = (_day_option(day, "--day") or date.today() - timedelta(days=1)).isoformat()
    cfg = load(config_path)
    if send and not cfg.notify_urls and not cfg.notify_config:
        raise click.UsageError("--send needs [notify] urls or config in the configuration")
    stats, title, body = recorded.day_digest(recorded_store(cfg), wanted)
    click.echo(f"{title}\n\n{body}")
    if not send:
        return
    severity = "warning" if unusual(stats) else "info"
    results = send_now(notice_for_text(severity, title, body, ("digest", severity)), cfg.notify_urls,
                       cfg.notify_config, timeout_s=cfg.notify_timeout_s)
    for r in results:
        click.echo(f"{'sent  ' if r.ok else 'FAILED'} {r.url}{'' if r.ok else f': {r.error}'}", err=True)
    if not results:
        click.echo("relaywatch: no target takes notices tagged digest", err=True)
    if not results or not all(r.ok for r in results):
        sys.exit(1)
