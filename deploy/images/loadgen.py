"""The hmk8s load generator: replays a request-rate trace through the proxies.

The trace is the CSV the simulator replays (one row per step, one column per proxy, requests/s;
a header line and `#` comments allowed); `python scripts/load_trace.py --usecase ml` writes one
from a use case's per-proxy load profile. Each step lasts --step-seconds; in it, proxy j gets
requests at rate[step][j] * --scale, as a Poisson process (or evenly spaced, --arrivals
uniform), each a POST of --payload-bytes random bytes (sealed with AES-GCM under --seal-key's key
for a chain that decrypts). After each step one JSON line per proxy
reports what was sent and how it was answered:

    {"step": 0, "target": "...", "rate": 48.1, "sent": 731, "ok": 728, "refused": 0,
     "failed": 3, "latency_ms": {"mean": 21.4, "p50": 18.0, "p95": 44.2}}

With --paced, it first prints `{"ready": true}`; then a step starts when a line arrives on
standard input (whoever drives the cluster writes one as each of its steps starts) and lasts
until the next line, at the step's rate, or until standard input ends: the load follows a
controller whose steps take longer than --step-seconds instead of drifting ahead of it.

`ok` is a 2xx answer, `refused` a 4xx (the firewall's 403), `failed` anything else or no answer
within --timeout. Requests still in flight at the end of a step are reported with the step
they were sent in. Standard library only.

The load is bounded: a scaled rate above --max-rate (requests/s per proxy), a step of more than
MAX_STEP_REQUESTS requests in all or a payload over MAX_PAYLOAD bytes is refused before
anything is sent, and at most --max-in-flight requests wait for an answer at once (a request
that would exceed it is not sent and counts as failed), so neither memory nor sockets grow
without bound when the proxies slow down.

    python loadgen.py --rates ml.csv --target http://proxy0.hmk8s-0.svc.cluster.local:8080/ ...
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import math
import os
import random
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from httpio import HttpError, fail, fetch

MAX_ANSWER = 1 << 20
MAX_PAYLOAD = 1 << 20  # the functions' default body limit
MAX_STEP_REQUESTS = 1_000_000  # a step's schedule is held in memory


def read_rates(path: Path) -> list[list[float]]:
    """Rows of non-negative rates, as the simulator reads its traces; ValueError names the line."""
    rows: list[list[float]] = []
    with path.open(newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or row[0].lstrip().startswith("#"):
                continue
            try:
                values = [float(cell) for cell in row]
            except ValueError:
                if not rows and lineno == 1:
                    continue  # a header line
                raise ValueError(f"{path}: line {lineno} is not numbers") from None
            if any(not math.isfinite(v) or v < 0 for v in values):
                raise ValueError(f"{path}: line {lineno} has a rate that is not finite and >= 0")
            if rows and len(values) != len(rows[0]):
                raise ValueError(
                    f"{path}: line {lineno} has {len(values)} columns, not {len(rows[0])}"
                )
            rows.append(values)
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows


def arrival_times(rate: float, seconds: float, rng: random.Random, poisson: bool) -> list[float]:
    """Offsets in [0, seconds) at which requests start."""
    if rate <= 0:
        return []
    if not poisson:
        return [i / rate for i in range(math.ceil(rate * seconds - 1e-9))]
    times, t = [], rng.expovariate(rate)
    while t < seconds:
        times.append(t)
        t += rng.expovariate(rate)
    return times


@dataclass
class Tally:
    """How one proxy answered one step's requests."""

    sent: int = 0
    ok: int = 0
    refused: int = 0
    failed: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def report(self, step: int, target: str, rate: float) -> dict:
        lat = sorted(self.latencies_ms)
        summary = (
            {
                "mean": round(statistics.fmean(lat), 2),
                "p50": round(lat[len(lat) // 2], 2),
                "p95": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 2),
            }
            if lat
            else None
        )
        counts = {"sent": self.sent, "ok": self.ok, "refused": self.refused, "failed": self.failed}
        return {"step": step, "target": target, "rate": rate, **counts, "latency_ms": summary}


@dataclass(frozen=True)
class Target:
    url: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"target {url!r} is not an http:// URL")
        return cls(url, parts.hostname, parts.port or 80, parts.path or "/")


async def one_request(target: Target, payload: bytes, timeout_s: float, tally: Tally) -> None:
    tally.sent += 1
    start = time.perf_counter()
    try:
        status, _, _ = await asyncio.wait_for(
            fetch(target.host, target.port, "POST", target.path, {}, payload, MAX_ANSWER),
            timeout_s,
        )
    except (OSError, TimeoutError, HttpError, asyncio.IncompleteReadError):
        tally.failed += 1
        return
    tally.latencies_ms.append((time.perf_counter() - start) * 1e3)
    if 200 <= status < 300:
        tally.ok += 1
    elif 400 <= status < 500:
        tally.refused += 1
    else:
        tally.failed += 1


def step_starts(loop: asyncio.AbstractEventLoop) -> asyncio.Queue:
    """A queue that gets True for each line of standard input and False when it ends."""
    queue: asyncio.Queue = asyncio.Queue()

    def read() -> None:
        for _ in sys.stdin:
            loop.call_soon_threadsafe(queue.put_nowait, True)
        loop.call_soon_threadsafe(queue.put_nowait, False)

    threading.Thread(target=read, daemon=True).start()
    return queue


