"""`relaywatch queue list|hold|release|delete`: the mail an abuser already queued (postqueue, postsuper)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable

import click

from relaywatch import config as config_mod
from relaywatch.cli.common import config_option, load
from relaywatch.postfix.queue import (
    CLI_FLAGS,
    PostfixQueue,
    QueuedMessage,
    Target,
    select,
    target,
)
from relaywatch.store.sqlite import Store
from relaywatch.wording import iso

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
    return f"{m.qid:<16} {m.queue_name:<9} {iso(m.arrival_time)} {m.size:>8} <{m.sender}> -> {rcpt}"


@click.group()
def queue() -> None:
    """List, hold, release or delete the mail an abuser already queued (postqueue, postsuper)."""


@queue.command("list")
@_target_options
@click.option("--json", "as_json", is_flag=True, help="One JSON document for scripts.")
def queue_list(config_path: str | None, as_json: bool, **given: str | None) -> None:
    """List queued messages: all, or one client's, network's, sender's or SASL user's."""
    who = _queue_target(given)
    messages = _queued(load(config_path), who, None)
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
    cfg = load(config_path)
    messages = _queued(cfg, who, ("incoming", "active", "deferred"))
    held = PostfixQueue(cfg.config_directory).hold(m.qid for m in messages)
    click.echo(f"held {held} messages of {who}" + (f"; {who.hint()}" if held else ""))


@queue.command("release")
@_target_options
def queue_release(config_path: str | None, **given: str | None) -> None:
    """Release the target's held mail (postsuper -H): it is delivered at the next queue run."""
    who = _required_target(given)
    cfg = load(config_path)
    messages = _queued(cfg, who, ("hold",))
    released = PostfixQueue(cfg.config_directory).release(m.qid for m in messages)
    click.echo(f"released {released} messages of {who}")


@queue.command("delete")
@_target_options
@click.option("--yes", is_flag=True, help="Really delete (without it: say what would be deleted, exit 2).")
def queue_delete(config_path: str | None, yes: bool, **given: str | None) -> None:
    """Delete the target's queued mail, held or not (postsuper -d); only with --yes."""
    who = _required_target(given)
    cfg = load(config_path)
    messages = _queued(cfg, who, None)
    deleted = PostfixQueue(cfg.config_directory).delete(m.qid for m in messages) if yes else 0
    if not yes:
        for m in messages:
            click.echo(_message_line(m))
        click.echo(f"would delete {len(messages)} messages of {who}; add --yes to delete them")
        sys.exit(2)
    click.echo(f"deleted {deleted} messages of {who}")
