"""Host-side run outputs: run directory, config.yaml, metrics.csv, TensorBoard, console.

Called between compiled chunks only, so nothing here touches the device loop.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from hmk8s.domain.metrics import STEP_METRICS, TRAIN_COLUMNS


def chunk_rows(metrics: Mapping[str, Any], sps: float) -> list[dict[str, Any]]:
    """One metrics.csv row per seed from a chunk's device metrics (leading axis = seed)."""
    host = {k: np.asarray(v) for k, v in metrics.items()}
    rows = []
    for seed in range(host["env_steps"].shape[0]):
        row: dict[str, Any] = {"seed": seed, "sps": sps}
        for name, values in host.items():
            key = name.removeprefix("env/")
            key = STEP_METRICS.get(key, key) if name.startswith("env/") else key
            value = values[seed].item()
            row[key] = value
        rows.append(row)
    return rows


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


class RunLog:
    """The files and console output of one training run (a resumed run appends)."""

    def __init__(
        self,
        run_dir: Path,
        config: Mapping[str, Any],
        total_steps: int,
        *,
        start_steps: int = 0,
        tensorboard: bool = True,
        progress: bool = True,
    ) -> None:
        self.run_dir = run_dir
        self.console = Console(stderr=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self._csv_path = run_dir / "metrics.csv"
        self._logged_up_to = self._last_logged_step() if start_steps else -1
        appending = self._logged_up_to >= 0
        self._csv_file = self._csv_path.open("a" if appending else "w", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=TRAIN_COLUMNS, extrasaction="ignore")
        if not appending:
            self._csv.writeheader()
            self._csv_file.flush()
        self._tb = None
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tb"), purge_step=start_steps or None)
        self._progress = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.completed:,}/{task.total:,} env steps"),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not progress,
        )
        self._task = self._progress.add_task(
            "train", total=total_steps, completed=start_steps, status=""
        )
        self._progress.start()

    def _last_logged_step(self) -> int:
        """The newest env step an earlier part of this run logged (-1: none). A resumed run
        appends after it: it replays the steps since its checkpoint exactly, so rows up to
        there are already in the file and are not written twice."""
        if not self._csv_path.exists():
            return -1
        with self._csv_path.open(newline="") as f:
            steps = [int(r["env_steps"]) for r in csv.DictReader(f) if r.get("env_steps")]
        return max(steps, default=-1)

    def log_chunk(self, rows: list[dict[str, Any]]) -> None:
        """Append one chunk's rows (one per seed) to the CSV, TensorBoard and the progress bar."""
        fresh = [r for r in rows if int(r["env_steps"]) > self._logged_up_to]
        self._csv.writerows([{k: _csv_value(v) for k, v in r.items()} for r in fresh])
        self._csv_file.flush()
        step = int(rows[0]["env_steps"])
        if self._tb is not None:
            for row in rows:
                prefix = f"seed{row['seed']}/" if len(rows) > 1 else ""
                for key, value in row.items():
                    if key not in ("seed", "env_steps") and not _is_nan(value):
                        self._tb.add_scalar(f"{prefix}train/{key}", value, step)
            self._tb.flush()
        returns = [r["episode_return"] for r in rows if not _is_nan(r["episode_return"])]
        status = f"return {np.mean(returns):.3g}" if returns else ""
        self._progress.update(
            self._task, completed=step, status=f"{status}  {rows[0]['sps']:,.0f} steps/s"
        )

    def write_summary(self, summary: Mapping[str, Any], table: bool = True) -> None:
        """summary.json, and (with ``table``) a one-screen table of it on the console."""
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.close()
        if not table:
            return
        view = Table(title=f"hmk8s run  {self.run_dir}", show_header=True)
        view.add_column("")
        view.add_column("value", justify="right")
        for key in ("usecase", "heuristic", "seeds", "env_steps", "updates", "wall_seconds"):
            if key in summary:
                view.add_row(key, _fmt(summary[key]))
        view.add_row("steps/s", _fmt(summary["steps_per_second"]))
        for group in ("eval", "baselines"):
            for name, block in _flat_blocks(summary.get(group)):
                for key, value in block.items():
                    if key != "per_seed" and not isinstance(value, list | dict):
                        view.add_row(f"{name} {key}", _fmt(value))
        view.add_row("params sha256", str(summary["params_sha256"])[:16] + "…")
        self.console.print(view)

    def close(self) -> None:
        self._progress.stop()
        if not self._csv_file.closed:
            self._csv_file.close()
        if self._tb is not None:
            self._tb.close()
            self._tb = None


class QuietLog:
    """The log of every process but process 0 in a multi-process run: the run's files and
    console output are process 0's, so these write nothing."""

    def log_chunk(self, rows: list[dict[str, Any]]) -> None:
        """Nothing: process 0 logs the chunk."""

    def write_summary(self, summary: Mapping[str, Any], table: bool = True) -> None:
        """Nothing: process 0 writes summary.json."""

    def close(self) -> None:
        """Nothing to close."""


def _flat_blocks(group: Any) -> list[tuple[str, Mapping[str, Any]]]:
    if not isinstance(group, Mapping):
        return []
    if all(isinstance(v, Mapping) for v in group.values()):
        return [(name, block) for name, block in group.items()]
    return [("eval", group)]


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def params_sha256(params: Any) -> str:
    """Digest of every parameter's bytes in pytree order: equal digests, equal weights."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        arr = np.asarray(leaf)
        digest.update(str((arr.dtype, arr.shape)).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()
