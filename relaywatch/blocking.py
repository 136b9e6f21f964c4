"""Keep Postfix's access maps equal to the blocks remembered in the store.

Wiring between the store (what is blocked, until when) and postfix.py (how a map
is written and put in force). The store is the truth: a map is always rendered
whole from it, so a failed postmap loses nothing: the block stays pending and
the next `sync` retries with backoff.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable

from .model import ConfigError, Decision, PostfixError
from .permissions import check_map_dir
from .postfix import AccessMap, Block, InvalidBlock, MapSpec, Postfix, apply_blocks, render_key
from .store import BlockRow, Store

log = logging.getLogger("relaywatch.blocking")

MAX_BLOCK_S = 30 * 86400
_BACKOFF_S = (5, 15, 60, 300)


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


def maps_from_config(client_access_map: str, sasl_access_map: str, default_type: str) -> dict[str, AccessMap]:
    """Kind -> the map that holds it; SASL blocks need a sasl_access_map."""
    client = AccessMap(MapSpec.parse(client_access_map, default_type=default_type))
    maps = {"client": client, "subnet": client}
    if sasl_access_map:
        maps["sasl_user"] = AccessMap(MapSpec.parse(sasl_access_map, default_type=default_type))
    for access_map in maps.values():
        if access_map.path.parent.exists():
            check_map_dir(access_map.path.parent)
    return maps


class Blocker:
    def __init__(
        self,
        store: Store,
        postfix: Postfix,
        maps: dict[str, AccessMap],
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
        self.pending = bool(store.meta("map_pending"))

    def _map_for(self, kind: str) -> AccessMap:
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
            self._lifted([Decision(self.clock(), "unblock", kind, target, "manual", 0, 0)])
        return removed

    def expire(self) -> list[BlockRow]:
        gone = self.store.expire_blocks(self.clock())
        if gone:
            self._lifted([Decision(b.until or self.clock(), "unblock", b.kind, b.target, "expired", 0, 0)
                          for b in gone])
        return gone

    def _lifted(self, unblocks: list[Decision]) -> None:
        """Remember when blocks ended (the report's timeline marks them) and rewrite the maps."""
        self.store.commit_batch([], unblocks)
        self._mark_pending()

    def _mark_pending(self) -> None:
        if not self.pending:
            self.pending = True
            self.store.set_meta("map_pending", {"since": self.clock()})
        self._next_try = 0.0

    def due(self) -> bool:
        return self.pending and self.clock() >= self._next_try

    def sync(self) -> bool:
        """Write every map from the store, one postmap and one reload each; False on failure."""
        if not self.pending:
            return True
        now = self.clock()
        active = self.store.blocks(now)
        try:
            for access_map in {id(m): m for m in self.maps.values()}.values():
                kinds = [k for k, m in self.maps.items() if m is access_map]
                blocks = [Block(b.kind, b.target, f"{b.rule}: {b.reason}") for b in active if b.kind in kinds]
                apply_blocks(access_map, self.postfix, blocks, force=self._failures > 0)
        except (PostfixError, ConfigError, InvalidBlock, OSError) as exc:
            self._failures += 1
            delay = _BACKOFF_S[min(self._failures, len(_BACKOFF_S)) - 1]
            self._next_try = now + delay
            self.store.set_meta("map_pending", {"since": now, "error": str(exc), "retry_in_s": delay})
            log.error("blocks are pending, the previous map stays in force: %s (retrying in %d s)", exc, delay)
            return False
        if self._failures:
            log.info("access maps are in force again after %d failed attempts", self._failures)
        self._failures = 0
        self.pending = False
        self.store.set_meta("map_pending", None)
        return True

    @property
    def last_error(self) -> str | None:
        state = self.store.meta("map_pending")
        return state.get("error") if isinstance(state, dict) else None
