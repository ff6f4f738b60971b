"""One use case's evaluation: train DQN and HAQL over seeds, then judge them and the baselines.

The numbers come from two fixed sets of episodes, both drawn from keys training never uses: the
*curve* episodes (a greedy evaluation of every seed after every chunk of training, and the
baselines' horizontal lines) and the held-out *evaluation* episodes (the final tables). Every
policy meets exactly the same episodes, because `rollout` keys the env by episode and step only.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hmk8s import sim
from hmk8s.agents.config import (
    AGENTS,
    AgentConfig,
    deployed_bonus,
    deployed_weight,
    heuristic_bonus,
)
from hmk8s.configs import default
from hmk8s.domain.metrics import POLICY_METRIC_NAMES, summarise
from hmk8s.envs.sim_spec import sim_env_spec
from hmk8s.evaluate import learning, stats
from hmk8s.evaluate.calibrate import CalibrationGrid, calibrate
from hmk8s.evaluate.shifted import agent_on_scenarios, baseline_on_scenarios, scenario_results
from hmk8s.policies.baselines import BASELINES
from hmk8s.policies.rollout import ROLLOUT_COMPILER_OPTIONS, rollout
from hmk8s.sim.scenarios import check_scenarios, stacked
from hmk8s.train.anakin.loop import Trainer, init_seeds, make_trainer
from hmk8s.train.anakin.run import Chunk, run_chunks, split_plan
from hmk8s.train.anakin.sim_eval import greedy_rollout
from hmk8s.train.cache import ScoreCache
from hmk8s.train.config import ConfigError, TrainConfig, resolve
from hmk8s.train.run import check_finite
from hmk8s.train.stop import requested

#: the baselines HAQL must beat on return with no higher SLA violation rate (`targets`)
TARGET_BASELINES = ("hpa_exact_calibrated", "hpa", "heuristic")
#: the baselines scored on the shifted loads beside the agents
SCENARIO_BASELINES = (
    "hpa_exact_calibrated",
    "hpa_exact",
    "hpa_calibrated",
    "static_calibrated",
    "heuristic",
)
TIMELINE_KEYS = ("rates", "pods_per_cluster", "latency_ratio")


@dataclass
class EvaluateConfig:
    """What `scripts/evaluate.py` adds to the training config (defaults: the ``evaluate``
    block of ``configs/evaluate.yaml``)."""

    episodes: int = default("evaluate.episodes", root="evaluate")
    curve_points: int = default("evaluate.curve_points", root="evaluate")
    key: int = default("evaluate.key", root="evaluate")
    bootstrap_reps: int = default("evaluate.bootstrap_reps", root="evaluate")
    threshold: float = default("evaluate.threshold", root="evaluate")
    budgets: list[float] = default("evaluate.budgets", root="evaluate")
    timeline: list[str] = default("evaluate.timeline", root="evaluate")
    deployed_xi_grid: list[float] = default("evaluate.deployed_xi_grid", root="evaluate")
    deployed_xi_sla: bool = default("evaluate.deployed_xi_sla", root="evaluate")
    agent_by_usecase: dict[str, dict[str, Any]] = default(
        "evaluate.agent_by_usecase", root="evaluate"
    )
    budget_by_usecase: dict[str, float] = default("evaluate.budget_by_usecase", root="evaluate")
    train_together: bool = default("evaluate.train_together", root="evaluate")
    calibration: CalibrationGrid = field(default_factory=CalibrationGrid)
    scenarios: list[str] = default("evaluate.scenarios", root="evaluate")


def usecase_config(cfg: TrainConfig, usecase: str, ev: EvaluateConfig) -> TrainConfig:
    """The training config for ``usecase``: its agent changes (`usecase_agent`), and its budget
    times ``ev.budget_by_usecase[usecase]``: the env steps, the exploration and the
    heuristic's fade, so the schedules keep their share of the run and ``total_steps=`` on the
    command line still sets every use case's budget."""
    agent = usecase_agent(cfg.agent, usecase, ev)
    factor = ev.budget_by_usecase.get(usecase, 1.0)
    if factor <= 0:
        raise ConfigError(f"evaluate.budget_by_usecase.{usecase} must be > 0, got {factor}")
    if factor == 1.0:
        return dataclasses.replace(cfg, agent=agent)

    def longer(schedule: Any) -> Any:
        return dataclasses.replace(schedule, steps=round(schedule.steps * factor))

    return dataclasses.replace(
        cfg,
        agent=dataclasses.replace(agent, epsilon=longer(agent.epsilon)),
        haql=dataclasses.replace(cfg.haql, xi=longer(cfg.haql.xi)),
        total_steps=round(cfg.total_steps * factor),
    )


