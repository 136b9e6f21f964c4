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
import ipaddress
import itertools
import logging
import os
import re
import stat
import subprocess
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from relaywatch.model import ENFORCEMENT, ConfigError, PostfixError, RelaywatchError
from relaywatch.permissions import check_map_dir
from relaywatch.postfix.mapguard import BEGIN, END, ForeignMap, check_ours
from relaywatch.postfix.postconf import postconf

log = logging.getLogger(__name__)

# Map type -> suffix of the file Postfix really opens (None: it reads the source).
COMPILED_SUFFIX: dict[str, str | None] = {"hash": ".db", "btree": ".db", "lmdb": ".lmdb", "cdb": ".cdb", "cidr": None}
KINDS = tuple(ENFORCEMENT)  # what can be blocked



class InvalidBlock(RelaywatchError, ValueError):
    """A block target that cannot be written to this map safely; nothing was written."""

    exit_code = 2


class MapNotWritten(PostfixError):
    """Writing, compiling or renaming the map failed: the files Postfix reads are unchanged."""


class MapNotLoaded(PostfixError):
    """The map files hold the new blocks, but Postfix did not reload them."""


@dataclass(frozen=True, slots=True)
class MapSpec:
    """A Postfix lookup table as main.cf names it: `type:path`."""

    type: str
    path: str

    @classmethod
    def parse(cls, text: str, *, default_type: str) -> MapSpec:
        """`hash:/etc/postfix/reject_list`, or a bare path that gets `default_type`."""
        text = text.strip()
        kind, sep, path = text.partition(":")
        if not sep or kind.startswith("/"):
            kind, path = default_type, text
        if kind not in COMPILED_SUFFIX:
            raise ConfigError(
                f"map {text!r}: type {kind!r} is not supported; use one of {', '.join(COMPILED_SUFFIX)}"
            )
        if not path.startswith("/") or re.search(r"[\s,]", path):
            raise ConfigError(f"map {text!r}: the path must be absolute, without spaces or commas")
        suffix = COMPILED_SUFFIX[kind]
        if suffix and path.endswith(suffix):
            raise ConfigError(f"map {text!r}: name the source file, not the compiled {suffix} file")
        return cls(kind, path)

    @property
    def compiled(self) -> str | None:
        """The file Postfix opens, or None when it reads the source itself (cidr)."""
        suffix = COMPILED_SUFFIX[self.type]
        return self.path + suffix if suffix else None

    def __str__(self) -> str:
        return f"{self.type}:{self.path}"


def default_database_type(config_directory: str | Path | None) -> str:
    """What `hash:`-less map names mean to this Postfix (Debian: hash)."""
    return postconf(config_directory, ("default_database_type",)).get("default_database_type") or "hash"


# --- keys: pure ------------------------------------------------------------------

_SASL_OK = re.compile(r"[!-~]{1,255}")  # printable ASCII, no space
_TEXT_BAD = re.compile(r"[^ -~]|[$\\{}]")


@dataclass(frozen=True, slots=True)
class Block:
    """One refusal: kind is "client" (an IP), "subnet" (a network) or "sasl_user"."""

    kind: str
    target: str
    reason: str = ""


def render_key(kind: str, target: str, map_type: str) -> str:
    """The lookup key for `target` in a map of `map_type`; InvalidBlock if none is safe."""
    if map_type not in COMPILED_SUFFIX:
        raise InvalidBlock(f"unsupported map type {map_type!r}")
    cidr = map_type == "cidr"
    if kind == "client":
        return _render_client(target)
    if kind == "subnet":
        return _render_subnet(target, cidr)
    if kind == "sasl_user":
        if cidr:
            raise InvalidBlock(f"SASL user {target!r}: a cidr: map holds addresses only; use a hash: map")
        return _render_sasl(target)
    raise InvalidBlock(f"unknown block kind {kind!r}; expected one of {', '.join(KINDS)}")


