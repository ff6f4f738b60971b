"""One training run's lifecycle, shared by the Anakin trainer and the actor/learner.

Both trainers open their run here, so each rule holds for both backends and lives once:

1. the run directory is resolved (``resume`` > ``run_dir`` > a fresh timestamped one) and a
   directory that already holds a run is refused unless the run resumes it;
2. the directory must be writable, before any work (or any cluster object) is made;
   in a multi-process run process 0 creates it and every other process must reach it;
3. checkpoints are opened and, on resume, the saved config is checked against this one;
4. SIGTERM is turned into the same clean stop as Ctrl-C, on the main thread, wherever envs
   were built, and remembered so the process exits with 128 + signal afterwards;
5. the log (``metrics.csv``, TensorBoard, console) appends, checkpoints are saved only over
   finite weights, and the summary is written last; process 0 alone writes these.

With several processes each check runs on every process and fails on all of them together
(`agree`), so that no process is left waiting for one that stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from hmk8s.train.checkpoint import Checkpointer, CheckpointError, check_resume_config
from hmk8s.train.config import ConfigError, TrainConfig
from hmk8s.train.distributed import agree, is_primary
from hmk8s.train.runlog import QuietLog, RunLog

#: What marks a directory as holding a run: any of these is there.
RUN_MARKERS = ("config.yaml", "metrics.csv", "summary.json", "checkpoints", "history", "tb")


class RunDirError(ValueError):
    """A run directory that cannot be used: it holds another run, or it cannot be written."""


class NonFiniteError(RuntimeError):
    """Training produced NaN or inf weights or loss; the last good checkpoint is kept."""


def default_run_dir(usecase: str, algo: str, root: str | Path = "runs") -> Path:
    """``runs/<usecase>-<algo>-<UTC timestamp>``."""
    return Path(root) / f"{usecase}-{algo}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def resolve_run_dir(cfg: TrainConfig, usecase: str) -> Path:
    """``resume`` names the run to continue; else ``run_dir``; else a fresh timestamped one."""
    if cfg.resume is not None:
        if cfg.run_dir is not None and Path(cfg.run_dir).resolve() != Path(cfg.resume).resolve():
            raise ConfigError(f"run_dir={cfg.run_dir} and resume={cfg.resume} name different runs")
        if not Path(cfg.resume).is_dir():
            raise CheckpointError(f"resume={cfg.resume}: no such run directory")
        return Path(cfg.resume)
    if cfg.run_dir is not None:
        return Path(cfg.run_dir)
    if jax.process_count() > 1:
        raise ConfigError(
            f"a run of {jax.process_count()} processes needs run_dir=<a directory every process "
            "reaches>, the same on each (or resume=)"
        )
    return default_run_dir(usecase, "haql" if cfg.heuristic else "dqn")


def holds_run(directory: Path) -> bool:
    """Whether ``directory`` holds (part of) a run: a config, metrics, summary or checkpoint."""
    return any((directory / name).exists() for name in RUN_MARKERS)


def _fresh_or_resumed(directory: Path, resuming: bool) -> None:
    if not resuming and holds_run(directory):
        raise RunDirError(
            f"{directory} already holds a run: pass resume={directory} to continue it, or "
            "choose another run_dir"
        )


def _created(directory: Path) -> None:
    """Process 0 creates ``directory`` (and checks it can write there)."""
    if is_primary():
        _writable(directory)


def _reached(directory: Path) -> None:
    if not directory.is_dir():
        raise RunDirError(
            f"run_dir {directory} is not visible on process {jax.process_index()}: every "
            "process of a run must reach the same directory (a shared filesystem)"
        )


def _writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".hmk8s-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise RunDirError(f"run_dir {directory} cannot be written: {err.strerror or err}") from err


def params_finite(params: Any) -> bool:
    """Whether every weight is finite (one reduction per leaf, on the device)."""
    return all(bool(jax.numpy.isfinite(leaf).all()) for leaf in jax.tree.leaves(params))


@dataclass
class Run:
    """An open run directory: its checkpoints, its log, and how the run ended."""

    cfg: TrainConfig
    directory: Path
    config: dict[str, Any]
    checkpoints: Checkpointer | None
    resume_step: int | None
    log: RunLog | QuietLog | None = None
    signal: int | None = None

    def restore(self, fresh: Any) -> Any:
        """The resumed state in the structure of ``fresh``, or ``fresh`` for a new run."""
        if self.resume_step is None:
            return fresh
        state, _, _ = self.checkpoints.restore(fresh, self.resume_step)
        return state

    def start_log(self, total_steps: int, start_steps: int) -> RunLog | QuietLog:
        """Open ``metrics.csv``, TensorBoard and the console progress (appending on resume);
        on a process other than 0, a log that writes nothing."""
        if not is_primary():
            self.log = QuietLog()
            return self.log
        self.log = RunLog(
            self.directory,
            self.config,
            total_steps,
            start_steps=start_steps,
            tensorboard=self.cfg.log.tensorboard,
            progress=self.cfg.log.progress,
        )
        return self.log

    def check_finite(self, params: Any) -> None:
        """With ``halt_on_nan``, stop before NaN/inf weights can be saved or evaluated."""
        if self.cfg.halt_on_nan and not params_finite(params):
            kept = self.checkpoints.latest_step() if self.checkpoints is not None else None
            where = "" if kept is None else f"; the last good checkpoint (step {kept}) is kept"
            raise NonFiniteError(
                "training diverged: the Q-network's weights are not finite (check "
                f"agent.learning_rate and the reward scale){where}"
            )

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        """Checkpoint ``state`` at ``step`` (once per step) when checkpoints are on."""
        if self.checkpoints is not None and self.checkpoints.latest_step() != step:
            self.checkpoints.save(step, state, self.config, dict(meta))

    def finish(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` (and the console table); the run's last act."""
        if self.signal is not None:
            summary["signal"] = signal.Signals(self.signal).name
        if self.log is None:
            self.start_log(0, 0)
        self.log.write_summary(summary)

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.checkpoints is not None:
            self.checkpoints.close()


