"""`configs/evaluate.yaml` composes over the training tree, types the `evaluate` block, and
`usecase=all` names the three use cases."""

from __future__ import annotations

import dataclasses

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from tiny import tiny_config

from hmk8s.agents.config import (
    AgentConfig,
    HaqlConfig,
    ScheduleConfig,
    deployed_bonus,
    heuristic_bonus,
)
from hmk8s.domain.usecases import CONFIG_DIR
from hmk8s.evaluate import cli
from hmk8s.evaluate.experiment import EvaluateConfig, usecase_agent, usecase_config
from hmk8s.train.config import ConfigError, TrainConfig, resolve, resume_mismatches


@pytest.fixture
def evaluate_schema():
    cli.register_schema()
    yield
    ConfigStore.instance().store(name=cli.SCHEMA_NAME, node=TrainConfig)


def load(overrides: list[str]):
    with initialize_config_dir(str(CONFIG_DIR.parent), version_base="1.3"):
        return compose("evaluate", overrides=overrides)


def test_evaluate_config_is_the_training_tree_plus_evaluate(evaluate_schema):
    cfg = load(["usecase=ml", "seeds=3", "evaluate.episodes=8", "agent.hidden=[32]"])
    typed = OmegaConf.to_object(cfg)
    assert isinstance(typed, cli.EvaluateRoot)
    assert (typed.seeds, typed.evaluate.episodes, typed.agent.hidden) == (3, 8, [32])
    # the evaluation budget of configs/evaluate.yaml over the training defaults
    assert (typed.total_steps, typed.agent.epsilon.steps, typed.haql.xi.steps) == (
        300000,
        150000,
        150000,
    )
    assert (typed.agent.updates_per_step, typed.haql.xi.end, typed.haql.deployed_xi) == (
        0.046875,
        0.1,
        None,
    )
    assert typed.evaluate.deployed_xi_grid == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 16.0]
    # the README's network, rate and soft target, the rate annealed over each use case's
    # planned updates: the numbers the evaluation shipped with before `auto` (ML's 13,596
    # updates rounded up to 13,600, EHR's 22,660 to 22,700, STREAM's 27,192 to 27,200)
    assert (typed.agent.learning_rate, typed.agent.target_tau) == (0.0005, 0.01)
    assert typed.agent.lr_decay_updates == "auto"
    assert typed.evaluate.deployed_xi_sla is True
    assert typed.evaluate.agent_by_usecase == {
        "ehr": {"updates_per_step": 0.078125, "sla_penalty": 0.3},
        "stream": {"updates_per_step": 0.09375},
    }
    # STREAM trains twice as long (600,000 steps), with both schedules: its 55,3xx updates
    assert typed.evaluate.budget_by_usecase == {"stream": 2.0}
    for name, decay in (("ml", 13_600), ("ehr", 22_700), ("stream", 55_400)):
        run = resolve(
            usecase_config(dataclasses.replace(typed, usecase=None), name, typed.evaluate)
        )
        assert run.config.agent.lr_decay_updates == decay
    stream = usecase_config(typed, "stream", typed.evaluate)
    assert (stream.total_steps, stream.agent.epsilon.steps, stream.haql.xi.steps) == (
        600_000,
        300_000,
        300_000,
    )
    assert cli.usecases("ml", cfg.usecase)["ml"]["chain"] == ["firewall", "encrypt"]


def test_usecase_all_lists_each_use_case(evaluate_schema):
    chosen = cli.usecases(cli.ALL, load(["usecase=all"]).usecase)
    assert list(chosen) == ["ehr", "ml", "stream"]
    assert chosen["stream"]["chain"] == ["encrypt", "firewall"]


def test_unknown_or_mistyped_evaluate_key_is_refused(evaluate_schema):
    with pytest.raises(ConfigCompositionException):
        load(["evaluate.unknown=1"])
    with pytest.raises(ConfigCompositionException):
        load(["evaluate.episodes=many"])


def test_deployed_bonus_is_the_deployed_weight_times_eta():
    fading = ScheduleConfig(kind="linear", start=1.0, end=0.5, steps=10)
    assert deployed_bonus(None) == 0.0  # a pure DQN acts on Q alone
    assert deployed_bonus(HaqlConfig(eta=2.0, xi=fading)) == 1.0  # xi.end = 0.5 by default
    assert deployed_bonus(HaqlConfig(eta=2.0, xi=fading, deployed_xi=1.5)) == 3.0
    assert deployed_bonus(HaqlConfig(eta=2.0, xi=fading, deployed_xi=0.0)) == 0.0


