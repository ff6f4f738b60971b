"""The program cache: a kept program is read back without tracing, and a damaged, stale or
foreign entry is compiled again and replaced, never run."""

from __future__ import annotations

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hmk8s.train.cache import ProgramCache, program_cache


@pytest.fixture(autouse=True)
def nothing_into_jax_s_cache():
    """These tests count fresh compiles: nothing they compile goes into JAX's persistent cache,
    which an in-process training run of another test may have switched on for this process
    (a program handed back from it would not be kept)."""
    key = "jax_persistent_cache_min_compile_time_secs"
    before = getattr(jax.config, key)
    jax.config.update(key, 1e9)
    yield
    jax.config.update(key, before)


class _Counting:
    """``x * scale + offset`` jitted anew at each call, as each run of a command does (jax
    traces a function once per process); ``traces`` counts its tracings."""

    def __init__(self, scale: float) -> None:
        self.scale, self.traces = scale, []

    def __call__(self):
        def f(x, offset):
            self.traces.append(1)
            return {"y": x * self.scale + offset}

        return jax.jit(f)


def test_a_kept_program_is_read_back_without_tracing(tmp_path):
    x = jnp.arange(4.0)
    f = _Counting(3.0)
    traces = f.traces
    cold = ProgramCache(tmp_path, {"run": 1})
    assert cold.compile("f", f(), x, 0.5)(x, 0.5)["y"].tolist() == [0.5, 3.5, 6.5, 9.5]
    assert traces == [1] and cold.loaded == [] and len(list(tmp_path.iterdir())) == 1
    ProgramCache(tmp_path, {"run": 1}).within(env="a").compile("f", f(), x, 0.5)
    assert traces == [1, 1]  # another context: another program
    again = ProgramCache(tmp_path, {"run": 1})
    program = again.compile("f", f(), x, 0.5)
    assert traces == [1, 1] and again.loaded == ["f"]  # read back: not traced
    assert program(x, 2.0)["y"].tolist() == [2.0, 5.0, 8.0, 11.0]  # the offset is an argument
    ProgramCache(tmp_path, {"run": 1}).compile("f", f(), x[:3], 0.5)
    assert traces == [1, 1, 1]  # other shapes: another program
    disabled = program_cache(tmp_path, False, {"run": 1})
    assert disabled.compile("f", f(), x, 0.5)(x, 0.5)["y"].tolist() == [0.5, 3.5, 6.5, 9.5]
    assert traces == [1, 1, 1, 1] and disabled.loaded == []  # cache.compile=false: compiled
    assert not (tmp_path / "programs").exists()


def test_a_damaged_or_stale_entry_is_compiled_again_and_replaced(tmp_path):
    x = jnp.arange(4.0)
    f = _Counting(3.0)
    traces = f.traces
    cache = ProgramCache(tmp_path, {})
    cache.compile("f", f(), x, 0.5)
    (path,) = tmp_path.iterdir()
    good = path.read_bytes()
    damaged = bytearray(good)
    damaged[len(good) // 2] ^= 0xFF
    for entry in (bytes(damaged), good[: len(good) // 2], b""):  # a flipped byte, half, empty
        path.write_bytes(entry)
        before = len(traces)
        assert cache.compile("f", f(), x, 0.5)(x, 0.5)["y"].tolist() == [0.5, 3.5, 6.5, 9.5]
        assert len(traces) == before + 1 and path.read_bytes() != entry  # compiled, replaced
    assert cache.loaded == []
    # a whole entry of another program under this key (a stale key) is not run either
    g = _Counting(5.0)
    other = ProgramCache(tmp_path / "other", {})
    other.compile("g", g(), x[:2], 0.5)
    (foreign,) = (tmp_path / "other").iterdir()
    path.write_bytes(foreign.read_bytes())
    y = cache.compile("f", f(), x, 0.5)(x, 0.5)["y"]
    np.testing.assert_array_equal(np.asarray(y), [0.5, 3.5, 6.5, 9.5])
    assert cache.loaded == [] and path.read_bytes() != foreign.read_bytes()
    again = ProgramCache(tmp_path, {})
    again.compile("f", f(), x, 0.5)
    assert len(traces) == 5 and again.loaded == ["f"]  # the replacement is read back


KEEP_TWICE = """
import sys
from pathlib import Path
import jax, jax.numpy as jnp
from hmk8s.train.cache import ProgramCache
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
def f(x):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ c.T) * 2 + c.sum(), None), x, None, length=3)[0]
x = jnp.ones((4, 4))
out = ProgramCache(Path(sys.argv[2]), {"run": sys.argv[3]}).compile("f", jax.jit(f), x)(x)
print(float(out.sum()))
"""


def test_a_program_from_jax_s_own_cache_is_not_kept_and_a_kept_one_runs_elsewhere(tmp_path):
    """XLA:CPU serialises an executable that JAX's persistent cache handed back without its
    kernels, so only fresh compiles are kept; a kept one runs in another process."""
    jax_cache, programs = tmp_path / "jax", tmp_path / "programs"

    def run(context: str) -> float:
        done = subprocess.run(
            [sys.executable, "-c", KEEP_TWICE, str(jax_cache), str(programs), context],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return float(done.stdout)

    first = run("a")  # compiled fresh: kept
    assert len(list(programs.glob("*.bin"))) == 1
    assert run("b") == first  # another context, the same program from JAX's cache: not kept
    assert len(list(programs.glob("*.bin"))) == 1
    assert run("a") == first  # the kept program read back in a new process, and run
