"""What the command modules share: the -c option, loading the configuration, opening the state."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import click

from relaywatch import config as config_mod
from relaywatch.model import RelaywatchError

if TYPE_CHECKING:  # build and the stores load the daemon's parts: a replay imports neither (half its start)
    from relaywatch.store.base import StateStore

DEFAULT_CONFIG = "/etc/relaywatch/relaywatch.toml"
log = logging.getLogger("relaywatch")

config_option = click.option("-c", "--config", "config_path", type=click.Path(dir_okay=False),
                             help=f"relaywatch.toml to use (default: {DEFAULT_CONFIG} if it exists).")


def config_path_or_default(config_path: str | None) -> str | None:
    """The named config, else /etc/relaywatch/relaywatch.toml when it exists, else None (the defaults)."""
    if config_path is None and os.path.exists(DEFAULT_CONFIG):
        return DEFAULT_CONFIG
    return config_path


def load(config_path: str | None) -> config_mod.Config:
    return config_mod.load(config_path_or_default(config_path))


def has_state(cfg: config_mod.Config) -> bool:
    """A state database exists (a PostgreSQL URL: it is there to be asked)."""
    from relaywatch.store.open import is_url

    return is_url(cfg.database) or os.path.exists(cfg.database)


def recorded_store(cfg: config_mod.Config) -> StateStore:
    """The state database for a command that only reads it: never create one as a side effect."""
    if not has_state(cfg):
        raise RelaywatchError(f"{cfg.database} does not exist: relaywatch has not run with this configuration")
    from relaywatch.build import state_for

    return state_for(cfg)


def existing_store(cfg: config_mod.Config) -> StateStore | None:
    """The state database if there is one; None: relaywatch never ran, so nothing is blocked."""
    from relaywatch.build import state_for

    return state_for(cfg) if has_state(cfg) else None


def write_atomically(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise RelaywatchError(f"cannot write {path}: {exc.strerror or exc}") from exc
