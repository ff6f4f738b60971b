"""A network function of hmk8s: encrypt, decrypt or firewall, each request costing the CPU the
simulator charges it.

The simulator's pod is busy at its service rate mu and a busy pod uses `cpu_limit` cores, so
one request costs cpu_limit / mu core-seconds. The function does its real work, then spends the
rest of that budget hashing (hashlib releases the GIL, so a pod with a limit of two cores can
use both); CPU time is counted per worker thread, so the cost does not depend on contention, and
the CPU a request costs outside its worker (HTTP, the event loop), learned as the server runs,
is taken off the worker's share.
A pod's CPU reading (metrics-server) then follows its load as the simulator's does.

    encrypt   AES-GCM with the key in --key (hex, 16/24/32 bytes); answers nonce || ciphertext
    decrypt   the inverse; 400 when the ciphertext does not authenticate
    firewall  --rules (JSON): the first rule whose fields all match decides; 403 on deny,
              otherwise the body passes through unchanged

Rules: {"default": "allow" | "deny", "rules": [{"name": ..., "action": "allow" | "deny",
"source": CIDR, "methods": [...], "path": regex, "payload": regex}, ...]}; absent fields match
anything. The source is the first X-Forwarded-For address (set by the proxy), else the peer.

Environment: HMK8S_FUNCTION, HMK8S_CONFIG, HMK8S_SERVICE_RATE (mu, requests/s) and
HMK8S_CPU_LIMIT (cores). Endpoints: /healthz, /readyz, /metrics (requests by status and
process_cpu_seconds_total), anything else is a request to the function. Every answer names the
function in the header Hmk8s-Function.

    HMK8S_FUNCTION=firewall HMK8S_SERVICE_RATE=60 HMK8S_CPU_LIMIT=0.5 \
        python nf.py --rules rules.json --port 8080
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import hashlib
import ipaddress
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from httpio import Request, Response, Server, add_limit_options, fail, limits_from, serve

FUNCTIONS = ("encrypt", "decrypt", "firewall")
FILES = Path("/etc/hmk8s/nf")  # where the Deployment mounts the key Secret or rules ConfigMap
NONCE_BYTES = 12
TAG_BYTES = 16
PAD_BLOCK = bytes(1 << 14)  # hashed to spend the rest of a request's CPU budget

Work = Callable[[Request], Response]


def load_key(text: str) -> AESGCM:
    """An AES-GCM cipher from a hex key (what `openssl rand -hex 32` writes)."""
    try:
        key = binascii.unhexlify(text.strip())
    except (binascii.Error, ValueError):
        raise ValueError("the key is not hex") from None
    if len(key) not in (16, 24, 32):
        raise ValueError(f"the key has {len(key)} bytes; AES needs 16, 24 or 32")
    return AESGCM(key)


def encrypt(aead: AESGCM, request: Request) -> Response:
    nonce = os.urandom(NONCE_BYTES)
    sealed = nonce + aead.encrypt(nonce, request.body, None)
    return Response(200, sealed, {"Content-Type": "application/octet-stream"})


def decrypt(aead: AESGCM, request: Request) -> Response:
    if len(request.body) < NONCE_BYTES + TAG_BYTES:
        return Response.json(400, {"error": "too short to be a ciphertext"})
    nonce, sealed = request.body[:NONCE_BYTES], request.body[NONCE_BYTES:]
    try:
        plain = aead.decrypt(nonce, sealed, None)
    except InvalidTag:
        return Response.json(400, {"error": "the ciphertext does not authenticate"})
    return Response(200, plain, {"Content-Type": "application/octet-stream"})


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Rule:
    """Allow or deny what matches every given field."""

    name: str
    action: str
    source: Network | None = None
    methods: frozenset[str] | None = None
    path: re.Pattern[str] | None = None
    payload: re.Pattern[bytes] | None = None

    def matches(self, address: str, method: str, path: str, body: bytes) -> bool:
        if self.source is not None:
            try:
                if ipaddress.ip_address(address) not in self.source:
                    return False
            except ValueError:
                return False
        if self.methods is not None and method not in self.methods:
            return False
        if self.path is not None and not self.path.search(path):
            return False
        return self.payload is None or bool(self.payload.search(body))


@dataclass(frozen=True)
class Rules:
    rules: tuple[Rule, ...]
    default: str

    def decide(self, address: str, method: str, path: str, body: bytes) -> Rule | None:
        """The first matching rule, None when the default applies."""
        return next((r for r in self.rules if r.matches(address, method, path, body)), None)


ACTIONS = ("allow", "deny")
RULE_FIELDS = {"name", "action", "source", "methods", "path", "payload"}


def _rule(index: int, item: object) -> Rule:
    where = f"rule {index}"
    if not isinstance(item, dict):
        raise ValueError(f"{where} is not an object")
    unknown = set(item) - RULE_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
    if item.get("action") not in ACTIONS:
        raise ValueError(f"{where}: action must be one of {ACTIONS}")
    try:
        source = item.get("source")
        methods = item.get("methods")
        return Rule(
            name=str(item.get("name", where)),
            action=item["action"],
            source=None if source is None else ipaddress.ip_network(source),
            methods=None if methods is None else frozenset(m.upper() for m in methods),
            path=None if item.get("path") is None else re.compile(item["path"]),
            payload=None if item.get("payload") is None else re.compile(item["payload"].encode()),
        )
    except (ValueError, TypeError, AttributeError, re.error) as err:
        raise ValueError(f"{where}: {err}") from None


def load_rules(text: str) -> Rules:
    """Parse and check the firewall's rules document."""
    try:
        doc = json.loads(text)
    except ValueError as err:
        raise ValueError(f"not JSON ({err})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("rules", []), list):
        raise ValueError('expected {"default": ..., "rules": [...]}')
    default = doc.get("default", "allow")
    if default not in ACTIONS:
        raise ValueError(f"default must be one of {ACTIONS}")
    return Rules(tuple(_rule(i, r) for i, r in enumerate(doc.get("rules", []))), default)


def client_address(request: Request) -> str:
    forwarded = request.headers.get("x-forwarded-for", "")
    return forwarded.split(",", 1)[0].strip() or request.peer


def firewall(rules: Rules, request: Request) -> Response:
    rule = rules.decide(client_address(request), request.method, request.path, request.body)
    action = rules.default if rule is None else rule.action
    if action == "deny":
        reason = "default" if rule is None else rule.name
        return Response.json(403, {"error": "denied by the firewall", "rule": reason})
    kind = request.headers.get("content-type", "application/octet-stream")
    return Response(200, request.body, {"Content-Type": kind})


def spend_until(start_cpu_s: float, cost_s: float) -> None:
    """Hash until this thread has used `cost_s` CPU seconds since `start_cpu_s`."""
    while time.thread_time() - start_cpu_s < cost_s:
        hashlib.sha256(PAD_BLOCK).digest()


def costed(work: Work, budget_s: float, request: Request) -> tuple[Response, float]:
    """Do the function's work, then spend the rest of `budget_s`: (answer, CPU seconds used)."""
    start = time.thread_time()
    response = work(request)
    spend_until(start, budget_s)
    return response, time.thread_time() - start


class Overhead:
    """CPU a request costs outside its worker (parsing, the event loop, the thread hand-off),
    learned as the server runs, so that worker and overhead together make cpu_limit / mu."""

    def __init__(self, cost_s: float, alpha: float = 0.05) -> None:
        self.cost_s, self.alpha = cost_s, alpha
        self.seconds = 0.0
        self._samples = -1  # the first request only sets the baseline (start-up CPU is not its)
        self._process = time.process_time()

    def budget(self) -> float:
        """What the worker should spend on the next request."""
        return max(self.cost_s - self.seconds, 0.0)

    def settle(self, worker_s: float) -> None:
        """After a request: the process CPU since the last one, less its worker's share."""
        now = time.process_time()
        sample = min(max(now - self._process - worker_s, 0.0), self.cost_s)
        self._process, self._samples = now, self._samples + 1
        if self._samples > 0:  # a running mean at first, then an exponential one
            self.seconds += max(self.alpha, 1 / self._samples) * (sample - self.seconds)


class Function:
    """The function as a request handler: the work runs on worker threads, off the event loop."""

    def __init__(self, name: str, config: str, work: Work, cost_s: float, workers: int) -> None:
        self.name, self.config, self.work, self.cost_s = name, config, work, cost_s
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix=name)
        self.served: Counter[int] = Counter()
        self.overhead = Overhead(cost_s)

    def ready(self) -> str | None:
        return None

    async def handle(self, request: Request) -> Response:
        if request.path == "/metrics" and request.method == "GET":
            return Response.text(200, self.metrics(), "text/plain; version=0.0.4")
        loop = asyncio.get_running_loop()
        budget = self.overhead.budget()
        response, worker_s = await loop.run_in_executor(
            self.pool, costed, self.work, budget, request
        )
        self.overhead.settle(worker_s)
        self.served[response.status] += 1
        headers = response.headers | {"Hmk8s-Function": self.name, "Hmk8s-Config": self.config}
        return Response(response.status, response.body, headers)

    def metrics(self) -> str:
        labels = f'function="{self.name}",config="{self.config}"'
        lines = [f"process_cpu_seconds_total {time.process_time()!r}"]
        lines += [
            f'hmk8s_nf_requests_total{{{labels},code="{code}"}} {n}'
            for code, n in sorted(self.served.items())
        ]
        return "\n".join(lines) + "\n"


