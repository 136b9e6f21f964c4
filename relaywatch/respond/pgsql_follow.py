"""Hosts that keep hash: maps in a fleet: re-sync them within a second of a NOTIFY relaywatch_blocks.

A fleet member whose Postfix reads a local map (not pgsql:) must see the blocks another host
decided, and lose those another host lifted. The PostgreSQL store announces every change with
`NOTIFY relaywatch_blocks` in the same transaction; `BlockFollower` waits for it on a connection
of its own (store.base.BlockChanges) in a thread, and only raises a flag: the daemon's loop, the
one writer of the maps, sees it between two reads of the log (at most READ_WAIT_S), marks the maps
due and lets the Blocker render them whole from the fleet's rows (one postmap and one reload per
changed map, none when the map already holds them). While PostgreSQL is away the follower says so
once and tries again every RETRY_S; its first LISTEN after that counts as a change.
"""

from __future__ import annotations

import logging
import threading

from relaywatch.model import RelaywatchError
from relaywatch.respond.blocking import Blocker
from relaywatch.store.base import BlockChanges, StateStore

log = logging.getLogger("relaywatch.blocking")

WAIT_S = 1.0  # how long one wait for a notice lasts (the thread checks for its stop between)
RETRY_S = 5.0


class BlockFollower:
    """A thread that raises `changed` whenever the fleet's blocks change."""

    def __init__(self, changes: BlockChanges) -> None:
        self.changes = changes
        self.changed = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fault: str | None = None

    def step(self, timeout: float = WAIT_S) -> bool:
        """One wait for a notice; True when the blocks changed (or may have)."""
        try:
            came = self.changes.wait(timeout)
        except RelaywatchError as exc:  # StoreUnavailable: PostgreSQL away; tried again after RETRY_S
            if self._fault is None:
                log.error("cannot follow the fleet's blocks: %s (the access maps keep what they hold;"
                          " retrying every %d s)", exc, RETRY_S)
            self._fault = str(exc)
            self._stop.wait(RETRY_S)
            return False
        if self._fault is not None:
            log.warning("following the fleet's blocks again")
            self._fault = None
        if came:
            self.changed.set()
        return came

    def take(self) -> bool:
        """Whether the blocks changed since the last call."""
        if not self.changed.is_set():
            return False
        self.changed.clear()
        return True

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
        self.changes.close()


def follower_for(store: StateStore, blocker: Blocker) -> BlockFollower | None:
    """A running follower when `store` is a fleet's and Postfix reads file maps; None otherwise."""
    if not blocker.file_maps():
        return None
    changes = store.block_changes()
    if changes is None:
        return None
    follower = BlockFollower(changes)
    follower.start()
    return follower
