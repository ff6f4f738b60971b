"""`scripts/train.py backend=k8s`: asynchronous training on Kubernetes clusters, as a run.

It turns the root config into ``num_envs`` cluster envs (one cluster set, or one set of
namespaces, each), runs `train_async` over them, and gives the run what the simulator path
gives it: the run directory with ``config.yaml``, ``metrics.csv``, TensorBoard and orbax
checkpoints (same format, so ``resume`` works the same), plus ``history/env<i>.csv``, one row
per env step. Every cluster object is deleted at the end, however the run ends. The
``kubernetes`` package is imported only when the default env factory builds an env.

Settings of the actor live under ``backend.actor`` (see `ACTOR_KEYS`); they are taken out of
the backend mapping before it is read as a cluster map. Env ``i``'s clusters are
``backend.actor.cluster_sets[i]`` when given, else ``backend.clusters`` with ``-e<i>`` appended
to every namespace (when ``num_envs > 1``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

from hmk8s.domain.usecases import UseCase
from hmk8s.k8s.config import env_cluster_maps, split_backend
from hmk8s.policies.heuristics import recommend
from hmk8s.shell.run_dir import LOCK_FILE, holds_files
from hmk8s.train.actor_learner.core import host_books, make_async_fns
from hmk8s.train.actor_learner.env_worker import BlockingEnv, no_hint
from hmk8s.train.actor_learner.history import HistoryWriter
from hmk8s.train.actor_learner.loop import AsyncResult, AsyncSettings, train_async
from hmk8s.train.config import ConfigError, RunSpec, TrainConfig
from hmk8s.train.run import holds_run, open_run, resolve_run_dir
from hmk8s.train.runlog import params_sha256

log = logging.getLogger(__name__)


class CleanupError(RuntimeError):
    """A run ended but some of its cluster objects could not be deleted."""


EnvFactory = Callable[[int, dict[str, Any]], BlockingEnv]
_recommend = jax.jit(recommend)


def heuristic_hint(env: Any) -> int:
    """The rulebook's action for an hmk8s env's current structured observation."""
    return int(_recommend(env.structured_observation, env.params))


def action_namer(env: Any) -> Callable[[int], str]:
    """``k<cluster>/<op>/<config>/<function>/p<proxy>`` (or ``noop``) for an hmk8s env; the
    bare index for any other env."""
    from hmk8s.domain.spaces import OP_NAMES
    from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES

    layout = getattr(getattr(env, "params", None), "layout", None)
    if layout is None:
        return str

    def name(action: int) -> str:
        a = layout.decode(action)
        if bool(a.noop):
            return "noop"
        return (
            f"k{int(a.cluster)}/{OP_NAMES[int(a.op)]}/{CONFIG_NAMES[int(a.config)]}/"
            f"{FUNCTION_NAMES[int(a.function)]}/p{int(a.proxy)}"
        )

    return name


def build_envs(factory: EnvFactory, maps: list[dict[str, Any]]) -> list[BlockingEnv]:
    """Construct every env concurrently (each connects and checks its clusters); on a failure
    close the ones built and raise."""
    with ThreadPoolExecutor(max_workers=len(maps), thread_name_prefix="env-build") as pool:
        futures = [pool.submit(factory, i, m) for i, m in enumerate(maps)]
        built, errors = [], []
        for future in futures:
            try:
                built.append(future.result())
            except Exception as exc:
                errors.append(exc)
    if errors:
        close_envs(built, timeout_s=60.0)
        raise errors[0]
    return built


def close_envs(envs: Sequence[BlockingEnv], timeout_s: float) -> list[str]:
    """Close (delete the objects of) every env concurrently; what failed or was left behind,
    as messages (an env's close may return a `CleanupReport`, which is checked)."""
    if not envs:
        return []
    pool = ThreadPoolExecutor(max_workers=len(envs), thread_name_prefix="env-close")
    futures = [pool.submit(env.close) for env in envs]
    errors = []
    deadline = time.monotonic() + timeout_s
    for i, future in enumerate(futures):
        try:
            report = future.result(timeout=max(0.1, deadline - time.monotonic()))
        except Exception as exc:
            errors.append(f"env {i}: close failed: {exc!r}; {cleanup_command(envs, i)}")
            continue
        if report is not None and not report.clean:
            problems = ", ".join(report.errors) or "deletes did not finish in time"
            errors.append(
                f"env {i}: {report.remaining} objects left ({problems}); {cleanup_command(envs, i)}"
            )
    pool.shutdown(wait=False, cancel_futures=True)
    errors = [" ".join(message.split()) for message in errors]  # one line each
    for message in errors:
        log.error("%s", message)
    return errors


def cleanup_command(envs: Sequence[BlockingEnv], index: int) -> str:
    """What removes env ``index``'s leftovers: `scripts/cleanup.py` with its run id."""
    run_id = getattr(envs[index], "run_id", None)
    which = f"--run-id {run_id}" if run_id else "--all"
    spread = f" --envs {len(envs)}" if len(envs) > 1 else ""
    return f"remove them with python scripts/cleanup.py {which}{spread}"


def _without_actor(config: dict[str, Any]) -> dict[str, Any]:
    """The config minus ``backend.actor`` and ``backend.allow_env_loss``: how the actor runs
    (timeouts, cluster sets, whether it may lose an env) may change between a run and its
    resume; every env starts a fresh episode anyway."""
    backend = {
        k: v
        for k, v in dict(config.get("backend") or {}).items()
        if k not in ("actor", "allow_env_loss")
    }
    return {**config, "backend": backend}


def _k8s_factory(usecase: UseCase, env_cfg: dict[str, Any]) -> EnvFactory:
    def factory(index: int, cluster_map: dict[str, Any]) -> BlockingEnv:
        del index
        from hmk8s.k8s.env import KubernetesClusterEnv

        return KubernetesClusterEnv(usecase, env_cfg, cluster_map)

    return factory


def run_async_training(
    spec: RunSpec, env_factory: EnvFactory | None = None, run_dir: str | Path | None = None
) -> dict[str, Any]:
    """Train on ``cfg.num_envs`` cluster envs, ``cfg`` being ``spec.config``; returns the run
    summary (also in summary.json).

    ``run_dir`` (else ``cfg.resume``, else ``cfg.run_dir``, else ``runs/<usecase>-<algo>-<time>``)
    holds the run; with ``cfg.resume`` set the newest checkpoint there is restored first.
    ``env_factory(i, cluster_map_data)`` builds env ``i`` (default: `KubernetesClusterEnv`).
    A Ctrl-C ends the run cleanly (checkpoint, cluster objects deleted) with ``"interrupted":
    true`` in the summary; an env or learner error (a lost env: `EnvLost`, unless
    ``backend.allow_env_loss``) is raised after the same cleanup. A fresh run refused before
    any env is built (credentials, server, namespaces) leaves no folder behind.
    """
    tc, usecase = spec.config, spec.usecase
    if usecase is None:
        raise ConfigError("backend=k8s trains on a use case: usecase is unset")
    env_cfg = dataclasses.asdict(tc.env)
    data, actor = split_backend(tc.backend)
    maps = env_cluster_maps(data, tc.num_envs, actor.get("cluster_sets"))
    directory = Path(run_dir) if run_dir is not None else resolve_run_dir(tc, usecase.name)
    factory = env_factory or _k8s_factory(usecase, env_cfg)
    close_timeout = float(actor.get("close_timeout_s", 300.0))
    fresh = tc.resume is None and not holds_run(directory)
    created = not directory.exists()
    built = False
    try:
        with open_run(
            tc, spec.saved(), directory, resume_view=_without_actor, interrupt=True
        ) as run:
            envs: list[BlockingEnv] = []
            history: HistoryWriter | None = None
            try:
                envs = build_envs(factory, maps)
                built = True
                probe = envs[0]
                fns = make_async_fns(
                    int(probe.action_space.n),
                    tc.agent,
                    tc.num_envs,
                    spec.haql,
                )
                obs_dim = int(probe.observation_space.shape[0])
                state = run.restore(
                    fns.init(jax.random.PRNGKey(tc.seed), np.zeros((obs_dim,), np.float32))
                )
                books = host_books(state.env_state)
                history = HistoryWriter(directory / "history", books.env_steps, action_namer(probe))
                runlog = run.start_log(tc.total_steps, int(books.env_steps.sum()))
                meta = {"backend": "k8s", "num_envs": tc.num_envs, "usecase": usecase.name}

                def save(s: Any) -> None:
                    run.check_finite(s.learner.params)
                    run.save(int(np.asarray(s.env_steps)), s, meta)

                settings = AsyncSettings(
                    total_steps=tc.total_steps,
                    ratio=tc.agent.updates_per_step,
                    seed=tc.seed,
                    **{
                        "checkpoint_every": tc.chunk_steps * tc.checkpoint.every_chunks,
                        "log_every": min(tc.chunk_steps, 100),
                        **{
                            k: v
                            for k, v in actor.items()
                            if k not in ("cluster_sets", "close_timeout_s")
                        },
                    },
                    allow_env_loss=data.get("allow_env_loss") is True,
                )
                started = time.monotonic()
                result = train_async(
                    fns,
                    envs,
                    heuristic_hint if spec.haql is not None else no_hint,
                    state,
                    settings,
                    on_write=history.write,
                    on_checkpoint=save,
                    on_log=lambda row: runlog.log_chunk([row]),
                )
                wall = time.monotonic() - started
                if result.state is not None:
                    save(result.state)
            finally:
                if history is not None:
                    history.close()
                close_errors = close_envs(envs, close_timeout)
            summary = _summary(tc, usecase, result, wall)
            summary["cleanup_errors"] = close_errors
            run.finish(summary)
    except BaseException:
        if fresh and not built:
            _remove_empty(directory, created)
        raise
    if result.error is not None:
        raise result.error
    if close_errors:
        raise CleanupError("cluster objects were left behind: " + " | ".join(close_errors))
    return summary


def _remove_empty(directory: Path, created: bool) -> None:
    """Undo the folders a fresh run made before any env was built (a refused credential, a
    missing namespace), so that its retry is not refused as a run over a run. Only empty
    folders go (the released lock file aside): a folder holding anything is left as it is."""
    for folder in (directory / "checkpoints", directory / "history"):
        with contextlib.suppress(OSError):
            folder.rmdir()
    if directory.is_dir() and not holds_files(directory):
        (directory / LOCK_FILE).unlink(missing_ok=True)
        if created:
            with contextlib.suppress(OSError):
                directory.rmdir()


def _summary(tc: TrainConfig, usecase: UseCase, result: AsyncResult, wall: float) -> dict:
    books = host_books(result.state.env_state) if result.state is not None else None
    params = result.state.learner.params if result.state is not None else None
    return {
        "usecase": usecase.name,
        "heuristic": tc.heuristic,
        "backend": "k8s",
        "seeds": 1,
        "num_envs": tc.num_envs,
        "env_steps": int(books.env_steps.sum()) if books is not None else None,
        "updates": int(np.asarray(result.state.learner.updates)) if books is not None else None,
        "env_steps_this_run": result.env_steps,
        "updates_this_run": result.updates,
        "wall_seconds": wall,
        "steps_per_second": result.steps_per_s,
        "learner_busy_fraction": result.learner_busy_s / wall if wall > 0 else 0.0,
        "mean_policy_batch": result.actor.mean_batch,
        "env_failures": result.env_failures,
        "episodes_done": books.episodes_done.tolist() if books is not None else None,
        "interrupted": result.interrupted,
        "error": repr(result.error) if result.error is not None else None,
        "abandoned_threads": result.abandoned,
        "params_sha256": params_sha256(params) if params is not None else "",
    }
