"""Read and check relaywatch.toml. Every problem names its key; nothing is guessed.

A missing file means the defaults (as documented in conf/relaywatch.toml);
an unknown key is an error, since a typo would otherwise silently keep a default.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from relaywatch import permissions
from relaywatch.core.rules import ALERT_ONLY_DIMS, DEFAULT_RULES, DIMS, Network, Rule
from relaywatch.model import Action, ConfigError, Dim

# tomllib, urllib.parse, socket and core.inline are imported where needed: a replay without a config
# file needs none of them (with subprocess and socket in postfix/, a tenth of a short replay's start)

log = logging.getLogger("relaywatch.config")

_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")
_HHMM = re.compile(r"([01]\d|2[0-3]):[0-5]\d")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass(frozen=True)
class Config:
    source_path: str = "/var/log/mail.log"
    source_explicit: bool = field(default=False, compare=False)  # [source] path written: wait, never fall back
    database: str = "/var/lib/relaywatch/state.db"  # or postgresql://... (a fleet's shared state)
    password_file: str | None = None  # the PostgreSQL password, first line (else libpq's PGPASSFILE/~/.pgpass)
    fleet_host: str = field(default_factory=lambda: os.uname().nodename)  # this host's name in a fleet (gethostname)
    config_directory: str | None = "/etc/postfix"
    client_access_map: str = "hash:/etc/postfix/relaywatch_clients"
    sasl_access_map: str = "hash:/etc/postfix/relaywatch_sasl"
    map_directories: tuple[str, ...] = ()  # besides config_directory, where relaywatch may write its maps
    local_domains: tuple[str, ...] = ()
    syslog_names: tuple[str, ...] = ("postfix",)
    allow_networks: tuple[Network, ...] = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))
    allow_sasl_users: tuple[str, ...] = ()
    own_addresses: tuple[Network, ...] = ()  # besides those found on the host and in inet/proxy_interfaces
    block_s: int = 86400
    notify_urls: tuple[str, ...] = ()
    notify_config: str | None = None
    notify_coalesce_s: int = 10
    notify_cooldown_s: int = 300
    notify_timeout_s: int = 10
    notify_retries: int = 3
    notify_digest_at: str = ""  # "HH:MM" local time of the daily digest; "" = none
    queue_hold: bool = True
    policy_listen: str = ""  # "" = no inline policy service
    policy_budget: int = 10  # relayed recipients of an unknown relayer per window; 0 = blocks only
    policy_window_s: int = 600
    policy_known: tuple[Network, ...] = ()
    policy_max_connections: int = 1000
    rules: tuple[Rule, ...] = field(default=DEFAULT_RULES)

    @property
    def longest_window_s(self) -> int:
        return max((r.window_s for r in self.rules), default=0)


def parse_duration(value: object, key: str) -> int:
    """Seconds from 600, "600", "10m", "1h", "1d"; a clear error otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        m = _DURATION.fullmatch(value.strip())
        if m and int(m[1]) > 0:
            return int(m[1]) * _UNITS[m[2]]
    raise ConfigError(f"{key}: {value!r} is not a duration (use seconds or e.g. \"10m\", \"1h\", \"1d\")")


def _hhmm(value: str, key: str) -> str:
    """"HH:MM" (24 h) or "" for none."""
    if value and not _HHMM.fullmatch(value):
        raise ConfigError(f"{key}: {value!r} is not a time of day as \"HH:MM\" (e.g. \"07:30\"), or \"\" for none")
    return value


class _Section:
    """Typed access to one TOML table that remembers which keys were read."""

    def __init__(self, name: str, table: object) -> None:
        if not isinstance(table, dict):
            raise ConfigError(f"[{name}] must be a table")
        self.name, self.table = name, table
        self.used: set[str] = set()

    def get(self, key: str, kind: type, default: Any) -> Any:
        self.used.add(key)
        if key not in self.table:
            return default
        value = self.table[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"[{self.name}] {key}: expected {kind.__name__}, got {value!r}")
        if isinstance(value, str):
            _no_controls(value, f"[{self.name}] {key}")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key, list, None)
        if value is None:
            return default
        if not all(isinstance(v, str) for v in value):
            raise ConfigError(f"[{self.name}] {key}: expected a list of strings")
        return tuple(_no_controls(v, f"[{self.name}] {key}") for v in value)

    def done(self) -> None:
        unknown = sorted(set(self.table) - self.used)
        if unknown:
            raise ConfigError(f"[{self.name}]: unknown key {', '.join(unknown)}")


