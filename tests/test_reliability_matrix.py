"""The reliability matrix (`scripts/reliability_matrix.py`) as tests: every case of bad input,
damaged run or unusable backend ends as docs/reliability.md promises (one `error:` line and
exit 2, nothing left behind; or a recovery that says what it skipped), never in a traceback.

The cases run in this process, as `scripts/train.py` runs them (the up-front composition,
then the Hydra task on the composed config), so the whole matrix takes seconds, not a
process start per case; the script runs them as separate processes."""

from __future__ import annotations

import importlib.util
import sys
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import jax
import pytest

from hmk8s.train import cli

pytestmark = pytest.mark.usefixtures("fast_compile", "compile_cache")
ROOT = Path(__file__).resolve().parents[1]
#: Cases the matrix holds to the contract but the code does not meet yet: the test fails when
#: they start to pass, so the mark goes with the fix.
KNOWN: dict[str, str] = {}


def _matrix():
    spec = importlib.util.spec_from_file_location(
        "reliability_matrix", ROOT / "scripts" / "reliability_matrix.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


matrix = _matrix()


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
    """``scripts/train.py args`` in this process: its exit status (a traceback is printed)."""
    try:
        with shown_warnings():
            cli.run(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    except Exception:
        traceback.print_exc()
        return 1
    return 0


@pytest.fixture(scope="module")
def compile_cache(tmp_path_factory) -> Iterator[None]:
    """A persistent compilation cache while the module runs: the resumed runs compile what
    the base run compiled."""
    keys = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    before = {key: getattr(jax.config, key) for key in keys}
    jax.config.update(keys[0], str(tmp_path_factory.mktemp("jax-cache")))
    jax.config.update(keys[1], 0.0)
    yield
    for key, value in before.items():
        jax.config.update(key, value)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A finished tiny run with checkpoints at 256 and 512 env steps."""
    run_dir = tmp_path_factory.mktemp("matrix") / "base"
    args = matrix.with_budget((f"total_steps={matrix.BASE_STEPS}", f"run_dir={run_dir}"))
    assert train_in_process(args) == 0
    return run_dir


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=KNOWN[c.name]))
        if c.name in KNOWN
        else c
        for c in matrix.CASES
    ],
    ids=[c.name for c in matrix.CASES],
)
def test_the_case_ends_as_the_contract_says(case, base, tmp_path, monkeypatch, capfd):
    work = tmp_path / "case"
    args = matrix.prepare(case, work, base)
    before = matrix.contents(work)
    monkeypatch.chdir(work)
    capfd.readouterr()
    code = train_in_process(args)
    stderr = capfd.readouterr().err
    left = sorted(matrix.contents(work) - before)
    verdict = matrix.verdict(case.expect, code, stderr, left)
    assert verdict in matrix.GOOD, f"{verdict} (exit {code}, left {left}):\n{stderr[-3000:]}"
