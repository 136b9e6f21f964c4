"""Write relaywatch.1 (man(7) roff) from the click commands, so the page never lags the CLI.

    python packaging/manpage.py > relaywatch.1      (run by packaging/debian/rules)
"""

from __future__ import annotations

import sys
import textwrap
from datetime import UTC, datetime

import click

from relaywatch import __version__
from relaywatch.cli import main


def esc(text: str) -> str:
    """Text safe in a roff line: backslashes, leading dots/quotes, hyphens meant as minus."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text[:1] in (".", "'") else text


def _paragraphs(help_text: str) -> list[str]:
    return [" ".join(p.split()) for p in textwrap.dedent(help_text).strip().split("\n\n") if p.strip()]


def _options(ctx: click.Context, command: click.Command) -> list[str]:
    out: list[str] = []
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx) if isinstance(param, click.Option) else None
        if record is None:
            continue
        names, help_text = record
        out += [".TP", f"\\fB{esc(names)}\\fR", esc(help_text) if help_text else ""]
    return out


def _commands(ctx: click.Context, group: click.Group, prefix: str) -> list[str]:
    out: list[str] = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        sub = click.Context(command, info_name=name, parent=ctx)
        usage = " ".join(command.collect_usage_pieces(sub))
        out += [".SS " + esc(f"{prefix} {name}"), f"\\fB{esc(prefix + ' ' + name)}\\fR {esc(usage)}", ".PP"]
        for p in _paragraphs(command.help or ""):
            out += [esc(p), ".PP"]
        out += _options(sub, command)
        if isinstance(command, click.Group):
            out += _commands(sub, command, f"{prefix} {name}")
    return out


def render(date: str) -> str:
    ctx = click.Context(main, info_name="relaywatch")
    lines = [
        f'.TH RELAYWATCH 1 "{date}" "relaywatch {__version__}" "User Commands"',
        ".SH NAME",
        "relaywatch \\- watch a Postfix mail log for open\\-relay abuse and shut it down",
        ".SH SYNOPSIS",
        "\\fBrelaywatch\\fR [\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        esc(" ".join((main.help or "").split())),
        ".PP",
        esc("relaywatch follows Postfix's log, joins each message by queue id, counts relayed recipients "
            "in sliding windows and blocks abusers through Postfix access maps. Each command's own "
            "--help says the same as this page."),
        ".SH OPTIONS",
        *_options(ctx, main),
        ".SH COMMANDS",
        *_commands(ctx, main, "relaywatch"),
        ".SH EXIT STATUS",
        esc("0 ok, 1 runtime error, 2 usage, 3 audit found an error-level hole, "
            "78 bad configuration (the message names the key)."),
        ".SH FILES",
        ".TP", "\\fI/etc/relaywatch/relaywatch.toml\\fR",
        esc("The configuration; relaywatch config --example prints the commented example."),
        ".TP", "\\fI/var/lib/relaywatch/state.db\\fR",
        esc("Blocks, window counts, the read position and the daily records."),
        ".SH SEE ALSO",
        "\\fBpostconf\\fR(1), \\fBpostmap\\fR(1), \\fBaccess\\fR(5), \\fBsystemctl\\fR(1)",
    ]
    return "\n".join(line for line in lines if line != "") + "\n"


if __name__ == "__main__":
    # The changelog's date would be more reproducible; SOURCE_DATE_EPOCH is what dpkg sets.
    import os

    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    when = datetime.fromtimestamp(epoch, UTC) if epoch else datetime.now(UTC)
    sys.stdout.write(render(when.strftime("%Y-%m-%d")))
