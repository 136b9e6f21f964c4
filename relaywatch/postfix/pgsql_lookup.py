"""A pgsql: access map as relaywatch sees it: nothing to write, only to check.

The block's row in relaywatch_blocks is the map, so a block is in force only when Postfix's own
pgsql client answers it: `postmap -c CONFIG_DIR -q - pgsql:FILE.cf` with the keys on stdin (one
process for all keys). Anything else (the .cf missing, a wrong password, a role that cannot read
the table, the database down) is said with Postfix's own words. The .cf file holds a password:
it must sit in the Postfix configuration directory, be a regular file, not a symlink, and not be
readable by others.
"""

from __future__ import annotations

import logging
import os
import stat
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from relaywatch.model import ConfigError, PostfixError
from relaywatch.postfix.mapguard import CONFIG_NAMES, ForeignMap
from relaywatch.postfix.mapkeys import Block, MapSpec, render_key

log = logging.getLogger(__name__)


class NotAnswered(PostfixError):
    """Postfix's pgsql client does not answer a block with its REJECT: the block is not in force."""


def check_cf(path: str, config_directory: str) -> None:
    """ForeignMap/ConfigError (exit 78) unless the .cf is safe to hold a password; a missing .cf is
    allowed here (install-maps writes it; until then the blocks are said not to be in force)."""
    p = Path(path)
    if p.name in CONFIG_NAMES:
        raise ForeignMap(f"{path} is Postfix's own configuration file, not a pgsql: client file")
    if os.path.realpath(p.parent) != os.path.realpath(config_directory):
        raise ForeignMap(f"{path}: a pgsql: client file holds a password; keep it in the Postfix configuration "
                         f"directory {config_directory} (mode 0640, root:postfix)")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise ForeignMap(f"{path} is a symbolic link: name the real .cf file in client_access_map / sasl_access_map")
    if not stat.S_ISREG(st.st_mode):
        raise ForeignMap(f"{path} is not a regular file")
    if st.st_mode & 0o007:
        raise ConfigError(f"{path} is readable by every user (mode {st.st_mode & 0o777:04o}) and holds the "
                          f"password of Postfix's PostgreSQL role: chown root:postfix {path}; chmod 0640 {path}")


class PgsqlMap:
    """`pgsql:FILE.cf`: Postfix reads the blocks from relaywatch_blocks; relaywatch only asks it."""

    def __init__(self, spec: MapSpec) -> None:
        if not spec.database:
            raise ValueError(f"{spec} is a map file, not a database table")
        self.spec = spec
        self.path = Path(spec.path)

    def stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        """(inode, size, mtime) of the .cf: an edit can change what Postfix answers."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return (None,)
        return ((st.st_ino, st.st_size, st.st_mtime_ns),)

    def answers(self, keys: Sequence[str], *, config_directory: str | None, postmap_bin: str = "/usr/sbin/postmap",
                timeout: float = 60.0) -> dict[str, str]:
        """What Postfix's pgsql client returns for each key (absent: no row); NotAnswered when it cannot ask."""
        if not keys:
            return {}
        if not self.path.exists():
            raise NotAnswered(f"{self.path} does not exist, so Postfix cannot read the blocks from PostgreSQL: "
                              "run relaywatch install-maps")
        cmd = [postmap_bin, *(["-c", config_directory] if config_directory else []), "-q", "-", str(self.spec)]
        try:
            done = subprocess.run(cmd, input="".join(f"{k}\n" for k in keys), capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except OSError as exc:
            raise NotAnswered(f"cannot run {postmap_bin}: {exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise NotAnswered(f"postmap -q - {self.spec} took longer than {timeout:g} s: is the database "
                              "reachable?") from exc
        said = " ".join(line.strip().replace("?", " ") for line in done.stderr.splitlines() if line.strip())
        if "fatal:" in done.stderr or done.returncode not in (0, 1) or (done.returncode == 1 and said):
            raise NotAnswered(f"Postfix's pgsql client cannot read the blocks ({said or f'exit {done.returncode}'})"
                              f"; check the .cf's hosts, user, password, dbname and the role's GRANT SELECT")
        if said:
            log.warning("postmap -q - %s: %s", self.spec, said)
        out: dict[str, str] = {}
        for line in done.stdout.splitlines():
            key, sep, value = line.partition("\t")
            if sep:
                out.setdefault(key, value)
        return out

    def verify(self, blocks: Iterable[Block], *, config_directory: str | None,
               postmap_bin: str = "/usr/sbin/postmap") -> None:
        """NotAnswered, naming the blocks, unless Postfix answers every block's key with a REJECT."""
        keyed = [(render_key(b.kind, b.target, self.spec.type), b) for b in blocks]
        got = self.answers(sorted({k for k, _ in keyed}), config_directory=config_directory, postmap_bin=postmap_bin)
        missing = [f"{b.kind} {b.target} (key {k})" for k, b in keyed
                   if not got.get(k, "").upper().startswith("REJECT")]
        if missing:
            raise NotAnswered(f"Postfix's lookup in {self.spec} does not answer REJECT for "
                              f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}: no live row in "
                              "relaywatch_blocks of the database the .cf names (is [state] database the same "
                              "PostgreSQL?)")

    def held_keys(self, keys: Sequence[str], *, config_directory: str | None) -> set[str]:
        """The keys Postfix answers with a REJECT now (none when it cannot ask)."""
        try:
            got = self.answers(keys, config_directory=config_directory)
        except NotAnswered as exc:
            log.info("%s", exc)
            return set()
        return {k for k, v in got.items() if v.upper().startswith("REJECT")}
