"""The command-line shell every program shares: the evaluation's run-directory guard (it never
writes over a training run, nor over a directory another run filled while it waited for the
lock), the one-line error text, and one composition of the shipped configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError

from hmk8s.evaluate.cli import EvaluateRoot, evaluation_dir
from hmk8s.shell.compose import compose, overrides_of
from hmk8s.shell.exit import one_line
from hmk8s.shell.run_dir import RunDirError, claim_run_dir, hold_run_dir, timestamped


def _training_run(folder: Path) -> dict[str, bytes]:
    """A training run's files (what `hmk8s.train.run` writes), by relative path."""
    files = {
        "config.yaml": b"usecase: ml\n",
        "metrics.csv": b"step,return\n128,1.5\n",
        "checkpoints/128/state": b"\x00\x01",
    }
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return files


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_an_evaluation_refuses_a_training_runs_directory_and_leaves_it_as_it_was(tmp_path):
    run = tmp_path / "run"
    files = _training_run(run)
    fresh = EvaluateRoot(run_dir=str(run))
    refused = f"^{run} is not empty: pass resume={run}"
    with pytest.raises(RunDirError, match=refused), evaluation_dir(fresh, "ml"):
        pytest.fail("the evaluation got the directory")
    resumed = EvaluateRoot(resume=str(run))
    refused = r"no stopped evaluation \(results.json\) there"
    with pytest.raises(RunDirError, match=refused), evaluation_dir(resumed, "ml"):
        pytest.fail("the evaluation got the directory")
    assert _contents(run) == files  # no lock file either


def test_a_directory_filled_before_its_lock_was_taken_is_refused_under_the_lock(tmp_path):
    """Two evaluations into one fresh directory: the second checks it while it is empty, the
    first writes and ends, then the second takes the lock; it checks again and is refused."""
    out = tmp_path / "out"
    seen = []

    def used(directory: Path) -> str | None:
        seen.append(directory)
        refusal = "full" if (directory / "results.json").exists() else None
        if len(seen) == 1:  # checked empty; the other evaluation then runs from start to end
            with claim_run_dir(directory, lambda _: None):
                (directory / "results.json").write_text("{}")
        return refusal

    with pytest.raises(RunDirError, match=r"^full$"), claim_run_dir(out, used):
        pytest.fail("the directory was claimed twice")
    assert seen == [out, out]
    assert (out / "results.json").read_text() == "{}"


def test_a_claimed_directory_is_locked_by_its_claimer(tmp_path):
    out = tmp_path / "fresh" / "run"
    with claim_run_dir(out, lambda _: None) as claimed:
        assert claimed == out and out.is_dir()
        held = rf"in use by another process \(PID {os.getpid()}\)"
        with pytest.raises(RunDirError, match=held), hold_run_dir(out):
            pass


def test_fresh_names_are_timestamped_under_runs():
    name = timestamped("evaluate", "ml")
    assert name.parent == Path("runs")
    prefix, date, clock = name.name.rsplit("-", 2)
    assert prefix == "evaluate-ml" and len(date) == 8 and len(clock) == 6
    assert (date + clock).isdigit()


def test_one_line_names_the_setting_or_joins_the_causes():
    with pytest.raises(ConfigKeyError) as err:
        OmegaConf.merge(OmegaConf.structured(EvaluateRoot), {"seedz": 3})
    assert one_line(err.value) == "unknown setting 'seedz'"
    hydra_like = RuntimeError(
        "Could not override 'x'.\nTo append use +x=1\nConfig search path:\n a"
    )
    hydra_like.__cause__ = ValueError("Key 'x' not in 'TrainConfig'\n    full_key: x")
    assert one_line(hydra_like) == (
        "Could not override 'x'; To append use +x=1: Key 'x' not in 'TrainConfig'"
    )


def test_overrides_and_config_folders_compose_hydra_flags_do_not():
    assert overrides_of(["usecase=ml", "--config-dir", "/x"]) == [
        "usecase=ml",
        "hydra.searchpath=[file:///x]",
    ]
    assert overrides_of(["-m", "seed=0,1"]) is None
    backend = compose("sim", folder=Path(__file__).parents[1] / "hmk8s/configs/backend")
    assert backend["name"] == "sim"


def test_the_shell_imports_neither_jax_nor_the_kubernetes_client_nor_hydra():
    """Every program imports it first; the training core stays importable without the client."""
    modules = ("jax", "kubernetes", "hydra")
    code = (
        "import sys; import hmk8s.shell.compose, hmk8s.shell.exit, hmk8s.shell.programs, "
        f"hmk8s.shell.run_dir; print([m for m in {modules!r} if m in sys.modules])"
    )
    root = Path(__file__).parents[1]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    assert out.stdout.strip() == "[]"
