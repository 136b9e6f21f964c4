"""The inline policy service of `relaywatch run` ([policy] listen): a socket Postfix asks at every RCPT.

One thread runs a selectors loop: it never waits on the log-following loop (which only swaps
snapshots and adds log counts under a short lock) and the main loop never waits on it. Fail
open and fast: Postfix is told `default_action=DUNNO` and a short timeout, a request
relaywatch cannot read gets DUNNO, an oversized or stalled one a dropped connection, and
past `max_connections` a new connection is closed at once (Postfix then uses its default).
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import queue
import resource
import selectors
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from relaywatch.core.destinations import Destinations
from relaywatch.core.inline import (
    Blocked,
    Budget,
    Exceeded,
    InlinePolicy,
    Network,
    history_key,
    parse_listen,
    parse_request,
)
from relaywatch.core.rules import Fact
from relaywatch.model import Action, Decision, Kind, Relayed, RelaywatchError
from relaywatch.store.relayers import RelayHistory, day_number

log = logging.getLogger("relaywatch.policyd")

MAX_REQUEST = 16 * 1024  # Postfix's requests are well under 2 KiB; more is not Postfix
MAX_OUTPUT = 64 * 1024  # answers a client does not read
IDLE_S = 900.0  # longer than Postfix's smtpd_policy_service_max_idle (300 s)
SNAPSHOT_S = 0.5  # blocks from the store at least this often (manual blocks come from other processes)
FLUSH_S = 5.0
SWITCH_S = 0.0002  # the GIL's switch interval while the service runs: an answer takes a few GIL turns
_END = b"\n\n"


@dataclass(slots=True)
class _Conn:
    sock: socket.socket
    last: float
    buf: bytearray = field(default_factory=bytearray)
    out: bytes = b""


class PolicyServer:
    """The selectors loop. `handle(request bytes) -> answer bytes` is called on its thread."""

    def __init__(self, listen: str, handle: Callable[[bytes], bytes], max_connections: int = 1000) -> None:
        self.listen = listen
        self.handle = handle
        self.max_connections = max_connections
        self.conns: dict[int, _Conn] = {}
        self.dropped = self.answered = self.failed = 0
        self._stop = threading.Event()
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind (RelaywatchError when it cannot) and serve on a daemon thread."""
        host, port = parse_listen(self.listen)
        family = socket.AF_UNIX if port is None else socket.AF_INET6 if ":" in host else socket.AF_INET
        address = host if port is None else (host, port)
        _raise_fd_limit(self.max_connections + 256)
        try:
            self._listener = _bind(family, address)
        except OSError as exc:
            raise RelaywatchError(f"[policy] listen = {self.listen!r}: cannot listen ({exc.strerror})") from exc
        self._listener.setblocking(False)
        self._wake_r.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, "listen")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._loop, name="relaywatch-policy", daemon=True)
        self._thread.start()
        log.info("policy service listening on %s", self.listen)

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for conn in list(self.conns.values()):
            conn.sock.close()
        self.conns.clear()
        if self._listener is not None:
            self._listener.close()
            if self.listen.startswith("/"):
                with contextlib.suppress(OSError):
                    os.unlink(self.listen)
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()

    def _loop(self) -> None:
        next_sweep = time.monotonic() + 5
        while not self._stop.is_set():
            for key, mask in self._sel.select(timeout=1.0):
                if key.data == "listen":
                    self._accept()
                elif key.data == "wake":
                    with contextlib.suppress(OSError):
                        self._wake_r.recv(64)
                else:
                    self._serve(key.data, mask)
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + 5
                for conn in [c for c in self.conns.values() if now - c.last > IDLE_S]:
                    self._close(conn)

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(256):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: refuse by not accepting, say so once a while
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self.dropped += 1
                    log.warning("policy service: cannot accept (%s); Postfix uses its default action", exc.strerror)
                    time.sleep(0.01)
                return
            if len(self.conns) >= self.max_connections:
                self.dropped += 1
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, time.monotonic())
            self.conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)

    def _serve(self, conn: _Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            self._send(conn)
        if not mask & selectors.EVENT_READ:
            return
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        conn.last = time.monotonic()
        buf = conn.buf
        buf += data
        answers = []
        while (end := buf.find(_END)) >= 0:
            answers.append(self._answer(bytes(buf[:end])))
            del buf[: end + 2]
        if len(buf) > MAX_REQUEST:
            self.dropped += 1
            self._close(conn)
            return
        if answers:
            conn.out += b"".join(answers)
            self._send(conn)

    def _answer(self, raw: bytes) -> bytes:
        try:
            answer = self.handle(raw)
        except Exception:  # a bug must not stop mail: DUNNO, and say so
            self.failed += 1
            if self.failed == 1 or self.failed % 10_000 == 0:
                log.exception("policy service failed on a request (answered DUNNO; please report it): %r",
                              raw[:300])
            answer = b"action=DUNNO\n\n"
        self.answered += 1
        return answer

    def _send(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if len(conn.out) > MAX_OUTPUT:
            self.dropped += 1
            self._close(conn)
            return
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if conn.out else 0)
        if self._sel.get_key(conn.sock).events != events:
            self._sel.modify(conn.sock, events, conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if self.conns.pop(fd, None) is not None:
            self._sel.unregister(conn.sock)
        conn.sock.close()


def _bind(family: int, address: str | tuple[str, int]) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if family == socket.AF_UNIX:
            path = str(address)
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    os.unlink(path)  # left by a killed relaywatch
            sock.bind(path)
            _give_to_postfix(path)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    return sock


def _give_to_postfix(path: str) -> None:
    """0660, owned by Postfix's user and group when they exist: smtpd connects as `postfix`."""
    os.chmod(path, 0o660)
    with contextlib.suppress(KeyError, PermissionError):
        os.chown(path, pwd.getpwnam("postfix").pw_uid, grp.getgrnam("postfix").gr_gid)


def _raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


class InlineService:
    """What the daemon holds: the server, the policy, the relaying history, and the queue of
    budgets crossed that the main loop turns into decisions. The lock is held only for an
    answer (microseconds) or for adding one log count or swapping a snapshot."""

    def __init__(self, listen: str, policy: InlinePolicy, history: RelayHistory | None,
                 max_connections: int = 1000, clock: Callable[[], float] = time.time) -> None:
        self.policy = policy
        self.history = history
        self.clock = clock
        self.lock = threading.Lock()
        self.crossed: queue.SimpleQueue[Exceeded] = queue.SimpleQueue()
        self.server = PolicyServer(listen, self.handle, max_connections)
        self._blocks: frozenset[tuple[str, str]] | None = None
        self._next_snapshot = self._next_flush = 0.0
        self._today = 0

    def handle(self, raw: bytes) -> bytes:
        req = parse_request(raw)
        with self.lock:
            action, crossed = self.policy.answer(req, self.clock())
        if crossed is not None:
            self.crossed.put(crossed)
        return f"action={action}\n\n".encode()

    def start(self, blocks: Iterable[tuple[str, str]], logged: Iterable[tuple[str, float, int]] = ()) -> None:
        """`logged`: (client, time, recipients) the log showed relayed in the window before a restart,
        so that a restart does not hand an unknown relayer a fresh budget."""
        if sys.getswitchinterval() > SWITCH_S:
            sys.setswitchinterval(SWITCH_S)  # a busy log loop must not hold an answer back 5 ms (the default)
        self.set_blocks(blocks, force=True)
        self._refresh_known(self.clock())
        for client, t, n in logged:
            for _ in range(min(n, self.policy.budget.limit if self.policy.budget else 0)):
                self.policy.logged(client, None, t)
        self.server.start()

    def set_blocks(self, blocks: Iterable[tuple[str, str]], force: bool = False) -> None:
        current = frozenset(blocks)
        if force or current != self._blocks:
            self._blocks = current
            self.policy.blocked = Blocked.of(current)  # one reference swap: a request sees the old or the new

    def observe(self, fact: Fact) -> None:
        """The log pipeline's hook: each relayed recipient, on the main thread."""
        if type(fact) is not Relayed:
            return
        if not fact.sasl_user and self.history is not None:
            self.history.saw(history_key(fact.client), fact.time)
        with self.lock:
            self.policy.logged(fact.client, fact.sasl_user, fact.time)

    def tick(self, now: float, blocks: Callable[[], Iterable[tuple[str, str]]]) -> list[Decision]:
        """From the main loop: budgets crossed as decisions; the blocks snapshot, the history."""
        decisions = []
        while True:
            try:
                crossed = self.crossed.get_nowait()
            except queue.Empty:
                break
            decisions.append(decision_of(crossed))
            if self.history is not None and crossed.kind == "client":
                self.history.strike(history_key(crossed.target), crossed.time)
        if now >= self._next_snapshot or decisions:
            self._next_snapshot = now + SNAPSHOT_S
            self.set_blocks(blocks())
        if now >= self._next_flush:
            self._next_flush = now + FLUSH_S
            self.flush(now)
        return decisions

    def decided(self, decisions: Iterable[Decision]) -> None:
        """Blocks of the log pipeline: their clients never become known relayers."""
        if self.history is not None:
            for d in decisions:
                if d.action == "block" and d.kind == "client":
                    self.history.strike(history_key(d.target), d.time)

    def flush(self, now: float) -> None:
        if self.history is None:
            return
        try:
            self.history.flush()
            if day_number(now) != self._today:
                self._refresh_known(now)
        except Exception as exc:  # the history is an optimisation: never stop the watch for it
            log.error("relaying history not saved (%s); retrying", exc)

    def _refresh_known(self, now: float) -> None:
        if self.history is None:
            return
        self._today = day_number(now)
        self.history.prune(self._today)
        known = self.history.known(self._today)
        self.policy.known = known
        log.info("policy service: %d known relayers (relayed without authentication on earlier days)", len(known))

    def stats(self) -> dict[str, int]:
        """For `relaywatch status`: what the service did since the daemon started."""
        server = self.server
        return {"connections": len(server.conns), "answered": server.answered, "dropped": server.dropped,
                "failed": server.failed, "known": len(self.policy.known)}

    def close(self) -> None:
        self.server.stop()
        if self.history is not None:
            with contextlib.suppress(Exception):
                self.history.flush()
            self.history.close()


def decision_of(c: Exceeded) -> Decision:
    return Decision(time=c.time, action=Action.ALERT, kind=Kind(c.kind), target=c.target, rule="inline_budget",
                    count=c.count, window_s=c.window_s, evidence=c.evidence, sample_qids=c.qids)


def service_for(listen: str, database: str, local_domains: Destinations, limit: int, window_s: int,
                allow: Iterable[Network], known: Iterable[Network], max_connections: int) -> InlineService:
    """The service as `relaywatch run` configures it; limit 0: blocks only."""
    budget = Budget(limit, window_s) if limit > 0 else None
    if budget is not None and not local_domains.known:
        log.warning("policy service: the local domains are unknown, so relayed recipients cannot be told at RCPT"
                    " time: the inline budget is off (set [postfix] local_domains)")
    policy = InlinePolicy(local_domains, budget, allow, known)
    return InlineService(listen, policy, RelayHistory(database), max_connections)
