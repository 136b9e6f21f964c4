"""inotify for the file follower, read in the follower's own wait: no threads, no event objects.

Only "look now" matters, never which event it was: the follower reads and stats the file itself.
While the daemon is busy, the kernel merges a writer's repeated IN_MODIFY events, so one read of
the descriptor between two batches takes what a flood wrote meanwhile (watchdog's two threads
handled each event in Python: 6.7 % of the daemon's CPU at 10,000 lines/s).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import select
import struct

# <sys/inotify.h>
IN_MODIFY, IN_ATTRIB, IN_MOVED_FROM, IN_MOVED_TO = 0x2, 0x4, 0x40, 0x80
IN_CREATE, IN_DELETE, IN_Q_OVERFLOW = 0x100, 0x200, 0x4000
_MASK = IN_MODIFY | IN_ATTRIB | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
_READ = 65536


class Inotify:
    """Changes in `directory` to names starting with `prefix` (the log and its rotated copies).

    OSError when inotify cannot be had (fs.inotify.max_user_instances or max_user_watches reached,
    or no inotify in this C library): the caller polls instead."""

    def __init__(self, directory: str, prefix: str) -> None:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
            init, add_watch = libc.inotify_init1, libc.inotify_add_watch
        except (OSError, AttributeError) as exc:
            raise OSError(f"no inotify here: {exc}") from exc
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        if add_watch(fd, os.fsencode(directory), _MASK) < 0:
            errno = ctypes.get_errno()
            os.close(fd)
            raise OSError(errno, os.strerror(errno))
        self.fd = fd
        self.prefix = os.fsencode(prefix)

    def changed(self) -> bool:
        """Take every event waiting; whether one was about our names (or events were lost)."""
        hit = False
        while True:
            try:
                data = os.read(self.fd, _READ)
            except BlockingIOError:
                return hit
            hit = hit or self._ours(data)

    def _ours(self, data: bytes) -> bool:
        i, end = 0, len(data)
        while i < end:
            _, mask, _, size = _HEADER.unpack_from(data, i)
            i += _HEADER.size
            if mask & IN_Q_OVERFLOW or data[i:i + size].startswith(self.prefix):
                return True
            i += size
        return False

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` s for a change to our names; False when the time ran out."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return False
        return self.changed()

    def close(self) -> None:
        os.close(self.fd)
