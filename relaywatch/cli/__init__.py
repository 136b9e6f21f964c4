"""The `relaywatch` command.

Exit codes: 0 ok, 1 runtime error, 2 usage, 3 the audit found an error-level hole, 78 bad configuration.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import date, timedelta
from importlib import resources
from typing import TYPE_CHECKING

import click

from relaywatch import __version__
from relaywatch import config as config_mod
from relaywatch.engine import replay as run_replay
from relaywatch.model import ConfigError, Decision, RelaywatchError
from relaywatch.postfix import hostaddrs
from relaywatch.postfix.blocking import Blocker, in_map, map_specs, maps_from_config, target_kind
from relaywatch.postfix.maps import Postfix, default_database_type
from relaywatch.postfix.queue import CLI_FLAGS, PostfixQueue, QueuedMessage, Target, select, target
from relaywatch.reports import report
from relaywatch.reports.check import MANUAL_REASON, manual_evidence
from relaywatch.reports.report import ReplayResult
from relaywatch.store.sqlite import Store

if TYPE_CHECKING:
    from relaywatch.postfix.audit import Finding

DEFAULT_CONFIG = "/etc/relaywatch/relaywatch.toml"
SAMPLE = "sample-2003-03-16.log.gz"
SAMPLE_YEAR = 2003
log = logging.getLogger("relaywatch")


def _fail(exc: RelaywatchError) -> None:
    click.echo(f"relaywatch: {exc}", err=True)
    sys.exit(exc.exit_code)


def _load(config_path: str | None) -> config_mod.Config:
    """The named config, else /etc/relaywatch/relaywatch.toml when it exists, else the defaults."""
    if config_path is None and os.path.exists(DEFAULT_CONFIG):
        config_path = DEFAULT_CONFIG
    return config_mod.load(config_path)


def _recorded_store(cfg: config_mod.Config) -> Store:
    """The state database for a command that only reads it: never create one as a side effect."""
    if not os.path.exists(cfg.database):
        raise RelaywatchError(f"{cfg.database} does not exist: relaywatch has not run with this configuration")
    return Store(cfg.database)


def _default_type(cfg: config_mod.Config) -> str:
    specs = (cfg.client_access_map, cfg.sasl_access_map)
    typed = all(":" in s and not s.startswith("/") for s in specs if s)
    return "hash" if typed else default_database_type(cfg.config_directory)


def _blocker(cfg: config_mod.Config, store: Store) -> Blocker:
    default_type = _default_type(cfg)
    maps = maps_from_config(cfg.client_access_map, cfg.sasl_access_map, default_type,
                            config_directory=cfg.config_directory, map_directories=cfg.map_directories)
    return Blocker(store, Postfix(cfg.config_directory), maps, cfg.block_s)


def _enforcement(cfg: config_mod.Config, kind: str, target: str) -> tuple[bool | None, str]:
    """Would Postfix refuse `target` once blocked (the audit's restriction-order answer)?
    (True, ""), (False, why not and the fix), or (None, why it cannot tell)."""
    from relaywatch.postfix.audit import AuditMaps, block_ineffective_reason
    from relaywatch.postfix.postconf import postconf, postconf_services

    try:
        reason = block_ineffective_reason(
            postconf(cfg.config_directory), postconf_services(cfg.config_directory), kind, target,
            AuditMaps(cfg.client_access_map, cfg.sasl_access_map or None, cfg.policy_listen or None))
    except (RelaywatchError, ValueError) as exc:
        return None, f"cannot check the Postfix configuration: {exc}"
    return (False, reason) if reason else (True, "")


def _warn_if_ineffective(cfg: config_mod.Config, kind: str, target: str) -> None:
    """The 2003 trap: a map consulted after permit_mynetworks blocks nobody inside mynetworks."""
    enforced, why = _enforcement(cfg, kind, target)
    if enforced is None:
        log.warning("%s", why)
    elif not enforced:
        click.echo(f"relaywatch: WARNING: Postfix will not enforce this block: {why}", err=True)


config_option = click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
                             help=f"relaywatch.toml to use (default: {DEFAULT_CONFIG} if it exists).")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="relaywatch", message="%(prog)s %(version)s")
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
    try:
        cfg = _load(config_path)
        if sample:
            with resources.as_file(resources.files("relaywatch") / "data" / SAMPLE) as path:
                result = _run(cfg, [str(path)], year or SAMPLE_YEAR, local_domains)
        else:
            result = _run(cfg, list(logs), year, local_domains)
        pending = _apply(cfg, result.decisions) if apply else False
        if notify:
            _notify(cfg, result.decisions, dry_run=not apply)
    except RelaywatchError as exc:
        _fail(exc)
    if fmt == "html":
        from relaywatch.reports.html import render_html

        text = render_html(result, result.timeline, dry_run=not apply)
    else:
        text = report.to_json(result) if fmt == "json" else report.to_text(result, dry_run=not apply)
    if output:
        _write_atomically(output, text)
    else:
        click.echo(text, nl=False)
    if pending:
        click.echo(f"relaywatch: the blocks are recorded but pending: {pending}", err=True)
        sys.exit(1)


def _write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise RelaywatchError(f"cannot write {path}: {exc.strerror or exc}") from exc


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
    blocker = _blocker(cfg, store)
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


@main.command()
@click.argument("target")
@click.option("--reason", default=MANUAL_REASON, show_default=True, help="Why; shown in the map's REJECT text.")
@click.option("--for", "duration", help="How long, e.g. 1h, 2d (default: [block] duration, doubled per repeat).")
@click.option("--permanent", is_flag=True, help="Never expires.")
@click.option("--sasl-user", "sasl_user", is_flag=True, help="TARGET is a SASL login name (needed if it has an @).")
@click.option("--force", is_flag=True, help="Block it even though [allow] says never to.")
@config_option
def block(target: str, reason: str, duration: str | None, permanent: bool, sasl_user: bool, force: bool,
          config_path: str | None) -> None:
    """Block TARGET now: a client IP, a subnet (218.144.0.0/16) or a SASL login name.

    Addresses in [allow] networks (loopback by default) and [allow] sasl_users are
    refused unless --force. A name with an @ needs --sasl-user: relaywatch blocks
    logins, not senders.
    """
    from relaywatch.reports.check import KIND_TEXT, allowed_by, looks_like_address, parse

    if duration and permanent:
        raise click.UsageError("--for and --permanent exclude each other")
    try:
        seconds = config_mod.parse_duration(duration, "--for") if duration else None
    except RelaywatchError as exc:
        raise click.BadParameter(str(exc).removeprefix("--for: "), param_hint="--for") from None
    try:
        kind, canonical = parse(target, sasl_user)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="TARGET") from None
    if kind == "sasl_user" and not sasl_user and looks_like_address(canonical):
        raise click.UsageError(f"{canonical} looks like an e-mail address: relaywatch blocks client addresses, "
                               "networks and SASL logins, not senders. If it is a SASL login name, add --sasl-user.")
    try:
        cfg = _load(config_path)
        allowed = allowed_by(cfg, kind, canonical)
        if allowed and not force:
            raise RelaywatchError(f"not blocking {kind} {canonical}: it is in {allowed}, which relaywatch never "
                                  "blocks; add --force to block it anyway")
        store = Store(cfg.database)
        blocker = _blocker(cfg, store)
        row = blocker.block(kind, canonical, reason, duration=seconds, permanent=permanent)
        # remembered like the detector's decisions: the digest and the report show manual blocks
        store.commit_batch([], [Decision(row.since, "block", kind, canonical, "manual", 0, 0,
                                         evidence=(manual_evidence(reason),))])
        synced = blocker.sync()
    except RelaywatchError as exc:
        _fail(exc)
    until = "permanently" if row.until is None else f"until {report.iso(row.until)}"
    click.echo(f"blocked {kind} {canonical} {until}: {KIND_TEXT[kind]}"
               + (f" (despite {allowed}: --force)" if allowed else ""))
    _warn_if_ineffective(cfg, kind, canonical)
    if not synced:
        click.echo(f"relaywatch: the block is recorded but pending: {blocker.last_error}", err=True)
        sys.exit(1)


@main.command()
@click.argument("target")
@click.option("--sasl-user", "sasl_user", is_flag=True, help="TARGET is a SASL login name.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@config_option
def check(target: str, sasl_user: bool, as_json: bool, config_path: str | None) -> None:
    """Is TARGET (client IP, network or SASL login) blocked: by which entry, since and until when, why,
    and would Postfix enforce it.

    Exit status 0 blocked, 3 not blocked (1 error, 2 usage).
    """
    from relaywatch.reports import check as check_mod

    try:
        kind, canonical = check_mod.parse(target, sasl_user)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="TARGET") from None
    try:
        cfg = _load(config_path)
        store = Store(cfg.database) if os.path.exists(cfg.database) else None  # none yet: nothing blocked
        now = time.time()
        blocks = store.blocks(now) if store is not None else []
        decisions = store.decisions() if store is not None else []
    except RelaywatchError as exc:
        _fail(exc)
    result = check_mod.answer(target, kind, canonical, cfg, blocks, decisions, _enforcement(cfg, kind, canonical))
    click.echo(result.to_json() if as_json else result.to_text(), nl=as_json)
    sys.exit(result.exit_code())


@main.command()
@click.argument("target")
@config_option
def unblock(target: str, config_path: str | None) -> None:
    """Lift the block on TARGET (client IP, subnet or SASL login name)."""
    from relaywatch.reports import check as check_mod

    try:
        cfg = _load(config_path)
        kind, canonical = target_kind(target)
        store = Store(cfg.database)
        blocker = _blocker(cfg, store)
        removed = blocker.unblock(kind, canonical)
        synced = blocker.sync()
        still = [] if removed else check_mod.covering(kind, canonical, store.blocks(time.time()))
    except RelaywatchError as exc:
        _fail(exc)
    click.echo(f"unblocked {kind} {canonical}" if removed else f"{kind} {canonical} was not blocked")
    for b in still:  # an address inside a blocked network: unblocking the address changes nothing
        click.echo(f"  but it is refused by the block of {b.kind} {b.target}: relaywatch unblock {b.target}")
    if not synced:
        click.echo(f"relaywatch: the change is recorded but pending: {blocker.last_error}", err=True)
        sys.exit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@config_option
def blocks(as_json: bool, config_path: str | None) -> None:
    """List the blocks in force, and whether the maps are up to date."""
    try:
        cfg = _load(config_path)
        store = Store(cfg.database) if os.path.exists(cfg.database) else None  # none yet: nothing blocked
    except RelaywatchError as exc:
        _fail(exc)
    now = time.time()
    rows = store.blocks(now) if store is not None else []
    pending = store.meta("map_pending") if store is not None else None
    try:
        held = in_map(rows, map_specs(cfg.client_access_map, cfg.sasl_access_map, _default_type(cfg))) if rows else []
    except RelaywatchError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps({
            "pending": pending,
            "blocks": [{"kind": b.kind, "target": b.target, "reason": b.reason, "rule": b.rule,
                        "since": report.iso(b.since), "until": None if b.until is None else report.iso(b.until),
                        "offences": b.offences, "in_map": h} for b, h in zip(rows, held, strict=True)]}, indent=2))
        return
    if pending:
        click.echo(f"PENDING: the maps do not yet hold these blocks: {pending.get('error', 'not written yet')}")
    if not rows:
        click.echo("no blocks in force")
    for b, h in zip(rows, held, strict=True):
        until = "permanent" if b.until is None else f"until {report.iso(b.until)}"
        state = "in force" if h else "NOT IN THE MAP"
        click.echo(f"{b.kind:<9} {b.target:<24} {state:<15} {until:<32} {b.rule}: {b.reason} (offence {b.offences})")


@main.command()
@config_option
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--address", "addresses", multiple=True, metavar="IP",
              help="Also say whether this address may relay (repeatable).")
def audit(config_path: str | None, fmt: str, addresses: tuple[str, ...]) -> None:
    """Find the holes in Postfix's configuration: mynetworks, restriction order, stale maps.

    Exit status 3 when an error-level finding exists (usable from cron and CI).
    """
    from relaywatch.postfix import audit as audit_mod

    try:
        cfg = _load(config_path)
        maps = audit_mod.AuditMaps(cfg.client_access_map, cfg.sasl_access_map or None, cfg.policy_listen or None)
        findings = audit_mod.run_audit(cfg.config_directory, maps, addresses)
        findings.append(_source_finding(cfg))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--address") from None
    except RelaywatchError as exc:
        _fail(exc)
    click.echo(audit_mod.to_json(findings) if fmt == "json" else audit_mod.format_text(findings), nl=False)
    sys.exit(audit_mod.exit_code(findings))


def _source_finding(cfg: config_mod.Config) -> Finding:
    """What the daemon reads and whether lines arrive (from its state, never creating one)."""
    from relaywatch.sources.choose import finding

    daemon = None
    if os.path.exists(cfg.database):
        store = Store(cfg.database)
        try:
            daemon = store.meta("daemon")
        finally:
            store.close()
    return finding(cfg.source_path, cfg.source_explicit, os.path.exists(cfg.source_path),
                   daemon if isinstance(daemon, dict) else None, time.time())


@main.command("notify-test")
@config_option
@click.option("--url", "urls", multiple=True, help="Test this Apprise URL instead of the configured ones.")
def notify_test(config_path: str | None, urls: tuple[str, ...]) -> None:
    """Send a test message to every notification target and say which one got it."""
    from relaywatch.notify.send import send_test

    try:
        cfg = _load(config_path)
    except RelaywatchError as exc:
        _fail(exc)
    if not urls and not cfg.notify_urls and not cfg.notify_config:
        raise click.UsageError("no targets: set [notify] urls or config, or give --url")
    try:
        results = send_test(urls or cfg.notify_urls, None if urls else cfg.notify_config,
                            timeout_s=cfg.notify_timeout_s)
    except ConfigError as exc:
        if urls:  # the URL on the command line is wrong, not the configuration
            raise click.BadParameter(str(exc).replace("notify urls #", "#"), param_hint="--url") from None
        _fail(exc)
    except RelaywatchError as exc:
        _fail(exc)
    for r in results:
        click.echo(f"{'ok    ' if r.ok else 'FAILED'} {r.url}{'' if r.ok else f': {r.error}'}")
    if not all(r.ok for r in results):
        sys.exit(1)


@main.command()
@click.option("--day", metavar="YYYY-MM-DD", help="The day to show (default: yesterday, local time).")
@click.option("--send", is_flag=True, help="Also send it to the [notify] targets (those tagged for it).")
@config_option
def digest(day: str | None, send: bool, config_path: str | None) -> None:
    """Print the daily digest of a day the daemon recorded (default: yesterday); --send notifies it."""
    from relaywatch.notify.send import notice_for_text, send_now
    from relaywatch.reports.digest import DayStats, digest_text, unusual

    try:
        wanted = (date.fromisoformat(day) if day else date.today() - timedelta(days=1)).isoformat()
    except ValueError:
        raise click.BadParameter(f"{day!r} is not a date as YYYY-MM-DD", param_hint="--day") from None
    try:
        cfg = _load(config_path)
        if send and not cfg.notify_urls and not cfg.notify_config:
            raise click.UsageError("--send needs [notify] urls or config in the configuration")
        store = _recorded_store(cfg)
        saved = store.meta(f"day:{wanted}")
        current = store.meta("day_current") or {}
        partial = saved is None and current.get("day") == wanted
        if partial:
            saved = current
        if saved is None:
            days = [k.removeprefix("day:") for k in store.meta_keys("day:")] + ([current["day"]] if current else [])
            raise RelaywatchError(f"no record of {wanted}; recorded days: {', '.join(days) or 'none'} "
                                  "(relaywatch run keeps the last 35)")
        stats = DayStats.from_dict(saved)
        title, body = digest_text(stats, store.decisions(stats.start, stats.end))
        if partial:
            title += " (so far)"
        click.echo(f"{title}\n\n{body}")
        if send:
            severity = "warning" if unusual(stats) else "info"
            results = send_now(notice_for_text(severity, title, body, ("digest", severity)), cfg.notify_urls,
                               cfg.notify_config, timeout_s=cfg.notify_timeout_s)
    except RelaywatchError as exc:
        _fail(exc)
    if send:
        for r in results:
            click.echo(f"{'sent  ' if r.ok else 'FAILED'} {r.url}{'' if r.ok else f': {r.error}'}", err=True)
        if not results:
            click.echo("relaywatch: no target takes notices tagged digest", err=True)
        if not results or not all(r.ok for r in results):
            sys.exit(1)


@main.command()
@config_option
def run(config_path: str | None) -> None:
    """Follow the live mail log and act on it: the systemd service (SIGHUP reloads the config)."""
    from relaywatch.daemon import Daemon

    if config_path is None and os.path.exists(DEFAULT_CONFIG):
        config_path = DEFAULT_CONFIG
    try:
        daemon = Daemon(config_path, config_mod.load(config_path), _blocker)
        code = daemon.run()
    except RelaywatchError as exc:
        log.error("%s", exc)  # once: the log goes to stderr, hence the journal
        sys.exit(exc.exit_code)
    sys.exit(code)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@config_option
def status(as_json: bool, config_path: str | None) -> None:
    """Whether the daemon runs, what it reads and how far behind, busiest counters, blocks in force.

    Exit status as `systemctl status`: 0 running, 3 not running, 4 unknown (no state yet).
    """
    from relaywatch.reports import status as status_mod

    try:
        cfg = _load(config_path)
        if not os.path.exists(cfg.database):
            click.echo(f"relaywatch: {cfg.database} does not exist: relaywatch has not run with this "
                       "configuration", err=True)
            sys.exit(status_mod.Lsb.UNKNOWN)
        info = status_mod.gather(_recorded_store(cfg), time.time())
    except RelaywatchError as exc:
        _fail(exc)
    click.echo(status_mod.to_json(info) if as_json else status_mod.to_text(info), nl=as_json)
    sys.exit(status_mod.exit_code(info))


# --- relaywatch queue ----------------------------------------------------------------

_TARGET_HELP = {"client": ("IP", "Mail from this client address."),
                "network": ("NET", "Mail from clients in this network (218.144.0.0/16)."),
                "sender": ("ADDR", "Mail with this envelope sender."),
                "sasl_user": ("NAME", "Mail from this SASL login.")}


def _target_options(f: Callable[..., None]) -> Callable[..., None]:
    """--client, --network, --sender, --sasl-user and -c: what every queue command takes."""
    for kind, flag in reversed(CLI_FLAGS.items()):
        f = click.option(flag, kind, metavar=_TARGET_HELP[kind][0], help=_TARGET_HELP[kind][1])(f)
    return config_option(f)


def _queue_target(given: dict[str, str | None]) -> Target | None:
    """The target named on the command line, None for none (a usage error for several)."""
    named = [(kind, value) for kind, value in given.items() if value is not None]
    if len(named) > 1:
        raise click.UsageError("name only one of " + ", ".join(CLI_FLAGS.values()))
    if not named:
        return None
    try:
        return target(*named[0])
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=CLI_FLAGS[named[0][0]]) from None


def _required_target(given: dict[str, str | None]) -> Target:
    """Hold, release and delete never act on the whole queue."""
    who = _queue_target(given)
    if who is None:
        raise click.UsageError("say whose mail: " + ", ".join(CLI_FLAGS.values()))
    return who


def _queued(cfg: config_mod.Config, who: Target | None, queues: tuple[str, ...] | None) -> list[QueuedMessage]:
    """`who`'s queued messages (all with None): the store's queue ids for it, postcat for the rest."""
    pq = PostfixQueue(cfg.config_directory)
    if who is None:
        return pq.messages()
    known: list[str] = []
    if who.kind != "sender" and os.path.exists(cfg.database):
        store = Store(cfg.database)
        try:
            known = store.queue_ids(**{who.kind: who.value})
        finally:
            store.close()
    found = select(pq, who, known, queues=queues)
    if found.unchecked:
        click.echo(f"relaywatch: {found.unchecked} queued messages were not looked at (mail was leaving the queue "
                   "meanwhile); run the command again", err=True)
    return list(found.messages)


def _message_line(m: QueuedMessage) -> str:
    rcpt = (m.recipients[0] if m.recipients else "") + (f" (+{len(m.recipients) - 1})" if len(m.recipients) > 1 else "")
    return f"{m.qid:<16} {m.queue_name:<9} {report.iso(m.arrival_time)} {m.size:>8} <{m.sender}> -> {rcpt}"


@main.group()
def queue() -> None:
    """List, hold, release or delete the mail an abuser already queued (postqueue, postsuper)."""


@queue.command("list")
@_target_options
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
def queue_list(config_path: str | None, as_json: bool, **given: str | None) -> None:
    """List queued messages: all, or one client's, network's, sender's or SASL user's."""
    who = _queue_target(given)
    try:
        messages = _queued(_load(config_path), who, None)
    except RelaywatchError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps({
            "target": None if who is None else {"kind": who.kind, "value": who.value},
            "count": len(messages),
            "messages": [{"queue_id": m.qid, "queue_name": m.queue_name, "sender": m.sender,
                          "recipients": list(m.recipients), "arrival_time": m.arrival_time, "size": m.size}
                         for m in messages]}, indent=2))
        return
    for m in messages:
        click.echo(_message_line(m))
    click.echo(f"{len(messages)} queued messages" + ("" if who is None else f" of {who}"))


@queue.command("hold")
@_target_options
def queue_hold(config_path: str | None, **given: str | None) -> None:
    """Put the target's queued mail on hold (postsuper -h): nothing more of it leaves."""
    who = _required_target(given)
    try:
        cfg = _load(config_path)
        messages = _queued(cfg, who, ("incoming", "active", "deferred"))
        held = PostfixQueue(cfg.config_directory).hold(m.qid for m in messages)
    except RelaywatchError as exc:
        _fail(exc)
    click.echo(f"held {held} messages of {who}" + (f"; {who.hint()}" if held else ""))


@queue.command("release")
@_target_options
def queue_release(config_path: str | None, **given: str | None) -> None:
    """Release the target's held mail (postsuper -H): it is delivered at the next queue run."""
    who = _required_target(given)
    try:
        cfg = _load(config_path)
        messages = _queued(cfg, who, ("hold",))
        released = PostfixQueue(cfg.config_directory).release(m.qid for m in messages)
    except RelaywatchError as exc:
        _fail(exc)
    click.echo(f"released {released} messages of {who}")


@queue.command("delete")
@_target_options
@click.option("--yes", is_flag=True, help="Really delete (without it: say what would be deleted, exit 2).")
def queue_delete(config_path: str | None, yes: bool, **given: str | None) -> None:
    """Delete the target's queued mail, held or not (postsuper -d); only with --yes."""
    who = _required_target(given)
    try:
        cfg = _load(config_path)
        messages = _queued(cfg, who, None)
        deleted = PostfixQueue(cfg.config_directory).delete(m.qid for m in messages) if yes else 0
    except RelaywatchError as exc:
        _fail(exc)
    if not yes:
        for m in messages:
            click.echo(_message_line(m))
        click.echo(f"would delete {len(messages)} messages of {who}; add --yes to delete them")
        sys.exit(2)
    click.echo(f"deleted {deleted} messages of {who}")


def _day_option(value: str | None, name: str) -> date | None:
    try:
        return date.fromisoformat(value) if value else None
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date as YYYY-MM-DD", param_hint=name) from None


@main.command("report")
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
    from relaywatch.reports.digest import PERIOD_NOTE, DayStats, day_bounds, period_result

    last = _day_option(until, "--until") or date.today()
    first = _day_option(since, "--since") or last - timedelta(days=6)
    if first > last:
        raise click.UsageError(f"--since {first} is after --until {last}")
    try:
        cfg = _load(config_path)
        store = _recorded_store(cfg)
        recorded = {k.removeprefix("day:"): k for k in store.meta_keys("day:")}
        current = store.meta("day_current") or {}
        if current.get("day") and current["day"] not in recorded:
            recorded[current["day"]] = "day_current"
        wanted = sorted(d for d in recorded if first.isoformat() <= d <= last.isoformat())
        if not wanted:
            raise RelaywatchError(f"no record of {first} .. {last}; recorded days: "
                                  f"{', '.join(sorted(recorded)) or 'none'} (relaywatch run keeps the last 35)")
        days = [DayStats.from_dict(current if recorded[d] == "day_current" else store.meta(recorded[d]))
                for d in wanted]
        start, end = day_bounds(first.isoformat())[0], day_bounds(last.isoformat())[1]
        result, no_hours = period_result(days, store.decisions(start, end), cfg.rules, now=time.time())
    except RelaywatchError as exc:
        _fail(exc)
    partial = " (so far)" if recorded[wanted[-1]] == "day_current" else ""
    missing = sorted(set(_days_between(first, last)) - set(wanted))
    notes = [PERIOD_NOTE, f"Days recorded: {', '.join(wanted)}{partial}."]
    if missing:
        notes.append(f"No record of: {', '.join(missing)}.")
    if no_hours:
        notes.append(f"Stored without hourly counts (not in the timeline): {', '.join(no_hours)}.")
    if fmt == "json":
        doc = json.loads(report.to_json(result))
        doc.update(lines=None, unparsed=None, messages=None, source="daemon state", bin_s=3600,
                   period={"since": first.isoformat(), "until": last.isoformat()}, days=wanted,
                   missing_days=missing, days_without_hours=no_hours, partial=bool(partial),
                   approximate=any(c.approximate for c in vars(result.tally).values()), note=" ".join(notes))
        text = json.dumps(doc, indent=2)
    elif fmt == "html":
        from relaywatch.reports.html import render_html

        text = render_html(result, result.timeline, notes=notes, uncounted=("lines", "messages"))
    else:
        body = report.to_text(result, dry_run=False).split("\n", 2)[2]  # after replay's two header lines
        t = result.totals
        head = [f"relaywatch report: {first} .. {last}{partial} (daemon state)",
                f"  {t.relayed:,} relayed recipients, {t.relay_denied:,} relay attempts refused",
                *(f"  {n}" for n in notes)]
        text = "\n".join(head) + "\n" + body
    if output:
        try:
            _write_atomically(output, text if text.endswith("\n") else text + "\n")
        except RelaywatchError as exc:
            _fail(exc)
    else:
        click.echo(text, nl=not text.endswith("\n"))


def _days_between(first: date, last: date) -> list[str]:
    return [(first + timedelta(days=i)).isoformat() for i in range((last - first).days + 1)]


@main.command("config")
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
    path = config_path or (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    try:
        cfg = config_mod.load(path)
        if check:
            from relaywatch.postfix.install_maps import map_specs

            map_specs(cfg.client_access_map, cfg.sasl_access_map, "hash")
    except RelaywatchError as exc:
        _fail(exc)
    source = path or f"no {DEFAULT_CONFIG}, so the built-in defaults"
    if check:
        click.echo(f"{source}: OK")
        return
    click.echo(effective_config.render(cfg, source, redact), nl=False)


@main.command("install-maps")
@config_option
@click.option("--dry-run", is_flag=True, help="Print the exact commands, change nothing.")
def install_maps_command(config_path: str | None, dry_run: bool) -> None:
    """Put relaywatch's lookups in front of Postfix's restriction lists, keeping every other entry.

    check_client_access goes first in smtpd_client_restrictions, check_sasl_access first in
    smtpd_recipient_restrictions, in main.cf and in each master.cf service that overrides them.
    Missing map files are created empty and compiled; Postfix is reloaded. A second run changes nothing.
    """
    from relaywatch.postfix import install_maps

    try:
        cfg = _load(config_path)
        maps = install_maps.map_specs(cfg.client_access_map, cfg.sasl_access_map,
                                      default_database_type(cfg.config_directory))
        plan = install_maps.plan(cfg.config_directory, maps)
        if not plan.changes:
            for line in install_maps.describe(plan, cfg.config_directory):
                click.echo(line)
            click.echo("nothing to change: relaywatch's lookups already come first and the maps exist")
        elif dry_run:
            for line in install_maps.describe(plan, cfg.config_directory):
                click.echo(line)
        else:
            install_maps.execute(plan, cfg.config_directory, click.echo)
    except OSError as exc:
        _fail(RelaywatchError(f"cannot create the map file: {exc}"))
    except RelaywatchError as exc:
        _fail(exc)
