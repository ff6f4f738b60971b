"""The reliability matrix: `scripts/train.py` fed bad input, damaged runs and unusable backends,
each case in a scratch directory of its own with the tiny run's budget, ends as
docs/reliability.md promises, never in a traceback.

A case expects a refusal (bad overrides, NaN or infinite use-case values, a malformed use-case
file or trace, a run directory that cannot be resumed, a Kubernetes backend that cannot be used)
or a recovery (a damaged newest checkpoint with an intact one before it). How a case ends:

- clear:     exit 2 and exactly one line on stderr, `error: ...` (the contract for bad input),
             and nothing left in the case's directory that was not there before
- recovered: exit 0 after a warning that names the damaged step (recovery cases)
- leftover:  a clear refusal that left files or folders behind (a run directory that would
             block the retry)
- unclear:   a non-zero exit without a traceback, but not one clear line (or a refusal where a
             recovery was expected)
- traceback: a Python traceback on stderr
- silent:    exit 0 where an error was expected (or a recovery that said nothing)

The cases run in this process, as the script runs them (`in_process.train_in_process`), so the
matrix takes seconds, not a process start per case. The bad values that `test_cli.py` already
holds to the same contract in-process are not repeated here: `num_envs=0`, `env.encoder=foo`,
`resume=` of a missing directory (`test_bad_settings_exit_2_with_one_line`); a NaN phase,
`step_seconds` inf and 1e-9, `base_rate=1e39`, a NaN `reward.beta`, an infinite
`burst_factor`, `noise` or `startup_s`, an empty or flat inline trace and a trace file that is
not UTF-8 (`test_bad_usecase_values_exit_2_with_one_line`).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import jax
import pytest
import yaml
from in_process import train_in_process
from tiny import tiny_overrides

from hmk8s.domain.usecases import CONFIG_DIR

pytestmark = pytest.mark.usefixtures("fast_compile", "compile_cache")
#: The run the checkpoint cases start from: two checkpoints, at 256 and 512 env steps.
BASE_STEPS = 512
GOOD = ("clear", "recovered")

Setup = Callable[[Path, Path], None]


@dataclass(frozen=True)
class Case:
    """``train.py`` with ``args`` (``{work}`` is the case's directory) and the tiny run's
    budget after ``setup(work, base)``, where ``base`` is a finished tiny run; ``expect`` is
    "refuse" or "recover"."""

    name: str
    args: tuple[str, ...]
    expect: str = "refuse"
    setup: Setup | None = None


# --- setups -----------------------------------------------------------------------------------


def write(relative: str, content: str | bytes) -> Setup:
    """A file under the case's directory, as text or bytes."""

    def setup(work: Path, base: Path) -> None:
        path = work / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return setup


def own_usecase(**changes: object) -> Setup:
    """``conf/usecase/own.yaml``: the ML use case with ``changes``, for ``--config-dir``."""
    mapping = {**yaml.safe_load((CONFIG_DIR / "ml.yaml").read_text()), **changes}
    return write("conf/usecase/own.yaml", yaml.safe_dump(mapping))


def all_of(*setups: Setup) -> Setup:
    def setup(work: Path, base: Path) -> None:
        for step in setups:
            step(work, base)

    return setup


def _largest_data_file(step_dir: Path) -> Path:
    """The largest array data file of a checkpoint step (OCDBT's uncompressed values)."""
    return max(step_dir.rglob("ocdbt.process_0/d/*"), key=lambda f: f.stat().st_size)


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(b ^ 0xFF for b in data[mid : mid + 64])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damaged_run(how: Callable[[Path], None], steps: tuple[int, ...]) -> Setup:
    """``run/``: a copy of the base run whose checkpoints at ``steps`` are damaged by ``how``."""

    def setup(work: Path, base: Path) -> None:
        shutil.copytree(base, work / "run")
        for step in steps:
            how(_largest_data_file(work / "run" / "checkpoints" / str(step)))

    return setup


def copied_run(work: Path, base: Path) -> None:
    shutil.copytree(base, work / "run")


def empty_run(work: Path, base: Path) -> None:
    (work / "run").mkdir()


# --- the cases --------------------------------------------------------------------------------

CUSTOM = ("--config-dir", "{work}/conf", "usecase=own")
RESUME = (f"total_steps={BASE_STEPS + 256}", "resume={work}/run")

#: A kubeconfig whose API server refuses connections (loopback port 9: nothing listens there).
REFUSING_KUBECONFIG = yaml.safe_dump(
    {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "revoked"}}],
        "contexts": [
            {"name": f"hmk8s-{k}", "context": {"cluster": "c", "user": "u"}} for k in range(3)
        ],
        "current-context": "hmk8s-0",
    }
)
K8S = ("backend=k8s", "num_envs=2", "run_dir={work}/run")

