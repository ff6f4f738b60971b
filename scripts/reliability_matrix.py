"""Feed `scripts/train.py` bad input and damaged runs, and classify how each one ends.

    python scripts/reliability_matrix.py                  # every case, a table and totals
    python scripts/reliability_matrix.py --only ckpt      # the cases whose name contains "ckpt"

Each case runs `train.py` as a user would, in a scratch directory of its own, with a tiny
budget. A case either expects a refusal (bad overrides, NaN or infinite use-case values, a
malformed use-case file or trace, a run directory that cannot be resumed, a Kubernetes backend
that cannot be used) or a recovery (a damaged newest checkpoint with an intact one before it).
Outcomes:

- clear:     exit 2 and exactly one line on stderr, `error: ...` (the contract for bad input),
             and nothing left in the case's directory that was not there before
- recovered: exit 0 after a warning that names the damaged step (recovery cases)
- leftover:  a clear refusal that left files or folders behind (a run directory that would
             block the retry)
- unclear:   a non-zero exit without a traceback, but not one clear line (or a refusal where a
             recovery was expected)
- traceback: a Python traceback on stderr
- silent:    exit 0 where an error was expected (or a recovery that said nothing)
- hang:      still running at the timeout

The script exits 1 when any case ends other than clear or recovered. The same cases run in
CI, in-process (`tests/test_reliability_matrix.py`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "scripts" / "train.py"
USECASE_ML = ROOT / "hmk8s" / "configs" / "usecase" / "ml.yaml"
#: Added to every case unless it sets the key itself: a run of seconds, not minutes.
BUDGET = (
    "total_steps=256",
    "num_envs=16",
    "chunk_steps=256",
    "agent.hidden=[16]",
    "agent.batch_size=16",
    "agent.buffer_size=1024",
    "agent.learning_starts=64",
    "log.progress=false",
    "log.tensorboard=false",
    "eval.enabled=false",
)
#: The run the checkpoint cases start from: two checkpoints, at 256 and 512 env steps.
BASE_STEPS = 512
GOOD = ("clear", "recovered")

Setup = Callable[[Path, Path], None]


@dataclass(frozen=True)
class Case:
    """``train.py`` with ``args`` (``{work}`` is the case's directory) and the `BUDGET` after
    ``setup(work, base)``, where ``base`` is a finished tiny run; ``expect`` is "refuse" or
    "recover"."""

    name: str
    args: tuple[str, ...]
    expect: str = "refuse"
    setup: Setup | None = None


@dataclass(frozen=True)
class Outcome:
    case: Case
    verdict: str
    returncode: int | None
    message: str


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
    mapping = {**yaml.safe_load(USECASE_ML.read_text()), **changes}
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
    Case("num_envs=0", ("num_envs=0",)),
    Case("more devices than JAX sees", ("devices=2",)),
    Case("a seed axis the devices do not split into", ("seeds=2", "seed_devices=2")),
    Case("gamma out of range", ("agent.gamma=1.5",)),
    Case("unknown encoder", ("env.encoder=foo",)),
    Case("learning rate NaN", ("agent.learning_rate=nan",)),
    Case("epsilon end NaN", ("agent.epsilon.end=nan",)),
    Case("haql eta inf", ("heuristic=true", "haql.eta=inf")),
    Case("total_steps past int32", ("total_steps=3000000000",)),
    # use-case values
    Case("phase NaN", ("usecase.proxies.0.phase=nan",)),
    Case("phase past 2 pi", ("usecase.proxies.0.phase=7",)),
    Case("step_seconds inf", ("usecase.step_seconds=inf",)),
    Case("step_seconds 1e-9", ("usecase.step_seconds=1e-9",)),
    Case("base_rate inf", ("usecase.proxies.0.base_rate=inf",)),
    Case("base_rate 1e39", ("usecase.proxies.1.base_rate=1e39",)),
    Case("reward beta NaN", ("usecase.reward.beta=nan",)),
    Case("burst_factor inf", ("usecase.proxies.0.burst_factor=inf",)),
    Case("noise inf", ("usecase.proxies.0.noise=inf",)),
    Case("startup_s inf", ("usecase.functions.encrypt.small.startup_s=inf",)),
    Case("measurement_noise NaN", ("usecase.measurement_noise=nan",)),
    Case("network delay NaN", ("usecase.clusters.network_delay_ms.0.1=nan",)),
    Case("diurnal wave shorter than a step", ("usecase.proxies.0.diurnal_period_s=10",)),
    # traces
    Case("empty inline trace", ("+usecase.trace=[]",)),
    Case("trace as a flat list", ("+usecase.trace=[1,2,3]",)),
    Case("missing trace file", ("+usecase.trace=missing.csv",)),
    Case(
        "non-UTF-8 trace file",
        ("+usecase.trace=latin1.csv",),
        setup=write("latin1.csv", "10,\xe9,3\n".encode("latin-1")),
    ),
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
    Case("resume a missing directory", (*RESUME[:-1], "resume={work}/absent")),
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


# --- running and judging ----------------------------------------------------------------------


def with_budget(args: tuple[str, ...]) -> list[str]:
    """``args`` plus every `BUDGET` setting whose key they do not set (Hydra refuses a key
    given twice)."""
    keys = {a.split("=", 1)[0].lstrip("+~") for a in args if "=" in a}
    return [*args, *(b for b in BUDGET if b.split("=", 1)[0] not in keys)]


def verdict(expect: str, returncode: int | None, stderr: str, left: list[str]) -> str:
    """How a run ended, judged against what the case expects (see the module docstring);
    ``left``: what the run added to the case's directory."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if returncode is None:
        return "hang"
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


def contents(work: Path) -> set[str]:
    """Every path under ``work``, relative to it."""
    return {str(path.relative_to(work)) for path in work.rglob("*")}


def first_message(stderr: str) -> str:
    """The line of ``stderr`` that says what went wrong, for the table."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    message = next((line for line in lines if line.startswith("error: ")), "")
    message = message or next((line for line in lines if "Error" in line), "")
    return (message or (lines[0] if lines else "")).strip()


def run_case(case: Case, work: Path, base: Path, env: dict[str, str], timeout: float) -> Outcome:
    args = prepare(case, work, base)
    before = contents(work)
    try:
        proc = _train(args, work, env, timeout)
        returncode, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as err:
        returncode, stderr = None, err.stderr.decode() if isinstance(err.stderr, bytes) else ""
    left = sorted(contents(work) - before)
    return Outcome(
        case, verdict(case.expect, returncode, stderr, left), returncode, first_message(stderr)
    )


def prepare(case: Case, work: Path, base: Path) -> list[str]:
    """Make the case's directory (and what its setup puts there); its ``train.py`` arguments."""
    work.mkdir(parents=True)
    if case.setup is not None:
        case.setup(work, base)
    return [a.replace("{work}", str(work)) for a in with_budget(case.args)]


def _train(
    args: list[str], cwd: Path, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    """``scripts/train.py args`` in ``cwd``, its output captured."""
    return subprocess.run(
        [sys.executable, str(TRAIN), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def base_run(scratch: Path, env: dict[str, str], timeout: float) -> Path:
    """A finished tiny run with checkpoints at 256 and 512 env steps."""
    run_dir = scratch / "base"
    args = with_budget((f"total_steps={BASE_STEPS}", f"run_dir={run_dir}"))
    proc = _train(args, scratch, env, timeout)
    if proc.returncode != 0:
        sys.exit(f"the base run failed (exit {proc.returncode}):\n{proc.stderr}")
    return run_dir


def table(outcomes: list[Outcome]) -> str:
    width = max(len(o.case.name) for o in outcomes)
    rows = [f"{'case':<{width}}  {'expect':<7}  {'exit':>4}  {'verdict':<9}  message"]
    for o in outcomes:
        code = "-" if o.returncode is None else str(o.returncode)
        rows.append(
            f"{o.case.name:<{width}}  {o.case.expect:<7}  {code:>4}  {o.verdict:<9}  "
            f"{o.message[:110]}"
        )
    totals = Counter(o.verdict for o in outcomes)
    order = ("clear", "recovered", "leftover", "unclear", "traceback", "silent", "hang")
    rows.append("totals: " + ", ".join(f"{k} {totals[k]}" for k in order) + f" of {len(outcomes)}")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="", help="run the cases whose name contains this")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds before a hang")
    args = parser.parse_args()
    cases = [c for c in CASES if args.only in c.name]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "XLA_FLAGS": "--xla_backend_optimization_level=0",
    }
    with tempfile.TemporaryDirectory(prefix="hmk8s-matrix-") as tmp:
        scratch = Path(tmp)
        env["JAX_COMPILATION_CACHE_DIR"] = str(scratch / "jax-cache")
        needs_base = any(c.setup is not None for c in cases)
        base = base_run(scratch, env, args.timeout) if needs_base else scratch / "base"
        outcomes = []
        for i, case in enumerate(cases):
            outcome = run_case(case, scratch / f"case{i:02d}", base, env, args.timeout)
            print(f"{outcome.verdict:<9}  {case.name}", file=sys.stderr, flush=True)
            outcomes.append(outcome)
    print(table(outcomes))
    sys.exit(0 if all(o.verdict in GOOD for o in outcomes) else 1)


if __name__ == "__main__":
    main()
