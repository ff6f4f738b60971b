"""One stop path and one writer: SIGTERM ends the default trainer cleanly (after a checkpoint
and while compiling), a resume continues without a row twice, a second writer, a used
evaluation or sweep directory and a full disk are each one line."""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from async_envs import small_agent
from script_runs import run_script, start_script
from tiny import tiny_overrides

from hmk8s import sim
from hmk8s.train.actor_learner.core import make_async_fns
from hmk8s.train.cache import ScoreCache
from hmk8s.train.config import LogConfig, TrainConfig
from hmk8s.train.profile import PHASES
from hmk8s.train.run import DiskFullError, RunDirError, hold_run_dir, open_run

#: The tiny run, long enough that a signal always lands before it ends (it never gets there).
LONG_RUN = tiny_overrides(
    "usecase=ml", "heuristic=true", "total_steps=2000000", "agent.lr_decay_updates=0", narrow=True
)


def _wait_for(predicate, proc, seconds: float = 240.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _steps(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as f:
        return [int(row["env_steps"]) for row in csv.DictReader(f)]


def _stopped(proc, run: Path) -> dict:
    """The end of a run stopped by SIGTERM: exit 143, one line, summary with the signal and
    nothing half-written."""
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 143, stderr
    assert stderr.strip().splitlines() == [stderr.strip()], stderr  # one line, no traceback
    summary = json.loads((run / "summary.json").read_text())
    assert summary["signal"] == "SIGTERM"
    assert "eval" not in summary  # the evaluation is skipped, not half done
    kept = [p.name for p in (run / "checkpoints").iterdir()]
    assert [n for n in kept if not n.isdigit()] == []  # no *-tmp left
    assert max(map(int, kept)) == summary["env_steps"]  # the state reached is saved
    assert f"checkpoint step {summary['env_steps']:,} kept; resume=run continues" in stderr
    return summary


def test_sigterm_after_a_checkpoint_stops_at_the_chunk_and_resumes_without_a_row_twice(tmp_path):
    cache = tmp_path / "cache"
    proc = start_script("train.py", tmp_path, *LONG_RUN, "run_dir=run", cache=cache)
    run = tmp_path / "run"
    _wait_for(lambda: any(p.name.isdigit() for p in (run / "checkpoints").glob("*")), proc)
    summary = _stopped(proc, run)
    stop = summary["env_steps"]
    assert stop >= 128 and stop % 128 == 0
    assert _steps(run) == list(range(128, stop + 1, 128))
    resumed = run_script(
        "train.py", tmp_path, *LONG_RUN, f"total_steps={stop + 256}", "resume=run", cache=cache
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _steps(run) == list(range(128, stop + 257, 128))  # each chunk once
    final = json.loads((run / "summary.json").read_text())
    assert "signal" not in final and final["env_steps"] == stop + 256


def test_sigterm_while_compiling_stops_before_the_first_chunk(tmp_path):
    # a cache of its own, empty: the run spends its first seconds compiling
    proc = start_script("train.py", tmp_path, *LONG_RUN, "run_dir=run", cache=tmp_path / "c")
    run = tmp_path / "run"
    _wait_for(lambda: (run / "checkpoints").is_dir(), proc)
    summary = _stopped(proc, run)
    assert summary["env_steps"] == 0  # no chunk ran: the fresh state is the checkpoint
    resumed = run_script(
        "train.py", tmp_path, *LONG_RUN, "total_steps=256", "resume=run", cache=tmp_path / "c"
    )
    assert resumed.returncode == 0, resumed.stderr
    assert _steps(run) == [128, 256]


def test_a_second_writer_is_refused_naming_the_first(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    held = f"in use by another process \\(PID {os.getpid()}\\)"
    with hold_run_dir(run):
        with pytest.raises(RunDirError, match=held), hold_run_dir(run):
            pass
        out = run_script("train.py", tmp_path, *tiny_overrides("run_dir=run", narrow=True))
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"error: {run.relative_to(tmp_path)} is in use by another process (PID {os.getpid()}): "
        "wait for it to end, or choose another run_dir"
    )
    assert sorted(p.name for p in run.iterdir()) == [".lock"]  # nothing written
    with hold_run_dir(run):  # released when its holder ends
        pass


def test_a_full_disk_is_one_line_naming_the_intact_checkpoints(tmp_path):
    cfg = TrainConfig(usecase="ml", backend={}, log=LogConfig(tensorboard=False, progress=False))
    state = make_async_fns(2, small_agent(), 2).init(jax.random.PRNGKey(0), np.zeros(2))
    with pytest.raises(DiskFullError) as err, open_run(cfg, {}, tmp_path / "run") as run:
        run.save(64, state, {})
        run.save(128, state, {})
        run.checkpoints.wait()
        raise OSError(errno.ENOSPC, "No space left on device")
    assert str(err.value) == (
        f"{tmp_path / 'run'}: the disk is full (no space left to write the run); intact "
        f"checkpoints: steps 64, 128; resume={tmp_path / 'run'} continues from step 128 once "
        "space is freed"
    )


def test_evaluate_and_a_multirun_refuse_a_used_directory(tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "results.json").write_text("{}")
    out = run_script("evaluate.py", tmp_path, "usecase=ml", "run_dir=used")
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: used is not empty: pass resume=used to continue a stopped evaluation there, "
        "or choose another run_dir"
    )
    sweep = run_script("train.py", tmp_path, "-m", "seed=0,1", "hydra.sweep.dir=used")
    assert sweep.returncode == 2
    assert sweep.stderr.startswith("error: used already holds a sweep")
    assert sorted(p.name for p in used.iterdir()) == ["results.json"]
    assert (used / "results.json").read_text() == "{}"


def test_the_profile_of_a_warm_run_reads_its_programs_back_and_trains_the_same(tmp_path):
    tiny = tiny_overrides("eval.enabled=true", "eval.episodes=2", narrow=True)
    out = run_script("benchmark.py", tmp_path, "--profile", "--", *tiny)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[1].split() == ["cold", "s", "cold", "%", "warm", "s", "warm", "%"]
    assert [line.split()[0] for line in lines[2:11]] == [*PHASES, "wall", "not", "programs", "read"]
    result = json.loads(lines[-1])
    cold, warm = result["cold"], result["warm"]
    assert cold["programs_compiled"] > 0 and warm["programs_compiled"] == 0
    # the warm run reads its programs back whole: init, the one chunk length, the rollout
    assert cold["programs_loaded"] == 0 and warm["programs_loaded"] == 3
    assert warm["params_sha256"] == cold["params_sha256"]
    assert warm["eval"] == cold["eval"] and warm["baselines"] == cold["baselines"]
    for run in (cold, warm):
        assert set(run["seconds"]) == set(PHASES)
        assert sum(run["seconds"].values()) == pytest.approx(run["wall_seconds"], rel=1e-6)
        fixed = sum(v for k, v in run["seconds"].items() if k != "train")
        assert run["fixed_share"] == pytest.approx(fixed / run["wall_seconds"])
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # its runs and cache are removed


def test_scores_are_kept_by_what_determines_them(tmp_path):
    _, params = sim.make("ml", {"encoder": "continuous"})
    key = jax.random.PRNGKey(3)
    cache = ScoreCache(tmp_path)
    calls: list[int] = []

    def score(seed: int = 0):
        calls.append(seed)
        return {"return": 1.5 + seed}

    assert cache.get_or_compute({"policy": "hpa"}, params, key, score) == {"return": 1.5}
    assert cache.get_or_compute({"policy": "hpa"}, params, key, score) == {"return": 1.5}
    assert calls == [0]  # the second came from the file
    other_env = params.replace(sla_s=params.sla_s * 2)
    other_key = jax.random.PRNGKey(4)
    for what, env_params, k in (
        ({"policy": "static"}, params, key),
        ({"policy": "hpa"}, other_env, key),
        ({"policy": "hpa"}, params, other_key),
    ):
        assert cache.get_or_compute(what, env_params, k, lambda: score(1)) == {"return": 2.5}
    assert calls == [0, 1, 1, 1] and len(list(tmp_path.iterdir())) == 4
    assert ScoreCache(None).get_or_compute({"policy": "hpa"}, params, key, score) == {"return": 1.5}
    assert calls == [0, 1, 1, 1, 0]  # no cache: computed every time