CASES = (
    # overrides Hydra or the config schema refuse
    Case("unknown key", ("bogus=1",)),
    Case("unknown nested key", ("agent.bogus=1",)),
    Case("wrong type", ("num_envs=abc",)),
    Case("unknown use case", ("usecase=nope",)),
    Case("unknown backend", ("backend=nope",)),
    Case("override of an absent use-case key", ("usecase.trace=x.csv",)),
    # values the train config validation refuses
    Case("more devices than JAX sees", ("devices=2",)),
    Case("a seed axis the devices do not split into", ("seeds=2", "seed_devices=2")),
    Case("gamma out of range", ("agent.gamma=1.5",)),
    Case("learning rate NaN", ("agent.learning_rate=nan",)),
    Case("epsilon end NaN", ("agent.epsilon.end=nan",)),
    Case("haql eta inf", ("heuristic=true", "haql.eta=inf")),
    Case("total_steps past int32", ("total_steps=3000000000",)),
    # use-case values
    Case("phase past 2 pi", ("usecase.proxies.0.phase=7",)),
    Case("base_rate inf", ("usecase.proxies.0.base_rate=inf",)),
    Case("measurement_noise NaN", ("usecase.measurement_noise=nan",)),
    Case("network delay NaN", ("usecase.clusters.network_delay_ms.0.1=nan",)),
    Case("diurnal wave shorter than a step", ("usecase.proxies.0.diurnal_period_s=10",)),
    # traces
    Case("missing trace file", ("+usecase.trace=missing.csv",)),
    Case("trace with NaN", ("+usecase.trace=nan.csv",), setup=write("nan.csv", "1,2,3\n1,nan,3\n")),
    Case(
        "trace with a short row", ("+usecase.trace=short.csv",), setup=write("short.csv", "1,2\n")
    ),
    # use-case files of one's own (--config-dir)
    Case("own use case, malformed YAML", CUSTOM, setup=write("conf/usecase/own.yaml", "a: [1,\n")),
    Case("own use case, a YAML list", CUSTOM, setup=write("conf/usecase/own.yaml", "- 1\n- 2\n")),
    Case(
        "own use case, not UTF-8",
        CUSTOM,
        setup=write("conf/usecase/own.yaml", "name: caf\xe9\n".encode("latin-1")),
    ),
    Case("own use case, unknown key", CUSTOM, setup=own_usecase(slo_ms=60)),
    Case("own use case, missing trace", CUSTOM, setup=own_usecase(trace="rates.csv")),
    Case(
        "own use case, trace beside it with NaN",
        CUSTOM,
        setup=all_of(
            own_usecase(trace="rates.csv"), write("conf/usecase/rates.csv", "1,2,3\nnan,2,3\n")
        ),
    ),
    # run directories and checkpoints
    Case("resume a directory without checkpoints", RESUME, setup=empty_run),
    Case("resume with another config", (*RESUME, "agent.gamma=0.9"), setup=copied_run),
    Case("fresh run over checkpoints", ("run_dir={work}/run",), setup=copied_run),
    Case("ckpt newest flipped", RESUME, "recover", damaged_run(_flip, (BASE_STEPS,))),
    Case("ckpt newest truncated", RESUME, "recover", damaged_run(_truncate, (BASE_STEPS,))),
    Case("ckpt all flipped", RESUME, setup=damaged_run(_flip, (BASE_STEPS - 256, BASE_STEPS))),
    # the Kubernetes backend: refused before any cluster object, and no run directory left
    Case("k8s allow_env_loss not a boolean", (*K8S, "backend.allow_env_loss=maybe")),
    Case("k8s missing kubeconfig", (*K8S, "backend.kubeconfig={work}/absent.kubeconfig")),
    Case(
        "k8s API server refusing connections",
        (*K8S, "backend.kubeconfig={work}/refused.kubeconfig", "backend.api.max_attempts=1"),
        setup=write("refused.kubeconfig", REFUSING_KUBECONFIG),
    ),
    Case("k8s agent.kind=pqn", (*K8S, "agent=pqn")),
)


# --- judging ----------------------------------------------------------------------------------


def verdict(expect: str, returncode: int, stderr: str, left: list[str]) -> str:
    """How a run ended, judged against what the case expects (see the module docstring);
    ``left``: what the run added to the case's directory."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if "Traceback (most recent call last)" in stderr:
        return "traceback"
    if expect == "recover":
        if returncode == 0:
            return (
                "recovered"
                if "warning: " in stderr and "resuming from step" in stderr
                else "silent"
            )
        return "unclear"
    if returncode == 0:
        return "silent"
    if returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "):
        return "leftover" if left else "clear"
    return "unclear"


@pytest.mark.parametrize(
    ("expect", "returncode", "stderr", "left", "judged"),
    [
        ("refuse", 2, "error: bad\n", [], "clear"),
        ("refuse", 2, "error: bad\n", ["run"], "leftover"),
        ("refuse", 2, "error: bad\nerror: worse\n", [], "unclear"),
        ("refuse", 1, "error: bad\n", [], "unclear"),
        ("refuse", 0, "", [], "silent"),
        ("refuse", 1, "Traceback (most recent call last):\n  ...\n", [], "traceback"),
        ("recover", 0, "warning: step 512 is damaged; resuming from step 256\n", [], "recovered"),
        ("recover", 0, "", [], "silent"),
        ("recover", 2, "error: bad\n", [], "unclear"),
    ],
)
def test_the_verdicts_tell_the_contract_from_its_breaches(expect, returncode, stderr, left, judged):
    assert verdict(expect, returncode, stderr, left) == judged


def contents(work: Path) -> set[str]:
    """Every path under ``work``, relative to it."""
    return {str(path.relative_to(work)) for path in work.rglob("*")}


def prepare(case: Case, work: Path, base: Path) -> list[str]:
    """Make the case's directory (and what its setup puts there); its ``train.py`` arguments."""
    work.mkdir(parents=True)
    if case.setup is not None:
        case.setup(work, base)
    return [a.replace("{work}", str(work)) for a in tiny_overrides(*case.args)]


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
    assert train_in_process(tiny_overrides(f"total_steps={BASE_STEPS}", f"run_dir={run_dir}")) == 0
    return run_dir


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_case_ends_as_the_contract_says(case, base, tmp_path, monkeypatch, capfd):
    work = tmp_path / "case"
    args = prepare(case, work, base)
    before = contents(work)
    monkeypatch.chdir(work)
    capfd.readouterr()
    code = train_in_process(args)
    stderr = capfd.readouterr().err
    left = sorted(contents(work) - before)
    judged = verdict(case.expect, code, stderr, left)
    assert judged in GOOD, f"{judged} (exit {code}, left {left}):\n{stderr[-3000:]}"