@contextlib.contextmanager
def _sigterm_as_interrupt(run: Run) -> Iterator[None]:
    """SIGTERM takes Ctrl-C's path (a clean stop, checkpoint, cleanup); noted on the run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        run.signal = signum
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _resume_step(
    checkpoints: Checkpointer | None,
    current: dict[str, Any],
    resume_view: Callable[[dict[str, Any]], dict[str, Any]],
) -> int:
    """The step a resumed run starts from, once its config matches the checkpoint's."""
    if checkpoints is None:
        raise CheckpointError("resume needs checkpoint.enabled=true")
    step, saved, _ = checkpoints.read_config()
    check_resume_config(resume_view(saved), current)
    return step


@contextlib.contextmanager
def open_run(
    cfg: TrainConfig,
    config: Mapping[str, Any],
    directory: Path,
    *,
    resume_view: Callable[[dict[str, Any]], dict[str, Any]] = lambda c: c,
) -> Iterator[Run]:
    """Open ``directory`` for a run of ``cfg`` (``config``: its plain form, as saved).

    ``resume_view`` picks what of a config must match for a resume (the actor/learner ignores
    how its actor ran). Raises `RunDirError` / `CheckpointError` before any work starts.
    """
    resuming = cfg.resume is not None
    agree(lambda: _fresh_or_resumed(directory, resuming), "the run directory's check")
    agree(lambda: _created(directory), f"creating {directory}")
    agree(lambda: _reached(directory), f"reaching {directory}")
    checkpoints = None
    if cfg.checkpoint.enabled:
        checkpoints = Checkpointer(
            directory / "checkpoints", keep=cfg.checkpoint.keep, replay=cfg.checkpoint.replay
        )
    try:
        step = None
        if resuming:
            step = agree(
                lambda: _resume_step(checkpoints, resume_view(dict(config)), resume_view),
                "the resume check",
            )
        run = Run(cfg, directory, dict(config), checkpoints, step)
    except BaseException:
        if checkpoints is not None:
            checkpoints.close()
        raise
    try:
        with _sigterm_as_interrupt(run):
            yield run
    finally:
        run.close()
