"""Everything the daemon runs on, built from one configuration: at start and again on SIGHUP.

`build` makes the source, the parser, the blocker, the notifier, the responder and the
inline policy service together, so that a reload either takes the new configuration
whole or (a RelaywatchError, with the reason) leaves the old one running untouched.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from relaywatch.config import Config
from relaywatch.core.destinations import Destinations, Source
from relaywatch.core.parse import LineParser, YearResolver
from relaywatch.model import ConfigError, RelaywatchError
from relaywatch.notify.notifier import Notifier
from relaywatch.policyd import InlineService, service_for
from relaywatch.postfix.audit_blocks import AuditMaps
from relaywatch.postfix.commands import Postfix, default_database_type
from relaywatch.postfix.mapkeys import reject_text, render_key
from relaywatch.postfix.pgsql_lookup import PgsqlMap
from relaywatch.postfix.postconf import local_destinations
from relaywatch.respond.blocking import Blocker, map_specs, maps_from_config
from relaywatch.respond.enforcement import PostfixConfig
from relaywatch.respond.responder import Counts, Responder
from relaywatch.sources.choose import Choice, Reason
from relaywatch.sources.choose import choose as choose_source
from relaywatch.sources.follow import FileFollower
from relaywatch.sources.journal import JournalFollower
from relaywatch.store.base import StateStore
from relaywatch.store.open import is_url, local_path, open_store
from relaywatch.wording import describe

log = logging.getLogger("relaywatch.daemon")

# Settings a running daemon cannot take over: its database lock, and the policy service's socket and budgets.
RESTART_ONLY = {"database": "[state] database", "password_file": "[state] password_file",
                "fleet_host": "[fleet] host", "policy_listen": "[policy] listen", "policy_budget": "[policy] budget",
                "policy_window_s": "[policy] window", "policy_max_connections": "[policy] max_connections"}


@dataclass
class Parts:
    cfg: Config
    store: StateStore
    blocker: Blocker
    notifier: Notifier | None
    responder: Responder
    destinations: Destinations
    parser: LineParser
    source: FileFollower | JournalFollower
    source_choice: Choice
    inline: InlineService | None


def map_type(cfg: Config) -> str:
    """The default table type of the access maps: Postfix's own unless every map names its type."""
    specs = (cfg.client_access_map, cfg.sasl_access_map)
    typed = all(":" in s and not s.startswith("/") for s in specs if s)
    return "hash" if typed else default_database_type(cfg.config_directory)


def blocker_for(cfg: Config, store: StateStore) -> Blocker:
    if not is_url(cfg.database):  # Postfix would read a table nobody writes: every block silently not in force
        specs = map_specs(cfg.client_access_map, cfg.sasl_access_map, map_type(cfg))
        for key, kind in (("client_access_map", "client"), ("sasl_access_map", "sasl_user")):
            if isinstance(specs.get(kind), PgsqlMap):
                raise ConfigError(f"[postfix] {key}: {specs[kind].spec} makes Postfix read the blocks from"
                                  " PostgreSQL (relaywatch_blocks), but [state] database is a SQLite file"
                                  f" ({cfg.database}) and nothing would write them there: set [state] database"
                                  " to the fleet's postgresql:// URL, or use a hash: map")
    maps = maps_from_config(cfg.client_access_map, cfg.sasl_access_map, map_type(cfg),
                            config_directory=cfg.config_directory, map_directories=cfg.map_directories)
    return Blocker(store, Postfix(cfg.config_directory), maps, cfg.block_s)


def block_keys(kind: str, target: str, rule: str, reason: str) -> tuple[str, str]:
    """What Postfix's pgsql: table answers for a block (relaywatch_blocks): its lookup key and access(5) action,
    the same key and text as the hash: map's line."""
    return render_key(kind, target, "hash"), f"REJECT {reject_text(f'{rule}: {reason}')}"


def state_for(cfg: Config, *, degrade: bool = False) -> StateStore:
    """The state [state] database names: SQLite (a path) or PostgreSQL shared by the fleet (a URL)."""
    return open_store(cfg.database, host=cfg.fleet_host, password_file=cfg.password_file, degrade=degrade,
                      block_keys=block_keys)


def notifier_for(cfg: Config, state: dict[str, Any] | None = None, *, coalesce: bool = True) -> Notifier | None:
    """`state`: what the last notifier remembered (`Notifier.state()`); coalesce=False: send at once (replay)."""
    if not cfg.notify_urls and not cfg.notify_config:
        return None
    if not coalesce:
        return Notifier(cfg.notify_urls, cfg.notify_config, coalesce_s=0, timeout_s=cfg.notify_timeout_s,
                        retries=cfg.notify_retries)
    return Notifier(cfg.notify_urls, cfg.notify_config, coalesce_s=cfg.notify_coalesce_s,
                    cooldown_s=cfg.notify_cooldown_s, timeout_s=cfg.notify_timeout_s, retries=cfg.notify_retries,
                    state=state)


