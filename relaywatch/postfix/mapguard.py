"""Where relaywatch may write an access map: refuse every path that would damage the system.

Pointed at main.cf, the first block appended REJECT lines to it and every new smtpd
died; pointed at a copy of /etc/shadow, it appended its section and made a .db, exit 0.
So a map is written only
- in the Postfix configuration directory or a directory the admin listed in
  `[postfix] map_directories` (compared after resolving symlinks), never through a
  symlink itself;
- never to main.cf, master.cf or any file Postfix's configuration names other than as a
  table of a type relaywatch writes (a TLS key, a mynetworks file, a regexp: table ...);
- only when it is absent, empty (blank or comment lines) or carries relaywatch's markers
  (`check_ours`, checked again at every write on the file actually opened).
Every refusal is a ForeignMap (a ConfigError: exit 78) that names the file and the rule.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from relaywatch.model import ConfigError, PostfixError
from relaywatch.postfix.postconf import postconf, postconf_services

log = logging.getLogger(__name__)

BEGIN = "# BEGIN relaywatch managed section: do not edit, use 'relaywatch unblock'"
END = "# END relaywatch managed section"
DEFAULT_CONFIG_DIRECTORY = "/etc/postfix"
# Postfix's own configuration files, in any directory (multi-instance setups have several).
CONFIG_NAMES = frozenset({"main.cf", "master.cf", "dynamicmaps.cf", "postfix-files"})
WRITABLE_TYPES = frozenset({"hash", "btree", "lmdb", "cdb", "cidr"})
_TOKEN = re.compile(r"[^\s,{}]+")


class ForeignMap(ConfigError):
    """The configured map is a file relaywatch must not write (not its map, a symlink, Postfix's config)."""


def named_files(params: Mapping[str, str], services: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
    """Path -> the parameter naming it, for every file Postfix's configuration names other than
    as a table relaywatch could write (pure: `postconf -x` and `postconf -P -x` output in)."""
    out: dict[str, str] = {}
    scoped = [("", params), *((f"{name}: ", over) for name, over in services.items())]
    for prefix, values in scoped:
        for param, value in values.items():
            for token in _TOKEN.findall(value):
                while token.startswith("proxy:"):
                    token = token[len("proxy:"):]
                kind, sep, name = token.partition(":")
                if not sep:
                    kind, name = "", token
                if name.startswith("/") and kind not in WRITABLE_TYPES:
                    out.setdefault(os.path.normpath(name), prefix + param)
    return out


def postfix_named_files(config_directory: str | None) -> dict[str, str]:
    """`named_files` of the live configuration; empty (with a warning) when postconf cannot run."""
    try:
        return named_files(postconf(config_directory), postconf_services(config_directory))
    except PostfixError as exc:
        log.warning("cannot ask postconf which files Postfix reads (%s): relaywatch relies on its markers "
                    "alone to keep from writing one of them", exc)
        return {}


def check_ours(path: Path, current: bytes | None) -> None:
    """Refuse a file that is neither absent, empty (blank or comment lines only) nor marked as relaywatch's."""
    if not current or BEGIN.encode() in current or END.encode() in current:
        return
    entries = [line for line in current.splitlines() if line.strip() and not line.lstrip().startswith(b"#")]
    if entries:
        raise ForeignMap(
            f"{path} is not relaywatch's map: it holds {len(entries)} line(s) of something else and no relaywatch "
            "markers, so relaywatch will not write to it. If it really is the access map relaywatch should "
            f"manage, add these two lines at its end:\n{BEGIN}\n{END}"
        )


def check_map_path(path: str, allowed_dirs: Iterable[str], named: Mapping[str, str]) -> None:
    """Refuse `path` as a map relaywatch writes unless every rule above holds (reads the file's head)."""
    p = Path(path)
    if p.name in CONFIG_NAMES or p.name.endswith(".proto"):
        raise ForeignMap(f"{path} is Postfix's own configuration file; relaywatch writes only its access maps")
    allowed = {os.path.realpath(d): d for d in allowed_dirs}
    parent = os.path.realpath(p.parent)
    if parent not in allowed:
        raise ForeignMap(f"{path}: its directory {parent} is neither the Postfix configuration directory nor "
                         f"in [postfix] map_directories ({', '.join(sorted(allowed.values())) or 'none'}); "
                         "relaywatch writes maps only there")
    real = os.path.join(parent, p.name)
    for name in (os.path.normpath(path), real):
        if name in named:
            raise ForeignMap(f"{path} is a file Postfix reads as configuration ({named[name]} names it); "
                             "relaywatch will not write to it")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as exc:
        if os.path.islink(path):
            raise ForeignMap(f"{path} is a symbolic link: relaywatch never writes through one; "
                             "name the real file in client_access_map / sasl_access_map") from None
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ForeignMap(f"{path} is not a regular file; relaywatch will not write it")
        check_ours(p, f.read())
