"""`relaywatch config`: the effective configuration, defaults included, as TOML (like `postconf`).

Pure: a Config in, text out. The output is itself a valid relaywatch.toml that loads
back into the same Config, so an admin can start from it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import fields, replace
from enum import Enum
from importlib import resources

from relaywatch.config import Config, redact_database
from relaywatch.core.rules import DEFAULT_RULES, Rule

EXAMPLE = "relaywatch.toml"


class Kind(Enum):
    """How a Config attribute is written as TOML."""

    TEXT = "text"
    OPTIONAL_TEXT = "optional text"  # None is written as ""
    NUMBER = "number"
    FLAG = "flag"
    DURATION = "duration"
    LIST = "list"


# (section, key, Config attribute, kind), in the order of conf/relaywatch.toml.
# tests/test_config_command.py fails when Config gains a field that is not listed here.
KEYS: tuple[tuple[str, str, str, Kind], ...] = (
    ("source", "path", "source_path", Kind.TEXT),
    ("state", "database", "database", Kind.TEXT),
    ("state", "password_file", "password_file", Kind.OPTIONAL_TEXT),
    ("fleet", "host", "fleet_host", Kind.TEXT),
    ("postfix", "config_directory", "config_directory", Kind.OPTIONAL_TEXT),
    ("postfix", "client_access_map", "client_access_map", Kind.TEXT),
    ("postfix", "sasl_access_map", "sasl_access_map", Kind.TEXT),
    ("postfix", "map_directories", "map_directories", Kind.LIST),
    ("postfix", "local_domains", "local_domains", Kind.LIST),
    ("postfix", "syslog_names", "syslog_names", Kind.LIST),
    ("allow", "networks", "allow_networks", Kind.LIST),
    ("allow", "sasl_users", "allow_sasl_users", Kind.LIST),
    ("allow", "own_addresses", "own_addresses", Kind.LIST),
    ("block", "duration", "block_s", Kind.DURATION),
    ("notify", "urls", "notify_urls", Kind.LIST),
    ("notify", "config", "notify_config", Kind.OPTIONAL_TEXT),
    ("notify", "coalesce", "notify_coalesce_s", Kind.DURATION),
    ("notify", "cooldown", "notify_cooldown_s", Kind.DURATION),
    ("notify", "timeout", "notify_timeout_s", Kind.DURATION),
    ("notify", "retries", "notify_retries", Kind.NUMBER),
    ("notify", "digest_at", "notify_digest_at", Kind.TEXT),
    ("queue", "hold", "queue_hold", Kind.FLAG),
    ("policy", "listen", "policy_listen", Kind.TEXT),
    ("policy", "budget", "policy_budget", Kind.NUMBER),
    ("policy", "window", "policy_window_s", Kind.DURATION),
    ("policy", "known", "policy_known", Kind.LIST),
    ("policy", "max_connections", "policy_max_connections", Kind.NUMBER),
)
_NOT_KEYS = {"rules", "source_explicit"}  # rules: written as [rules.NAME] tables; source_explicit: derived, not a key

_UNITS = (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60))


def duration_text(seconds: int) -> str:
    """600 -> "10m", 86400 -> "1d", 90 -> "90s": the largest whole unit, as the example writes it."""
    for suffix, size in _UNITS:
        if seconds % size == 0:
            return f"{seconds // size}{suffix}"
    return f"{seconds}s"


def _value(value: object, kind: Kind) -> str:
    if kind is Kind.DURATION:
        assert isinstance(value, int)
        return json.dumps(duration_text(value))
    if kind is Kind.FLAG:
        return "true" if value else "false"
    if kind is Kind.NUMBER:
        return str(value)
    if kind is Kind.LIST:
        assert isinstance(value, tuple)
        return "[" + ", ".join(json.dumps(str(v)) for v in value) + "]"
    return json.dumps("" if value is None else str(value))  # a JSON string is a TOML basic string


def _rule_lines(rule: Rule) -> list[str]:
    lines = [f"[rules.{rule.name}]", f"dim = {json.dumps(rule.dim)}", f"action = {json.dumps(rule.action)}",
             f"threshold = {rule.threshold}", f"window = {json.dumps(duration_text(rule.window_s))}"]
    if rule.prefix_v4:
        lines += [f"prefix_v4 = {rule.prefix_v4}", f"prefix_v6 = {rule.prefix_v6}", f"min_clients = {rule.min_clients}"]
    if rule.min_subnets:
        lines += [f"min_subnets = {rule.min_subnets}", f"subnet_prefix_v4 = {rule.subnet_prefix_v4}",
                  f"subnet_prefix_v6 = {rule.subnet_prefix_v6}"]
    return lines


def render(config: Config, source: str, redact: Callable[[str], str] | None = None) -> str:
    """Every key with its effective value; `source` says where it came from (a file, or the defaults).

    `redact` masks the tokens in notification URLs (the CLI passes notify.redact): the output
    is then valid relaywatch.toml with the tokens replaced by ****.
    """
    out = [f"# relaywatch's effective configuration ({source}): every key, defaults included.",
           "# Valid relaywatch.toml; `relaywatch config --example` prints the commented example."]
    if redact_database(config.database) != config.database:
        config = replace(config, database=redact_database(config.database))
        out.append("# The database URL is shown without its password (put it in [state] password_file).")
    if redact is not None and config.notify_urls:
        config = replace(config, notify_urls=tuple(redact(u) for u in config.notify_urls))
        out.append("# Notification URLs are shown with their tokens masked.")
    section = ""
    for sect, key, attr, kind in KEYS:
        if sect != section:
            out += ["", f"[{sect}]"]
            section = sect
        line = f"{key} = {_value(getattr(config, attr), kind)}"
        if attr == "source_path" and not config.source_explicit:
            # written out, the path would be "set": no journal fallback, a wait for a file that never comes
            out += [f"# path unset: {config.source_path} if it exists, else the systemd journal", f"# {line}"]
            continue
        out.append(line)
    active = {r.name for r in config.rules}
    for rule in config.rules:
        out += ["", *_rule_lines(rule)]
    for rule in DEFAULT_RULES:
        if rule.name not in active:
            out += ["", f"[rules.{rule.name}]", "enabled = false"]
    return "\n".join(out) + "\n"


def unlisted_fields() -> set[str]:
    """Config fields this module does not write (must be empty)."""
    return {f.name for f in fields(Config)} - {attr for _, _, attr, _ in KEYS} - _NOT_KEYS


def example() -> str:
    """The commented example configuration shipped inside the package (conf/relaywatch.toml)."""
    return (resources.files("relaywatch") / "data" / EXAMPLE).read_text(encoding="utf-8")
