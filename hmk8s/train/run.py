"""One training run's lifecycle, shared by the Anakin trainer and the actor/learner.

Both trainers open their run here, so each rule holds for both backends and lives once:

1. the run directory is resolved (``resume`` > ``run_dir`` > a fresh timestamped one) and a
   directory that already holds a run is refused unless the run resumes it;
2. the directory must be writable, before any work (or any cluster object) is made;
   in a multi-process run process 0 creates it and every other process must reach it;
3. checkpoints are opened and, on resume, the saved config is checked against this one;
4. the directory is locked (an advisory ``flock`` on ``<run_dir>/.lock``) while the run
   writes it: a second writer (two resumes of one run) is refused, naming the holder's PID;
5. SIGINT and SIGTERM take one stop path (`hmk8s.train.stop`): the Anakin loop stops at its
   next chunk boundary, the actor/learner at once, and the signal is remembered so the summary
   says so and the process exits with 128 + signal afterwards;
6. the log (``metrics.csv``, TensorBoard, console) appends, checkpoints are saved only over
   finite weights, and the summary is written last; process 0 alone writes these;
7. a full disk ends the run in one line that names the checkpoints still intact.

With several processes each check runs on every process and fails on all of them together
(`agree`), so that no process is left waiting for one that stopped.
"""

from __future__ import annotations

import contextlib
import errno
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

from hmk8s.agents.config import agent_name
from hmk8s.shell.run_dir import LOCK_FILE, RunDirError, hold_run_dir, make_writable, timestamped
from hmk8s.train.checkpoint import Checkpointer, CheckpointError, check_resume_config
from hmk8s.train.config import ConfigError, TrainConfig
from hmk8s.train.distributed import agree, is_primary
from hmk8s.train.runlog import QuietLog, RunLog
from hmk8s.train.stop import forget, interrupt_on_signals, requested, signal_name, stop_on_signals

#: What marks a directory as holding a run: any of these is there.
RUN_MARKERS = ("config.yaml", "metrics.csv", "summary.json", "checkpoints", "history", "tb")
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


class NonFiniteError(RuntimeError):
    """Training produced NaN or inf weights or loss; the last good checkpoint is kept."""


class DiskFullError(RuntimeError):
    """The run directory's disk filled up; the checkpoints written before are intact."""


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
    return timestamped(usecase, agent_name(cfg.heuristic))


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
        make_writable(directory)


def _reached(directory: Path) -> None:
    if not directory.is_dir():
        raise RunDirError(
            f"run_dir {directory} is not visible on process {jax.process_index()}: every "
            "process of a run must reach the same directory (a shared filesystem)"
        )


def intact_checkpoints(directory: Path) -> list[int]:
    """Steps of the complete checkpoints under ``directory/checkpoints`` (orbax renames a
    step's folder to its number only once it is fully written)."""
    folder = directory / "checkpoints"
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return sorted(int(n) for n in names if n.isdigit())


def disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it: orbax wraps TensorStore's errors) is a full disk."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in _DISK_FULL:
            return True
        if "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def disk_full_error(directory: Path) -> DiskFullError:
    """One line: the disk is full, and which checkpoints a resume can use."""
    steps = intact_checkpoints(directory)
    kept = (
        f"intact checkpoints: steps {', '.join(map(str, steps))}; resume={directory} continues "
        f"from step {steps[-1]} once space is freed"
        if steps
        else "no checkpoint was complete"
    )
    return DiskFullError(f"{directory}: the disk is full (no space left to write the run); {kept}")


def params_finite(params: Any) -> bool:
    """Whether every weight is finite (one reduction per leaf, on the device)."""
    return all(bool(jax.numpy.isfinite(leaf).all()) for leaf in jax.tree.leaves(params))


def check_finite(params: Any, kept: int | None = None) -> None:
    """Raise `NonFiniteError` when a weight is NaN or inf (``kept``: the last good
    checkpoint's step, named in the message)."""
    if not params_finite(params):
        where = "" if kept is None else f"; the last good checkpoint (step {kept}) is kept"
        raise NonFiniteError(
            "training diverged: the Q-network's weights are not finite (check "
            f"agent.learning_rate and the reward scale){where}"
        )


