"""`scripts/train.py` in the test process: the config its Hydra task gets, and whole runs of it.

A refusal costs milliseconds here and a second as a process (Python and JAX start), so the
tests that feed the command many bad inputs run it here; `script_runs` starts it as a user does.
"""

from __future__ import annotations

import logging
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from hmk8s.configs import CONFIG_DIR
from hmk8s.train import cli


@contextmanager
def composed(*overrides: str) -> Iterator[DictConfig]:
    """The config ``scripts/train.py overrides...`` hands its task, composed in this process
    with Hydra's runtime state (choices, search path, overrides) set as during a run."""
    cli.register_schema()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        with open_dict(cfg):
            del cfg["hydra"]
        yield cfg


@contextmanager
def logging_kept() -> Iterator[None]:
    """Every logger as it was: a run configures logging as Hydra does (the root at ERROR, a
    handler of its own on ``hmk8s``, which stops propagating, and loggers that existed before
    disabled), which would hide hmk8s' records from pytest's ``caplog`` in every later test of
    this worker."""

    def loggers() -> list[logging.Logger]:
        named = logging.Logger.manager.loggerDict.values()
        return [logging.getLogger(), *(lg for lg in named if isinstance(lg, logging.Logger))]

    kept = {lg: (list(lg.handlers), lg.propagate, lg.level, lg.disabled) for lg in loggers()}
    try:
        yield
    finally:
        for lg, (handlers, propagate, level, disabled) in kept.items():
            lg.handlers[:] = handlers
            lg.propagate, lg.level, lg.disabled = propagate, level, disabled


@contextmanager
def shown_warnings() -> Iterator[None]:
    """Warnings printed on stderr as the command line prints them (pytest records them)."""
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: (
            sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))
        )
        yield


def train_in_process(args: list[str]) -> int:
    """``scripts/train.py args`` as the script runs them (`hmk8s.train.cli.run`: the config
    composed once, then the task on it): its exit status; a traceback is printed."""
    try:
        with shown_warnings(), logging_kept():
            cli.run(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except Exception:
        traceback.print_exc()
        return 1
    return 0