def _rule(name: str, table: object, base: Rule | None) -> Rule | None:
    s = _Section(f"rules.{name}", table)
    if not s.get("enabled", bool, True):
        s.get("dim", str, "")
        return None
    dim = s.get("dim", str, base.dim if base else None)
    if dim not in DIMS:
        raise ConfigError(f"[rules.{name}] dim: must be one of {', '.join(DIMS)}")
    action = s.get("action", str, base.action if base else "alert")
    if action not in ("block", "alert"):
        raise ConfigError(f"[rules.{name}] action: must be \"block\" or \"alert\"")
    threshold = s.get("threshold", int, base.threshold if base else None)
    if threshold is None or threshold < 1:
        raise ConfigError(f"[rules.{name}] threshold: must be a whole number >= 1")
    window = s.table.get("window", base.window_s if base else None)
    s.used.add("window")
    rule = Rule(
        name=name,
        dim=Dim(dim),
        action=Action(action),
        threshold=threshold,
        window_s=parse_duration(window, f"[rules.{name}] window"),
        prefix_v4=s.get("prefix_v4", int, base.prefix_v4 if base else 0),
        prefix_v6=s.get("prefix_v6", int, base.prefix_v6 if base else 0),
        min_clients=s.get("min_clients", int, base.min_clients if base else 0),
        min_subnets=s.get("min_subnets", int, base.min_subnets if base else 0),
        subnet_prefix_v4=s.get("subnet_prefix_v4", int, base.subnet_prefix_v4 if base else 24),
        subnet_prefix_v6=s.get("subnet_prefix_v6", int, base.subnet_prefix_v6 if base else 64),
    )
    s.done()
    if rule.prefix_v4 and (dim != "client" or not 8 <= rule.prefix_v4 <= 31 or not 16 <= rule.prefix_v6 <= 127):
        raise ConfigError(f"[rules.{name}] prefix_v4/prefix_v6: need dim = \"client\", 8..31 and 16..127")
    if rule.min_subnets and (not rule.prefix_v4 or not rule.prefix_v4 < rule.subnet_prefix_v4 <= 32
                             or not rule.prefix_v6 < rule.subnet_prefix_v6 <= 128):
        raise ConfigError(f"[rules.{name}] min_subnets: needs prefix_v4/prefix_v6, and subnet_prefix_v4/"
                          "subnet_prefix_v6 longer than them (at most 32 and 128)")
    if action == "block" and dim in ALERT_ONLY_DIMS:
        raise ConfigError(f"[rules.{name}] action: senders, domains and local uids can be alerted on, not blocked")
    return rule


def _networks(s: _Section, key: str = "networks", default: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
              ) -> tuple[Network, ...]:
    nets = []
    for text in s.strings(key, default):
        try:
            nets.append(ipaddress.ip_network(text, strict=False))
        except ValueError as exc:
            raise ConfigError(f"[{s.name}] {key}: {exc}") from exc
    return tuple(nets)


def _policy(s: _Section, d: Config) -> dict[str, Any]:
    """[policy]: the inline policy service (policyd.py)."""
    listen = s.get("listen", str, d.policy_listen)
    if listen:
        from relaywatch.core.inline import parse_listen

        parse_listen(listen)
    budget = s.get("budget", int, d.policy_budget)
    if budget < 0:
        raise ConfigError("[policy] budget: must be a whole number >= 0 (0: blocks only, no budget)")
    most = s.get("max_connections", int, d.policy_max_connections)
    if not 1 <= most <= 100_000:
        raise ConfigError("[policy] max_connections: must be between 1 and 100000")
    return {"policy_listen": listen, "policy_budget": budget, "policy_max_connections": most,
            "policy_window_s": parse_duration(s.get("window", object, "10m"), "[policy] window"),
            "policy_known": _networks(s, "known", ())}


