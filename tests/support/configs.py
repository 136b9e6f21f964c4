"""relaywatch configurations for tests, written as TOML from dicts: one place that knows the
file's shape, instead of hand-written TOML in every test module.

    write_config(tmp_path / "rw.toml", daemon_sections(tmp_path), {"rules.client": {"threshold": 5}})

Later parts are merged into earlier ones section by section, key by key."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

Sections = Mapping[str, Mapping[str, Any]]


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))  # a JSON string is a valid TOML basic string
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    raise TypeError(f"no TOML for {v!r}")


def merged(*parts: Sections) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name, keys in part.items():
            out.setdefault(name, {}).update(keys)
    return out


def render(*parts: Sections) -> str:
    """TOML text of the merged sections (a dotted name like "rules.client" is a sub-table)."""
    return "".join(f"[{name}]\n" + "".join(f"{k} = {_value(v)}\n" for k, v in keys.items())
                   for name, keys in merged(*parts).items())


def write_config(path: Path, *parts: Sections, mode: int | None = None) -> Path:
    """Write the merged sections to `path`; `mode` (e.g. 0o600 for a config holding notification URLs)."""
    path.write_text(render(*parts))
    if mode is not None:
        path.chmod(mode)
    return path


def sections(*, database: Path | str, config_directory: Path | str, client_access_map: object,
             sasl_access_map: str = "", maillog: Path | str | None = None,
             map_directories: list[Path | str] | None = None,
             allow_networks: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The sections nearly every test needs: [source] (when `maillog` is given), [state], [postfix],
    and [allow] networks (when given: [] makes loopback, where test clients live, blockable).
    `client_access_map`: a map spec as Postfix writes it ("hash:/path"), or anything that prints as one."""
    out: dict[str, dict[str, Any]] = {}
    if maillog is not None:
        out["source"] = {"path": maillog}
    out["state"] = {"database": database}
    out["postfix"] = {"config_directory": config_directory, "client_access_map": str(client_access_map),
                      "sasl_access_map": sasl_access_map}
    if map_directories is not None:
        out["postfix"]["map_directories"] = map_directories
    if allow_networks is not None:
        out["allow"] = {"networks": allow_networks}
    return out


def daemon_sections(tmp_path: Path, *, maillog: Path | str | None = None,
                    database: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """A daemon reading `maillog` (default: an empty tmp_path/mail.log) with its state in tmp_path and no
    Postfix (config_directory names a missing directory), blocking into a hash map in tmp_path."""
    if maillog is None:
        maillog = tmp_path / "mail.log"
        if not maillog.exists():
            maillog.write_text("")
    return sections(maillog=maillog, database=database or tmp_path / "state.db",
                    config_directory=tmp_path / "no-postfix", client_access_map=f"hash:{tmp_path}/clients",
                    map_directories=[tmp_path])


def rig_sections(rig: Any, tmp_path: Path, *, client_access_map: str | None = None, source: bool = True,
                 database: Path | str | None = None) -> dict[str, dict[str, Any]]:
    """A config for a private Postfix (support.postfix_rig.PostfixRig): its log (unless `source` is
    False), its config directory and reject list, state in tmp_path, loopback not allow-listed."""
    return sections(maillog=rig.maillog if source else None, database=database or tmp_path / "state.db",
                    config_directory=rig.config_directory,
                    client_access_map=client_access_map or rig.reject_list, allow_networks=[])
