"""The imperative shell around the compiled loop: chunks, checkpoints, logs, evaluation.

`run_training` works for any `EnvSpec`; environment-specific evaluation (the
hmk8s metrics and baselines) comes in through the optional ``evaluator``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hmk8s.envs.spec import EnvSpec
from hmk8s.train.anakin.loop import (
    Trainer,
    greedy_returns,
    init_seeds,
    make_chunk_fn,
    make_trainer,
)
from hmk8s.train.cache import ProgramCache
from hmk8s.train.config import ConfigError, RunSpec
from hmk8s.train.distributed import check_topology, resolve_devices, topology
from hmk8s.train.profile import WallTime
from hmk8s.train.run import open_run
from hmk8s.train.runlog import chunk_rows, params_sha256
from hmk8s.train.state import TrainState

# evaluator(trainer, seed-stacked params, key) -> {"eval": {...}, "baselines": {...}}
Evaluator = Callable[[Trainer, Any, jax.Array], dict[str, Any]]
GREEDY_MAX_STEPS = 1_000


def chunk_plan(done_iters: int, total_iters: int, chunk_iters: int) -> list[int]:
    """Iterations per chunk from ``done_iters`` to ``total_iters``, at most ``chunk_iters`` each.

    The remaining iterations are split into equal chunks when one of their divisors lies
    between ``chunk_iters / 2`` and ``chunk_iters`` (one program of that length); otherwise
    the last chunk is short (`split_plan`).
    """
    remaining = total_iters - done_iters
    if remaining <= 0:
        return []
    longest = min(chunk_iters, remaining)
    equal = next(n for n in range(longest, 0, -1) if remaining % n == 0)  # 1 always divides
    if 2 * equal >= longest:
        return [equal] * (remaining // equal)
    return split_plan(remaining, chunk_iters)


def split_plan(total_iters: int, chunk_iters: int) -> list[int]:
    """``total_iters`` as chunks of ``chunk_iters``, the last one shorter when they do not
    divide; a learning curve takes ``chunk_iters = ceil(total_iters / points)``, so its points
    lie evenly and the run is exactly ``total_iters`` long."""
    full, rest = divmod(total_iters, chunk_iters)
    return [chunk_iters] * full + ([rest] if rest else [])


@dataclass(frozen=True)
class Chunk:
    """A chunk just run: its place in the plan, its iterations, the state after it, its
    metrics (seed-stacked, on the host), the seconds it ran and those its program took to
    compile first (0 after the first chunk)."""

    index: int
    iters: int
    state: TrainState
    metrics: dict[str, Any]
    seconds: float
    compile_seconds: float


def piece_length(plan: list[int]) -> int:
    """The length of the one chunk program that runs every chunk of ``plan``: their greatest
    common divisor, so each chunk is a whole number of calls (a chunk's weights do not depend
    on how its iterations are split into calls, tested), and a plan whose last chunk is
    shorter compiles one program, not two."""
    return math.gcd(*plan)


def merge_pieces(pieces: list[dict[str, Any]], updates_before: Any) -> dict[str, Any]:
    """One chunk's metrics from those of the calls it ran as (`chunk_metrics` of each):
    counters and schedules at its end, its episodes summed, the mean return per episode and
    the mean loss per update weighted by them, the env's per-step means averaged (the calls
    take equal steps). ``updates_before``: the updates counter before the chunk."""
    if len(pieces) == 1:
        return pieces[0]
    merged = dict(pieces[-1])
    episodes = np.sum([p["episodes"] for p in pieces], axis=0)
    returns = np.sum(
        [np.where(p["episodes"] > 0, p["episode_return"] * p["episodes"], 0.0) for p in pieces],
        axis=0,
    )
    counts = np.diff([np.asarray(updates_before), *[p["updates"] for p in pieces]], axis=0)
    losses = np.sum(
        [np.where(c > 0, p["loss"] * c, 0.0) for p, c in zip(pieces, counts, strict=True)], axis=0
    )
    updates = counts.sum(axis=0)
    merged["episodes"] = episodes
    merged["episode_return"] = np.where(episodes > 0, returns / np.maximum(episodes, 1), np.nan)
    merged["loss"] = np.where(updates > 0, losses / np.maximum(updates, 1), np.nan)
    for name in merged:
        if name.startswith("env/"):
            merged[name] = np.mean([p[name] for p in pieces], axis=0)
    return {k: np.asarray(v, np.asarray(pieces[-1][k]).dtype) for k, v in merged.items()}


def run_chunks(
    trainer: Trainer,
    state: TrainState,
    plan: list[int],
    *,
    programs: ProgramCache | None = None,
    check_finite: Callable[[Any], None],
    on_chunk: Callable[[Chunk], None] = lambda chunk: None,
    at_boundary: Callable[[Chunk], None] = lambda chunk: None,
    stopped: Callable[[], bool] = lambda: False,
    wall: WallTime | None = None,
) -> TrainState:
    """The one experiment loop: run the chunks of ``plan`` on ``state`` (all seeds, any
    device layout, either learner) with one compiled program (`piece_length`), and return
    the state reached.

    After each chunk, ``on_chunk`` sees it (the log), ``check_finite`` gets the weights
    (raising halts the run before they are saved or evaluated) and ``at_boundary`` sees it
    (checkpoints, learning-curve points). ``stopped()`` ends the loop before the next chunk,
    also when it turned true while the program compiled. Training, the evaluation's
    per-seed training and time to quality differ only in these."""
    programs = programs or ProgramCache(None, {})
    wall = wall or WallTime()
    length = piece_length(plan) if plan else 0
    program = None
    for index, n in enumerate(plan):
        if stopped():
            break
        t0 = time.perf_counter()
        if program is None:
            program = programs.compile(f"chunk/{length}", make_chunk_fn(trainer, length), state)
            if stopped():
                break
        compile_seconds = time.perf_counter() - t0
        with wall.phase("train"):
            t0 = time.perf_counter()
            before = jax.device_get(state.learner.updates) if n > length else None  # donated
            pieces = []
            for _ in range(n // length):
                state, metrics = program(state)
                pieces.append(metrics)
            metrics = merge_pieces(jax.device_get(pieces), before)
            seconds = time.perf_counter() - t0
        chunk = Chunk(index, n, state, metrics, seconds, compile_seconds)
        on_chunk(chunk)
        check_finite(state.learner.params)
        at_boundary(chunk)
    return state


def greedy_eval(trainer: Trainer, params: Any, key: jax.Array, episodes: int) -> dict[str, Any]:
    """Mean first-episode return of the greedy Q policy, per seed and overall (any env)."""
    returns, _ = greedy_returns(
        trainer.spec, trainer.network.apply, params, key, episodes, GREEDY_MAX_STEPS
    )
    per_seed = [float(r) for r in np.mean(np.asarray(returns), axis=1)]
    return {"return": float(np.mean(per_seed)), "per_seed": per_seed}


def run_training(
    run_spec: RunSpec,
    spec: EnvSpec,
    run_dir: Path,
    *,
    evaluator: Evaluator | None = None,
    programs: ProgramCache | None = None,
) -> dict[str, Any]:
    """Train ``cfg.seeds`` seeds on ``spec`` for ``cfg.total_steps`` env steps each, ``cfg``
    being ``run_spec.config``; summary.

    A stop signal (`hmk8s.train.stop`) ends the run at the next chunk boundary, also when it
    came while compiling: the state reached is checkpointed (a complete checkpoint, which
    ``resume`` continues), the evaluation is skipped and the summary names the signal. The
    summary's ``seconds`` split the wall time into compile, train, evaluate, checkpoint and
    other (`WallTime`). ``programs`` keeps the init and chunk programs between runs (None:
    compiled every time)."""
    wall0 = time.perf_counter()
    wall = WallTime()
    cfg, name = run_spec.config, run_spec.name
    programs = programs or ProgramCache(None, {})
    a = cfg.agent
    devices = resolve_devices(
        cfg.devices, cfg.num_envs, a.buffer_size, a.batch_size, cfg.seed_devices, cfg.seeds
    )
    if a.kind == "pqn" and devices != 1:
        raise ConfigError(f"agent.kind=pqn trains on one device: set devices=1 (not {devices})")
    trainer = make_trainer(spec, a, cfg.num_envs, run_spec.haql, devices, cfg.seed_devices)
    where = topology(devices, cfg.seed_devices)
    per_iter = trainer.env_steps_per_iter
    chunk_iters = max(1, cfg.chunk_steps // per_iter)
    total_iters = math.ceil(cfg.total_steps / per_iter)

    with open_run(cfg, run_spec.saved(), run_dir) as run:
        if run.resume_step is not None:
            check_topology(run.checkpoints.read_config(run.resume_step)[2], where)
        state = run.restore(init_seeds(trainer, cfg.seed, cfg.seeds, programs))
        done_iters = int(np.asarray(state.env_steps)[0]) // per_iter
        plan = chunk_plan(done_iters, total_iters, chunk_iters)
        log = run.start_log(total_iters * per_iter, done_iters * per_iter)
        train_seconds, steps_run = 0.0, 0

        def save(state: TrainState) -> None:
            step = int(np.asarray(state.env_steps)[0])
            with wall.phase("checkpoint"):
                run.save(step, state, {"name": name, "env_steps": step, "topology": where})

        def logged(chunk: Chunk) -> None:
            nonlocal train_seconds, steps_run
            steps = chunk.iters * per_iter * cfg.seeds
            train_seconds += chunk.seconds
            steps_run += steps
            log.log_chunk(chunk_rows(chunk.metrics, steps / chunk.seconds))

        def boundary(chunk: Chunk) -> None:
            if chunk.index == len(plan) - 1 or (chunk.index + 1) % cfg.checkpoint.every_chunks == 0:
                save(chunk.state)

        state = run_chunks(
            trainer,
            state,
            plan,
            programs=programs,
            check_finite=run.check_finite,
            on_chunk=logged,
            at_boundary=boundary,
            stopped=lambda: run.signal is not None,
            wall=wall,
        )
        if run.signal is not None:
            save(state)  # the state reached, unless that step is saved already

        params = jax.device_get(state.learner.params)  # replicated: each process has them all
        key = jax.random.PRNGKey(cfg.seed + 1)
        results: dict[str, Any] = {}
        if run.signal is None and cfg.eval.enabled and cfg.eval.episodes > 0:
            with wall.phase("evaluate"):
                if evaluator is not None:
                    results = evaluator(trainer, params, key)
                else:
                    results = {"eval": greedy_eval(trainer, params, key, cfg.eval.episodes)}
        if run.checkpoints is not None:  # the last save, written while the agent was evaluated
            with wall.phase("checkpoint"):
                run.checkpoints.wait()
        summary = {
            "usecase": name,
            "heuristic": cfg.heuristic,
            "seeds": cfg.seeds,
            "env_steps": int(np.asarray(state.env_steps)[0]),
            "updates": int(np.asarray(state.learner.updates)[0]),
            "wall_seconds": time.perf_counter() - wall0,
            "steps_per_second": steps_run / train_seconds if train_seconds else 0.0,
            "params_sha256": params_sha256(params),
            **results,
            "seconds": wall.split(),
            "programs_compiled": wall.programs_compiled(),
            "programs_loaded": len(programs.loaded),
        }
        run.finish(summary)
    return summary
