"""Keep Postfix's access maps equal to the blocks remembered in the store.

Wiring between the store (what is blocked, until when) and postfix.py (how a map
is written and put in force). The store is the truth: a map is always rendered
whole from it, so a failed postmap loses nothing: the block stays pending and
`sync` is retried quickly (1 s doubling to 30 s), at once when the map directory's
permissions or mount change. Every `sync` says what actually happened (a
`SyncResult`): in force, not written, or written but not reloaded; a fault is
reported once when it begins, and the blocks it held back once they are in force.
A map changed by anyone else is noticed (`check_maps`) and rewritten.

A `pgsql:` map is not written at all: the store's row in relaywatch_blocks is the map,
so `sync` only asks Postfix's own pgsql client (postmap -q) whether it answers every
block with its REJECT, and says "not answered" (with Postfix's reason) when it does not.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from relaywatch.model import Action, ConfigError, Decision, Kind, PostfixError
from relaywatch.permissions import check_map_dir
from relaywatch.postfix.commands import MapNotLoaded, Postfix, apply_blocks
from relaywatch.postfix.mapguard import (
    DEFAULT_CONFIG_DIRECTORY,
    check_map_path,
    postfix_named_files,
)
from relaywatch.postfix.mapkeys import Block, InvalidBlock, MapSpec, render_key
from relaywatch.postfix.maps import AccessMap
from relaywatch.postfix.pgsql_lookup import NotAnswered, PgsqlMap, check_cf
from relaywatch.respond.reloads import Reloads
from relaywatch.store.base import StateStore
from relaywatch.store.records import BlockRow, MapPending

log = logging.getLogger("relaywatch.blocking")

MAX_BLOCK_S = 30 * 86400
BACKOFF_S = (1, 2, 4, 8, 16, 30)
TAMPER_QUIET_S = 300.0  # a map left alone this long after a restore ends the tamper episode

AnyMap = AccessMap | PgsqlMap  # a map file relaywatch writes, or a database table Postfix reads


def target_kind(text: str) -> tuple[str, str]:
    """("client" | "subnet" | "sasl_user", canonical target) for what a user typed."""
    text = text.strip()
    if "/" in text:
        try:
            return "subnet", ipaddress.ip_network(text, strict=True).compressed
        except ValueError as exc:
            raise InvalidBlock(f"{text!r} is not a network ({exc}); e.g. 218.144.0.0/16") from None
    try:
        return "client", ipaddress.ip_address(text).compressed
    except ValueError:
        return "sasl_user", text


def maps_from_config(client_access_map: str, sasl_access_map: str, default_type: str, *,
                     config_directory: str | None, map_directories: Sequence[str] = ()) -> dict[str, AnyMap]:
    """Kind -> the map that holds it; SASL blocks need a sasl_access_map.

    ConfigError (exit 78) for a map relaywatch must not write (mapguard), a pgsql: .cf
    that is unsafe to hold a password (pgsql_lookup.check_cf), or one file named as both maps.
    """
    maps = map_specs(client_access_map, sasl_access_map, default_type)
    client, sasl = maps["client"], maps.get("sasl_user")
    if sasl is not None and os.path.realpath(sasl.path) == os.path.realpath(client.path):
        raise ConfigError(f"[postfix] sasl_access_map names the same file as client_access_map ({client.path}): "
                          "give SASL blocks a map of their own, or set sasl_access_map = \"\"")
    allowed = (config_directory or DEFAULT_CONFIG_DIRECTORY, *map_directories)
    named = postfix_named_files(config_directory)
    for access_map in maps.values():
        if isinstance(access_map, PgsqlMap):
            check_cf(access_map.spec.path, config_directory or DEFAULT_CONFIG_DIRECTORY)
            continue
        if access_map.path.parent.exists():
            check_map_dir(access_map.path.parent)
        check_map_path(access_map.spec.path, allowed, named)
    return maps


def map_specs(client_access_map: str, sasl_access_map: str, default_type: str) -> dict[str, AnyMap]:
    """Kind -> map, for reading only (no safety checks: nothing is written)."""
    client = _open_map(MapSpec.parse(client_access_map, default_type=default_type))
    maps = {"client": client, "subnet": client}
    if sasl_access_map:
        maps["sasl_user"] = _open_map(MapSpec.parse(sasl_access_map, default_type=default_type))
    return maps


def _open_map(spec: MapSpec) -> AnyMap:
    return PgsqlMap(spec) if spec.database else AccessMap(spec)


def in_map(rows: Sequence[BlockRow], maps: dict[str, AnyMap], config_directory: str | None = None) -> list[bool]:
    """For each block, whether its map's managed section holds it (and the compiled map is current);
    for a pgsql: map, whether Postfix's pgsql client answers it with a REJECT."""
    held: dict[int, set[str]] = {}
    out = []
    for b in rows:
        access_map = maps.get(b.kind)
        if access_map is None:
            out.append(False)
            continue
        if id(access_map) not in held:
            if isinstance(access_map, PgsqlMap):
                kinds = {k for k, m in maps.items() if m is access_map}
                keys = sorted({render_key(r.kind, r.target, "pgsql") for r in rows if r.kind in kinds})
                held[id(access_map)] = access_map.held_keys(keys, config_directory=config_directory)
            else:
                held[id(access_map)] = access_map.held_keys()
        out.append(render_key(b.kind, b.target, access_map.spec.type) in held[id(access_map)])
    return out