def usecase_agent(agent: AgentConfig, usecase: str, ev: EvaluateConfig) -> AgentConfig:
    """The agent config for ``usecase``: ``agent`` with the changes ``ev.agent_by_usecase`` lists
    for it. Typed like ``agent``: an unknown key or a wrong type raises `ConfigError`."""
    changes = ev.agent_by_usecase.get(usecase, {})
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(agent), changes))
    except OmegaConfBaseException as err:
        raise ConfigError(f"evaluate.agent_by_usecase.{usecase}: {err}") from err


@dataclass
class AgentRun:
    """A trained agent over seeds: its greedy learning curves and final parameters.

    ``train_seconds[i]`` is the wall time spent in training chunks (compilation included,
    curve evaluations excluded) until ``steps[i]``; ``seconds`` is the whole loop's."""

    steps: np.ndarray
    curves: np.ndarray
    params: Any
    updates: int
    seconds: float
    train_seconds: np.ndarray


def episode_metrics(records: dict[str, jax.Array]) -> dict[str, float]:
    """The per-policy metrics of one rollout (mean over its episodes and steps)."""
    s = summarise(records)
    return {m: s[m] for m in POLICY_METRIC_NAMES}


def first_episode(records: dict[str, jax.Array]) -> dict[str, np.ndarray]:
    """What the timeline figure shows of a rollout: its first episode's `TIMELINE_KEYS`."""
    return {k: np.asarray(records[k][0]) for k in TIMELINE_KEYS}


def baseline_scores(
    env: Any, params: Any, policy: Any, curve_key: jax.Array, eval_key: jax.Array, episodes: int
) -> dict[str, Any]:
    """A baseline `Policy` on the curve and the evaluation episodes (one compiled rollout of
    both): its curve return and SLA violation rate, its metrics and timeline on the evaluation
    episodes, as JSON (what the score cache keeps)."""
    run_both = jax.vmap(lambda k: rollout(env, params, policy, k, episodes))
    keys = jnp.stack([curve_key, eval_key])
    both = jax.jit(run_both, compiler_options=ROLLOUT_COMPILER_OPTIONS)(keys)
    held_out = jax.tree.map(lambda x: x[1], both)
    return {
        "curve_return": float(both["reward"][0].sum(axis=1).mean()),
        "curve_sla": float(both["sla_violated"][0].mean()),
        "metrics": episode_metrics(held_out),
        "timeline": {k: v.tolist() for k, v in first_episode(held_out).items()},
    }


def train_agent(
    trainer: Trainer,
    cfg: TrainConfig,
    points: int,
    curve: Callable[[Any, int], np.ndarray],
    log: Callable[[str], None],
) -> AgentRun:
    """Train ``cfg.seeds`` seeds in one vmapped program for ``cfg.total_steps`` env steps per
    seed (rounded up to whole iterations, as `run_training`), measuring ``curve(params,
    env_steps) -> [seeds]`` before training and after each of ``points`` chunks (the last one
    shorter when they do not divide the run: `split_plan`). The loop is `run_chunks`, so the
    weights are `run_training`'s for the same settings, and NaN weights halt it
    (``cfg.halt_on_nan``)."""
    total_iters = math.ceil(cfg.total_steps / trainer.env_steps_per_iter)
    plan = split_plan(total_iters, math.ceil(total_iters / points))
    states = init_seeds(trainer, cfg.seed, cfg.seeds)
    start = time.perf_counter()
    steps, values, trained = [0], [curve(states.learner.params, 0)], [0.0]

    def point(chunk: Chunk) -> None:
        steps.append(int(np.asarray(chunk.metrics["env_steps"])[0]))
        trained.append(trained[-1] + chunk.compile_seconds + chunk.seconds)
        values.append(curve(chunk.state.learner.params, steps[-1]))
        log(f"  {steps[-1]:>8d} steps  greedy IQM {stats.iqm(values[-1]):8.2f}")

    states = run_chunks(
        trainer,
        states,
        plan,
        check_finite=check_finite if cfg.halt_on_nan else lambda params: None,
        at_boundary=point,
    )
    return AgentRun(
        steps=np.array(steps),
        curves=np.stack(values, axis=1),
        params=states.learner.params,
        updates=int(np.asarray(states.learner.updates)[0]),
        seconds=time.perf_counter() - start,
        train_seconds=np.array(trained),
    )