def make_work(function: str, key: Path, rules: Path) -> Work:
    """The function's work, with its key or rules read from the mounted file."""
    needed = rules if function == "firewall" else key
    flag = "--rules" if function == "firewall" else "--key"
    try:
        text = needed.read_text()
    except OSError as err:
        raise ValueError(f"{flag} {needed}: cannot read ({err.strerror})") from None
    try:
        if function == "firewall":
            return partial(firewall, load_rules(text))
        return partial(encrypt if function == "encrypt" else decrypt, load_key(text))
    except ValueError as err:
        raise ValueError(f"{flag} {needed}: {err}") from None


def positive(name: str, text: str | None) -> float:
    try:
        value = float(text or "")
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{name} must be a positive number (got {text!r})")
    return value


def build(args: argparse.Namespace, env: dict[str, str]) -> Function:
    """The function the settings describe; ValueError names the setting that is wrong."""
    name = env.get("HMK8S_FUNCTION", "")
    if name not in FUNCTIONS:
        raise ValueError(f"HMK8S_FUNCTION must be one of {FUNCTIONS} (got {name!r})")
    mu = positive("HMK8S_SERVICE_RATE", env.get("HMK8S_SERVICE_RATE"))
    cores = positive("HMK8S_CPU_LIMIT", env.get("HMK8S_CPU_LIMIT"))
    work = make_work(name, args.key, args.rules)
    return Function(name, env.get("HMK8S_CONFIG", "small"), work, cores / mu, args.workers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--key", type=Path, default=FILES / "key", help="hex AES key file")
    parser.add_argument("--rules", type=Path, default=FILES / "rules.json", help="JSON rules")
    parser.add_argument("--workers", type=int, default=4, help="threads doing the work")
    add_limit_options(parser)
    args = parser.parse_args()
    limits = limits_from(args, "nf")
    if args.workers < 1:
        fail("nf", "--workers must be at least 1")
    try:
        function = build(args, dict(os.environ))
    except ValueError as err:
        fail("nf", str(err))
    serve(Server(function.handle, limits, function.ready), args.host, args.port)


if __name__ == "__main__":
    main()
