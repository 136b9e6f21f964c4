"""`relaywatch blocks`: the blocks in force, each with whether the map holds it, and a pending map write."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from relaywatch.store.sqlite import BlockRow
from relaywatch.wording import iso


def to_json(rows: Sequence[BlockRow], held: Sequence[bool], pending: Any) -> str:
    return json.dumps({
        "pending": pending,
        "blocks": [{"kind": b.kind, "target": b.target, "reason": b.reason, "rule": b.rule,
                    "since": iso(b.since), "until": None if b.until is None else iso(b.until),
                    "offences": b.offences, "in_map": h} for b, h in zip(rows, held, strict=True)]}, indent=2)


def to_text(rows: Sequence[BlockRow], held: Sequence[bool], pending: Any) -> list[str]:
    """One line per block; `held` says, per row, whether the access map has it."""
    out = []
    if pending:
        out.append(f"PENDING: the maps do not yet hold these blocks: {pending.get('error', 'not written yet')}")
    if not rows:
        out.append("no blocks in force")
    for b, h in zip(rows, held, strict=True):
        until = "permanent" if b.until is None else f"until {iso(b.until)}"
        state = "in force" if h else "NOT IN THE MAP"
        out.append(f"{b.kind:<9} {b.target:<24} {state:<15} {until:<32} {b.rule}: {b.reason} (offence {b.offences})")
    return out
