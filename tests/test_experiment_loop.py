"""The one experiment loop (`run_chunks`) and the one greedy evaluator (`greedy_rollout`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s import sim
from hmk8s.agents.config import AgentConfig
from hmk8s.agents.network import QNetwork
from hmk8s.domain.encoders import get_encoder
from hmk8s.domain.settings import ENV_DEFAULTS
from hmk8s.envs.sim_spec import sim_env_spec
from hmk8s.evaluate.experiment import train_agent
from hmk8s.policies.q_policy import q_policy
from hmk8s.policies.rollout import rollout
from hmk8s.train.anakin.loop import init_seeds, make_trainer
from hmk8s.train.anakin.run import merge_pieces, run_chunks, run_training
from hmk8s.train.anakin.sim_eval import greedy_rollout
from hmk8s.train.config import TrainConfig, resolve
from hmk8s.train.profile import WallTime, persistent_cache_hits
from hmk8s.train.run import NonFiniteError, check_finite
from hmk8s.train.runlog import params_sha256

EPISODES, STEPS = 3, 8


def programs_built() -> Callable[[], int]:
    """Programs built from now on: compiled by XLA, or read back from JAX's persistent cache,
    which an earlier in-process run on this worker may have switched on and filled."""
    wall, hits = WallTime(), persistent_cache_hits()
    return lambda: wall.programs_compiled() + persistent_cache_hits() - hits


def tiny_config() -> TrainConfig:
    """ML with 16 envs, a 16-unit network and 256 env steps: 16 iterations of 16 env steps."""
    agent = AgentConfig(hidden=[16], batch_size=16, buffer_size=1024, learning_starts=64)
    cfg = TrainConfig(usecase="ml", agent=agent, total_steps=256, num_envs=16, chunk_steps=64)
    cfg.env.episode_steps = 40
    cfg.eval.enabled = cfg.log.progress = cfg.log.tensorboard = False
    return cfg


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_config()
    run = resolve(cfg, "ml")
    env, params = sim.make(run.usecase, dataclasses.asdict(cfg.env))
    spec = sim_env_spec(env, params, cfg.env.encoder)
    return run, spec, make_trainer(spec, run.config.agent, cfg.num_envs, run.haql)


def test_the_evaluations_training_is_the_training_runs(tiny, tmp_path):
    run, spec, trainer = tiny
    summary = run_training(run, spec, tmp_path / "run")  # chunks of 4 iterations: [4] * 4
    curve_at = []

    def curve(params, steps):
        curve_at.append(steps)
        return np.zeros(run.config.seeds)

    built = programs_built()
    trained = train_agent(trainer, run.config, 3, curve, lambda line: None)  # [6, 6, 4]
    assert built() == 2  # the init, and one program of 2 for chunks of 6 and 4
    assert curve_at == [0, 96, 192, 256]  # 16 env steps an iteration
    assert summary["env_steps"] == 256 and trained.steps[-1] == 256
    assert trained.updates == summary["updates"]
    assert params_sha256(jax.device_get(trained.params)) == summary["params_sha256"]


def test_a_chunk_run_as_several_calls_reports_the_chunks_metrics():
    # two calls of one program: 2 episodes ending at 10 and 4 updates at loss 1, then no
    # episode and 4 updates at loss 3; the env's per-step means 0.2 and 0.4
    first = {"env_steps": 32, "updates": 10, "episodes": 2, "episode_return": 10.0}
    second = {"env_steps": 64, "updates": 14, "episodes": 0, "episode_return": np.nan}
    pieces = [
        {**first, "loss": 1.0, "epsilon": 0.9, "env/pods": 0.2},
        {**second, "loss": 3.0, "epsilon": 0.8, "env/pods": 0.4},
    ]
    pieces = [{k: np.array([v], np.float32) for k, v in p.items()} for p in pieces]
    merged = merge_pieces(pieces, np.array([6], np.float32))
    assert {k: float(v[0]) for k, v in merged.items()} == pytest.approx(
        {
            "env_steps": 64,
            "updates": 14,
            "episodes": 2,
            "episode_return": 10.0,
            "loss": 2.0,
            "epsilon": 0.8,
            "env/pods": 0.3,
        }
    )
    assert merge_pieces(pieces[:1], None) is pieces[0]  # one call: its own metrics


@pytest.mark.usefixtures("fast_compile")
def test_non_finite_weights_halt_the_loop_before_the_boundary(tiny):
    _, _, trainer = tiny
    state = init_seeds(trainer, 0, 1)
    broken = jax.tree.map(lambda x: jnp.full_like(x, jnp.nan), state.learner.params)
    state = state._replace(learner=state.learner._replace(params=broken))
    logged, boundaries = [], []
    with pytest.raises(NonFiniteError, match="weights are not finite"):
        run_chunks(
            trainer,
            state,
            [2, 2, 2],
            check_finite=check_finite,
            on_chunk=logged.append,
            at_boundary=boundaries.append,
        )
    assert [c.index for c in logged] == [0]  # its row is logged, then the loop halts
    assert boundaries == []  # nothing saved or evaluated


@pytest.fixture(scope="module")
def agents():
    env, params = sim.make("ml", {"episode_steps": STEPS, "start": "minimal"})
    obs, _ = env.reset(jax.random.PRNGKey(0), params)
    net = QNetwork(hidden=(8,), num_actions=params.layout.num_actions)
    x = get_encoder(ENV_DEFAULTS["encoder"])(obs, params)
    seeds = jax.vmap(net.init, in_axes=(0, None))(jax.random.split(jax.random.PRNGKey(1), 3), x)
    return env, params, net, seeds


@pytest.mark.usefixtures("fast_compile")
def test_the_evaluator_is_each_seeds_unbatched_rollout_compiled_once(agents):
    env, params, net, seeds = agents
    key, encoder = jax.random.PRNGKey(7), ENV_DEFAULTS["encoder"]
    built = programs_built()
    records = greedy_rollout(env, params, net, EPISODES, encoder)(seeds, key, 0.5)
    assert built() == 1
    for seed in range(3):
        one = jax.tree.map(lambda x, s=seed: x[s], seeds)
        alone = rollout(env, params, q_policy(net.apply, one, encoder, 0.5), key, EPISODES)
        np.testing.assert_array_equal(records["action"][seed], alone["action"])
        # compiled apart (and at another optimisation level): equal up to float rounding
        np.testing.assert_allclose(records["reward"][seed], alone["reward"], rtol=1e-6)
    # another use: a network and simulator made anew but alike, other weights, another bonus
    again_env, again_params = sim.make("ml", {"episode_steps": STEPS, "start": "minimal"})
    again_net = QNetwork(hidden=(8,), num_actions=params.layout.num_actions)
    others = jax.tree.map(lambda x: x[::-1], seeds)
    built = programs_built()
    reversed_records = greedy_rollout(again_env, again_params, again_net, EPISODES, encoder)(
        others, key, 0.5
    )
    assert built() == 0
    np.testing.assert_array_equal(reversed_records["action"][0], records["action"][2])
