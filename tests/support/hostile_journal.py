"""A journal stream with forged Postfix records, in journal export format (tests/test_hostile_forged.py).

`stream()` is what tests/data/journal/forged.export holds; forged.json is that stream written into a
real journal by systemd-journal-remote and read back with `journalctl -o json` (see the README there).
"""

from __future__ import annotations

BOOT = "f5991b275e8342ea8dcaac568fb0c388"
T0 = 1795773600_000000  # 2026-11-27 06:40:00 UTC, in µs
VICTIM = "192.0.2.10"  # whom the forger wants blocked
FLOODER = "198.51.100.7"  # a real relay flood through the real Postfix, in the same stream
POSTFIX = {"_SYSTEMD_UNIT": "postfix@-.service", "_UID": "107"}
# How a local user gets a line that reads like Postfix's into the journal, and which
# journald-set field gives it away (_COMM and _EXE come from /proc, _UID from the kernel).
FORGERS = {
    "logger": {"_SYSTEMD_UNIT": "session-3.scope", "_COMM": "logger", "_EXE": "/usr/bin/logger", "_UID": "1000"},
    "logger-race": {"_COMM": "logger", "_EXE": "/usr/bin/logger", "_UID": "1000"},  # unit lost: it exited at once
    "renamed-copy": {"_COMM": "smtpd", "_EXE": "/home/eve/smtpd", "_UID": "1000"},
    "web-app": {"_SYSTEMD_UNIT": "php8.2-fpm.service", "_COMM": "php-fpm8.2", "_EXE": "/usr/sbin/php-fpm8.2",
                "_UID": "33"},
    "postlog": {"_COMM": "postlog", "_EXE": "/usr/sbin/postlog", "_UID": "1000"},  # set-gid postdrop
    "uid-only": {"_UID": "1000"},  # journald read nothing from /proc: only the kernel's uid is left
}
# Forged records each forger writes: a relayed message each, and relay refusals.
MESSAGES_PER_FORGER = 20
REFUSALS_PER_FORGER = 10


def entry(usec: int, ident: str, message: str, fields: dict[str, str], pid: int = 4242) -> bytes:
    lines = [f"__REALTIME_TIMESTAMP={usec}", f"_BOOT_ID={BOOT}", f"SYSLOG_IDENTIFIER={ident}",
             f"SYSLOG_PID={pid}", f"_PID={pid}", "_HOSTNAME=mx", "SYSLOG_FACILITY=2", "PRIORITY=6",
             "_TRANSPORT=syslog", *(f"{k}={v}" for k, v in fields.items()), f"MESSAGE={message}"]
    return ("\n".join(lines) + "\n\n").encode()


def real(ident: str) -> dict[str, str]:
    program = ident.rpartition("/")[2]
    return {**POSTFIX, "_COMM": program, "_EXE": f"/usr/lib/postfix/sbin/{program}"}


def message(qid: str, client: str, n: int) -> list[tuple[str, str]]:
    return [
        ("postfix/smtpd", f"{qid}: client=unknown[{client}]"),
        ("postfix/qmgr", f"{qid}: from=<s{n}@spam.example>, size=900, nrcpt=1 (queue active)"),
        ("postfix/smtp", f"{qid}: to=<u{n}@victim{n % 7}.example>, relay=mx.victim.example[203.0.113.25]:25, "
                         "delay=1.2, delays=0.1/0/0.6/0.5, dsn=2.0.0, status=sent (250 2.0.0 Ok)"),
        ("postfix/qmgr", f"{qid}: removed"),
    ]


def refusal(client: str, n: int) -> tuple[str, str]:
    return ("postfix/smtpd", f"NOQUEUE: reject: RCPT from unknown[{client}]: 554 5.7.1 <u{n}@victim.example>: "
                             f"Relay access denied; from=<s{n}@spam.example> to=<u{n}@victim.example> "
                             "proto=ESMTP helo=<x>")


def stream() -> list[tuple[str, str, dict[str, str]]]:
    """(SYSLOG_IDENTIFIER, MESSAGE, journald's fields) in order: 70 messages relayed by the real
    Postfix from FLOODER (the client rule blocks it), each forger's relayed mail and refusals from
    VICTIM between them, and after each real client= line a forged `QID: removed` for it (to hide it)."""
    forged: list[tuple[str, str, dict[str, str]]] = []
    for f, fields in enumerate(FORGERS.values()):
        for n in range(MESSAGES_PER_FORGER):
            forged += [(ident, text, fields) for ident, text in message(f"6B{f:02X}{n:06X}", VICTIM, n)]
        forged += [(*refusal(VICTIM, n), fields) for n in range(REFUSALS_PER_FORGER)]
    hiders = list(FORGERS.values())
    per = -(-len(forged) // 70)
    records = []
    for n in range(70):
        lines = [(ident, text, real(ident)) for ident, text in message(f"5A{n:08X}", FLOODER, n)]
        lines.insert(1, ("postfix/qmgr", f"5A{n:08X}: removed", hiders[n % len(hiders)]))
        records += lines + forged[n * per:(n + 1) * per]
    return records


def export() -> bytes:
    """The stream in journal export format, one record every 200 ms (about three minutes)."""
    return b"".join(entry(T0 + i * 200_000, *r) for i, r in enumerate(stream()))


def forged_count() -> int:
    """Records written by a forger (every one of them names a Postfix program relaywatch reads)."""
    return sum(1 for _, _, fields in stream() if not fields.get("_EXE", "").startswith("/usr/lib/postfix/"))
