"""The controller's HTTP endpoints, as controller-runtime serves them: ``/metrics`` (Prometheus
text) on the metrics port, ``/healthz`` (liveness) and ``/readyz`` (readiness) on the probe
port. A check is a function answering None when healthy, else why not (the 500's body)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, exposition

Check = Callable[[], str | None]


class Endpoints:
    """One HTTP server on ``addr:port`` answering the given paths; `port` is the bound one."""

    def __init__(
        self,
        port: int,
        *,
        registry: CollectorRegistry | None = None,
        checks: Mapping[str, Check] | None = None,
        addr: str = "0.0.0.0",
    ) -> None:
        registry_, checks_ = registry, dict(checks or {})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics" and registry_ is not None:
                    self._answer(
                        200, exposition.generate_latest(registry_), exposition.CONTENT_TYPE_LATEST
                    )
                elif path in checks_:
                    problem = checks_[path]()
                    body = (problem or "ok").encode()
                    self._answer(500 if problem else 200, body, "text/plain; charset=utf-8")
                else:
                    self._answer(404, b"not found", "text/plain; charset=utf-8")

            def _answer(self, status: int, body: bytes, kind: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                del format, args  # probes every few seconds would flood the log

        self.server = ThreadingHTTPServer((addr, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
