"""`configs/evaluate.yaml` composes over the training tree, types the `evaluate` block, and
`usecase=all` names the three use cases."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from hmk8s.evaluate import cli
from hmk8s.train.config import TrainConfig
from hmk8s.usecases import CONFIG_DIR


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
        30000,
        15000,
        15000,
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
