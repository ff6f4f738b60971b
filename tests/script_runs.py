"""Run one of `scripts/` as a user would, for the end-to-end tests."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from functools import cache as once
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


@once
def session_cache() -> Path:
    """One compilation cache for every script run of this test process (removed when it
    exits): many runs train the same tiny config, and each compile costs seconds."""
    folder = Path(tempfile.mkdtemp(prefix="hmk8s-test-jax-cache-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def run_script(
    name: str,
    cwd: Path,
    *overrides: str,
    cache: Path | None = None,
    timeout: int = 600,
    xla_flags: str = "",
) -> subprocess.CompletedProcess:
    """``python scripts/<name> overrides...`` in ``cwd``. These runs check behaviour, not speed:
    compile without optimisation, and let later runs reuse compiled programs through ``cache``
    (default: `session_cache`).
    ``xla_flags`` adds to XLA's flags (e.g. forced host devices)."""
    return subprocess.run(
        _command(name, overrides),
        cwd=cwd,
        env=_environment(cache, xla_flags),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_script(
    name: str, cwd: Path, *overrides: str, cache: Path | None = None, xla_flags: str = ""
) -> subprocess.Popen:
    """`run_script` in the background, for tests that act while it runs."""
    return subprocess.Popen(
        _command(name, overrides),
        cwd=cwd,
        env=_environment(cache, xla_flags),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _command(name: str, overrides: tuple[str, ...]) -> list[str]:
    return [sys.executable, str(SCRIPTS / name), *overrides]


def _environment(cache: Path | None, xla_flags: str = "") -> dict[str, str]:
    env = {**os.environ, "XLA_FLAGS": f"--xla_backend_optimization_level=0 {xla_flags}".strip()}
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache or session_cache())
    env["HMK8S_CACHE_DIR"] = str(cache or session_cache())  # the scores' cache: never ~/.cache
    return env
