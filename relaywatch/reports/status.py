"""`relaywatch status`: is the daemon running, what it reads, how far behind, what it blocks; with a
shared (PostgreSQL) state, each host of the fleet: its last contact, its lag, where it reads.

Exit codes follow the LSB, like `systemctl status`: 0 running, 3 not running,
4 unknown (no state database: relaywatch has not run with this configuration).
"""

from __future__ import annotations

import json
import os
from enum import IntEnum
from typing import Any

from relaywatch.sources import choose as source_state
from relaywatch.store.base import StateStore
from relaywatch.store.records import DaemonStatus, HostRow
from relaywatch.wording import age, iso

HEARTBEAT_S = 30  # the daemon writes one every second; older than this: hung or gone


class Lsb(IntEnum):
    RUNNING = 0
    NOT_RUNNING = 3
    UNKNOWN = 4


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def gather(store: StateStore, now: float) -> dict[str, Any]:
    """Everything `status` shows, JSON-able (a contract: fields are added, never renamed)."""
    daemon = store.status.get() or DaemonStatus()
    pid = daemon.pid
    running = pid is not None and pid != 0 and alive(pid) and now - daemon.heartbeat < HEARTBEAT_S
    source = daemon.source
    position = store.positions.get(source) if source else None
    last = daemon.last_log_time
    lag = source_state.lag(source, position, daemon.caught_up, last, now) if running else source_state.Lag()
    return {
        "running": running,
        "pid": pid if running else None,
        "source": source,
        "source_note": daemon.source_note or None,
        "position": position,
        "position_text": source_state.describe_position(source, position),
        "lines": daemon.lines,
        "relayed": daemon.relayed,
        "last_log_time": iso(last) if last else None,
        "last_line_at": iso(daemon.last_line_at) if daemon.last_line_at else None,
        "arriving": source_state.arriving(daemon.last_line_at, now) if running else None,
        # how far behind the reader is: unread bytes of the file, or (journal) the age of the last line
        # read while more were waiting; lag_s is kept for scripts written before lag_bytes existed
        "lag_bytes": lag.unread_bytes,
        "lag_s": lag.behind_s,
        "lag_text": lag.text() if running else None,
        "busiest": store.busiest(int((now - 600) // 10)),
        "blocks": [{"kind": b.kind, "target": b.target, "rule": b.rule,
                    "until": None if b.until is None else iso(b.until)} for b in store.blocks(now)],
        "pending": pending.to_json() if (pending := store.map_state.pending()) is not None else None,
        # blocks whose mail the log shows still being queued after they took effect (the daemon's check)
        "not_enforced": [a.to_json() for a in store.alarms.get().values()
                         if (a.kind, a.target) in {(b.kind, b.target) for b in store.blocks(now)}],
        "notify": daemon.notify,
        # the fleet sharing this state (a SQLite store: this host alone): each host's last contact, lag, position
        "hosts": [_host(h, now) for h in store.hosts()],
    }


def _host(h: HostRow, now: float) -> dict[str, Any]:
    source = h.position.get("source") if h.position else None
    position = {k: v for k, v in h.position.items() if k != "source"} if h.position else None
    return {"host": h.host, "last_contact": iso(h.last_contact) if h.last_contact else None,
            "contact_age_s": None if h.last_contact is None else round(max(0.0, now - h.last_contact), 1),
            "lag_s": h.lag_s, "position": h.position,
            "position_text": source_state.describe_position(source if isinstance(source, str) else None, position)}


def _host_text(h: dict[str, Any]) -> str:
    seconds = h["contact_age_s"]
    contact = "never heard from" if seconds is None else f"last contact {age(seconds)} ago" + (
        " (STALE: is its daemon running?)" if seconds >= HEARTBEAT_S else "")
    lag = "lag unknown" if h["lag_s"] is None else "caught up" if h["lag_s"] == 0 else f"behind by {h['lag_s']:,.0f} s"
    return f"    {h['host']:<24} {contact}; {lag}; reading {h['position_text']}"


def exit_code(info: dict[str, Any]) -> Lsb:
    return Lsb.RUNNING if info["running"] else Lsb.NOT_RUNNING


def to_json(info: dict[str, Any]) -> str:
    return json.dumps(info, indent=2)


def to_text(info: dict[str, Any]) -> str:
    state = f"running (pid {info['pid']:d})" if info["running"] else "not running"
    out = [f"relaywatch is {state}"]
    out.append(f"  reading {info['position_text']}")
    if info["source_note"]:
        out.append(f"  note: {info['source_note']}")
    read = f"  {info['lines'] or 0:,} lines read, {info['relayed'] or 0:,} relayed"
    if info["running"]:
        read += f"; {info['arriving']}; {info['lag_text']}"
    out.append(read)
    for dim, rows in info["busiest"].items():
        out.append(f"  busiest {dim} (10 min): " + ", ".join(f"{k} {n}" for k, n in rows))
    out.append(f"  {len(info['blocks'])} blocks in force" + (" (PENDING: maps not yet written)" if info["pending"]
                                                              else ""))
    for b in info["blocks"]:
        out.append(f"    {b['kind']:<9} {b['target']:<24} {b['rule']:<12} until {b['until'] or 'forever'}")
    for a in info["not_enforced"]:
        out.append(f"  NOT ENFORCED: {a['messages']} messages from {a['kind']} {a['target']} queued after its block"
                   f" took effect (last at {iso(a['last'])}): Postfix does not refuse it")
    if len(info["hosts"]) > 1:
        out.append(f"  fleet: {len(info['hosts'])} hosts share this state")
        out.extend(_host_text(h) for h in info["hosts"])
    if info["notify"]:
        n = info["notify"]
        out.append(f"  notifications: {n.get('sent', 0)} sent, {n.get('failed', 0)} failed, "
                   f"{n.get('pending', 0)} pending" + (f"; last error: {n['last_error']}" if n.get("last_error")
                                                        else ""))
    return "\n".join(out) + "\n"