def seed_returns(run: Callable, seed_params: Any, key: jax.Array, bonus: float) -> np.ndarray:
    """Each seed's mean greedy episode return on the episodes of ``key`` (``run`` from
    `greedy_rollout`, the rulebook weighted by ``bonus``)."""
    return seed_scores(run, seed_params, key, bonus)[0]


def seed_scores(
    run: Callable, seed_params: Any, key: jax.Array, bonus: float
) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's mean greedy episode return and SLA violation rate (`seed_returns`)."""
    records = run(seed_params, key, bonus)
    returns = records["reward"].sum(axis=2).mean(axis=1)
    return np.asarray(returns), np.asarray(records["sla_violated"].mean(axis=(1, 2)))


def select_deployed_xi(
    score: Callable[[float], tuple[np.ndarray, np.ndarray]],
    grid: list[float],
    sla_limit: float | None = None,
) -> tuple[float, dict[str, float], dict[str, float]]:
    """The weight of ``grid`` whose greedy agents score the highest IQM return over seeds among
    those whose IQM SLA violation rate is at most ``sla_limit`` (among all of them when the
    limit is None or no weight meets it), with every weight's IQM return and violation rate;
    ``score(xi) -> ([seeds] returns, [seeds] violation rates)`` on validation episodes.
    Ties: the first."""
    scored = {xi: score(xi) for xi in grid}
    returns = {xi: stats.iqm(r) for xi, (r, _) in scored.items()}
    sla = {xi: stats.iqm(v) for xi, (_, v) in scored.items()}
    allowed = [xi for xi in grid if sla_limit is None or sla[xi] <= sla_limit] or grid
    best = max(allowed, key=lambda xi: returns[xi])
    return best, {str(xi): v for xi, v in returns.items()}, {str(xi): v for xi, v in sla.items()}


def summarise_agent(
    per_seed: dict[str, np.ndarray], reps: int, seed: int
) -> dict[str, dict[str, float]]:
    """IQM and 95 % CI over seeds of each metric."""
    return {
        m: stats.bootstrap_ci(per_seed[m], reps=reps, seed=seed)._asdict()
        for m in POLICY_METRIC_NAMES
    }


def learning_speed(runs: dict[str, AgentRun], low: float, ev: EvaluateConfig) -> dict[str, Any]:
    """Learning speed per agent (IQM and CI over seeds) and HAQL against DQN.

    Returns are normalised so that ``low`` (the random policy's return) is 0 and DQN's final IQM
    return is 1: returns can be negative (a broken chain costs), so "90 % of DQN's final return"
    is read as 90 % of the way from random to it. Metrics: env steps to reach ``ev.threshold``
    normalised, the normalised area under the curve, and the return at fixed budgets.
    """
    reps = ev.bootstrap_reps
    final_dqn = stats.iqm(runs["dqn"].curves[:, -1])
    threshold = low + ev.threshold * (final_dqn - low)
    out: dict[str, Any] = {
        "threshold": threshold,
        "dqn_final_iqm": final_dqn,
        "random_return": low,
        "agents": {},
    }
    per_seed: dict[str, dict[str, np.ndarray]] = {}
    for name, run in runs.items():
        times, censored = learning.times_to_threshold(run.steps, run.curves, threshold)
        aucs = np.array([learning.normalised_auc(run.steps, c, low, final_dqn) for c in run.curves])
        per_seed[name] = {"time_to_threshold": times, "auc": aucs}
        budgets = {}
        for frac in ev.budgets:
            at = float(frac * run.steps[-1])
            vals = np.array([learning.return_at(run.steps, c, at) for c in run.curves])
            budgets[str(int(at))] = stats.bootstrap_ci(vals, reps=reps)._asdict()
        out["agents"][name] = {
            "time_to_threshold": stats.bootstrap_ci(times, reps=reps)._asdict(),
            "censored_seeds": int(censored.sum()),
            "auc": stats.bootstrap_ci(aucs, reps=reps)._asdict(),
            "return_at": budgets,
            "per_seed_time_to_threshold": times.tolist(),
        }
    ttt_h = out["agents"]["haql"]["time_to_threshold"]["value"]
    ttt_d = out["agents"]["dqn"]["time_to_threshold"]["value"]
    out["time_ratio"] = ttt_h / ttt_d if ttt_d > 0 else float("inf")
    out["comparisons"] = {
        metric: _comparison(per_seed["haql"][metric], per_seed["dqn"][metric], reps)
        for metric in ("time_to_threshold", "auc")
    }
    return out