def from_dict(data: dict[str, Any]) -> Config:
    sections = {name: _Section(name, data.get(name, {})) for name in
                ("source", "state", "postfix", "allow", "block", "notify", "queue", "policy", "fleet")}
    unknown = sorted(set(data) - set(sections) - {"rules"})
    if unknown:
        raise ConfigError(f"unknown section [{', '.join(unknown)}]")
    d = Config()
    src, st, pf, allow = sections["source"], sections["state"], sections["postfix"], sections["allow"]
    config = replace(
        d,
        source_path=src.get("path", str, d.source_path),
        source_explicit="path" in src.table,
        database=_database(st.get("database", str, d.database)),
        password_file=st.get("password_file", str, None) or None,
        fleet_host=_host(sections["fleet"].get("host", str, "") or d.fleet_host),
        config_directory=pf.get("config_directory", str, d.config_directory) or None,
        client_access_map=pf.get("client_access_map", str, d.client_access_map),
        sasl_access_map=pf.get("sasl_access_map", str, d.sasl_access_map),
        map_directories=_absolute(pf.strings("map_directories", d.map_directories), "[postfix] map_directories"),
        local_domains=tuple(x.lower() for x in pf.strings("local_domains", d.local_domains)),
        syslog_names=pf.strings("syslog_names", d.syslog_names),
        allow_networks=_networks(allow),
        allow_sasl_users=allow.strings("sasl_users", d.allow_sasl_users),
        own_addresses=_networks(allow, "own_addresses", ()),
        block_s=parse_duration(sections["block"].get("duration", object, "1d"), "[block] duration"),
        notify_urls=sections["notify"].strings("urls", d.notify_urls),
        notify_config=sections["notify"].get("config", str, None) or None,
        notify_coalesce_s=parse_duration(sections["notify"].get("coalesce", object, "10s"), "[notify] coalesce"),
        notify_cooldown_s=parse_duration(sections["notify"].get("cooldown", object, "5m"), "[notify] cooldown"),
        notify_timeout_s=parse_duration(sections["notify"].get("timeout", object, "10s"), "[notify] timeout"),
        notify_retries=sections["notify"].get("retries", int, d.notify_retries),
        notify_digest_at=_hhmm(sections["notify"].get("digest_at", str, d.notify_digest_at), "[notify] digest_at"),
        queue_hold=sections["queue"].get("hold", bool, d.queue_hold),
        rules=_rules(data.get("rules", {})),
        **_policy(sections["policy"], d),
    )
    for s in sections.values():
        s.done()
    if config.password_file and "://" not in config.database:
        raise ConfigError("[state] password_file: set, but [state] database is a SQLite file, which has no password"
                          " (a postgresql:// URL was meant?)")
    return config


def _database(value: str) -> str:
    """A path, or a libpq URL whose shape can be checked here (the driver checks the rest when opening)."""
    if "://" not in value:
        if not value:
            raise ConfigError("[state] database: empty (a path, or a postgresql:// URL)")
        return value
    scheme = value.split("://", 1)[0]
    if scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"[state] database: {scheme}:// is not supported (a path, or a postgresql:// URL)")
    import urllib.parse

    try:
        urllib.parse.urlsplit(value).port  # noqa: B018  (raises on a port that is not a number)
    except ValueError:
        raise ConfigError("[state] database: the URL's port is not a number") from None
    return value


_PASSWORD_IN_URL = re.compile(r"(://[^:/@?#]*:)[^@/?#]*@")
_PASSWORD_PARAM = re.compile(r"(password=)[^&\s]*", re.IGNORECASE)


def redact_database(database: str) -> str:
    """[state] database as every message may show it: a URL's password replaced by ***."""
    return _PASSWORD_PARAM.sub(r"\1***", _PASSWORD_IN_URL.sub(r"\1***@", database))


def _host(value: str) -> str:
    """[fleet] host: how this host's counts, positions and decisions are tagged in a shared database."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", value):
        raise ConfigError(f"[fleet] host: {value!r} is not a host name (letters, digits, '.', '_', '-'; at most 63)")
    return value


def _absolute(paths: tuple[str, ...], key: str) -> tuple[str, ...]:
    for path in paths:
        if not path.startswith("/"):
            raise ConfigError(f"{key}: {path!r} is not an absolute path")
    return paths


def _rules(table: object) -> tuple[Rule, ...]:
    if not isinstance(table, dict):
        raise ConfigError("[rules] must be a table of tables")
    defaults = {r.name: r for r in DEFAULT_RULES}
    rules = []
    for name in dict.fromkeys([*defaults, *table]):
        rule = _rule(name, table[name], defaults.get(name)) if name in table else defaults[name]
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _text(raw: bytes) -> str:
    """TOML is UTF-8: say where it is not, instead of failing later on a stray byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"line {line}: byte 0x{raw[exc.start]:02X} is not UTF-8 (TOML files are UTF-8; was it"
                          " saved as Latin-1?)") from None


def _no_controls(value: str, where: str) -> str:
    """A NUL or other control character (written as \\u0000 in TOML) has no place in a path, a map or a name."""
    bad = next((c for c in value if ord(c) < 32 and c != "\t" or ord(c) == 127), None)
    if bad is not None:
        raise ConfigError(f"{where}: {value!r} holds the control character U+{ord(bad):04X}")
    return value


def load(path: str | Path | None) -> Config:
    """The configuration in `path`, or the defaults when `path` is None."""
    if path is None:
        return Config()
    import tomllib

    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            permissions.check_config_file(path, st)  # root acts on what it says: only root may change it
            data = tomllib.loads(_text(f.read()))
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from exc
    try:
        config = from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if config.notify_urls and permissions.secrets_readable(st):
        log.warning("%s holds notification URLs (tokens) and every user can read it: chmod 600 %s", path, path)
    if redact_database(config.database) != config.database and permissions.secrets_readable(st):
        log.warning("%s holds the database's password in [state] database and every user can read it: chmod 600"
                    " %s, or move the password to [state] password_file", path, path)
    return config
