"""A real journal without a running journald: Debian's systemd-journal-remote turns journal export
format written to a pipe into a journal file, live, and the real journalctl reads it."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import time
from pathlib import Path

import pytest

REMOTE = "/lib/systemd/systemd-journal-remote"
BOOT = Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
OLD_BOOT = "0123456789abcdef0123456789abcdef"

# CI sets RELAYWATCH_REQUIRE_JOURNAL=1: there a missing journal tool fails these tests instead of skipping them.
needs_journal = pytest.mark.skipif(
    not (os.access(REMOTE, os.X_OK) and shutil.which("journalctl"))
    and os.environ.get("RELAYWATCH_REQUIRE_JOURNAL") != "1",
    reason="needs systemd-journal-remote and journalctl")


def export_entry(message: str | bytes, ident: str = "postfix/smtpd", unit: str | None = "postfix@-.service",
                 boot: str = BOOT, pid: int = 4242, usec: int | None = None) -> bytes:
    """One entry in journal export format (a binary field for non-UTF-8 messages)."""
    usec = usec or time.time_ns() // 1000
    fields = [f"__REALTIME_TIMESTAMP={usec}", f"_BOOT_ID={boot}", f"SYSLOG_IDENTIFIER={ident}",
              f"SYSLOG_PID={pid}", f"_PID={pid}", "_UID=107", f"_COMM={ident.rpartition('/')[2]}",
              "_HOSTNAME=mx", "SYSLOG_FACILITY=2"]
    if unit:
        fields.append(f"_SYSTEMD_UNIT={unit}")
    out = "".join(f + "\n" for f in fields).encode()
    if isinstance(message, bytes):
        out += b"MESSAGE\n" + struct.pack("<Q", len(message)) + message + b"\n"
    else:
        out += f"MESSAGE={message}\n".encode()
    return out + b"\n"


class Journal:
    """A journal file written live by systemd-journal-remote from a pipe."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sent = 0
        self.proc = subprocess.Popen([REMOTE, f"--output={path}", "-"], stdin=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)

    def send(self, *entries: bytes) -> None:
        """Write entries and wait until journalctl sees them."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"".join(entries))
        self.proc.stdin.flush()
        self.sent += len(entries)
        deadline = time.monotonic() + 5
        while len(self.cursors()) < self.sent and time.monotonic() < deadline:
            time.sleep(0.01)

    def cursors(self) -> list[str]:
        if not self.path.exists():
            return []
        out = subprocess.run(["journalctl", f"--file={self.path}", "-m", "-o", "json"], capture_output=True).stdout
        return [json.loads(line)["__CURSOR"] for line in out.splitlines()]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(10)
