"""Read Postfix's effective configuration through `postconf`, never by parsing main.cf."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from .model import PostfixError

POSTCONF = "postconf"


def _run(args: list[str], config_directory: str | Path | None) -> str:
    cmd = [POSTCONF]
    if config_directory is not None:
        cmd += ["-c", str(config_directory)]
    cmd += args
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    except FileNotFoundError as exc:
        raise PostfixError(f"{POSTCONF} not found: is Postfix installed? ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise PostfixError(f"{' '.join(cmd)} took longer than 30 s") from exc
    if done.returncode != 0:
        raise PostfixError(f"{' '.join(cmd)} failed: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _pairs(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            out[name.strip()] = value.strip()
        elif line.endswith(" ="):
            out[line[:-2].strip()] = ""
    return out


def postconf(
    config_directory: str | Path | None = None, names: tuple[str, ...] = (), *, explicit_only: bool = False,
    expand: bool = True,
) -> dict[str, str]:
    """Effective main.cf parameters, `$name` references expanded (`postconf -x`; as written with
    `expand=False`); with `explicit_only`, only those set in main.cf (`-n`)."""
    return _pairs(_run([*(["-x"] if expand else []), *(["-n"] if explicit_only else []), *names], config_directory))


def postconf_services(config_directory: str | Path | None = None, *, expand: bool = True) -> dict[str, dict[str, str]]:
    """Per-service `-o` overrides from master.cf (`postconf -P -x`; as written with `expand=False`),
    keyed by "service/type"."""
    services: dict[str, dict[str, str]] = {}
    for key, value in _pairs(_run(["-P", *(["-x"] if expand else [])], config_directory)).items():
        service, _, rest = key.partition("/")
        kind, _, param = rest.partition("/")
        if param:
            services.setdefault(f"{service}/{kind}", {})[param] = value
    return services


LOCAL_DOMAIN_PARAMS = ("mydestination", "virtual_alias_domains", "virtual_mailbox_domains", "relay_domains")


def local_domains(params: dict[str, str]) -> tuple[str, ...] | None:
    """The domains this Postfix accepts mail for, or None when a lookup table or file hides some."""
    found: list[str] = []
    for name in LOCAL_DOMAIN_PARAMS:
        for item in re.split(r"[\s,]+", params.get(name, "")):
            if not item:
                continue
            if ":" in item or item.startswith("/"):
                return None
            found.append(item.lower())
    return tuple(found)
