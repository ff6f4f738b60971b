"""A training command's fixed costs, cold and warm: where its wall time goes besides training.

`profile_command` runs ``scripts/train.py`` twice with an empty cache folder of its own: the
first run (cold) compiles every program and scores the baseline, the second (warm) reads them
back from the cache. Each run's ``summary.json`` splits the training's wall time (`WallTime`); the
time before it (Python, JAX and Hydra starting, the config checked) is added to ``other``.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from hmk8s.shell.programs import program
from hmk8s.train.cache import CACHE_ENV
from hmk8s.train.profile import PHASES

README_COMMAND = ("usecase=ml", "heuristic=true")
#: The phases that are not the training loop: what the fixed costs are.
FIXED = tuple(p for p in PHASES if p != "train")


def _run(overrides: list[str], run_dir: Path, cache: Path) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env[CACHE_ENV] = str(cache)
    command = program("train", *overrides, f"run_dir={run_dir}")
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr.strip()[-2000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    seconds = dict(summary["seconds"])
    seconds["other"] += max(0.0, wall - sum(seconds.values()))
    return {
        "wall_seconds": wall,
        "seconds": seconds,
        "fixed_share": sum(seconds[p] for p in FIXED) / wall,
        "programs_compiled": summary["programs_compiled"],
        "programs_loaded": summary["programs_loaded"],
        "params_sha256": summary["params_sha256"],
        "eval": summary.get("eval"),
        "baselines": summary.get("baselines"),
    }


def profile_command(overrides: list[str]) -> dict[str, dict[str, Any]]:
    """``{"cold": ..., "warm": ...}``: two runs of ``scripts/train.py overrides`` sharing a fresh
    cache folder, each with its wall time, its split, the share of the fixed costs in it and
    how many programs XLA compiled."""
    with tempfile.TemporaryDirectory(prefix="hmk8s-profile-") as tmp:
        cache = Path(tmp) / "cache"
        return {run: _run(overrides, Path(tmp) / run, cache) for run in ("cold", "warm")}


def table(result: dict[str, dict[str, Any]]) -> str:
    """The split as a text table: seconds and share of the wall time, cold and warm."""
    lines = [f"{'':12} {'cold s':>8} {'cold %':>7} {'warm s':>8} {'warm %':>7}"]
    for phase in PHASES:
        cells = [
            f"{r['seconds'][phase]:>8.1f} {100 * r['seconds'][phase] / r['wall_seconds']:>7.1f}"
            for r in result.values()
        ]
        lines.append(f"{phase:12} {' '.join(cells)}")
    walls = [f"{r['wall_seconds']:>8.1f} {100.0:>7.1f}" for r in result.values()]
    lines.append(f"{'wall':12} {' '.join(walls)}")
    shares = [f"{'':>8} {100 * r['fixed_share']:>7.1f}" for r in result.values()]
    lines.append(f"{'not train':12} {' '.join(shares)}")
    for label, field in (("programs", "programs_compiled"), ("read back", "programs_loaded")):
        counts = [f"{r[field]:>8d} {'':>7}" for r in result.values()]
        lines.append(f"{label:12} {' '.join(counts)}")
    return "\n".join(lines)
