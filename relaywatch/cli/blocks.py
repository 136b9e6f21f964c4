"""`relaywatch block`, `unblock`, `blocks` and `check`: blocks by hand, and what is blocked."""

from __future__ import annotations

import sys
import time

import click

from relaywatch import config as config_mod
from relaywatch.build import blocker_for as make_blocker
from relaywatch.build import map_type, state_for
from relaywatch.cli.common import config_option, existing_store, load, log
from relaywatch.core.rules import BUCKET_S
from relaywatch.model import Action, Decision, Kind, RelaywatchError
from relaywatch.reports import blocks as blocks_report
from relaywatch.reports import check as check_mod
from relaywatch.reports.check import MANUAL_REASON
from relaywatch.respond.blocking import in_map, map_specs, target_kind
from relaywatch.wording import iso


@click.command()
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
    if duration and permanent:
        raise click.UsageError("--for and --permanent exclude each other")
    try:
        seconds = config_mod.parse_duration(duration, "--for") if duration else None
    except RelaywatchError as exc:
        raise click.BadParameter(str(exc).removeprefix("--for: "), param_hint="--for") from None
    kind, canonical = _parse(target, sasl_user)
    if kind == "sasl_user" and not sasl_user and check_mod.looks_like_address(canonical):
        raise click.UsageError(f"{canonical} looks like an e-mail address: relaywatch blocks client addresses, "
                               "networks and SASL logins, not senders. If it is a SASL login name, add --sasl-user.")
    cfg = load(config_path)
    allowed = check_mod.allowed_by(cfg, kind, canonical)
    if allowed and not force:
        raise RelaywatchError(f"not blocking {kind} {canonical}: it is in {allowed}, which relaywatch never "
                              "blocks; add --force to block it anyway")
    store = state_for(cfg)
    blocker = make_blocker(cfg, store)
    row = blocker.block(kind, canonical, reason, duration=seconds, permanent=permanent)
    # remembered like the detector's decisions: the digest and the report show manual blocks
    store.commit_batch([], [Decision(row.since, Action.BLOCK, Kind(kind), canonical, "manual", 0, 0,
                                     evidence=(check_mod.manual_evidence(reason),))])
    synced = blocker.sync()
    until = "permanently" if row.until is None else f"until {iso(row.until)}"
    click.echo(f"blocked {kind} {canonical} {until}: {check_mod.KIND_TEXT[kind]}"
               + (f" (despite {allowed}: --force)" if allowed else ""))
    _warn_if_ineffective(cfg, kind, canonical)
    if not synced:
        click.echo(f"relaywatch: the block is recorded but pending: {blocker.last_error}", err=True)
        sys.exit(1)


def _parse(target: str, sasl_user: bool) -> tuple[str, str]:
    try:
        return check_mod.parse(target, sasl_user)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="TARGET") from None


def _warn_if_ineffective(cfg: config_mod.Config, kind: str, target: str) -> None:
    """The 2003 trap: a map consulted after permit_mynetworks blocks nobody inside mynetworks."""
    enforced, why = check_mod.enforcement(cfg, kind, target)
    if enforced is None:
        log.warning("%s", why)
    elif not enforced:
        click.echo(f"relaywatch: WARNING: Postfix will not enforce this block: {why}", err=True)


@click.command()
@click.argument("target")
@click.option("--sasl-user", "sasl_user", is_flag=True, help="TARGET is a SASL login name.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@config_option
def check(target: str, sasl_user: bool, as_json: bool, config_path: str | None) -> None:
    """Is TARGET (client IP, network or SASL login) blocked: by which entry, since and until when, why,
    and would Postfix enforce it.

    Exit status 0 blocked, 3 not blocked (1 error, 2 usage).
    """
    kind, canonical = _parse(target, sasl_user)
    cfg = load(config_path)
    store = existing_store(cfg)
    now = time.time()
    rows = store.blocks(now) if store is not None else []
    decisions = store.decisions() if store is not None else []
    since = now - cfg.longest_window_s
    counted = check_mod.recent(kind, canonical, since, store.counts_since(int(since // BUCKET_S))) if store else None
    result = check_mod.answer(target, kind, canonical, cfg, rows, decisions,
                              check_mod.enforcement(cfg, kind, canonical), counted)
    click.echo(result.to_json() if as_json else result.to_text(), nl=as_json)
    sys.exit(result.exit_code())


@click.command()
@click.argument("target")
@config_option
def unblock(target: str, config_path: str | None) -> None:
    """Lift the block on TARGET (client IP, subnet or SASL login name)."""
    cfg = load(config_path)
    kind, canonical = target_kind(target)
    store = state_for(cfg)
    blocker = make_blocker(cfg, store)
    removed = blocker.unblock(kind, canonical)
    synced = blocker.sync()
    still = [] if removed else check_mod.covering(kind, canonical, store.blocks(time.time()))
    click.echo(f"unblocked {kind} {canonical}" if removed else f"{kind} {canonical} was not blocked")
    for b in still:  # an address inside a blocked network: unblocking the address changes nothing
        click.echo(f"  but it is refused by the block of {b.kind} {b.target}: relaywatch unblock {b.target}")
    if not synced:
        click.echo(f"relaywatch: the change is recorded but pending: {blocker.last_error}", err=True)
        sys.exit(1)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
@config_option
def blocks(as_json: bool, config_path: str | None) -> None:
    """List the blocks in force, and whether the maps are up to date."""
    cfg = load(config_path)
    store = existing_store(cfg)
    rows = store.blocks(time.time()) if store is not None else []
    state = store.map_state.pending() if store is not None else None
    pending = state.to_json() if state is not None else None
    held = (in_map(rows, map_specs(cfg.client_access_map, cfg.sasl_access_map, map_type(cfg)), cfg.config_directory)
            if rows else [])
    if as_json:
        click.echo(blocks_report.to_json(rows, held, pending))
        return
    for line in blocks_report.to_text(rows, held, pending):
        click.echo(line)
