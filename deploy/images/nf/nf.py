"""A network function for hmk8s: serves each request for 1 / HMK8S_SERVICE_RATE seconds of CPU.

The work is a busy loop, so a pod's CPU usage (what metrics-server reports and the backend reads)
follows its load as in the simulator: a pod serving at its rate is busy. Standard library only.

    HMK8S_FUNCTION=firewall HMK8S_CONFIG=small HMK8S_SERVICE_RATE=60 python nf.py --port 8080
"""

from __future__ import annotations

import argparse
import json
import os
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_server(
    host: str, port: int, function: str, config: str, rate: float
) -> ThreadingHTTPServer:
    """An HTTP server answering `/healthz` at once and anything else after one service time."""
    service_s = 1.0 / rate
    answer = json.dumps({"function": function, "config": config}).encode()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if self.path != "/healthz":
                end = time.perf_counter() + service_s
                while time.perf_counter() < end:
                    pass
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        do_GET = do_POST = _serve

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args()
    server = make_server(
        args.host,
        args.port,
        os.environ.get("HMK8S_FUNCTION", "nf"),
        os.environ.get("HMK8S_CONFIG", "small"),
        float(os.environ.get("HMK8S_SERVICE_RATE", "100")),
    )
    server.serve_forever()


if __name__ == "__main__":
    main()
