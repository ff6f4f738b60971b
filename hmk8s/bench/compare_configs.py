"""The README command under several configs, back to back: each as its own ``scripts/train.py``
process (what a user runs and waits for: start-up, compilation, training, checkpoints and the
final evaluation), its wall-clock and its ``summary.json``, and wall-clock ratios against the
first config measured in the same call."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hmk8s.bench.time_to_quality import Variant
from hmk8s.shell.programs import program


def run_train(args: Sequence[str], run_dir: Path) -> dict[str, Any]:
    """``scripts/train.py ARGS run_dir=RUN_DIR`` as a child process: its wall-clock seconds and
    summary; a failed run raises `RuntimeError` with the child's last error line."""
    command = program("train", *args, f"run_dir={run_dir}", "log.progress=false")
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"train.py {' '.join(args)} exited {done.returncode}: {last}")
    return {"wall_seconds": wall, "summary": json.loads((run_dir / "summary.json").read_text())}


def compare_configs(
    base: Sequence[str],
    variants: Sequence[Variant],
    out_dir: Path,
    log: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Run ``base + variant.overrides`` for each variant in order (each in
    ``out_dir/<name>``); one row per variant with the greedy return (mean over seeds and per
    seed), hpa's return on the same episodes, env steps, updates, wall-clock and its ratio to
    the first variant's."""
    rows: list[dict[str, Any]] = []
    for v in variants:
        log(f"{v.name}: train.py {' '.join([*base, *v.overrides])}")
        done = run_train([*base, *v.overrides], out_dir / v.name)
        s = done["summary"]
        rows.append(
            {
                "config": v.name,
                "overrides": list(v.overrides),
                "return": s["eval"]["return"],
                "per_seed": [p["return"] for p in s["eval"]["per_seed"]],
                "hpa": s["baselines"]["hpa"]["return"],
                "env_steps": s["env_steps"],
                "updates": s["updates"],
                "wall_seconds": done["wall_seconds"],
                "wall_ratio": done["wall_seconds"] / rows[0]["wall_seconds"] if rows else 1.0,
            }
        )
        log(f"  return {rows[-1]['return']:.1f}  wall {done['wall_seconds']:.0f} s")
    return rows
