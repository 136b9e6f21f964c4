"""The Postfix commands relaywatch runs: postmap and postfix reload, always as argument lists
with `-c config_directory`, and each failure explained from what was found."""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Iterable
from pathlib import Path

from relaywatch.model import PostfixError
from relaywatch.postfix.mapkeys import Block, MapSpec
from relaywatch.postfix.maps import AccessMap, MapNotWritten
from relaywatch.postfix.postconf import postconf

log = logging.getLogger(__name__)


class MapNotLoaded(PostfixError):
    """The map files hold the new blocks, but Postfix did not reload them."""


def default_database_type(config_directory: str | Path | None) -> str:
    """What `hash:`-less map names mean to this Postfix (Debian: hash)."""
    return postconf(config_directory, ("default_database_type",)).get("default_database_type") or "hash"



class Postfix:
    """postmap and postfix, always as argument lists with `-c config_directory`."""

    def __init__(
        self,
        config_directory: str | Path | None,
        postfix_bin: str = "/usr/sbin/postfix",
        postmap_bin: str = "/usr/sbin/postmap",
        timeout: float = 60.0,
    ) -> None:
        self.config_directory = None if config_directory is None else str(config_directory)
        self.postfix_bin = postfix_bin
        self.postmap_bin = postmap_bin
        self.timeout = timeout
        self._queue_directory: str | None = None  # remembered: a broken main.cf cannot tell it

    def _run(self, binary: str, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [binary, *(["-c", self.config_directory] if self.config_directory else []), *args]
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout, check=False)
        except OSError as exc:
            raise PostfixError(f"cannot run {binary}: {exc}; is Postfix installed, and is the path right?") from exc
        except subprocess.TimeoutExpired as exc:
            raise PostfixError(f"{' '.join(cmd)} took longer than {self.timeout:g} s; is the host overloaded?") from exc

    def postmap(self, spec: MapSpec) -> None:
        """Compile `spec` (nothing to do for cidr, which smtpd reads as text)."""
        if spec.compiled is None:
            return
        done = self._run(self.postmap_bin, str(spec))
        if done.returncode != 0:
            raise MapNotWritten(
                f"postmap {spec} failed (exit {done.returncode}): {done.stderr.strip() or 'no message'}; "
                "the map files Postfix reads were not changed; fix the cause (disk space, permissions, the map "
                "type's package) and relaywatch will retry"
            )
        if done.stderr.strip():
            log.warning("postmap %s: %s", spec, done.stderr.strip())

    def reload(self) -> None:
        """Make every Postfix daemon reopen its maps; MapNotLoaded says why not, from what was found."""
        done = self._run(self.postfix_bin, "reload")
        if done.returncode == 0:
            return
        # Without a terminal, `postfix` reports to the mail log only, and nothing at all when it
        # cannot read main.cf: ask postconf (which prints the fatal error) and look for master.
        try:
            self._queue_directory = postconf(self.config_directory, ("queue_directory",))["queue_directory"]
            broken = None
        except (PostfixError, KeyError) as exc:
            broken = str(exc)
        master = self.master_pid()
        failed = f"postfix reload failed (exit {done.returncode})"
        if broken:
            running = (f"Postfix is still running (master pid {master}) but could not reload" if master
                       else "Postfix is not running" if master == 0 else "whether Postfix runs is unknown")
            raise MapNotLoaded(f"{failed}: Postfix's configuration cannot be read ({broken}); {running}. The map "
                               "file holds the new blocks; fix the configuration, then run postfix reload")
        if master == 0:
            raise MapNotLoaded(f"{failed}: Postfix is not running. The map file holds the new blocks; Postfix "
                               "reads it when it starts")
        who = f"Postfix is running (master pid {master})" if master else "Postfix may be running"
        raise MapNotLoaded(f"{failed}: {who} but did not reload: {done.stderr.strip() or 'see the mail log'}. "
                           "The map file holds the new blocks; Postfix processes may still use the old ones")

    def master_pid(self) -> int | None:
        """The running master's pid, 0 when none runs, None when that cannot be told (no queue_directory)."""
        qdir = self._queue_directory
        if qdir is None:
            try:
                qdir = self._queue_directory = postconf(self.config_directory, ("queue_directory",))["queue_directory"]
            except (PostfixError, KeyError):
                return None
        try:
            pid = int(Path(qdir, "pid", "master.pid").read_text().split()[0])
            comm, _, rest = Path(f"/proc/{pid}/stat").read_text().partition(") ")
        except (OSError, ValueError, IndexError):
            return 0
        return pid if comm.endswith("(master") and not rest.startswith(("Z", "X")) else 0  # a zombie has stopped

    def is_running(self) -> bool:
        return self._run(self.postfix_bin, "status").returncode == 0


def apply_blocks(access_map: AccessMap, postfix: Postfix, blocks: Iterable[Block], *, force: bool = False) -> bool:
    """Put exactly `blocks` in force with at most one postmap and one reload.

    Returns whether the map changed. `force` rebuilds and reloads even when it did
    not: pass it when retrying after a PostfixError, since the map may already be
    in place while the reload that would enforce it failed.
    """
    build = postfix.postmap if access_map.spec.compiled else None
    changed = access_map.write(blocks, build, force=force)
    if changed or force:
        postfix.reload()
    return changed
