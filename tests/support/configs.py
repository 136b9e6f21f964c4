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


def daemon_sections(tmp_path: Path, *, maillog: Path | str | None = None, database: Path | str | None = None,
                    config_directory: Path | str | None = None, client_access_map: str | None = None,
                    map_directories: bool = True) -> dict[str, dict[str, Any]]:
    """A daemon reading `maillog` (default: an empty tmp_path/mail.log) with its state in tmp_path,
    blocking into a hash map in tmp_path, with no Postfix (config_directory names a missing directory)
    unless one is given; no SASL map."""
    if maillog is None:
        maillog = tmp_path / "mail.log"
        if not maillog.exists():
            maillog.write_text("")
    postfix: dict[str, Any] = {
        "config_directory": tmp_path / "no-postfix" if config_directory is None else config_directory,
        "client_access_map": client_access_map or f"hash:{tmp_path}/clients",
        "sasl_access_map": "",
    }
    if map_directories:
        postfix["map_directories"] = [tmp_path]
    return {"source": {"path": maillog}, "state": {"database": database or tmp_path / "state.db"},
            "postfix": postfix}


def rig_sections(rig: Any, tmp_path: Path, *, client_access_map: str | None = None,
                 source: bool = True) -> dict[str, dict[str, Any]]:
    """A config for a private Postfix (support.postfix_rig.PostfixRig): its log, its config directory and
    its reject list, state in tmp_path, no SASL map, loopback not allow-listed (the rig's clients are)."""
    out: dict[str, dict[str, Any]] = {}
    if source:
        out["source"] = {"path": rig.maillog}
    out["state"] = {"database": tmp_path / "state.db"}
    out["postfix"] = {"config_directory": rig.config_directory,
                      "client_access_map": client_access_map or rig.reject_list, "sasl_access_map": ""}
    out["allow"] = {"networks": []}
    return out
