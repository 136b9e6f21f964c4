"""Change what Postfix refuses: the access map file, postmap and postfix reload.

The map file may hold the admin's own entries; relaywatch owns only the section
between its marker lines. Every key is rendered from a parsed `ipaddress` value
or a checked SASL name, never copied from a log line, so nothing unvalidated
reaches a map or a command line.

Safety: Postfix opens only the compiled file (`reject_list.db`; a cidr table is
read whole). `postmap` rewrites that file in place (Berkeley DB truncate), so
a failing postmap would leave smtpd a broken map. We therefore build the new
source and its compiled map under a staging name and rename them into place only
after postmap succeeded: the compiled map first, then the source, so a crash in
between leaves a source that differs from what we render and is rebuilt next
time. Renaming also gives the compiled map a new inode, which an idle smtpd
notices before its next accept (measured: 0 stale sessions in 150 flips); we
still `postfix reload`, which cidr tables need (read once) and which covers
the whole-second mtime rule of in-place changes (STYLE.md).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from relaywatch.model import PostfixError
from relaywatch.permissions import check_map_dir
from relaywatch.postfix.mapguard import BEGIN, END, ForeignMap, check_ours
from relaywatch.postfix.mapkeys import Block, MapSpec, render_section

log = logging.getLogger(__name__)


class MapNotWritten(PostfixError):
    """Writing, compiling or renaming the map failed: the files Postfix reads are unchanged."""




class AccessMap:
    """The map file: the admin's bytes untouched, relaywatch's section rewritten atomically."""

    def __init__(self, spec: MapSpec) -> None:
        if spec.database:  # its path is a .cf file holding a password: never write REJECT lines into it
            raise ValueError(f"{spec} is read from a database, not a map file relaywatch writes")
        self.spec = spec
        self.path = Path(spec.path)
        # Fixed staging names (serialised by a directory lock): a leftover from a
        # crash is simply overwritten next time.
        self.staged = MapSpec(spec.type, str(self.path.with_name(f".{self.path.name}.relaywatch-new")))

    def render(self, blocks: Iterable[Block], current: bytes | None) -> bytes:
        """The whole new file: `current` with its managed section (or a new one at the end) replaced."""
        section = ("\n".join(render_section(blocks, self.spec.type)) + "\n").encode("ascii")
        if not current:
            return section
        lines = current.splitlines(keepends=True)
        begins = [i for i, line in enumerate(lines) if line.rstrip(b"\r\n") == BEGIN.encode()]
        ends = [i for i, line in enumerate(lines) if line.rstrip(b"\r\n") == END.encode()]
        if not begins and not ends:
            return current + (b"" if current.endswith(b"\n") else b"\n") + section
        if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
            raise MapNotWritten(
                f"{self.path}: relaywatch's BEGIN/END marker lines are missing, repeated or out of order "
                f"(BEGIN at lines {[i + 1 for i in begins]}, END at {[i + 1 for i in ends]}); "
                "fix the file by hand, nothing was changed"
            )
        return b"".join(lines[: begins[0]]) + section + b"".join(lines[ends[0] + 1 :])

    def write(
        self, blocks: Iterable[Block], build: Callable[[MapSpec], None] | None = None, *, force: bool = False
    ) -> bool:
        """Make the managed section hold exactly `blocks`; False if nothing had to change.

        `build` (postmap) compiles the staged source; only when it returns are the
        compiled map and the source renamed into place. If it raises, the files in
        force stay as they were and the error propagates. A compiled map that is
        missing or older than its source is rebuilt even if the source is unchanged.
        """
        blocks = list(blocks)
        with self._locked_dir() as dir_fd:
            current, st = self._read(dir_fd)
            check_ours(self.path, current)
            new = self.render(blocks, current)
            if new == current and not force and not (build and self._compiled_stale()):
                return False
            staged = Path(self.staged.path)
            self._discard_staged()  # a leftover (or planted) staging file is never written through
            compiled_replaced = False
            try:
                _write_synced(staged, new)
                if build is not None:
                    # The staged source is root's, so postmap keeps root (it runs as the
                    # source's owner) and may create files here; owners are set after.
                    build(self.staged)
                owner = (st.st_uid, st.st_gid) if st else (os.geteuid(), os.getegid())  # root, in production
                mode = st.st_mode & 0o7777 if st else 0o644
                os.chown(staged, *owner)
                os.chmod(staged, mode)
                compiled, staged_compiled = self.spec.compiled, self.staged.compiled
                if build is not None and compiled and staged_compiled:
                    _copy_owner_mode(staged_compiled, compiled, owner, mode)
                    _fsync_path(staged_compiled)
                    os.replace(staged_compiled, compiled)
                    compiled_replaced = True
                os.replace(staged, self.path)
                os.fsync(dir_fd)
            except OSError as exc:
                if compiled_replaced:
                    raise MapNotWritten(f"{self.spec.compiled} holds the new blocks, but {self.path} could not be "
                                        f"replaced: {exc}; relaywatch will retry") from exc
                raise MapNotWritten(f"could not write {self.path}: {exc}; the map files Postfix reads were not "
                                    "changed") from exc
            finally:
                self._discard_staged()
        return True

    def _read(self, dir_fd: int) -> tuple[bytes | None, os.stat_result | None]:
        """The map's bytes and stat, opened in the held directory without following a symlink."""
        try:
            fd = os.open(self.path.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            return None, None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ForeignMap(f"{self.path} is a symbolic link: relaywatch never writes through one; "
                                 "name the real file in client_access_map / sasl_access_map") from None
            raise MapNotWritten(
                f"cannot read {self.path}: {exc}; the map files Postfix reads were not changed") from exc
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ForeignMap(f"{self.path} is not a regular file; relaywatch will not write it")
            return f.read(), st

    def read(self) -> bytes | None:
        """The source as it is now (None if it or its directory is absent); never through a symlink."""
        try:
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            return None
        try:
            return self._read(dir_fd)[0]
        finally:
            os.close(dir_fd)

    def holds(self, blocks: Iterable[Block]) -> bool:
        """Whether the source's managed section is exactly what `blocks` render to."""
        blocks = list(blocks)
        current = self.read()
        section = _section(current) if current is not None else None
        if section is None:
            return not blocks  # no section yet: fine while there is nothing to refuse
        return section == render_section(blocks, self.spec.type)

    def held_keys(self) -> set[str]:
        """The keys the managed section REJECTs now (empty if the file or the section is missing),
        and none when the compiled map is missing or older than the source: Postfix does not read them."""
        current = self.read()
        if current is None or self._compiled_stale():
            return set()
        return {line.split()[0] for line in (_section(current) or [])[1:-1] if line.strip()}

    def stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        """(inode, size, mtime) of the source and the compiled map: changes when anyone rewrites them."""
        out = []
        for name in (self.spec.path, self.spec.compiled):
            try:
                st = os.lstat(name) if name else None
            except FileNotFoundError:
                st = None
            out.append((st.st_ino, st.st_size, st.st_mtime_ns) if st else None)
        return tuple(out)

    def _compiled_stale(self) -> bool:
        if self.spec.compiled is None:
            return False
        try:
            return os.stat(self.spec.compiled).st_mtime_ns < os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            return True

    def _discard_staged(self) -> None:
        for name in (self.staged.path, self.staged.compiled):
            if name:
                try:
                    os.unlink(name)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("cannot remove staging file %s: %s; remove it by hand", name, exc)

    @contextlib.contextmanager
    def _locked_dir(self) -> Iterator[int]:
        """One writer at a time (daemon and CLI), on the map's directory itself."""
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            check_map_dir(self.path.parent, os.fstat(fd))  # the directory we hold, not a name
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield fd
        finally:
            os.close(fd)


def _section(current: bytes) -> list[str] | None:
    """The managed section's lines, markers included; None without exactly one well-formed section."""
    lines = current.decode("ascii", "replace").splitlines()
    if lines.count(BEGIN) != 1 or lines.count(END) != 1 or lines.index(END) < lines.index(BEGIN):
        return None
    return lines[lines.index(BEGIN) : lines.index(END) + 1]


def _write_synced(path: Path, data: bytes) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_owner_mode(path: str, like: str, owner: tuple[int, int], mode: int) -> None:
    """Give the new compiled map the old one's owner and mode (else the source's)."""
    try:
        st = os.stat(like)
        owner, mode = (st.st_uid, st.st_gid), st.st_mode & 0o7777
    except FileNotFoundError:
        pass
    os.chown(path, *owner)
    os.chmod(path, mode)