def _comparison(x: np.ndarray | list[float], y: np.ndarray | list[float], reps: int) -> dict:
    c = stats.compare(x, y, reps=reps)
    return {
        "difference": c.difference._asdict(),
        "probability_of_improvement": c.improvement._asdict(),
        "significant": c.significant,
    }


def policy_comparisons(
    per_seed: dict[str, dict[str, np.ndarray]], baselines: dict[str, dict[str, float]], reps: int
) -> dict[str, Any]:
    """HAQL against DQN (seeds against seeds) and each agent against each baseline (seeds
    against the baseline's value on the same episodes), for return and SLA violations."""
    out: dict[str, Any] = {}
    pairs = [("haql", "dqn")] + [(a, b) for a in AGENTS for b in baselines]
    for a, b in pairs:
        other = (
            per_seed[b] if b in per_seed else {m: [baselines[b][m]] for m in POLICY_METRIC_NAMES}
        )
        out[f"{a}_vs_{b}"] = {
            m: _comparison(per_seed[a][m], other[m], reps) for m in ("return", "sla_violation_rate")
        }
    return out


def beats(result: dict[str, Any], baseline: str) -> bool:
    """HAQL's IQM return is above ``baseline``'s, significantly, with an IQM SLA violation rate
    no higher than its."""
    haql, base = result["policies"]["haql"], result["policies"][baseline]
    return bool(
        haql["return"]["value"] > base["return"]["value"]
        and result["comparisons"][f"haql_vs_{baseline}"]["return"]["significant"]
        and haql["sla_violation_rate"]["value"] <= base["sla_violation_rate"]["value"]
    )


def scenario_targets(result: dict[str, Any]) -> dict[str, bool]:
    """Whether HAQL `beats` each of `TARGET_BASELINES` that ``result`` scores."""
    return {
        f"haql_beats_{b}": beats(result, b) for b in TARGET_BASELINES if b in result["policies"]
    }


def targets(result: dict[str, Any]) -> dict[str, Any]:
    """The targets: HAQL reaches the threshold in at most half DQN's steps (only meaningful if
    DQN ends above `random`); the final HAQL `beats` the calibrated `hpa_exact`, `hpa` and
    `heuristic`."""
    speed = result["learning_speed"]
    learnt = speed["dqn_final_iqm"] > speed["random_return"]
    out: dict[str, Any] = {"haql_half_time": bool(learnt and speed["time_ratio"] <= 0.5)}
    return out | scenario_targets(result)


#: ``source(agent, trainer, curve) -> AgentRun``: the seeds of ``agent`` ("dqn", "haql"),
#: scored by ``curve(seed-stacked params, env steps)`` along the way.
AgentSource = Callable[[str, Trainer, Callable[[Any, int], np.ndarray]], AgentRun]


def train_in_process(
    usecase: str, cfg: TrainConfig, ev: EvaluateConfig, log: Callable[[str], None]
) -> AgentSource:
    """The `AgentSource` that trains every seed of the agent here, as ``cfg`` says."""

    def trained(name: str, trainer: Trainer, curve: Callable[[Any, int], np.ndarray]) -> AgentRun:
        log(f"{usecase} {name}: {cfg.seeds} seeds x {cfg.total_steps} env steps")
        return train_agent(trainer, cfg, ev.curve_points, curve, lambda s: log(f"{name:5s}{s}"))

    return trained


class Stopped(Exception):
    """Ends training at its next curve point once the evaluation is stopping (another agent
    failed, or a stop signal came: `hmk8s.train.stop`)."""


