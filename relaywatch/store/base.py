"""What the pipeline, the responder and the reports need of a state store: the seam a second
backend (PostgreSQL) implements without touching them. store.sqlite.Store is the first.

Writes happen inside `transaction()` (nested calls join the outer one) or in one of their own.
A backend that cannot write for now raises StoreUnavailable (sqlite_file); with `degrade` it keeps
blocks and state records in memory (`backlog`) and writes them with the next transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from relaywatch.model import CountRow, Decision, JSONObject, OpenMessage, Origin
from relaywatch.store.records import BlockRow, FleetNews, HostRow
from relaywatch.store.sqlite_file import StoreUnavailable
from relaywatch.store.state import (
    DayArchive,
    EnforcementAlarms,
    MapState,
    NotifyState,
    Positions,
    StatusRecord,
)


class BlockChanges(Protocol):
    """Block changes announced by any fleet host (NOTIFY relaywatch_blocks): what respond.pgsql_follow
    waits on, so that a host keeping file maps takes the blocks the others record and lift."""

    def wait(self, timeout: float) -> bool:
        """True when blocks changed (or may have) within `timeout` s."""
        ...

    def close(self) -> None: ...


class StateStore(Protocol):
    days: DayArchive
    status: StatusRecord
    map_state: MapState
    notify_state: NotifyState
    alarms: EnforcementAlarms
    positions: Positions
    unavailable: StoreUnavailable | None

    @property
    def backlog(self) -> int: ...

    def transaction(self) -> AbstractContextManager[None]: ...

    def on_commit(self, fn: Callable[[], None]) -> None: ...

    def lock_for_daemon(self) -> None: ...

    def close(self) -> None: ...

    # --- the pipeline's batches ---
    def commit_batch(self, counts: Iterable[CountRow], decisions: Iterable[Decision] = (),
                     position: tuple[str, JSONObject] | None = None,
                     messages: tuple[Sequence[OpenMessage], Sequence[str]] = ((), ()),
                     origins: tuple[Sequence[Origin], Sequence[str]] = ((), ())) -> None: ...

    def counts_since(self, bucket: int, max_keys: int | None = None) -> Iterator[CountRow]: ...

    def busiest(self, since_bucket: int, per_dim: int = 5) -> dict[str, list[tuple[str, int]]]: ...

    def prune(self, before_bucket: int) -> int: ...

    def open_messages(self) -> list[OpenMessage]: ...

    def queue_ids(self, client: str | None = None, sasl_user: str | None = None,
                  network: str | None = None) -> list[str]: ...

    def prune_origins(self, before: float) -> int: ...

    def decisions(self, since: float | None = None, until: float | None = None) -> list[Decision]: ...

    def hosts(self) -> list[HostRow]:
        """The hosts of the fleet sharing this store, with their last contact, lag and read position."""
        ...

    # --- blocks ---
    def offences(self, kind: str, target: str) -> int: ...

    def add_block(self, row: BlockRow) -> None: ...

    def remove_block(self, kind: str, target: str) -> bool: ...

    def blocks(self, now: float | None = None) -> list[BlockRow]: ...

    def expire_blocks(self, now: float) -> list[BlockRow]: ...

    # --- the fleet (one host alone: every decision its own, no news, no changes to wait for) ---
    def claim(self, decisions: Sequence[Decision]) -> list[Decision]:
        """The decisions this host records: those no other fleet host recorded first."""
        ...

    def fleet_news(self, since_bucket: int) -> FleetNews: ...

    def block_changes(self) -> BlockChanges | None: ...
