"""The hmk8s proxy: passes each request along its chain of network functions and measures what
the backend reads.

The chain is the JSON the backend writes into the ConfigMap proxy<p>-chain (mounted at --chain,
re-read when it changes): ordered hops, each naming its `function` and an `endpoint` (host:port)
or null when no instance serves that function. An endpoint must have the form of the backend's
address templates, `<service>.<namespace>.svc.cluster.local:<port>` or
`....svc.clusterset.local:<port>` with --function-port; `127.0.0.1:<any port>` only with
--allow-loopback (tests). A document that breaks these rules is malformed: the proxy is not
ready (/readyz 503) and its metrics mark the chain broken, until a good document replaces it.

A user request's body goes to the first hop; each hop's answer is the next hop's body, and the
last answer is the user's. Every hop must name the chain's function in Hmk8s-Function. A 4xx
from a hop (the firewall's 403, for one) is the chain's answer and is relayed; a 3xx (redirects
are not followed), 5xx, a wrong function, a refused connection or the --timeout is a failure: 502,
and the request counts as the timeout. The proxy sets X-Forwarded-For to its client's address.

    GET /probe     one empty request along the chain: {"ok", "rate", "latency_s"}; ok only when
                   every hop answered 2xx as its function
    GET /metrics   hmk8s_proxy_latency_seconds, hmk8s_proxy_requests_per_second,
                   hmk8s_proxy_chain_ok (Prometheus)
    /healthz       alive;  /readyz  a well-formed chain is loaded
    anything else  a user request

Latency is an exponentially weighted mean over forwarded requests; the rate counts the requests
received over the last --window seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from httpio import (
    HttpError,
    Request,
    Response,
    Server,
    add_limit_options,
    fail,
    fetch,
    limits_from,
    serve,
)

FUNCTIONS = ("encrypt", "decrypt", "firewall")
_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
SERVICE_HOST = re.compile(rf"^{_LABEL}\.{_LABEL}\.svc\.cluster(set)?\.local$")
LOOPBACK_HOST = "127.0.0.1"


class ChainError(ValueError):
    """A chain document the proxy refuses; the message says what is wrong."""


@dataclass(frozen=True)
class Hop:
    function: str
    host: str | None  # None: no instance serves the function (a broken hop)
    port: int | None


def parse_endpoint(endpoint: str, port: int, allow_loopback: bool) -> tuple[str, int]:
    """(host, port) of an endpoint the backend's templates can produce, else ChainError."""
    host, sep, port_text = endpoint.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ChainError(f"endpoint {endpoint[:80]!r} is not host:port")
    if allow_loopback and host == LOOPBACK_HOST:
        return host, int(port_text)
    if not SERVICE_HOST.match(host):
        raise ChainError(f"endpoint {endpoint[:80]!r} is not a cluster Service address")
    if int(port_text) != port:
        raise ChainError(f"endpoint {endpoint[:80]!r} is not on the function port {port}")
    return host, port