def blocks_for(maps: dict[str, AnyMap], access_map: AnyMap, rows: Sequence[BlockRow]) -> list[Block]:
    """The blocks among `rows` that `access_map` holds, with the reason its REJECT text gives."""
    kinds = [k for k, m in maps.items() if m is access_map]
    return [Block(b.kind, b.target, f"{b.rule}: {b.reason}") for b in rows if b.kind in kinds]


class MapState(enum.Enum):
    IN_FORCE = "in force"
    NOT_WRITTEN = "not written"  # the files Postfix reads are unchanged
    NOT_LOADED = "not reloaded"  # the map files hold the blocks; Postfix did not reload
    NOT_ANSWERED = "not answered"  # a pgsql: map: Postfix's own client does not answer the blocks


@dataclass(frozen=True)
class SyncResult:
    """What one `sync` did. `fault_began`: the first failure of this fault (tell the admin once);
    `recovered`: the blocks in force now that a fault ended (tell the admin they are)."""

    state: MapState
    error: str | None = None
    fault_began: bool = False
    recovered: tuple[BlockRow, ...] = ()

    def __bool__(self) -> bool:
        return self.state is MapState.IN_FORCE


class Blocker:
    def __init__(
        self,
        store: StateStore,
        postfix: Postfix,
        maps: dict[str, AnyMap],
        block_s: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.postfix = postfix
        self.maps = maps
        self.block_s = block_s
        self.clock = clock
        self._failures = 0
        self._next_try = 0.0
        self._failed_at: tuple[object, ...] = ()
        self._force = False
        self._stamps: dict[str, tuple[object, ...]] = {}
        self._tampers = 0
        self._tampered_at = float("-inf")
        self.pending = store.map_state.pending() is not None
        # (kind, target) -> when this process first saw the block in force (the log-check's start)
        self.in_force_since: dict[tuple[str, str], float] = {}
        self._reloads = Reloads(lambda: self.postfix.reload())
        self.reload_off_loop = False  # the daemon's: a command that exits after its sync reloads in line

    def close(self, timeout: float = 60.0) -> None:
        """Wait for a reload still running off the loop; if one failed, say so and leave the maps pending
        in the store, so that the next start (or the blocker a SIGHUP makes) writes and reloads them again."""
        self._reloads.wait(timeout)
        self._take_reload_failure()

    def _map_for(self, kind: str) -> AnyMap:
        try:
            return self.maps[kind]
        except KeyError:
            raise ConfigError(f"cannot block a {kind}: set [postfix] sasl_access_map") from None

    def block(self, kind: str, target: str, reason: str, rule: str = "manual", duration: float | None = None,
              permanent: bool = False) -> BlockRow:
        """Remember a block (validated for its map first) and mark the maps for sync.

        Without a duration, repeat offenders get longer: block_s doubled per earlier
        offence, up to 30 days (like fail2ban's bantime.increment).
        """
        render_key(kind, target, self._map_for(kind).spec.type)
        now = self.clock()
        active = {(b.kind, b.target): b for b in self.store.blocks(now)}.get((kind, target))
        if active is not None and rule != "manual":
            return active
        if permanent:
            until = None
        else:
            if duration is None:
                duration = min(self.block_s * 2 ** self.store.offences(kind, target), MAX_BLOCK_S)
            until = now + duration
        self.store.add_block(BlockRow(kind, target, reason, rule, now, until))
        self._mark_pending()
        return next(b for b in self.store.blocks(now) if (b.kind, b.target) == (kind, target))

    def unblock(self, kind: str, target: str) -> bool:
        removed = self.store.remove_block(kind, target)
        if removed:
            self._lifted([Decision(self.clock(), Action.UNBLOCK, Kind(kind), target, "manual", 0, 0)])
        return removed

    def expire(self) -> list[BlockRow]:
        gone = self.store.expire_blocks(self.clock())
        if gone:
            self._lifted([Decision(b.until or self.clock(), Action.UNBLOCK, Kind(b.kind), b.target, "expired", 0, 0)
                          for b in gone])
        return gone

    def _lifted(self, unblocks: list[Decision]) -> None:
        """Remember when blocks ended (the report's timeline marks them) and rewrite the maps."""
        self.store.commit_batch([], unblocks)
        self._mark_pending()

    def _take_reload_failure(self) -> None:
        failed = self._reloads.take_failure()
        if failed is not None:
            log.warning("postfix reload after writing the access maps failed (%s): writing and reloading them again",
                        failed)
            self._mark_pending()
            self._force = True

    def _mark_pending(self) -> None:
        if not self.pending:
            self.pending = True
            self.store.map_state.set_pending(MapPending(self.clock()))
        self._next_try = 0.0

    def changed_elsewhere(self) -> None:
        """Another host of the fleet changed the blocks: the file maps are rewritten at the next `sync`
        (a pgsql: map is only asked again). Not recorded as pending: the sync follows at once."""
        self.pending = True
        self._next_try = 0.0

    def due(self) -> bool:
        """Pending and its retry time has come, or the map directory changed since the last failure,
        or a reload off the loop failed."""
        self._take_reload_failure()
        if not self.pending:
            return False
        return self.clock() >= self._next_try or (self._failures > 0 and self._fingerprint() != self._failed_at)

    def _fingerprint(self) -> tuple[object, ...]:
        """What a fixed permission fault changes: modes, owners, writability (read-only mounts, chattr +i)."""
        out: list[object] = []
        for access_map in self._distinct_maps():
            for name in (str(access_map.path.parent), str(access_map.path)):
                try:
                    st = os.stat(name)
                    out.append((st.st_mode, st.st_uid, st.st_gid, os.access(name, os.W_OK)))
                except OSError as exc:
                    out.append(exc.errno)
        return tuple(out)

    def _distinct_maps(self) -> list[AnyMap]:
        return list({id(m): m for m in self.maps.values()}.values())

    def file_maps(self) -> list[AccessMap]:
        return [m for m in self._distinct_maps() if isinstance(m, AccessMap)]

    def _blocks_for(self, access_map: AnyMap, active: list[BlockRow]) -> list[Block]:
        return blocks_for(self.maps, access_map, active)

    def sync(self) -> SyncResult:
        """Write every map from the store, one postmap and one reload each; say what happened.

        A compiled map (hash, lmdb...) is in force once postmap has replaced it: `postmap -q`
        answers the new blocks, and each smtpd reopens a changed map before its next session. Its
        reload, which only hurries the processes along, runs off the daemon's loop (it took 45-90 ms);
        a failed one makes the next `due` true, and that sync reloads in line and reports as ever.
        While a fault lasts, and for maps read as text (cidr), the reload stays in line."""
        if not self.pending:
            return SyncResult(MapState.IN_FORCE)
        now = self.clock()
        active = self.store.blocks(now)
        before = self.store.map_state.pending() or MapPending(now)
        reload = False
        try:
            for access_map in self._distinct_maps():
                blocks = self._blocks_for(access_map, active)
                if isinstance(access_map, PgsqlMap):  # the rows are the map: ask Postfix whether it answers them
                    access_map.verify(blocks, config_directory=self.postfix.config_directory,
                                      postmap_bin=self.postfix.postmap_bin)
                elif self.reload_off_loop and access_map.spec.compiled is not None and not (self._failures
                                                                                           or self._force):
                    reload |= access_map.write(blocks, self.postfix.postmap)
                else:
                    apply_blocks(access_map, self.postfix, blocks, force=self._failures > 0 or self._force)
        except (PostfixError, ConfigError, InvalidBlock, OSError) as exc:
            return self._failed(now, exc, before)
        if reload:
            self._reloads.request()
        if before.error:
            log.warning("access maps are in force again after %d failed attempts", self._failures)
        self._failures = 0
        self._force = False
        self.pending = False
        self.store.map_state.set_pending(None)
        self._stamps = {str(m.path): m.stamp() for m in self._distinct_maps()}
        self.in_force_since = {(b.kind, b.target): self.in_force_since.get((b.kind, b.target), now) for b in active}
        self.postfix.master_pid()  # remembers queue_directory: a later broken main.cf cannot tell it
        return SyncResult(MapState.IN_FORCE, recovered=tuple(active) if before.error else ())

    def _failed(self, now: float, exc: Exception, before: MapPending) -> SyncResult:
        state = (MapState.NOT_LOADED if isinstance(exc, MapNotLoaded) else
                 MapState.NOT_ANSWERED if isinstance(exc, NotAnswered) else MapState.NOT_WRITTEN)
        fault = f"{state.name}:{type(exc).__name__}:{getattr(exc.__cause__, 'errno', '')}"
        began = before.fault != fault
        self._failures += 1
        delay = BACKOFF_S[min(self._failures, len(BACKOFF_S)) - 1]
        self._next_try = now + delay
        self._failed_at = self._fingerprint()
        self.store.map_state.set_pending(MapPending(before.since, str(exc), state.value, fault, delay))
        (log.error if began else log.info)("blocks are not in force (map %s): %s (retrying in %d s)",
                                           state.value, exc, delay)
        return SyncResult(state, str(exc), fault_began=began)

    def check_maps(self) -> list[str]:
        """Maps someone else rewrote since our last write that no longer hold our blocks: marked
        pending (the next `sync` rewrites and recompiles them). Repeated rewrites (a second
        relaywatch on the same map) back off like faults instead of a rewrite every second."""
        if self.pending:
            return []
        changed = []
        for access_map in self.file_maps():
            stamp = access_map.stamp()
            old = self._stamps.get(str(access_map.path))
            if stamp == old:
                continue
            try:
                holds = access_map.holds(self._blocks_for(access_map, self.store.blocks(self.clock())))
            except (PostfixError, ConfigError, OSError) as exc:
                holds, exc_text = False, str(exc)
            else:
                exc_text = ""
            if holds:  # the admin's own entries or a postmap of our source: nothing to restore
                self._stamps[str(access_map.path)] = stamp
                continue
            changed.append(f"{access_map.spec} was changed by another program and no longer holds relaywatch's "
                           f"blocks{': ' + exc_text if exc_text else ''}")
        if changed:
            now = self.clock()
            self._tampers = self._tampers + 1 if now - self._tampered_at < TAMPER_QUIET_S else 1
            self._tampered_at = now
            self._mark_pending()
            self._force = True
            self._next_try = now + (0 if self._tampers == 1 else BACKOFF_S[min(self._tampers, len(BACKOFF_S)) - 1])
            for text in changed:
                log.warning("%s: restoring them", text)
        return changed

    @property
    def first_tamper(self) -> bool:
        """The last `check_maps` began a tamper episode (tell the admin once per episode)."""
        return self._tampers == 1

    @property
    def last_error(self) -> str | None:
        state = self.store.map_state.pending()
        return state.error if state is not None else None
