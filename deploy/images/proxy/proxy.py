"""The hmk8s proxy: forwards each request along its chain and measures what the backend reads.

The chain is the JSON the backend writes into the ConfigMap proxy<p>-chain (mounted at
--chain, re-read when it changes): ordered hops, each with an `endpoint` (host:port) or null
when no instance serves that function. Endpoints:

    GET /probe     forward one request along the chain; answer {"ok", "rate", "latency_s"}
    GET /metrics   hmk8s_proxy_latency_seconds and hmk8s_proxy_requests_per_second (Prometheus)
    GET /healthz   liveness and readiness
    anything else  a user request: forwarded hop by hop; 502 when a hop fails or is missing

Latency is an exponentially weighted mean over forwarded requests (a failed one counts as the
timeout); the rate is the requests received over the last --window seconds. Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import urllib.request
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Chain:
    """The mounted chain document, re-read when its modification time changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: float | None = None
        self._endpoints: list[str | None] = []
        self._lock = threading.Lock()

    def endpoints(self) -> list[str | None]:
        with self._lock:
            try:
                stamp = self.path.stat().st_mtime
            except OSError:
                return []
            if stamp != self._stamp:
                try:
                    hops = json.loads(self.path.read_text())["hops"]
                    self._endpoints = [h.get("endpoint") for h in hops]
                    self._stamp = stamp
                except (OSError, ValueError, KeyError, TypeError):
                    return self._endpoints
            return list(self._endpoints)


class Stats:
    """Latency (EWMA) and request rate (sliding window), shared by the handler threads."""

    def __init__(self, window_s: float, alpha: float = 0.2) -> None:
        self.window_s, self.alpha = window_s, alpha
        self.latency_s: float | None = None
        self._arrivals: deque[float] = deque()
        self._lock = threading.Lock()

    def arrived(self) -> None:
        with self._lock:
            self._arrivals.append(time.monotonic())

    def served(self, seconds: float) -> None:
        with self._lock:
            prev = self.latency_s
            self.latency_s = seconds if prev is None else prev + self.alpha * (seconds - prev)

    def rate(self) -> float:
        with self._lock:
            horizon = time.monotonic() - self.window_s
            while self._arrivals and self._arrivals[0] < horizon:
                self._arrivals.popleft()
            return len(self._arrivals) / self.window_s


def forward(endpoints: list[str | None], timeout_s: float) -> tuple[bool, float]:
    """Send one request through every hop in order: (every hop answered, seconds taken)."""
    start = time.perf_counter()
    if not endpoints:
        return False, 0.0
    for endpoint in endpoints:
        if endpoint is None:
            return False, time.perf_counter() - start
        left = timeout_s - (time.perf_counter() - start)
        try:
            with urllib.request.urlopen(f"http://{endpoint}/", timeout=max(left, 0.001)) as r:
                r.read()
        except OSError:
            return False, time.perf_counter() - start
    return True, time.perf_counter() - start


def make_server(
    host: str, port: int, name: str, chain: Chain, timeout_s: float, window_s: float
) -> ThreadingHTTPServer:
    stats = Stats(window_s)

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, body: str, kind: str = "application/json") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _through(self) -> tuple[bool, float]:
            ok, seconds = forward(chain.endpoints(), timeout_s)
            stats.served(seconds if ok else timeout_s)
            return ok, seconds

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._reply(200, '{"ok": true}')
            elif path == "/metrics":
                latency = timeout_s if stats.latency_s is None else stats.latency_s
                labels = f'{{proxy="{name}"}}'
                self._reply(
                    200,
                    f"hmk8s_proxy_latency_seconds{labels} {latency!r}\n"
                    f"hmk8s_proxy_requests_per_second{labels} {stats.rate()!r}\n",
                    "text/plain; version=0.0.4",
                )
            elif path == "/probe":
                ok, seconds = self._through()
                body = {"ok": ok, "rate": stats.rate(), "latency_s": seconds}
                self._reply(200, json.dumps(body))
            else:
                self._user_request()

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            self._user_request()

        def _user_request(self) -> None:
            stats.arrived()
            ok, seconds = self._through()
            self._reply(200 if ok else 502, json.dumps({"ok": ok, "latency_s": seconds}))

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chain", default="/etc/hmk8s/chain.json", type=Path)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per request")
    parser.add_argument("--window", type=float, default=15.0, help="seconds of the rate window")
    args = parser.parse_args()
    name = os.environ.get("HMK8S_PROXY", "proxy")
    server = make_server(args.host, args.port, name, Chain(args.chain), args.timeout, args.window)
    server.serve_forever()


if __name__ == "__main__":
    main()