def _render_client(target: str) -> str:
    try:
        addr = ipaddress.ip_address(target)
    except ValueError:
        raise InvalidBlock(f"client {target!r} is not an IPv4 or IPv6 address") from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.scope_id:
            raise InvalidBlock(f"client {target!r}: a scoped address never reaches smtpd")
        if addr.ipv4_mapped:
            raise InvalidBlock(f"client {target!r}: Postfix sees this client as {addr.ipv4_mapped}; block that")
        if addr.packed[:12] == bytes(12):
            raise InvalidBlock(f"client {target!r}: deprecated IPv4-compatible address")
    # Python and Postfix (inet_ntop) print addresses alike: lowercase, RFC 5952.
    return str(addr)


def _render_subnet(target: str, cidr: bool) -> str:
    try:
        net = ipaddress.ip_network(target, strict=True)
    except ValueError as exc:
        raise InvalidBlock(f"subnet {target!r} is not a network ({exc})") from None
    if net.prefixlen < (8 if net.version == 4 else 16):
        raise InvalidBlock(f"subnet {target!r} is wider than /{8 if net.version == 4 else 16}: refusing to block it")
    if net.prefixlen == net.max_prefixlen:
        return _render_client(str(net.network_address))
    if cidr:
        _render_client(str(net.network_address))
        return str(net)
    need_cidr = f"subnet {target!r}: a hash-style map matches only whole "
    if net.version == 4:
        if net.prefixlen % 8:
            raise InvalidBlock(need_cidr + "octets (/8, /16, /24); use a cidr: map for other prefixes")
        return ".".join(str(net.network_address).split(".")[: net.prefixlen // 8])
    # access(5) truncates the client's printed IPv6 address at ':'. That finds our
    # key only if the prefix's groups always print in full: "::" never swallows a
    # prefix group when no two prefix groups in a row are 0 and the last is not.
    groups = [int.from_bytes(net.network_address.packed[i : i + 2], "big") for i in range(0, 16, 2)]
    prefix = groups[: net.prefixlen // 16]
    if net.prefixlen % 16 or prefix[-1] == 0 or any(a == b == 0 for a, b in itertools.pairwise(prefix)):
        raise InvalidBlock(
            need_cidr + "16-bit groups, ending in a non-zero group without two 0 groups in a row; use a cidr: map"
        )
    return ":".join(f"{g:x}" for g in prefix)


def _render_sasl(target: str) -> str:
    # Map source syntax: whitespace splits key from value, '#' starts a comment,
    # a leading space continues the previous line. Names are printable ASCII.
    if not _SASL_OK.fullmatch(target) or target[0] in "#:@" or target.endswith("@"):
        raise InvalidBlock(
            f"SASL user {target!r}: expected 1-255 printable ASCII characters without spaces, "
            "not starting with '#', ':' or '@' and not ending with '@'"
        )
    return target


def reject_text(reason: str) -> str:
    """The REJECT text smtpd sends: printable ASCII, one line, no `$`, `\\`, braces."""
    text = _TEXT_BAD.sub("?", " ".join(reason.split()))[:200]
    return f"blocked by relaywatch: {text}" if text else "blocked by relaywatch"


def render_section(blocks: Iterable[Block], map_type: str) -> list[str]:
    """The managed section's lines, sorted by key; one entry per key (the alphabetically first reason)."""
    entries: dict[str, str] = {}
    for key, reason in sorted((render_key(b.kind, b.target, map_type), b.reason) for b in blocks):
        entries.setdefault(key, f"{key} REJECT {reject_text(reason)}")
    return [BEGIN, *entries.values(), END]


# --- the map file ---------------------------------------------------------------


class AccessMap:
    """The map file: the admin's bytes untouched, relaywatch's section rewritten atomically."""

    def __init__(self, spec: MapSpec) -> None:
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


# --- the Postfix commands ---------------------------------------------------------


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
