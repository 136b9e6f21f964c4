"""Time from `relaywatch run` to systemd's READY=1 with many client keys stored (issue 13 item 11).

    python bench/restart_bench.py                       # 300,000 and 1,000,000 stored client keys
    python bench/restart_bench.py --keys 50000 --code /tmp/old-checkout   # another relaywatch tree

A flood of distinct IPv6 clients (one /48, spread over its /64s, one relayed recipient each) is
written into a state database through `Store.commit_batch`, as the daemon writes it, in the last
ten minutes of wall time. Then a real `relaywatch run` starts on it with NOTIFY_SOCKET pointing at
a datagram socket of ours; the figure is the time until READY=1 arrives, then it is stopped with
SIGTERM. `--code DIR` runs the daemon from another source tree (PYTHONPATH), to compare.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from relaywatch.store.sqlite import Store

BUCKET_S = 10
WINDOW_BUCKETS = 60  # ten minutes


def build(db: Path, maillog: Path, keys: int) -> None:
    """`keys` distinct clients' counts, the way the daemon stores them, and a read position at the log's end."""
    store = Store(db)
    now_bucket = int(time.time() // BUCKET_S)
    batch: list[tuple[str, int, str, int]] = []
    for i in range(keys):
        bucket = now_bucket - WINDOW_BUCKETS + 1 + i * WINDOW_BUCKETS // keys
        batch.append(("client", bucket, f"2a01:4f8:1:{i >> 16:x}:{i & 0xffff:x}::1", 1))
        if len(batch) == 100_000 or i == keys - 1:
            store.commit_batch(batch + [("sender", bucket, "flood@spam.example", len(batch)),
                                        ("domain", bucket, "victim.example", len(batch))])
            batch = []
    st = maillog.stat()
    store.commit_batch([], position=(f"file:{maillog}", {"device": st.st_dev, "inode": st.st_ino, "offset": 0,
                                                          "head": None}))
    store.close()


def time_to_ready(cfg: Path, code: str | None) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        address = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(address)
        sock.settimeout(1)
        env = {**os.environ, "NOTIFY_SOCKET": address}
        if code:
            env["PYTHONPATH"] = code
        else:
            env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent)
        log = open(os.path.join(tmp, "daemon.err"), "wb")  # noqa: SIM115 - closed below
        started = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "relaywatch", "run", "-c", str(cfg)], env=env,
                                cwd=code or tmp, stdout=subprocess.DEVNULL, stderr=log)
        try:
            while proc.poll() is None:
                try:
                    message = sock.recv(4096).decode()
                except TimeoutError:
                    continue
                if "READY=1" in message.split("\n"):
                    return time.monotonic() - started
            raise SystemExit(f"relaywatch run exited {proc.returncode}: "
                             + Path(tmp, "daemon.err").read_text(errors="replace")[-2000:])
        finally:
            log.close()
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            sock.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keys", type=int, nargs="+", default=[300_000, 1_000_000])
    ap.add_argument("--code", help="run the daemon from this source tree (PYTHONPATH)")
    args = ap.parse_args()
    for keys in args.keys:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            os.chmod(root, 0o700)
            maillog, db, cfg = root / "mail.log", root / "state" / "state.db", root / "rw.toml"
            maillog.write_text("")
            built = time.monotonic()
            build(db, maillog, keys)
            built = time.monotonic() - built
            etc = root / "postfix"  # an empty main.cf: postconf answers with defaults (a missing one
            etc.mkdir()              # costs a second per command: Postfix sleeps after a fatal error)
            (etc / "main.cf").write_text("")
            os.utime(etc / "main.cf", (time.time() - 60,) * 2)  # settled: Postfix waits on a fresh main.cf
            cfg.write_text(f'[source]\npath = "{maillog}"\n[state]\ndatabase = "{db}"\n'
                           f'[postfix]\nconfig_directory = "{etc}"\n'
                           f'client_access_map = "hash:{root}/clients"\nsasl_access_map = ""\n'
                           f'map_directories = ["{root}"]\n')
            cfg.chmod(0o600)
            ready = time_to_ready(cfg, args.code)
            print(f"{keys:>9,} stored client keys: READY after {ready:6.2f} s "
                  f"(database {db.stat().st_size / 2**20:.0f} MiB, built in {built:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
