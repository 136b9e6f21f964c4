#!/usr/bin/env python3
"""The inline policy service's figures, against a real `relaywatch run` on loopback.

    .venv/bin/python bench/policy_bench.py                       # everything, ~1 min
    .venv/bin/python bench/policy_bench.py --seconds 10 --rate 1000 --open 10000 --log-rate 10000

- sustained: --conns connections (like Postfix's smtpd processes), each with one request in
  flight at a time, as fast as the service answers, for --seconds: requests per second.
- latency: --rate requests/s paced over the same connections for --seconds: p50/p99/max from
  the request's first byte sent to the answer's last byte read.
- busy: the same latency while --log-rate lines/s of a generated busy day are appended to the
  log the daemon follows (its main loop busy: both share one Python process).
- open: --open idle connections held open; the daemon's RSS before and with them, and the
  latency of requests while they are open.
- leak (--leak, root and Debian's postfix): the issue's flood against a private Postfix
  (tests/support/postfix_rig.py): a client that never relayed sends 200 messages at 20/s in sessions of
  100 messages, once with the block through the access map only and once with the service;
  how many were accepted.
Requests come from 2,000 global clients relaying to remote domains (the budget path: most are
deferred once their budget is spent) and 10 % to the local domain.
"""

from __future__ import annotations

