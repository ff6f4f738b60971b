"""Run one of `scripts/` as a user would, for the end-to-end tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(
    name: str,
    cwd: Path,
    *overrides: str,
    cache: Path | None = None,
    timeout: int = 600,
    xla_flags: str = "",
) -> subprocess.CompletedProcess:
    """``python scripts/<name> overrides...`` in ``cwd``. These runs check behaviour, not speed:
    compile without optimisation, and with ``cache`` let later runs reuse compiled programs.
    ``xla_flags`` adds to XLA's flags (e.g. forced host devices)."""
    env = {**os.environ, "XLA_FLAGS": f"--xla_backend_optimization_level=0 {xla_flags}"}
    if cache is not None:
        env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
    return subprocess.run(
        [sys.executable, str(SCRIPTS / name), *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
