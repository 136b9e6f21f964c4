"""Real HTTP endpoints on 127.0.0.1 for notification tests: a recorder and a server that never answers."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


class Sink:
    """Records every POST (path and decoded json/form payload)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    payload = json.loads(raw)
                else:
                    payload = {k: v[0] for k, v in parse_qs(raw).items()}
                with sink.cond:
                    sink.requests.append((self.path, payload))
                    sink.cond.notify_all()
                self.send_response(500 if "fail" in self.path else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def url(self, scheme: str, path: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def to(self, prefix: str) -> list[dict[str, str]]:
        with self.cond:
            return [p for path, p in self.requests if path.startswith(prefix)]

    def wait_for(self, prefix: str, n: int, timeout: float = 5) -> list[dict[str, str]]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.to(prefix)) >= n, timeout), self.requests
        return self.to(prefix)


class Hang:
    """Accepts connections and never answers, until closed."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with self.sock:
            while True:
                try:
                    self.conns.append(self.sock.accept()[0])
                except OSError:
                    return
                self.accepted.set()

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()  # lets apprise's abandoned request end
