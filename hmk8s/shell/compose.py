"""The one way hmk8s composes its shipped Hydra configs (``pkg://hmk8s.configs``), and runs a
program on the config it composed.

`run_command` composes a command's config once and runs the program on it as ``hydra.main``
would in its run mode (the job's logging, `HydraConfig`, ``hydra.run.dir``); a config that
does not compose is one line and exit status 2, as every other bad input. Hydra's own flags
(``-m``, ``--help``, ``--cfg``...) are left to ``hydra.main``.

Hydra is imported when a config is composed, not with this module.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hmk8s.configs import SEARCH_PATH
from hmk8s.shell.exit import fail, one_line

CONFIG_MODULE = "hmk8s.configs"
VERSION_BASE = "1.3"
MULTIRUN_FLAGS = ("-m", "--multirun")


def compose(
    config_name: str,
    overrides: Sequence[str] = (),
    *,
    folder: Path | None = None,
    hydra_config: bool = False,
) -> Any:
    """The config ``config_name`` with ``overrides``, from the shipped configs (or the config
    folder ``folder``), with Hydra's own node when ``hydra_config``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir, initialize_config_module

    where = (
        initialize_config_module(CONFIG_MODULE, version_base=VERSION_BASE)
        if folder is None
        else initialize_config_dir(str(folder), version_base=None)
    )
    with where:
        return hydra_compose(
            config_name, overrides=list(overrides), return_hydra_config=hydra_config
        )


def overrides_of(argv: Sequence[str]) -> list[str] | None:
    """``argv`` as compose overrides (``--config-dir X`` as a search-path entry); None when it
    holds any other Hydra flag (``-m``, ``--help``, ``--cfg``...), which Hydra handles itself."""
    out, extra, args = [], [], iter(argv)
    for arg in args:
        if arg in ("--config-dir", "-cd"):
            extra.append(str(Path(next(args, "")).absolute()))
        elif arg.startswith("--config-dir="):
            extra.append(str(Path(arg.split("=", 1)[1]).absolute()))
        elif arg.startswith("-"):
            return None
        else:
            out.append(arg)
    if extra:
        out.append("hydra.searchpath=[" + ",".join(f"file://{d}" for d in extra) + "]")
    return out


def run_command(config_name: str, task: Callable[[Any], None], argv: Sequence[str]) -> None:
    """Run ``task`` on the config ``config_name`` composed with ``argv``: composed once, in
    this function, unless ``argv`` holds Hydra's own flags (then ``hydra.main`` runs it)."""
    overrides = overrides_of(argv)
    if overrides is None:
        import hydra

        hydra.main(config_path=SEARCH_PATH, config_name=config_name, version_base=VERSION_BASE)(
            task
        )()
        return
    _run_once(config_name, task, overrides)


def _run_once(config_name: str, task: Callable[[Any], None], overrides: list[str]) -> None:
    """What ``hydra.main`` does in its run mode, on a config composed once."""
    from hydra import initialize_config_module
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.utils import run_job
    from hydra.types import HydraContext, RunMode
    from omegaconf import open_dict

    job = Path(sys.argv[0]).stem or "app"
    with initialize_config_module(CONFIG_MODULE, version_base=VERSION_BASE, job_name=job):
        hydra = GlobalHydra.instance()
        try:
            cfg = hydra.hydra.compose_config(
                config_name,
                overrides,
                run_mode=RunMode.RUN,
                from_shell=True,
                with_log_configuration=True,
            )
        except Exception as err:  # Hydra, OmegaConf and YAML errors alike: all are the input's
            fail(one_line(err))
        with open_dict(cfg):
            cfg.hydra.mode = RunMode.RUN
        callbacks = Callbacks(cfg)
        callbacks.on_run_start(config=cfg, config_name=config_name)
        context = HydraContext(config_loader=hydra.config_loader(), callbacks=callbacks)
        ret = run_job(
            hydra_context=context,
            task_function=task,
            config=cfg,
            job_dir_key="hydra.run.dir",
            job_subdir_key=None,
            configure_logging=True,
        )
        callbacks.on_run_end(config=cfg, config_name=config_name, job_return=ret)
        _ = ret.return_value  # raises the task's exception, as hydra.main does