def test_heuristic_bonus_follows_the_xi_schedule_times_eta():
    fading = HaqlConfig(eta=2.0, xi=ScheduleConfig(kind="linear", start=1.0, end=0.25, steps=100))
    # xi_t = 1 - 0.75 t / 100 until step 100, then 0.25; times eta = 2
    assert float(heuristic_bonus(fading, 0)) == pytest.approx(2.0)
    assert float(heuristic_bonus(fading, 40)) == pytest.approx(2.0 * 0.7)
    assert float(heuristic_bonus(fading, 100)) == pytest.approx(0.5)
    assert float(heuristic_bonus(fading, 1000)) == pytest.approx(0.5)
    assert float(heuristic_bonus(None, 40)) == 0.0


def test_resume_ignores_the_deployed_weight_but_not_the_training_schedule():
    saved = {"haql": {"eta": 1.0, "xi": {"end": 0.5}}, "total_steps": 100}
    current = {"haql": {"eta": 1.0, "xi": {"end": 0.5}, "deployed_xi": 1.0}, "total_steps": 200}
    assert resume_mismatches(saved, current) == []
    current["haql"]["xi"]["end"] = 0.0
    assert resume_mismatches(saved, current) == ["haql.xi.end: checkpoint has 0.5, now 0.0"]


def test_a_setting_added_after_the_checkpoint_counts_as_its_default():
    # written before seed_devices and prioritised replay existed
    saved = {"seeds": 2, "agent": {"gamma": 0.99}}
    current = {
        "seeds": 2,
        "seed_devices": 1,
        "agent": {"gamma": 0.99, "priority_exponent": 0.0, "priority_beta": 0.4},
    }
    assert resume_mismatches(saved, current) == []
    current["seed_devices"] = 2
    current["agent"]["priority_exponent"] = 0.6
    assert resume_mismatches(saved, current) == [
        "agent.priority_exponent: checkpoint has 0.0, now 0.6",
        "seed_devices: checkpoint has 1, now 2",
    ]


def test_a_setting_the_checkpoint_lacks_is_filled_from_the_shipped_yaml():
    # configs/agent/dqn.yaml's soft target (0.01) and 128-128 network, not the hard copy
    # (1.0) and 256-256 the schema once had a second set of defaults for
    saved = {"agent": {"gamma": 0.99}}
    current = {"agent": {"gamma": 0.99, "target_tau": 0.01, "hidden": [128, 128]}}
    assert resume_mismatches(saved, current) == []
    current["agent"].update(target_tau=1.0, hidden=[256, 256])
    assert resume_mismatches(saved, current) == [
        "agent.hidden: checkpoint has [128, 128], now [256, 256]",
        "agent.target_tau: checkpoint has 0.01, now 1.0",
    ]


def test_a_use_case_in_agent_by_usecase_trains_with_its_own_agent_settings():
    agent = AgentConfig(updates_per_step=0.025, batch_size=64)
    ev = EvaluateConfig(agent_by_usecase={"stream": {"updates_per_step": 0.1, "hidden": [32]}})
    stream = usecase_agent(agent, "stream", ev)
    assert isinstance(stream, AgentConfig)
    assert (stream.updates_per_step, stream.hidden, stream.batch_size) == (0.1, [32], 64)
    assert usecase_agent(agent, "ml", ev) == agent
    assert agent.updates_per_step == 0.025


def test_a_budget_factor_scales_the_steps_and_both_schedules_of_that_use_case_only():
    cfg = tiny_config(usecase="stream", backend="sim", total_steps=3000)
    ev = EvaluateConfig(
        agent_by_usecase={"stream": {"updates_per_step": 0.5}}, budget_by_usecase={"stream": 2.0}
    )
    stream = usecase_config(cfg, "stream", ev)
    assert stream.total_steps == 6000
    assert stream.agent.epsilon.steps == 2 * cfg.agent.epsilon.steps
    assert stream.haql.xi.steps == 2 * cfg.haql.xi.steps
    assert stream.agent.updates_per_step == 0.5
    assert (stream.haql.xi.start, stream.haql.xi.end) == (cfg.haql.xi.start, cfg.haql.xi.end)
    assert usecase_config(cfg, "ml", ev) == cfg
    with pytest.raises(ConfigError, match=r"budget_by_usecase.ml must be > 0, got 0"):
        usecase_config(cfg, "ml", EvaluateConfig(budget_by_usecase={"ml": 0.0}))


def test_agent_by_usecase_refuses_unknown_keys_and_wrong_types():
    agent = AgentConfig()
    for changes, word in (
        ({"learning_rat": 0.1}, "learning_rat"),
        ({"batch_size": "many"}, "batch_size"),
    ):
        ev = EvaluateConfig(agent_by_usecase={"ml": changes})
        with pytest.raises(ConfigError, match=f"(?s)evaluate.agent_by_usecase.ml: .*{word}"):
            usecase_agent(agent, "ml", ev)