def responder_for(cfg: Config, store: StateStore, blocker: Blocker | None, notifier: Notifier | None,
                  counts_since: Callable[[float], Counts] | None = None,
                  clock: Callable[[], float] = time.time) -> Responder:
    """Without a blocker: a dry run that only tells."""
    maps = AuditMaps(cfg.client_access_map, cfg.sasl_access_map or None, cfg.policy_listen or None)
    return Responder(store, blocker, notifier, PostfixConfig(cfg.config_directory, maps), describe,
                     hold=cfg.queue_hold, config_directory=cfg.config_directory, counts_since=counts_since,
                     clock=clock)


def open_source(cfg: Config, store: StateStore) -> tuple[FileFollower | JournalFollower, Choice]:
    """The follower for [source] path, or for the journal when the default file does not exist."""
    choice = choose_source(cfg.source_path, cfg.source_explicit, os.path.exists(cfg.source_path))
    if choice.note:
        log.warning("%s", choice.note)
    if choice.path != "journal":
        return FileFollower(choice.path, store.positions.get(f"file:{choice.path}")), choice
    try:
        return JournalFollower(store.positions.get("journal"), syslog_names=cfg.syslog_names), choice
    except RelaywatchError as exc:
        if choice.reason is not Reason.FALLBACK:
            raise
        raise ConfigError(f"[source] path: {cfg.source_path} does not exist and the journal cannot be read "
                          f"either, nothing to watch ({exc})") from exc


def local_domains(cfg: Config) -> Destinations:
    """[postfix] local_domains, else what Postfix accepts mail for (its tables asked per domain)."""
    destinations, source, detail = local_destinations((), cfg.local_domains, cfg.config_directory)
    if source is Source.LOG:
        log.warning("cannot ask Postfix for the local domains (%s): they are inferred from the log; "
                    "set [postfix] local_domains", detail)
    return destinations


def restart_only(old: Config, new: Config) -> None:
    """ConfigError naming the settings that changed but take effect only at a restart."""
    changed = [name for key, name in RESTART_ONLY.items() if getattr(old, key) != getattr(new, key)]
    if changed:
        raise ConfigError(f"{', '.join(changed)} changed: that takes a restart (systemctl restart relaywatch)")


def build(cfg: Config, previous: Parts | None = None, counts_since: Callable[[float], Counts] | None = None,
          clock: Callable[[], float] = time.time) -> Parts:
    """All parts for `cfg`. With `previous` (a reload) the store and the policy service go on, the
    notifier keeps what it remembered and the log check what it watched; the source resumes at
    the stored position. Nothing of `previous` is closed here, and it is left as it was unless
    the build succeeds (then the running policy service takes the new lists)."""
    if previous is not None:
        restart_only(previous.cfg, cfg)
        store = previous.store
    else:
        store = state_for(cfg, degrade=True)
        try:
            store.lock_for_daemon()
        except RelaywatchError:
            store.close()
            raise
    notifier: Notifier | None = None
    inline: InlineService | None = None
    try:
        blocker = blocker_for(cfg, store)
        if previous is not None:
            blocker.in_force_since = previous.blocker.in_force_since  # the log check goes on across a reload
        destinations = local_domains(cfg)
        state: dict[str, Any] | None
        if previous is None:
            state = store.notify_state.get()
        else:
            state = previous.notifier.state() if previous.notifier is not None else None
        notifier = notifier_for(cfg, state)
        inline = previous.inline if previous is not None else None  # [policy] is the same (restart_only)
        if inline is None and cfg.policy_listen:
            inline = service_for(cfg.policy_listen, local_path(cfg.database), destinations, cfg.policy_budget,
                                 cfg.policy_window_s, cfg.allow_networks, cfg.policy_known, cfg.policy_max_connections)
        source, choice = open_source(cfg, store)
    except BaseException:
        if notifier is not None:
            notifier.close(timeout=0)
        if previous is None:
            if inline is not None:
                inline.close()
            store.close()
        raise
    if previous is not None and inline is not None:  # the running service: new lists, same socket and budgets
        inline.policy.local_domains = destinations
        inline.policy.allow, inline.policy.known_networks = tuple(cfg.allow_networks), tuple(cfg.policy_known)
    responder = responder_for(cfg, store, blocker, notifier, counts_since, clock)
    return Parts(cfg, store, blocker, notifier, responder, destinations, LineParser(YearResolver(), cfg.syslog_names),
                 source, choice, inline)
