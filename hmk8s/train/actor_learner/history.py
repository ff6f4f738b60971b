"""Per-env step history: one CSV per env, one row per transition written to the replay.

The original notebooks kept such a record of every step (state, action, reward, latency, pods);
here it is ``<run_dir>/history/env<i>.csv``. Rows are written when the transition reaches the
replay, so a checkpoint's books say exactly which rows it covers. A file is only ever appended
to: on resume, rows past the checkpoint (written after it by a run that then crashed) stay, and
the resumed run's rows follow them with the same ``env_step`` numbers; where both exist, the
later row is the one the replay holds.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np

from hmk8s.domain.metrics import HISTORY_COLUMNS
from hmk8s.train.actor_learner.core import StepBook
from hmk8s.train.actor_learner.env_worker import StepRecord


def history_path(directory: Path, env: int) -> Path:
    return directory / f"env{env}.csv"


def read_history(path: Path) -> list[dict[str, str]]:
    """The rows of one env's history file (empty when absent)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _state(obs: np.ndarray) -> str:
    return " ".join(f"{x:.4g}" for x in np.asarray(obs).ravel())


class HistoryWriter:
    """Appends rows to every env's CSV; call `write` from one thread only (the learner's)."""

    def __init__(
        self,
        directory: Path,
        env_steps: np.ndarray,
        describe: Callable[[int], str] = str,
    ) -> None:
        self.directory = directory
        self.describe = describe
        directory.mkdir(parents=True, exist_ok=True)
        self._files: list[IO[str]] = []
        self._writers: list[csv.DictWriter] = []
        for env, kept_steps in enumerate(np.asarray(env_steps)):
            path = history_path(directory, env)
            appending = path.exists() and int(kept_steps) > 0
            f = path.open("a" if appending else "w", newline="")
            writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
            if not appending:
                writer.writeheader()
                f.flush()
            self._files.append(f)
            self._writers.append(writer)

    def write(self, record: StepRecord, place: StepBook) -> None:
        t = record.transition
        info: dict[str, Any] = record.info
        row = {
            "wall_time": f"{time.time():.3f}",
            "env": record.env,
            "env_step": place.env_step,
            "episode": place.episode,
            "t": place.episode_step,
            "action": int(t.action),
            "action_name": self.describe(int(t.action)),
            "reward": f"{float(t.reward):.6g}",
            "episode_return": f"{place.episode_return:.6g}",
            "terminated": int(bool(t.terminated)),
            "truncated": int(record.truncated),
            **{k: _cell(v) for k, v in info.items()},
            "hint": record.hint,
            "step_s": f"{record.step_s:.3f}",
            "state": _state(t.obs),
        }
        self._writers[record.env].writerow(row)
        self._files[record.env].flush()

    def close(self) -> None:
        for f in self._files:
            if not f.closed:
                f.close()


def _cell(value: Any) -> Any:
    if isinstance(value, bool | np.bool_):
        return int(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return value