def parse_chain(text: str, port: int, allow_loopback: bool) -> tuple[Hop, ...]:
    """The hops of a chain document, or ChainError naming the first problem."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise ChainError(f"not JSON ({err})") from None
    hops = doc.get("hops") if isinstance(doc, dict) else None
    if not isinstance(hops, list) or not hops:
        raise ChainError('expected {"hops": [...]} with at least one hop')
    parsed = []
    for i, hop in enumerate(hops):
        if not isinstance(hop, dict) or hop.get("function") not in FUNCTIONS:
            raise ChainError(f"hop {i}: expected an object naming one of {FUNCTIONS}")
        endpoint = hop.get("endpoint")
        if endpoint is None:
            parsed.append(Hop(hop["function"], None, None))
        elif isinstance(endpoint, str):
            try:
                parsed.append(Hop(hop["function"], *parse_endpoint(endpoint, port, allow_loopback)))
            except ChainError as err:
                raise ChainError(f"hop {i}: {err}") from None
        else:
            raise ChainError(f"hop {i}: endpoint must be a string or null")
    return tuple(parsed)


class Chain:
    """The mounted chain document, re-read when the file changes."""

    def __init__(self, path: Path, port: int, allow_loopback: bool) -> None:
        self.path, self.port, self.allow_loopback = path, port, allow_loopback
        self._stamp: tuple[int, int, int] | None = None
        self.hops: tuple[Hop, ...] | None = None
        self.problem: str | None = f"no chain at {path}"

    def refresh(self) -> None:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
            if stamp == self._stamp:
                return
            text = self.path.read_text()
        except OSError:
            self._stamp, self.hops, self.problem = None, None, f"no chain at {self.path}"
            return
        self._stamp = stamp
        try:
            self.hops, self.problem = parse_chain(text, self.port, self.allow_loopback), None
        except ChainError as err:
            self.hops, self.problem = None, f"malformed chain: {err}"


class Stats:
    """Latency (EWMA) and request rate (sliding window)."""

    def __init__(self, window_s: float, alpha: float = 0.2) -> None:
        self.window_s, self.alpha = window_s, alpha
        self.latency_s: float | None = None
        self._arrivals: deque[float] = deque()

    def arrived(self) -> None:
        self._arrivals.append(time.monotonic())

    def served(self, seconds: float) -> None:
        prev = self.latency_s
        self.latency_s = seconds if prev is None else prev + self.alpha * (seconds - prev)

    def rate(self) -> float:
        horizon = time.monotonic() - self.window_s
        while self._arrivals and self._arrivals[0] < horizon:
            self._arrivals.popleft()
        return len(self._arrivals) / self.window_s


@dataclass(frozen=True)
class Outcome:
    """What the chain made of a request: `ok` (every hop 2xx), `answered` (a hop's 4xx verdict)
    or `failed` (the hop that broke says why in `detail`)."""

    kind: str
    response: Response
    seconds: float
    detail: str = ""


async def _hop(
    hop: Hop, request: Request, headers: dict[str, str], body: bytes, limit: int
) -> tuple[int, dict[str, str], bytes]:
    if hop.host is None or hop.port is None:
        raise HttpError(502, f"no instance serves {hop.function}")
    return await fetch(hop.host, hop.port, request.method, request.target, headers, body, limit)


async def forward(
    hops: tuple[Hop, ...], request: Request, timeout_s: float, max_body: int
) -> Outcome:
    """Send the request through every hop in order, within `timeout_s` in all."""
    start = time.perf_counter()
    body = request.body
    kind = request.headers.get("content-type", "application/octet-stream")
    for i, hop in enumerate(hops):
        headers = {"Content-Type": kind, "X-Forwarded-For": request.peer}
        left = timeout_s - (time.perf_counter() - start)
        try:
            status, answer, body = await asyncio.wait_for(
                _hop(hop, request, headers, body, max_body), max(left, 0.0)
            )
        except (OSError, TimeoutError, HttpError, asyncio.IncompleteReadError) as err:
            return _failed(start, f"hop {i} ({hop.function}): {type(err).__name__}: {err}")
        if answer.get("hmk8s-function") != hop.function:
            return _failed(start, f"hop {i}: the answer is not from a {hop.function} function")
        kind = answer.get("content-type", "application/octet-stream")
        if 400 <= status < 500:
            seconds = time.perf_counter() - start
            return Outcome("answered", Response(status, body, {"Content-Type": kind}), seconds)
        if not 200 <= status < 300:
            return _failed(start, f"hop {i} ({hop.function}) answered {status}")
    return Outcome("ok", Response(200, body, {"Content-Type": kind}), time.perf_counter() - start)


def _failed(start: float, detail: str) -> Outcome:
    response = Response.json(502, {"error": detail})
    return Outcome("failed", response, time.perf_counter() - start, detail)


class Proxy:
    """Routes /probe and /metrics, forwards everything else; /healthz, /readyz are the server's."""

    def __init__(self, name: str, chain: Chain, timeout_s: float, window_s: float, max_body: int):
        self.name, self.chain, self.timeout_s, self.max_body = name, chain, timeout_s, max_body
        self.stats = Stats(window_s)

    def ready(self) -> str | None:
        self.chain.refresh()
        return self.chain.problem

    async def _through(self, request: Request) -> Outcome:
        self.chain.refresh()
        if self.chain.hops is None:
            outcome = Outcome("failed", Response.json(502, {"error": self.chain.problem}), 0.0)
        else:
            outcome = await forward(self.chain.hops, request, self.timeout_s, self.max_body)
        self.stats.served(self.timeout_s if outcome.kind == "failed" else outcome.seconds)
        return outcome

    async def handle(self, request: Request) -> Response:
        if request.path == "/metrics" and request.method == "GET":
            return Response.text(200, self.metrics(), "text/plain; version=0.0.4")
        if request.path == "/probe" and request.method == "GET":
            outcome = await self._through(Request("GET", "/", {}, b"", request.peer))
            answer = {"ok": outcome.kind == "ok", "rate": self.stats.rate()}
            answer["latency_s"] = outcome.seconds
            if outcome.detail:
                answer["detail"] = outcome.detail
            return Response.json(200, answer)
        self.stats.arrived()
        return (await self._through(request)).response

    def metrics(self) -> str:
        self.chain.refresh()
        broken = self.chain.hops is None
        latency = self.timeout_s if broken or self.stats.latency_s is None else self.stats.latency_s
        labels = f'{{proxy="{self.name}"}}'
        return (
            f"hmk8s_proxy_latency_seconds{labels} {latency!r}\n"
            f"hmk8s_proxy_requests_per_second{labels} {self.stats.rate()!r}\n"
            f"hmk8s_proxy_chain_ok{labels} {0 if broken else 1}\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chain", default="/etc/hmk8s/chain.json", type=Path)
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--function-port", type=int, default=8080, help="the functions' port")
    parser.add_argument("--allow-loopback", action="store_true", help="accept 127.0.0.1 (tests)")
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per request")
    parser.add_argument("--window", type=float, default=15.0, help="seconds of the rate window")
    add_limit_options(parser)
    args = parser.parse_args()
    limits = limits_from(args, "proxy")
    for flag in ("timeout", "window"):
        if not getattr(args, flag) > 0:
            fail("proxy", f"--{flag} must be positive")
    name = os.environ.get("HMK8S_PROXY", "proxy")
    chain = Chain(args.chain, args.function_port, args.allow_loopback)
    proxy = Proxy(name, chain, args.timeout, args.window, limits.max_body)
    serve(Server(proxy.handle, limits, proxy.ready), args.host, args.port)


if __name__ == "__main__":
    main()
