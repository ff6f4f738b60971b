"""The gymnasium envs: the registered ids pass gymnasium's checker, info, truncation, errors.

These envs take a handful of steps each, so they run with `jax.disable_jit()`: op-by-op
dispatch is cheaper here than compiling each env's reset and step.
"""

from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import jax
import numpy as np
import pytest
from gymnasium.error import ResetNeeded
from gymnasium.utils.env_checker import check_env

import hmk8s  # noqa: F401  (registers the ids)
from hmk8s import sim
from hmk8s.configs import shipped_value
from hmk8s.domain.observation import Observation
from hmk8s.envs import ENV_IDS
from hmk8s.envs.sim_spec import sim_env_spec
from hmk8s.train.config import TrainConfig

pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(autouse=True)
def _eager():
    with jax.disable_jit():
        yield


def test_ids_are_registered():
    assert set(ENV_IDS.values()) == {"hmk8s/EHR-v0", "hmk8s/ML-v0", "hmk8s/STREAM-v0"}
    for env_id in ENV_IDS.values():
        assert env_id in gym.registry


@pytest.mark.parametrize("encoder", ["onehot", "continuous"])
@pytest.mark.parametrize("env_id", ["hmk8s/EHR-v0", "hmk8s/ML-v0", "hmk8s/STREAM-v0"])
def test_check_env(env_id, encoder):
    env = gym.make(env_id, encoder=encoder)
    check_env(env.unwrapped, skip_render_check=True)
    # sizes: one-hot 70; continuous by hand in test_encoders (EHR 157, ML 127, STREAM 171)
    dims = {"onehot": 70, "continuous": {"EHR": 187, "ML": 157, "STREAM": 203}}
    expected = 70 if encoder == "onehot" else dims["continuous"][env_id.split("/")[1][:-3]]
    assert env.observation_space.shape == (expected,)
    proxies = 5 if "STREAM" in env_id else 3
    assert env.action_space.n == 3 * 3 * 3 * 3 * proxies + 1


def test_the_gym_env_the_simulator_and_the_trainer_share_one_encoder_default():
    # the README's agent trains on `continuous` (configs/config.yaml's env block), and so does
    # every env built without naming an encoder: ML's continuous layout has 157 inputs
    # (by hand in test_encoders), the one-hot one 70 (test_check_env)
    assert shipped_value("env.encoder") == "continuous" == TrainConfig().env.encoder
    assert gym.make("hmk8s/ML-v0").observation_space.shape == (157,)
    assert sim_env_spec(*sim.make("ml")).obs_dim == 157


def test_info_keys_and_types():
    env = gym.make("hmk8s/ML-v0")
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.float32 and obs.shape == (157,)  # the continuous layout
    assert set(info) == {"action_mask"}
    assert info["action_mask"].dtype == bool and info["action_mask"].shape == (244,)
    assert isinstance(env.unwrapped.structured_observation, Observation)
    obs, reward, terminated, truncated, info = env.step(243)
    assert isinstance(reward, float)
    assert terminated is False and truncated is False
    assert set(info) == {"action_mask", "latency_ratio", "pods", "sla_violated", "invalid"}
    assert isinstance(info["action_mask"], np.ndarray) and info["action_mask"].dtype == bool
    assert info["action_mask"].shape == (244,)
    assert type(info["latency_ratio"]) is float
    assert type(info["pods"]) is int
    assert type(info["sla_violated"]) is bool
    assert type(info["invalid"]) is bool
    # empty start: every hop broken, no pods -> latency ratio ~ timeout / SLA, a breach
    assert info["pods"] == 0 and info["sla_violated"] and not info["invalid"]


def test_invalid_action_is_reported():
    env = gym.make("hmk8s/ML-v0")
    env.reset(seed=0)
    # empty start: removing (cluster 0, medium firewall) cannot succeed
    remove = env.unwrapped.params.layout.encode(0, 0, 1, 2, 0)
    _, _, _, _, info = env.step(int(remove))
    assert info["invalid"] is True and info["pods"] == 0
    # deploying it can: 1 pod (starting)
    deploy = env.unwrapped.params.layout.encode(0, 2, 1, 2, 0)
    _, _, _, _, info = env.step(int(deploy))
    assert info["invalid"] is False and info["pods"] == 1


def test_episodes_truncate_at_episode_steps():
    env = gym.make("hmk8s/ML-v0", episode_steps=3)
    env.reset(seed=1)
    flags = [env.step(243)[3] for _ in range(3)]
    assert flags == [False, False, True]
    env.reset(seed=1)  # a new episode starts counting again
    assert env.step(243)[3] is False


def test_action_outside_the_space_raises():
    env = gym.make("hmk8s/ML-v0")
    env.reset(seed=0)
    for bad in (244, -1, 1000):
        with pytest.raises(ValueError, match=r"outside the action space \[0, 244\)"):
            env.step(bad)
    with pytest.raises(ValueError, match="integer index"):
        env.step(2.5)
    bare = gym.make("hmk8s/ML-v0", noop=False)
    assert bare.action_space.n == 243
    bare.reset(seed=0)
    with pytest.raises(ValueError, match=r"outside the action space \[0, 243\)"):
        bare.step(243)


def test_step_before_reset_raises():
    env = gym.make("hmk8s/ML-v0").unwrapped
    with pytest.raises(ResetNeeded, match=r"call reset\(\) before step\(\)"):
        env.step(0)


def test_stepping_past_the_end_of_an_episode_raises():
    env = gym.make("hmk8s/ML-v0", episode_steps=2).unwrapped  # no wrapper enforces the order
    env.reset(seed=3)
    assert [env.step(243)[3] for _ in range(2)] == [False, True]
    for _ in range(2):  # refused every time, not only once
        with pytest.raises(ResetNeeded, match="the episode has ended"):
            env.step(243)
    env.reset(seed=3)
    assert env.step(243)[3] is False


def test_seeded_resets_repeat():
    env = gym.make("hmk8s/STREAM-v0", start="random")
    a, _ = env.reset(seed=42)
    a_step = env.step(405)
    b, _ = env.reset(seed=42)
    b_step = env.step(405)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a_step[0], b_step[0])
    assert a_step[1] == b_step[1]


FORKED_VECTOR = """
import gymnasium as gym
import hmk8s
try:
    gym.make_vec("hmk8s/ML-v0", num_envs=2, vectorization_mode="async",
                 vector_kwargs={"context": "fork"})
except Exception as err:
    print(type(err).__name__, err)
else:
    print("built")
"""


def test_an_async_vector_env_that_forks_is_refused_not_hung(tmp_path):
    """Forked workers of a process where JAX runs would hang at their first JAX call; they
    refuse at once, naming the start methods that work (spawn and forkserver do). gymnasium
    builds a worker's env outside its error channel, so the worker prints the refusal and the
    parent raises a broken pipe or the refusal itself."""
    script = tmp_path / "forked.py"
    script.write_text(FORKED_VECTOR)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False
    )
    broken = ("BrokenPipeError", "ConnectionResetError", "EOFError")  # the worker has exited
    assert done.stdout.split()[0] in ("ForkedProcessError", *broken)
    said = done.stdout + done.stderr
    assert "ForkedProcessError: hmk8s envs cannot run in a process forked after JAX" in said
    assert "vector_kwargs={'context': 'spawn'}" in said
