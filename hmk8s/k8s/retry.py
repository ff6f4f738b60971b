"""Retries for API calls: which failures are transient, and how long to wait before the next try.

A control loop that gives up on the first 429 or 503 would drop steps on every busy API server,
and one that retries in lock-step would make it busier; so transient failures are retried with
capped exponential backoff and jitter, and a server's `Retry-After` is honoured.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from hmk8s.k8s.config import Api

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUS = frozenset({429, 500, 502, 503, 504})


class ApiCallError(RuntimeError):
    """A call that still failed after every allowed attempt (or failed permanently)."""

    def __init__(self, op: str, status: int | None, detail: str) -> None:
        super().__init__(f"{op}: {detail}" + (f" (HTTP {status})" if status else ""))
        self.op = op
        self.status = status


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def backoff_delay(policy: Api, attempt: int, rng: random.Random) -> float:
    """Equal jitter: half the capped exponential step, plus a random share of the other half."""
    step = min(policy.backoff_max_s, policy.backoff_base_s * 2**attempt)
    return step / 2 + rng.uniform(0, step / 2)


def classify(exc: BaseException) -> tuple[bool, int | None, float | None]:
    """(transient?, HTTP status, Retry-After seconds) of a failed call."""
    import urllib.error

    import urllib3
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, urllib.error.HTTPError):
        retry_after = parse_retry_after(exc.headers.get("Retry-After") if exc.headers else None)
        return exc.code in TRANSIENT_STATUS, exc.code, retry_after
    if isinstance(exc, urllib.error.URLError):
        return True, None, None
    if isinstance(exc, ApiException):
        status = exc.status or None
        headers = exc.headers or {}
        retry_after = parse_retry_after(headers.get("Retry-After")) if headers else None
        return status in TRANSIENT_STATUS or status is None, status, retry_after
    if isinstance(exc, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError):
        return True, None, None
    return False, None, None


@dataclass
class RetryStats:
    """Counters a step reports in `info`."""

    attempts: int = 0
    retries: int = 0
    conflicts: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    waited_s: float = 0.0

    def count(self, status: int | None) -> None:
        key = str(status) if status else "timeout/connection"
        self.by_status[key] = self.by_status.get(key, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "attempts": self.attempts,
            "retries": self.retries,
            "conflicts": self.conflicts,
            "by_status": dict(self.by_status),
            "waited_s": round(self.waited_s, 3),
        }


@dataclass
class Retrier:
    """Runs one API call under the policy; `sleep` is injectable so tests can count waits."""

    policy: Api
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    stats: RetryStats = field(default_factory=RetryStats)

    def call(self, op: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        attempt = 0
        while True:
            self.stats.attempts += 1
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                transient, status, retry_after = classify(exc)
                if not transient:
                    raise
                self.stats.count(status)
                attempt += 1
                if attempt == self.policy.max_attempts:
                    raise ApiCallError(op, status, f"gave up after {attempt} attempts") from exc
                delay = backoff_delay(self.policy, attempt - 1, self.rng)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, self.policy.retry_after_max_s))
                log.info(
                    "%s: %s, retry %d in %.2fs", op, status or type(exc).__name__, attempt, delay
                )
                self.stats.retries += 1
                self.stats.waited_s += delay
                self.sleep(delay)
