"""Hosts that keep hash: maps in a fleet: re-sync them within a second of a NOTIFY relaywatch_blocks.

A fleet member whose Postfix reads a local map (not pgsql:) must see the blocks another host
decided. The PostgreSQL store announces every change with `NOTIFY relaywatch_blocks` in the same
transaction; a `BlockChanges` (LISTEN on a connection of its own: relaywatch/store/postgres.py,
the only module that imports the driver) wakes `BlockFollower`, which renders every file map
whole from the fleet's rows, as the Blocker does (one postmap and one reload per changed map;
the directory lock serialises it with the Blocker's own writes). A failure is logged and retried
at the next notice or after `RETRY_S`; the Blocker's retries stay the safety net.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from relaywatch.model import ConfigError, PostfixError
from relaywatch.postfix.commands import Postfix, apply_blocks
from relaywatch.postfix.mapkeys import InvalidBlock
from relaywatch.postfix.maps import AccessMap
from relaywatch.respond.blocking import AnyMap, blocks_for
from relaywatch.store.records import BlockRow

log = logging.getLogger("relaywatch.blocking")

WAIT_S = 1.0  # at most this long between a NOTIFY and the re-sync starting
RETRY_S = 5.0


class BlockChanges(Protocol):
    """What the PostgreSQL store provides for a follower (t18-store): LISTEN relaywatch_blocks."""

    def wait(self, timeout: float) -> bool:
        """Up to `timeout` s for a NOTIFY relaywatch_blocks; True when one or more came (all drained)."""
        ...

    def blocks(self, now: float) -> list[BlockRow]:
        """The fleet's blocks live at `now`."""
        ...


def resync(maps: dict[str, AnyMap], postfix: Postfix, rows: Sequence[BlockRow]) -> list[str]:
    """Make every file map hold exactly `rows` (pgsql: maps need nothing); the maps that changed."""
    changed = []
    for access_map in {id(m): m for m in maps.values()}.values():
        if isinstance(access_map, AccessMap) and apply_blocks(access_map, postfix,
                                                              blocks_for(maps, access_map, rows)):
            changed.append(str(access_map.spec))
    return changed


class BlockFollower:
    """A thread that re-syncs the file maps whenever the fleet's blocks change."""

    def __init__(self, changes: BlockChanges, maps: dict[str, AnyMap], postfix: Postfix,
                 clock: Callable[[], float] = time.time) -> None:
        self.changes = changes
        self.maps = maps
        self.postfix = postfix
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failed = False

    def step(self, timeout: float = WAIT_S) -> list[str] | None:
        """Wait for a notice (or retry a failure); None when nothing came, else the maps rewritten."""
        if not self.changes.wait(timeout) and not self._failed:
            return None
        try:
            changed = resync(self.maps, self.postfix, self.changes.blocks(self.clock()))
        except (PostfixError, ConfigError, InvalidBlock, OSError) as exc:
            log.error("cannot re-sync the access maps with the fleet's blocks: %s (retrying)", exc)
            self._failed = True
            self._stop.wait(RETRY_S)
            return []
        self._failed = False
        if changed:
            log.info("access maps re-synced with the fleet's blocks: %s", ", ".join(changed))
        return changed

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="relaywatch-block-follower", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.step()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
