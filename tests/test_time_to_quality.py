"""Time to quality and the config comparison: the crossing arithmetic, the configs they build and
their refusals of bad input (the measurements themselves are in docs/benchmarks.md)."""

from __future__ import annotations

import pytest
from script_runs import run_script

from hmk8s.bench.time_to_quality import (
    Variant,
    compose_config,
    first_reach,
    holds_from,
    parse_variant,
    time_to_quality,
)
from hmk8s.train.config import ConfigError


def test_first_reach_interpolates_steps_and_seconds_alike():
    steps, seconds, curve = [0, 10_000, 20_000], [0.0, 5.0, 15.0], [0.0, 4.0, 8.0]
    # 6 lies half way from 4 (step 10,000, 5 s) to 8 (step 20,000, 15 s): 15,000 steps, 10 s
    assert first_reach(steps, seconds, curve, 6.0) == {"steps": 15_000.0, "seconds": 10.0}
    # already there before training: step 0, second 0
    assert first_reach(steps, seconds, curve, -1.0) == {"steps": 0.0, "seconds": 0.0}
    assert first_reach(steps, seconds, curve, 8.5) == {"steps": None, "seconds": None}


def test_holds_from_is_the_point_after_the_last_fall_below():
    steps, seconds = [0, 10, 20, 30, 40], [0.0, 1.0, 3.0, 6.0, 10.0]
    # reaches 5 at step 10, falls back to 2 at step 20, stays from step 30 on
    assert holds_from(steps, seconds, [0.0, 6.0, 2.0, 5.0, 7.0], 5.0) == {
        "steps": 30.0,
        "seconds": 6.0,
    }
    assert holds_from(steps, seconds, [9.0, 6.0, 8.0, 5.0, 7.0], 5.0) == {
        "steps": 0.0,
        "seconds": 0.0,
    }
    # the last point below: it does not stay, whatever came before
    assert holds_from(steps, seconds, [9.0, 9.0, 9.0, 9.0, 4.0], 5.0) == {
        "steps": None,
        "seconds": None,
    }


def test_parse_variant():
    assert parse_variant("fast=total_steps=1000 agent.batch_size=64") == Variant(
        "fast", ("total_steps=1000", "agent.batch_size=64")
    )
    assert parse_variant("defaults=") == Variant("defaults", ())
    for bad in ("total_steps", "=total_steps=1"):
        with pytest.raises(ConfigError, match="NAME=OVERRIDES"):
            parse_variant(bad)


def test_compose_config_is_what_train_py_composes():
    run = compose_config("stream", True, ["total_steps=20000", "agent.updates_per_step=0.5"])
    cfg = run.config
    assert cfg.heuristic and run.haql is cfg.haql and run.usecase.name == run.name == "stream"
    assert (cfg.total_steps, cfg.agent.updates_per_step) == (20_000, 0.5)
    # untouched keys keep the shipped defaults (hmk8s/configs/agent/dqn.yaml)
    assert (cfg.agent.batch_size, cfg.agent.hidden) == (128, [128, 128])
    with pytest.raises(ConfigError, match=r"agent\.nope"):
        compose_config("ml", False, ["agent.nope=1"])
    with pytest.raises(ConfigError, match="num_envs must be > 0"):
        compose_config("ml", False, ["num_envs=0"])


def test_bad_agent_or_every_is_refused_before_training():
    with pytest.raises(ConfigError, match="unknown agent"):
        time_to_quality(["ml"], ["ppo"], [Variant("x", ())], 1000)
    with pytest.raises(ConfigError, match="every"):
        time_to_quality(["ml"], ["dqn"], [Variant("x", ())], 0)
    with pytest.raises(ConfigError, match="unknown use case"):
        time_to_quality(["ml", "foo"], ["dqn"], [Variant("x", ())], 1000)
    with pytest.raises(ConfigError, match="different names"):
        time_to_quality(["ml"], ["dqn"], [Variant("x", ()), Variant("x", ("seed=1",))], 1000)


def test_bad_usecase_is_refused_with_one_line_and_exit_2(tmp_path):
    done = run_script("time_to_quality.py", tmp_path, "--usecases", "ml,foo")
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: unknown use case(s) ['foo']: expected some of ['ehr', 'ml', 'stream']"
    )
