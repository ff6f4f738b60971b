"""Waiting in tests for what a real server or node does in its own time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def eventually(
    fn: Callable[[], Any], timeout: float = 30.0, what: str = "", every: float = 0.05
) -> Any:
    """`fn()`'s first truthy value within `timeout` seconds; else the test fails naming `what`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"not within {timeout} s: {what}")
