"""Would Postfix enforce a block: the configuration in force (main.cf, master.cf), read again when it changes.

The audit's answer for one target (`bypasses`), and the whole audit (`audit`) that
says loudly where blocks would be bypassed. Postfix commands wait while main.cf is
younger than ~2 s, so a change is read only once the files have settled.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from relaywatch.model import Finding, PostfixError
from relaywatch.postfix.audit import run_audit
from relaywatch.postfix.audit_blocks import AuditMaps, block_bypasses
from relaywatch.postfix.postconf import postconf, postconf_services

log = logging.getLogger("relaywatch.respond")

POSTFIX_SETTLE_S = 2.5  # Postfix commands wait while main.cf is younger than ~2 s: re-read it after that

Stamp = tuple[tuple[int, int, int] | None, ...]


@dataclass(frozen=True)
class AuditResult:
    """The audit's error-level holes; `failed`: why Postfix's configuration could not be read (then no holes)."""

    errors: tuple[Finding, ...] = ()
    failed: str | None = None


class PostfixConfig:
    """The parameters and services in force, and the block bypasses they imply."""

    def __init__(self, config_directory: str | None, maps: AuditMaps) -> None:
        self.config_directory = config_directory
        self.maps = maps
        self.params: tuple[dict[str, str], dict[str, dict[str, str]]] | None = None
        self.read = self.audited = self.files()  # the files as `params` and as the last audit saw them

    def files(self) -> Stamp:
        """(inode, size, mtime) of main.cf and master.cf: the configuration in force changed when these did."""
        out: list[tuple[int, int, int] | None] = []
        for name in ("main.cf", "master.cf"):
            try:
                st = os.stat(os.path.join(self.config_directory or "/etc/postfix", name))
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append(None)
        return tuple(out)

    def settled_change(self, now: float) -> bool:
        """main.cf or master.cf changed, and long enough ago for Postfix's commands to read them."""
        stamp = self.files()
        return stamp != self.audited and all(s is None or now - s[2] / 1e9 >= POSTFIX_SETTLE_S for s in stamp)

    def audit(self) -> AuditResult:
        """Read the configuration again and run the audit on it."""
        self.audited = self.files()
        try:
            self._read()
            findings = run_audit(self.config_directory, self.maps)
        except PostfixError as exc:
            return AuditResult(failed=str(exc))
        return AuditResult(tuple(f for f in findings if f.severity == "error"))

    def _read(self) -> None:
        self.read = self.files()
        self.params = (postconf(self.config_directory), postconf_services(self.config_directory))

    def bypasses(self, kind: str, target: str) -> list[tuple[str, str]]:
        """(main.cf or master.cf service, why and the fix) where a block of `target` is not enforced;
        the configuration is read again first when it changed (the audit of the change follows
        from `settled_change`)."""
        if self.files() != self.read:
            try:
                self._read()
            except PostfixError as exc:
                log.debug("cannot read the Postfix configuration: %s", exc)
        if self.params is None:
            return []
        params, services = self.params
        try:
            return block_bypasses(params, services, kind, target, self.maps)
        except ValueError:
            return []
