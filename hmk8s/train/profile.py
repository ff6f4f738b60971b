"""Where a run's wall time goes: compiling, training, evaluating, checkpointing, the rest.

JAX reports every compilation (tracing, lowering, and XLA's compile or the persistent cache's
retrieval) through `jax.monitoring`; one listener adds them up for the whole process. A phase
(`WallTime.phase`) is charged its wall time less the compilation that happened inside it, so
a chunk's first call counts as compile, not train.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from functools import cache

import jax

PHASES = ("compile", "train", "evaluate", "checkpoint", "other")
_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
_BACKEND_COMPILE = _COMPILE_EVENTS[-1]
_CACHE_HIT = "/jax/compilation_cache/cache_hits"


class _Compilations:
    """This process's compile seconds and programs so far (backend compiles, cache hits)."""

    seconds = 0.0
    backend = 0
    hits = 0


_TOTAL = _Compilations()


@cache
def _listen() -> None:
    def duration(event: str, seconds: float, **_: object) -> None:
        if event in _COMPILE_EVENTS:
            _TOTAL.seconds += seconds
        if event == _BACKEND_COMPILE:
            _TOTAL.backend += 1

    def count(event: str, **_: object) -> None:
        if event == _CACHE_HIT:
            _TOTAL.hits += 1

    jax.monitoring.register_event_duration_secs_listener(duration)
    jax.monitoring.register_event_listener(count)


def persistent_cache_hits() -> int:
    """Programs this process has had back from JAX's persistent compilation cache so far."""
    _listen()
    return _TOTAL.hits


class WallTime:
    """The split of the wall time since it was made into `PHASES`."""

    def __init__(self) -> None:
        _listen()
        self.start = time.perf_counter()
        self._compile0 = _TOTAL.seconds
        self._compiled0 = _TOTAL.backend - _TOTAL.hits
        self.seconds = dict.fromkeys(PHASES[1:-1], 0.0)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Charge the block's wall time, less what it spent compiling, to ``name``."""
        t0, c0 = time.perf_counter(), _TOTAL.seconds
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0 - (_TOTAL.seconds - c0)

    def split(self) -> dict[str, float]:
        """Seconds per phase so far; ``other`` is the wall time no phase or compile took."""
        wall = time.perf_counter() - self.start
        out = {"compile": _TOTAL.seconds - self._compile0, **self.seconds}
        out["other"] = max(0.0, wall - sum(out.values()))
        return out

    def programs_compiled(self) -> int:
        """Programs XLA compiled since (the persistent cache's hits excepted)."""
        return _TOTAL.backend - _TOTAL.hits - self._compiled0