async def replay(args: argparse.Namespace, rates: list[list[float]], targets: list[Target]) -> None:
    """Send every step's requests on schedule; report a step once the next one has ended."""
    rng = random.Random(args.seed)
    seal = args.seal
    loop = asyncio.get_running_loop()
    starts = step_starts(loop) if args.paced else None
    if starts is not None:
        print(json.dumps({"ready": True}), flush=True)
    pending: set[asyncio.Task] = set()
    tallies: list[list[tuple[Target, float, Tally]]] = []
    end = args.start_row + args.steps if args.steps else len(rates)
    for row in rates[args.start_row : end]:
        if starts is not None and not await starts.get():
            break
        step_start = loop.time()
        tallies.append(
            [(t, rate * args.scale, Tally()) for t, rate in zip(targets, row, strict=True)]
        )
        for window in itertools.count():
            # a paced step goes on, window after window, until the next step starts
            begin = step_start + window * args.step_seconds
            plan = sorted(
                (
                    (begin + offset, target, tally)
                    for target, rate, tally in tallies[-1]
                    for offset in arrival_times(
                        rate, args.step_seconds, rng, args.arrivals == "poisson"
                    )
                ),
                key=lambda item: item[0],
            )
            for at, target, tally in plan:
                await asyncio.sleep(max(at - loop.time(), 0.0))
                if starts is not None and not starts.empty():
                    break
                if len(pending) >= args.max_in_flight:
                    tally.sent += 1
                    tally.failed += 1
                    continue
                payload = seal(os.urandom(args.payload_bytes))
                task = asyncio.create_task(one_request(target, payload, args.timeout, tally))
                pending.add(task)
                task.add_done_callback(pending.discard)
            if starts is None:
                await asyncio.sleep(max(begin + args.step_seconds - loop.time(), 0.0))
                break
            if await next_start(starts, begin + args.step_seconds - loop.time()):
                break
        if len(tallies) > 1:
            emit(len(tallies) - 2, tallies[-2])
    if pending:
        await asyncio.wait(pending, timeout=args.timeout)
    if tallies:
        emit(len(tallies) - 1, tallies[-1])


async def next_start(starts: asyncio.Queue, within_s: float) -> bool:
    """Whether the next step starts (or the input ends) within `within_s` seconds; the signal
    stays in the queue for the step loop."""
    if starts.empty():
        await asyncio.sleep(max(within_s, 0.0))
    return not starts.empty()


def sealer(key_file: Path | None):
    """Payloads as the chain expects them: plain, or (with --seal-key, for a chain that
    decrypts) sealed as nonce + AES-GCM ciphertext under the functions' key, which is what the
    encrypt function answers and the decrypt function accepts."""
    if key_file is None:
        return lambda payload: payload
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    aead = AESGCM(bytes.fromhex(key_file.read_text().strip()))

    def seal(payload: bytes) -> bytes:
        nonce = os.urandom(12)
        return nonce + aead.encrypt(nonce, payload, None)

    return seal


def emit(step: int, tallies: list[tuple[Target, float, Tally]]) -> None:
    for target, rate, tally in tallies:
        print(json.dumps(tally.report(step, target.url, round(rate, 3))), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=Path, required=True, help="CSV: a row per step")
    parser.add_argument("--target", action="append", required=True, help="a proxy URL per column")
    parser.add_argument("--step-seconds", type=float, default=15.0)
    parser.add_argument("--steps", type=int, default=0, help="rows to replay; 0: all")
    parser.add_argument("--start-row", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every rate")
    parser.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson")
    parser.add_argument("--payload-bytes", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per request")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seal-key", type=Path, default=None, help="hex AES key: send sealed payloads"
    )
    parser.add_argument("--max-rate", type=float, default=5000.0, help="requests/s per proxy")
    parser.add_argument("--max-in-flight", type=int, default=2000, help="requests awaiting answers")
    parser.add_argument(
        "--paced", action="store_true", help="start each step on a line of standard input"
    )
    args = parser.parse_args()
    try:
        rates = read_rates(args.rates)
        targets = [Target.parse(url) for url in args.target]
        args.seal = sealer(args.seal_key)
    except (OSError, ValueError) as err:
        fail("loadgen", str(err))
    if len(targets) != len(rates[0]):
        fail("loadgen", f"{len(targets)} targets for {len(rates[0])} columns of rates")
    for flag in ("step_seconds", "scale", "timeout", "max_rate", "max_in_flight"):
        if not 0 < getattr(args, flag) < math.inf:
            fail("loadgen", f"--{flag.replace('_', '-')} must be positive and finite")
    peak = max(max(row) for row in rates) * args.scale
    if peak > args.max_rate:
        fail("loadgen", f"a scaled rate of {peak:.6g}/s exceeds --max-rate {args.max_rate:g}")
    if peak * args.step_seconds * len(targets) > MAX_STEP_REQUESTS:
        fail("loadgen", f"a step would send over {MAX_STEP_REQUESTS} requests; shorten it")
    if args.steps < 0 or not 0 <= args.payload_bytes <= MAX_PAYLOAD:
        fail("loadgen", f"--steps must be >= 0 and --payload-bytes in [0, {MAX_PAYLOAD}]")
    if not 0 <= args.start_row < len(rates):
        fail("loadgen", "--start-row must be a row of the trace")
    asyncio.run(replay(args, rates, targets))


if __name__ == "__main__":
    main()
