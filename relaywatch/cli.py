"""The `relaywatch` command. Exit codes: 0 ok, 1 runtime error, 2 usage, 78 bad configuration."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from importlib import resources

import click

from . import config as config_mod
from . import report
from .engine import ReplayResult
from .engine import replay as run_replay
from .model import Decision, RelaywatchError

SAMPLE = "sample-2003-03-16.log.gz"
SAMPLE_YEAR = 2003
log = logging.getLogger("relaywatch")


def _fail(exc: RelaywatchError) -> None:
    click.echo(f"relaywatch: {exc}", err=True)
    sys.exit(exc.exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details to stderr.")
def main(verbose: bool) -> None:
    """Watch a Postfix mail log for open-relay abuse and shut it down."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@main.command()
@click.argument("logs", nargs=-1, type=click.Path(allow_dash=True))
@click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False), help="relaywatch.toml to use.")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--year", type=click.IntRange(1970, 2200), help="Year of the first line (classic syslog has none).")
@click.option("--apply", is_flag=True, help="Perform the decisions (default: dry run, report only).")
@click.option("--sample", is_flag=True, help=f"Replay the bundled sample day ({SAMPLE}).")
def replay(logs: tuple[str, ...], config_path: str | None, fmt: str, year: int | None, apply: bool,
           sample: bool) -> None:
    """Replay old logs (plain, .gz, .bz2, .xz or - for stdin) and report what relaywatch would do.

    Give a rotated set oldest first. Classic syslog lines carry no year: it is
    taken from --year, else from each file's modification time.
    """
    if sample == bool(logs):
        raise click.UsageError("give LOG files to replay, or --sample for the bundled sample day")
    if apply:
        raise click.UsageError("--apply needs the blocking actions, which this version does not have yet")
    try:
        cfg = config_mod.load(config_path)
        if sample:
            with resources.as_file(resources.files("relaywatch") / "data" / SAMPLE) as path:
                result = _run(cfg, [str(path)], year or SAMPLE_YEAR)
        else:
            result = _run(cfg, list(logs), year)
    except RelaywatchError as exc:
        _fail(exc)
    click.echo(report.to_json(result) if fmt == "json" else report.to_text(result, dry_run=not apply), nl=False)


def _run(cfg: config_mod.Config, paths: list[str], year: int | None) -> ReplayResult:
    tty = sys.stderr.isatty()

    def progress(lines: int) -> None:
        click.echo(f"\r  {lines:,} lines read", err=True, nl=False)

    def announce(decisions: Sequence[Decision]) -> None:
        for d in decisions:
            log.debug("%s %s %s %s (rule %s, %d in %ds)", report.iso(d.time), d.action, d.kind, d.target, d.rule,
                      d.count, d.window_s)

    result = run_replay(paths, cfg, year, on_decisions=announce, on_progress=progress if tty else None)
    if tty:
        click.echo("\r" + " " * 30 + "\r", err=True, nl=False)
    return result