def obtain_agents(
    source: AgentSource,
    trainers: dict[str, Trainer],
    curves: dict[str, Callable[[Any, int], np.ndarray]],
    together: bool,
) -> dict[str, AgentRun]:
    """Each agent of ``trainers`` from ``source``, one after the other, or all at once in as
    many threads when ``together``: one vmapped program keeps about 1.5 of 2 CPU cores busy,
    two of them keep both, and each program's numbers stay what they are alone.

    When one agent fails, Ctrl-C stops the wait or a stop signal comes, every agent stops at
    its next curve point (the end of the chunk running), raising `Stopped`, so nothing trains
    on with no one to collect it."""
    stopping = threading.Event()

    def curve_until_stopped(name: str) -> Callable[[Any, int], np.ndarray]:
        def curve(params: Any, steps: int) -> np.ndarray:
            if stopping.is_set() or requested() is not None:
                raise Stopped(name)
            return curves[name](params, steps)

        return curve

    if not together:
        return {name: source(name, trainers[name], curve_until_stopped(name)) for name in trainers}
    futures: dict[str, Future] = {name: Future() for name in trainers}

    def obtain(name: str) -> None:
        try:
            futures[name].set_result(source(name, trainers[name], curve_until_stopped(name)))
        except BaseException as err:  # handed to the caller by `Future.result`
            futures[name].set_exception(err)

    threads = [threading.Thread(target=obtain, args=(n,), name=f"train-{n}") for n in trainers]
    for thread in threads:
        thread.start()
    try:
        return {name: future.result() for name, future in futures.items()}
    finally:
        stopping.set()
        for thread in threads:
            thread.join()


