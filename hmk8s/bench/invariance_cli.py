"""Check that a change moved code without changing behaviour.

    python scripts/check_invariance.py record tests/data/invariance.json   # before the change
    python scripts/check_invariance.py compare tests/data/invariance.json  # after it

It runs a fixed short training run (its ``params_sha256``) and
``scripts/evaluate.py usecase=ml seeds=2 total_steps=40000 agent.lr_decay_updates=13600`` (its
``results.json`` less the wall-clock fields), and records or compares both. Bit-identical
results are only expected on the same machine and jax version, so the record names them and a
compare on another refuses.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import jax

from hmk8s.shell.exit import refuse
from hmk8s.shell.programs import program

# The learning rate's annealing length is set: `auto` would follow these short runs' own
# lengths, and the check is about the code, not about a default derived from total_steps.
# These are the lengths of the shipped 300,000-step runs (the README's, the evaluation's).
TRAIN = [
    "usecase=ml",
    "heuristic=true",
    "total_steps=20000",
    "chunk_steps=10000",
    "agent.lr_decay_updates=18200",
    "log.progress=false",
]
EVALUATE = ["usecase=ml", "seeds=2", "total_steps=40000", "agent.lr_decay_updates=13600"]
WALL_CLOCK = {"wall_seconds", "train_seconds", "seconds", "date"}


def _run(name: str, *overrides: str) -> None:
    subprocess.run(program(name, *overrides), check=True)


def _without_wall_clock(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_wall_clock(v) for k, v in node.items() if k not in WALL_CLOCK}
    if isinstance(node, list):
        return [_without_wall_clock(v) for v in node]
    return node


def _differences(a: Any, b: Any, path: str = "results") -> list[str]:
    """Dotted paths where two JSON trees differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b))
            for d in _differences(a.get(k), b.get(k), f"{path}.{k}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        pairs = enumerate(zip(a, b, strict=True))
        return [d for i, (x, y) in pairs for d in _differences(x, y, f"{path}[{i}]")]
    return [] if a == b else [path]


def measure() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        _run("train", *TRAIN, f"run_dir={tmp}/train")
        sha = json.loads(Path(tmp, "train", "summary.json").read_text())["params_sha256"]
        _run("evaluate", *EVALUATE, f"run_dir={tmp}/evaluate")
        results = json.loads(Path(tmp, "evaluate", "results.json").read_text())
    return {
        "machine": platform.machine(),
        "jax": jax.__version__,
        "params_sha256": sha,
        "results": _without_wall_clock(results["results"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("record", "compare"))
    parser.add_argument("path", type=Path)
    args = parser.parse_args()
    now = measure()
    if args.mode == "record":
        args.path.write_text(json.dumps(now, indent=1) + "\n")
        print(f"recorded {args.path}: params_sha256 {now['params_sha256']}")
        return 0
    then = json.loads(args.path.read_text())
    if (then["machine"], then["jax"]) != (now["machine"], now["jax"]):
        return refuse(f"recorded on {then['machine']} with jax {then['jax']}")
    same_sha = then["params_sha256"] == now["params_sha256"]
    differ = _differences(then["results"], now["results"])
    print(f"params_sha256 identical: {same_sha}; results.json identical: {not differ}")
    for path in differ[:10]:
        print(f"  differs: {path}")
    same_results = not differ
    return 0 if same_sha and same_results else 1
