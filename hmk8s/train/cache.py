"""The user cache: compiled programs and the scores of fixed policies, kept between runs.

A run's fixed costs are mostly work an earlier run already did: XLA compiling the same
programs, and the baselines (``hpa``, ``heuristic``, ``static``, ``random``) scored again on
the same episodes. Both are kept under one folder, by default ``$XDG_CACHE_HOME/hmk8s`` (else
``~/.cache/hmk8s``); ``$HMK8S_CACHE_DIR`` or the ``cache.dir`` setting moves it, and
``cache.compile=false`` (programs) / ``cache.scores=false`` (scores) turn either part off.

- ``jax/``: JAX's persistent compilation cache. Every program is kept, however fast it
  compiled, so a warm run compiles nothing. A ``$JAX_COMPILATION_CACHE_DIR`` set by the user
  wins over this folder.
- ``programs/``: the training run's own programs (its chunks, its init, the agents' rollout)
  as whole executables (`ProgramCache`). JAX's cache is keyed by the lowered program, so a hit
  there still pays tracing and lowering in Python (seconds per program); these are keyed by
  what determines the program instead, so a warm run skips both.
- ``scores/``: one JSON file per fixed policy's scores, named by a digest of everything that
  determines them: the simulator's parameters (the use case's content and the env settings),
  the episodes and the key, what was asked for, the jax version and backend, and the source
  of hmk8s itself (so any change to the simulator or a policy is a miss, never a stale hit).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.experimental import serialize_executable

from hmk8s.train.profile import persistent_cache_hits

#: Moves the cache folder when the ``cache.dir`` setting is null.
CACHE_ENV = "HMK8S_CACHE_DIR"
_PACKAGE = Path(__file__).resolve().parents[1]


def cache_root(setting: str | None = None) -> Path:
    """The cache folder: ``setting``, else ``$HMK8S_CACHE_DIR``, else the user cache folder
    (``$XDG_CACHE_HOME/hmk8s``, else ``~/.cache/hmk8s``)."""
    if setting:
        return Path(setting).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hmk8s"


def enable_compile_cache(root: Path) -> Path:
    """Keep every compiled program under ``root/jax`` (or ``$JAX_COMPILATION_CACHE_DIR``);
    the folder used."""
    folder = Path(os.environ.get("JAX_COMPILATION_CACHE_DIR") or root / "jax")
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return folder


@cache
def source_digest() -> str:
    """sha256 of hmk8s's Python source: scores computed by other code are never reused."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE.rglob("*.py")):
        digest.update(str(path.relative_to(_PACKAGE)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def tree_digest(tree: Any) -> str:
    """sha256 of a pytree's structure (static fields included) and of every leaf's bytes."""
    digest = hashlib.sha256(str(jax.tree.structure(tree)).encode())
    for leaf in jax.tree.leaves(tree):
        arr = np.asarray(leaf)
        digest.update(f"{arr.dtype}{arr.shape}".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` whole or not at all (a reader never sees half a file); an
    unwritable folder is skipped: the cache only saves time, it never stops a run."""
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


class ScoreCache:
    """Scores of fixed policies as JSON files under ``folder`` (None: nothing is kept)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    def key(self, what: Mapping[str, Any], env_params: Any, rollout_key: jax.Array) -> str:
        """The file name of a score: what was asked for (policy, episodes, ...), the
        simulator's parameters, the episodes' key and the code and jax that compute it."""
        parts = {
            "what": dict(what),
            "env": tree_digest(env_params),
            "key": np.asarray(jax.random.key_data(rollout_key)).tolist(),
            "source": source_digest(),
            "jax": jax.__version__,
            "backend": jax.default_backend(),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()

    def get_or_compute(
        self,
        what: Mapping[str, Any],
        env_params: Any,
        rollout_key: jax.Array,
        compute: Callable[[], dict[str, Any]],
    ) -> dict[str, Any]:
        """The cached scores of ``what`` on these episodes, or ``compute()``'s, then kept. A
        file that cannot be read is recomputed; one that cannot be written is skipped (the
        cache only saves time, it never stops a run)."""
        if self.folder is None:
            return compute()
        path = self.folder / f"{self.key(what, env_params, rollout_key)}.json"
        with contextlib.suppress(OSError, ValueError):
            return json.loads(path.read_text())["scores"]
        scores = compute()
        _write_atomic(path, json.dumps({"what": dict(what), "scores": scores}).encode())
        return scores


def score_cache(root: Path, enabled: bool) -> ScoreCache:
    """The score cache under ``root/scores``, or one that keeps nothing."""
    return ScoreCache(root / "scores" if enabled else None)


#: The libraries whose code a program traces besides hmk8s's own.
_TRACED = ("jax", "jaxlib", "flax", "optax")


def _platform() -> dict[str, Any]:
    """What besides hmk8s decides an executable: the libraries it traces, XLA's flags and
    the devices."""
    return {
        "versions": {name: metadata.version(name) for name in _TRACED},
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "x64": bool(jax.config.jax_enable_x64),
        "devices": [f"{d.platform}:{d.device_kind}:{d.id}" for d in jax.devices()],
        "processes": jax.process_count(),
    }


def _abstract(args: tuple) -> tuple[Any, list[tuple[Any, ...]]]:
    """The arguments as a program sees them: the tree and each leaf's type and sharding."""
    leaves, tree = jax.tree.flatten((args, {}))
    return tree, [(str(jax.typeof(x)), str(getattr(x, "sharding", ""))) for x in leaves]


class ProgramCache:
    """Compiled programs kept whole, so that a warm run neither traces nor lowers them.

    A program is found by what determines it: ``context`` (the run's settings and the
    simulator's parameters), its name (static arguments included), the abstract arguments, the
    source of hmk8s, the versions of the libraries it traces and the devices; any change to
    them is another file, never a stale hit. A file is a sha256 of its payload, then the
    payload (the serialised executable and its argument trees); one that is missing, fails the
    checksum, does not load or takes other arguments is compiled again and replaced, so a
    damaged entry costs a compile, never a crash. ``folder=None`` keeps nothing: every program
    is compiled (JAX's own cache still serves XLA).
    """

    def __init__(
        self, folder: Path | None, context: Mapping[str, Any], loaded: list[str] | None = None
    ) -> None:
        self.folder = folder
        self.context = dict(context)
        #: the names of the programs read back, not compiled (shared with `within`'s caches)
        self.loaded = [] if loaded is None else loaded

    def within(self, **context: Any) -> ProgramCache:
        """This cache for programs that also close over ``context``."""
        return ProgramCache(self.folder, {**self.context, **context}, self.loaded)

    def key(self, name: str, args: tuple) -> str:
        """The file name of program ``name`` compiled for ``args`` in this context."""
        tree, leaves = _abstract(args)
        parts = {
            "name": name,
            "context": self.context,
            "tree": str(tree),
            "leaves": leaves,
            "source": source_digest(),
            "platform": _platform(),
        }
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def compile(self, name: str, jitted: Any, *args: Any) -> Callable[..., Any]:
        """``jitted`` (a `jax.jit` function) compiled for ``args``: read back when kept, else
        compiled (XLA's cache still applies) and kept."""
        if self.folder is None or jax.process_count() > 1:  # one process's files
            return jitted.lower(*args).compile()
        path = self.folder / f"{self.key(name, args)}.bin"
        loaded = _load(path, args)
        if loaded is not None:
            self.loaded.append(name)
            return loaded
        hits = persistent_cache_hits()
        compiled = jitted.lower(*args).compile()
        if persistent_cache_hits() != hits:
            # XLA:CPU serialises an executable JAX's cache handed back without its kernels (it
            # loads, then fails "Function ... not found" when run): keep only fresh compiles
            return compiled
        with contextlib.suppress(Exception):  # a program XLA cannot serialise is just not kept
            payload = pickle.dumps(serialize_executable.serialize(compiled))
            _write_atomic(path, hashlib.sha256(payload).digest() + payload)
        return compiled


def _load(path: Path, args: tuple) -> Any | None:
    """The executable kept at ``path`` if it is whole and takes ``args``; else None."""
    with contextlib.suppress(OSError):
        data = path.read_bytes()
        checksum, payload = data[:32], data[32:]
        if hashlib.sha256(payload).digest() != checksum:
            return None
        with contextlib.suppress(Exception):
            loaded = serialize_executable.deserialize_and_load(*pickle.loads(payload))
            avals, structure = jax.tree.flatten(loaded.in_avals)
            if (structure, [(a.shape, a.dtype) for a in avals]) == _signature((args, {})):
                return loaded
    return None


def _signature(args: Any) -> tuple[Any, list[tuple[Any, Any]]]:
    """A tree of arguments as its structure and each leaf's shape and dtype."""
    leaves, structure = jax.tree.flatten(args)
    return structure, [(a.shape, a.dtype) for a in map(jax.typeof, leaves)]


def program_cache(root: Path, enabled: bool, config: Mapping[str, Any]) -> ProgramCache:
    """The program cache under ``root/programs`` for a run of ``config`` (where the run is
    written and what it resumes do not change its programs), or one that keeps nothing."""
    context = {k: v for k, v in config.items() if k not in ("run_dir", "resume")}
    return ProgramCache(root / "programs" if enabled else None, {"config": context})
