"""The user cache: compiled programs and the scores of fixed policies, kept between runs.

A run's fixed costs are mostly work an earlier run already did: XLA compiling the same
programs, and the baselines (``hpa``, ``heuristic``, ``static``, ``random``) scored again on
the same episodes. Both are kept under one folder, by default ``$XDG_CACHE_HOME/hmk8s`` (else
``~/.cache/hmk8s``); ``$HMK8S_CACHE_DIR`` or the ``cache.dir`` setting moves it, and
``cache.compile=false`` / ``cache.scores=false`` turn either part off.

- ``jax/``: JAX's persistent compilation cache. Every program is kept, however fast it
  compiled, so a warm run compiles nothing. A ``$JAX_COMPILATION_CACHE_DIR`` set by the user
  wins over this folder.
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
import tempfile
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jax
import numpy as np

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
        with contextlib.suppress(OSError):
            self.folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
            with os.fdopen(fd, "w") as out:
                json.dump({"what": dict(what), "scores": scores}, out)
            os.replace(tmp, path)
        return scores


def score_cache(root: Path, enabled: bool) -> ScoreCache:
    """The score cache under ``root/scores``, or one that keeps nothing."""
    return ScoreCache(root / "scores" if enabled else None)
