"""`postfix reload` off the daemon's loop (respond.blocking.Blocker with `reload_off_loop`): the log is
read on while Postfix reloads; a reload that failed is the blocker's to report and do again in line."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Reloads:
    """`postfix reload` in a thread of its own, one at a time: requests made while one runs make one
    more after it (it reads the maps as they are then). A failure waits in `take_failure`."""

    def __init__(self, reload: Callable[[], None]) -> None:
        self.reload = reload
        self._lock = threading.Lock()
        self._wanted = False
        self._thread: threading.Thread | None = None
        self._failure: Exception | None = None

    def request(self) -> None:
        with self._lock:
            self._wanted = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="postfix-reload", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._wanted:
                    self._thread = None
                    return
                self._wanted = False
            try:
                self.reload()
            except Exception as exc:  # noqa: BLE001 - any failure is the blocker's to report and retry in line
                with self._lock:
                    self._failure = exc

    def take_failure(self) -> Exception | None:
        with self._lock:
            failure, self._failure = self._failure, None
        return failure

    def wait(self, timeout: float) -> None:
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)