def evaluate_usecase(
    usecase: str,
    mapping: Mapping[str, Any],
    cfg: TrainConfig,
    ev: EvaluateConfig,
    log: Callable[[str], None] = print,
    source: AgentSource | None = None,
    scores: ScoreCache | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train (or take from ``source``), evaluate and compare on the use case ``mapping``
    (named ``usecase``). Returns the JSON-ready results and the plot data (learning curves, the
    baselines' curve-episode returns, one timeline episode per policy in ``ev.timeline``).
    ``scores`` keeps the baselines' scores between evaluations (None: computed every time)."""
    run = resolve(
        usecase_config(dataclasses.replace(cfg, usecase=dict(mapping)), usecase, ev), usecase
    )
    cfg, agent = run.config, run.config.agent
    source = source or train_in_process(usecase, cfg, ev, log)
    env, params = sim.make(run.usecase, dataclasses.asdict(cfg.env))
    spec = sim_env_spec(env, params, cfg.env.encoder)
    curve_key, eval_key = jax.random.split(jax.random.PRNGKey(ev.key))
    reps = ev.bootstrap_reps

    baselines, baseline_curve, baseline_timeline, baseline_sla = {}, {}, {}, {}
    started = time.perf_counter()
    calibrated, calibration = calibrate(env, params, curve_key, ev.episodes, ev.calibration)
    baseline_policies = {**{name: make() for name, make in BASELINES.items()}, **calibrated}
    for name, policy in baseline_policies.items():

        def score(policy: Any = policy) -> dict[str, Any]:
            return baseline_scores(env, params, policy, curve_key, eval_key, ev.episodes)

        # a default baseline's score depends only on what the cache keys; a calibrated one's
        # knobs come from this run's calibration
        scored = (
            (scores or ScoreCache(None)).get_or_compute(
                {"policy": name, "episodes": ev.episodes, "evaluation_key": ev.key},
                params,
                curve_key,
                score,
            )
            if name in BASELINES
            else score()
        )
        baseline_curve[name], baseline_sla[name] = scored["curve_return"], scored["curve_sla"]
        baselines[name] = scored["metrics"]
        baseline_timeline[name] = {
            k: np.asarray(v, np.float32) for k, v in scored["timeline"].items()
        }
        log(f"{usecase} {name:20s} return {baselines[name]['return']:8.2f}")

    baseline_seconds = time.perf_counter() - started
    hints = {name: cfg.haql if name == "haql" else None for name in AGENTS}
    trainers = {name: make_trainer(spec, agent, cfg.num_envs, hints[name]) for name in AGENTS}
    rollouts = {
        name: greedy_rollout(env, params, t.network, ev.episodes, cfg.env.encoder)
        for name, t in trainers.items()
    }

    def curve(name: str) -> Callable[[Any, int], np.ndarray]:
        run, haql = rollouts[name], hints[name]
        return lambda p, steps: seed_returns(run, p, curve_key, float(heuristic_bonus(haql, steps)))

    curves = {name: curve(name) for name in AGENTS}
    runs = obtain_agents(source, trainers, curves, ev.train_together)
    agent_records, per_seed, bonuses = {}, {}, {}
    deployed: dict[str, Any] = {"value": deployed_weight(cfg.haql), "validation_returns": {}}
    for name in AGENTS:
        haql, run = hints[name], rollouts[name]
        bonus = deployed_bonus(haql)
        if haql is not None and haql.deployed_xi is None and ev.deployed_xi_grid:
            trained, eta = runs[name].params, haql.eta
            limit = min(baseline_sla[b] for b in TARGET_BASELINES) if ev.deployed_xi_sla else None
            chosen, scores, sla = select_deployed_xi(
                lambda xi, run=run, p=trained, eta=eta: seed_scores(run, p, curve_key, xi * eta),
                ev.deployed_xi_grid,
                limit,
            )
            deployed = {
                "value": chosen,
                "validation_returns": scores,
                "validation_sla": sla,
                "sla_limit": limit,
            }
            bonus = chosen * haql.eta
            log(f"  deployed xi {chosen} (curve episodes: IQM return {scores}, SLA {sla})")
        bonuses[name] = bonus
        records = run(runs[name].params, eval_key, bonus)
        agent_records[name] = records
        seeds = [
            episode_metrics(jax.tree.map(lambda x, i=i: x[i], records)) for i in range(cfg.seeds)
        ]
        per_seed[name] = {m: np.array([s[m] for s in seeds]) for m in POLICY_METRIC_NAMES}

    policies = {name: summarise_agent(per_seed[name], reps, 0) for name in AGENTS}
    for name, values in baselines.items():
        policies[name] = {m: {"value": v, "low": v, "high": v} for m, v in values.items()}
    result: dict[str, Any] = {
        "usecase": usecase,
        "seeds": cfg.seeds,
        "total_steps": int(runs["dqn"].steps[-1]),
        "agent_changes": dict(ev.agent_by_usecase.get(usecase, {})),
        "budget_factor": ev.budget_by_usecase.get(usecase, 1.0),
        "updates_per_step": agent.updates_per_step,
        "updates": {name: run.updates for name, run in runs.items()},
        "eval_episodes": ev.episodes,
        "train_seconds": {name: run.seconds for name, run in runs.items()},
        "trained_together": ev.train_together,
        "deployed_xi": deployed,
        "policies": policies,
        "per_seed": {a: {m: v.tolist() for m, v in per_seed[a].items()} for a in AGENTS},
        "curves": {
            name: {"steps": run.steps.tolist(), "returns": run.curves.tolist()}
            for name, run in runs.items()
        },
        "baseline_curve_returns": baseline_curve,
        "baseline_curve_sla": baseline_sla,
        "learning_speed": learning_speed(runs, baseline_curve["random"], ev),
        "comparisons": policy_comparisons(per_seed, baselines, reps),
    }
    result["targets"] = targets(result)
    result["calibration"] = calibration
    names = check_scenarios(ev.scenarios)
    started = time.perf_counter()
    if names:
        shifts = stacked(params, names)
        on_base = {
            b: baseline_on_scenarios(
                env, params, baseline_policies[b], eval_key, ev.episodes, names, shifts
            )
            for b in SCENARIO_BASELINES
        }
        on_agents = {
            a: agent_on_scenarios(rollouts[a], runs[a].params, eval_key, bonuses[a], names, shifts)
            for a in AGENTS
        }
        targeted = [b for b in SCENARIO_BASELINES if b in TARGET_BASELINES]
        result["scenarios"] = scenario_results(
            names,
            on_agents,
            on_base,
            lambda s: summarise_agent(s, reps, 0),
            lambda ps, sc: policy_comparisons(ps, {b: sc[b] for b in targeted}, reps),
            scenario_targets,
        )
        for n in names:
            log(f"{usecase} {n:15s} HAQL beats: {result['scenarios'][n]['targets']}")
    result["seconds"] = {
        "baselines": baseline_seconds,  # calibration included
        "scenarios": time.perf_counter() - started,
    }

    median_seed = int(np.argsort(per_seed["haql"]["return"])[cfg.seeds // 2])
    timelines = {
        **baseline_timeline,
        **{
            a: first_episode(jax.tree.map(lambda x: x[median_seed], r))
            for a, r in agent_records.items()
        },
    }
    plot_data = {
        "steps": runs["dqn"].steps,
        "curves": {name: run.curves for name, run in runs.items()},
        "baseline_curve": baseline_curve,
        "timeline": {name: timelines[name] for name in ev.timeline},
    }
    return result, plot_data