@dataclass
class Run:
    """An open run directory: its checkpoints, its log, and how the run ended."""

    cfg: TrainConfig
    directory: Path
    config: dict[str, Any]
    checkpoints: Checkpointer | None
    resume_step: int | None
    log: RunLog | QuietLog | None = None

    @property
    def signal(self) -> int | None:
        """The stop signal received (SIGINT, SIGTERM), or None: the run goes on."""
        return requested()

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
            check_finite(params, kept)

    def save(self, step: int, state: Any, meta: Mapping[str, Any]) -> None:
        """Checkpoint ``state`` at ``step`` (once per step) when checkpoints are on."""
        if self.checkpoints is not None and self.checkpoints.latest_step() != step:
            self.checkpoints.save(step, state, self.config, dict(meta), background=True)

    def finish(self, summary: dict[str, Any]) -> None:
        """Write ``summary.json`` (and the console table); the run's last act."""
        if self.signal is not None:
            summary["signal"] = signal_name(self.signal)
        if self.log is None:
            self.start_log(0, 0)
        self.log.write_summary(summary, table=self.signal is None)
        if self.signal is not None and is_primary():
            print(f"stopped by {summary['signal']}: {self._kept()}", file=sys.stderr, flush=True)

    def _kept(self) -> str:
        """What a stopped run leaves to continue from."""
        step = self.checkpoints.latest_step() if self.checkpoints is not None else None
        if step is None:
            return f"no checkpoint kept (checkpoint.enabled=false); summary in {self.directory}"
        return f"checkpoint step {step:,} kept; resume={self.directory} continues the run"

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
        if self.checkpoints is not None:
            self.checkpoints.close()


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
    interrupt: bool = False,
) -> Iterator[Run]:
    """Open ``directory`` for a run of ``cfg`` (``config``: its plain form, as saved).

    ``resume_view`` picks what of a config must match for a resume (the actor/learner ignores
    how its actor ran). ``interrupt``: a stop signal raises `KeyboardInterrupt` at once (the
    actor/learner's clean stop) instead of waiting for the loop to look at `Run.signal`.
    Raises `RunDirError` / `CheckpointError` before any work starts.
    """
    resuming = cfg.resume is not None
    forget()
    agree(lambda: _fresh_or_resumed(directory, resuming), "the run directory's check")
    agree(lambda: _created(directory), f"creating {directory}")
    agree(lambda: _reached(directory), f"reaching {directory}")
    had_lock = (directory / LOCK_FILE).exists()
    with contextlib.ExitStack() as stack:
        lock = hold_run_dir(directory) if is_primary() else contextlib.nullcontext()
        agree(lambda: stack.enter_context(lock), f"locking {directory}")
        # checked again under the lock: another writer may have started the run meanwhile
        agree(lambda: _fresh_or_resumed(directory, resuming), "the run directory's check")
        signals = interrupt_on_signals() if interrupt else stop_on_signals()
        with signals, _disk_full_named(directory):
            try:
                yield from _opened(cfg, config, directory, resume_view)
            except (RunDirError, CheckpointError):
                if is_primary() and not had_lock:  # refused: no lock file of ours stays
                    (directory / LOCK_FILE).unlink(missing_ok=True)
                raise


@contextlib.contextmanager
def _disk_full_named(directory: Path) -> Iterator[None]:
    try:
        yield
    except Exception as err:
        if disk_full(err):
            raise disk_full_error(directory) from err
        raise


def _opened(
    cfg: TrainConfig,
    config: Mapping[str, Any],
    directory: Path,
    resume_view: Callable[[dict[str, Any]], dict[str, Any]],
) -> Iterator[Run]:
    """The `Run` of a locked directory: its checkpoints opened and, on resume, checked."""
    resuming = cfg.resume is not None
    checkpoints = None
    had_checkpoints = (directory / "checkpoints").exists()
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
            if not had_checkpoints:  # a refused resume leaves the directory as it found it
                with contextlib.suppress(OSError):
                    (directory / "checkpoints").rmdir()
        raise
    try:
        yield run
    finally:
        run.close()