import argparse
import random
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def requests(n: int, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        client = f"{rng.choice((61, 84, 151, 218))}.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        client = f"61.{i % 2000 // 256}.{i % 256}.7" if rng.random() < 0.5 else client
        domain = "example.org" if rng.random() < 0.1 else f"d{rng.randrange(500)}.example.net"
        out.append(f"request=smtpd_access_policy\nprotocol_state=RCPT\nprotocol_name=ESMTP\nclient_address={client}\n"
                   f"client_name=unknown\nreverse_client_name=unknown\nhelo_name=h{i}.example\nsender=s{i}@example.com\n"
                   f"recipient=r{i}@{domain}\nrecipient_count=0\nqueue_id=\ninstance={i:x}.1.1\nsize=0\n"
                   f"etrn_domain=\nstress=\nsasl_method=\nsasl_username=\nsasl_sender=\nccert_subject=\n"
                   f"encryption_protocol=\nencryption_cipher=\nencryption_keysize=0\npolicy_context=\n"
                   f"server_address=127.0.0.1\nserver_port=25\n\n".encode())
    return out


class Clients:
    """Connections with at most one request in flight each (as Postfix's policy client)."""

    def __init__(self, port: int, n: int) -> None:
        self.sel = selectors.DefaultSelector()
        self.socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.setblocking(False)
            self.socks.append(s)
            self.sel.register(s, selectors.EVENT_READ, [b"", 0.0])
        self.reqs = requests(20_000)
        self.i = 0

    def send(self, s: socket.socket) -> None:
        state = self.sel.get_key(s).data
        state[0], state[1] = b"", time.perf_counter()
        s.sendall(self.reqs[self.i % len(self.reqs)])
        self.i += 1

    def poll(self, timeout: float) -> list[tuple[socket.socket, float]]:
        """Sockets whose answer is complete, with its latency."""
        done = []
        for key, _ in self.sel.select(timeout):
            state = key.data
            state[0] += key.fileobj.recv(4096)
            if state[0].endswith(b"\n\n"):
                done.append((key.fileobj, time.perf_counter() - state[1]))
        return done

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.sel.close()


def sustained(port: int, conns: int, seconds: float) -> float:
    c = Clients(port, conns)
    for s in c.socks:
        c.send(s)
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for s, _ in c.poll(1.0):
            n += 1
            c.send(s)
    c.close()
    return n / seconds


def paced(port: int, conns: int, rate: float, seconds: float) -> list[float]:
    c = Clients(port, conns)
    idle = list(c.socks)
    lat: list[float] = []
    start = time.perf_counter()
    sent, total = 0, int(rate * seconds)
    while sent < total or len(idle) < conns:
        now = time.perf_counter()
        while sent < total and now >= start + sent / rate and idle:
            c.send(idle.pop())
            sent += 1
        wait = max(0.0, start + sent / rate - time.perf_counter()) if sent < total else 0.05
        for s, latency in c.poll(min(wait, 0.05)):
            lat.append(latency)
            idle.append(s)
    c.close()
    return lat


def describe(lat: list[float]) -> str:
    q = statistics.quantiles(lat, n=100)
    return f"p50 {q[49] * 1000:.2f} ms, p99 {q[98] * 1000:.2f} ms, max {max(lat) * 1000:.1f} ms ({len(lat)} requests)"


def log_writer(path: Path, day: list[bytes], rate: int, stop: threading.Event) -> None:
    with open(path, "ab") as f:
        i, start = 0, time.perf_counter()
        while not stop.is_set() and i < len(day):
            due = int((time.perf_counter() - start) * rate)
            if due > i:
                f.write(b"".join(day[i:due]))
                f.flush()
                i = due
            time.sleep(0.01)


def leak(with_service: bool) -> tuple[int, int]:
    """(accepted, sent) of the flood; the rig and relaywatch are stopped afterwards."""
    sys.path.insert(0, str(ROOT / "tests"))
    from support.postfix_rig import PostfixRig
    from test_policyd import Session, configure

    rig = PostfixRig.start()
    tmp = Path(tempfile.mkdtemp(prefix="rw-leak-"))
    port = free_port()
    if with_service:
        configure(rig, port)
    cfg = tmp / "rw.toml"
    cfg.write_text(f'[source]\npath = "{rig.maillog}"\n[state]\ndatabase = "{tmp}/db/state.db"\n'
                   f'[postfix]\nconfig_directory = "{rig.config_directory}"\nclient_access_map = "{rig.reject_list}"\n'
                   'sasl_access_map = ""\n[allow]\nnetworks = []\n'
                   + (f'[policy]\nlisten = "127.0.0.1:{port}"\n' if with_service else ""))
    err = tmp / "daemon.err"
    proc = subprocess.Popen([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)], cwd=ROOT,
                            stderr=open(err, "wb"), stdout=subprocess.DEVNULL)
    try:
        while "following file:" not in err.read_text():
            time.sleep(0.05)
        accepted = 0
        for first in (0, 100):
            session = Session(rig, "127.0.0.9")
            for i in range(first, first + 100):
                accepted += session.message(f"victim{i}@hanmail.example")[0] == 250
                time.sleep(0.05)
            session.close()
        return accepted, 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        rig.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--open", type=int, default=10_000)
    ap.add_argument("--log-rate", type=int, default=10_000)
    ap.add_argument("--leak", action="store_true", help="only the flood against a private Postfix (root)")
    args = ap.parse_args()
    if args.leak:
        for with_service in (False, True):
            accepted, sent = leak(with_service)
            print(f"{'with' if with_service else 'without'} the policy service: {accepted} of {sent} accepted")
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, args.open + 1024), hard))
    tmp = Path(tempfile.mkdtemp(prefix="rw-policy-bench-"))
    port = free_port()
    maillog = tmp / "mail.log"
    maillog.write_bytes(b"")
    cfg = tmp / "rw.toml"
    cfg.write_text(f'[source]\npath = "{maillog}"\n[state]\ndatabase = "{tmp}/db/state.db"\n'
                   f'[postfix]\nconfig_directory = "{tmp}/none"\nclient_access_map = "hash:{tmp}/clients"\n'
                   f'sasl_access_map = ""\nlocal_domains = ["example.org"]\n'
                   f'[policy]\nlisten = "127.0.0.1:{port}"\nmax_connections = {args.open + 100}\n')
    err = tmp / "daemon.err"
    proc = subprocess.Popen([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)], cwd=ROOT,
                            stderr=open(err, "wb"), stdout=subprocess.DEVNULL)
    try:
        while "policy service listening" not in err.read_text():
            if proc.poll() is not None:
                print(err.read_text())
                return 1
            time.sleep(0.05)
        print(f"relaywatch run (pid {proc.pid}), RSS {rss_mib(proc.pid):.1f} MiB")
        print(f"sustained: {sustained(port, args.conns, args.seconds):,.0f} requests/s over {args.conns} connections")
        print(f"at {args.rate:,.0f}/s: {describe(paced(port, args.conns, args.rate, args.seconds))}")
        day_path = tmp / "day.log"
        subprocess.run([sys.executable, str(ROOT / "bench" / "gen_day.py"), "--profile", "busy", "--format", "rfc3339",
                        "--lines", str(int(args.log_rate * args.seconds * 1.2)), "--out", str(day_path)], check=True,
                       stdout=subprocess.DEVNULL)
        stop = threading.Event()
        writer = threading.Thread(target=log_writer, args=(maillog, day_path.read_bytes().splitlines(keepends=True),
                                                           args.log_rate, stop))
        writer.start()
        lat = paced(port, args.conns, args.rate, args.seconds)
        stop.set()
        writer.join()
        print(f"at {args.rate:,.0f}/s with {args.log_rate:,} log lines/s appended: {describe(lat)}")
        before = rss_mib(proc.pid)
        held = []
        for _ in range(args.open):
            held.append(socket.create_connection(("127.0.0.1", port)))
        time.sleep(2)
        with_open = rss_mib(proc.pid)
        lat = paced(port, 10, 200, 5)
        print(f"{args.open:,} open connections: RSS {before:.1f} -> {with_open:.1f} MiB "
              f"(+{(with_open - before) * 1024 / args.open:.2f} KiB each); meanwhile {describe(lat)}")
        for s in held:
            s.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
