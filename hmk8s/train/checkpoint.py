"""Orbax checkpoints of the whole train state plus the config that produced it.

A checkpoint step is the number of env steps (per seed) done so far. Each step
directory holds four items: ``state`` (the train state without the replay
buffer), ``replay`` (the buffer, optional), ``config`` and ``meta`` (JSON).
Orbax writes into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoints intact and the partial
one is ignored (and cleaned up) on the next open. A run's saves (``background``, in a
one-process run) only copy the state to the host and return: a thread computes its
checksums and orbax writes it asynchronously while training goes on, and the next save,
a read or `Checkpointer.close` waits for it.

Orbax keeps no checksum of the arrays, so a flipped or truncated data file would restore
without error into a state that trains on NaN. ``meta`` therefore records every array's
dtype and shape and a sha256 of each item's bytes; a restore checks both, and a step whose
files are damaged is skipped, with a `CheckpointWarning`, for the newest intact one.

Several processes (a multi-process run) save and restore together: each writes and reads the
shards of its own devices, orbax writes the metadata once (process 0) and commits the step when
every process is done. Each process then checks what it read itself, so ``meta`` holds one
sha256 per process of the data that process holds, and the processes agree on whether a step
is damaged.
"""

from __future__ import annotations

import logging
import sys
import time
import traceback
import warnings
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from hmk8s.train.config import resume_mismatches
from hmk8s.train.distributed import all_processes, any_process, barrier, is_primary
from hmk8s.train.runlog import params_sha256
from hmk8s.train.state import TrainState

FORMAT = "hmk8s-train-state"
FORMAT_VERSION = 2
#: Version 1 checkpoints carry no checksums; they are restored unverified, with a warning.
UNVERIFIED_VERSION = 1
_ITEMS = ("state", "replay", "config", "meta")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed: missing, foreign, corrupt or from another config."""


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped, or one was restored without verification."""


class _Damaged(Exception):
    """A step whose files cannot be read back as they were written (the message says why)."""


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def _reason(err: BaseException) -> str:
    """The first line of the innermost cause: orbax wraps TensorStore's specific message."""
    while err.__cause__ is not None:
        err = err.__cause__
    return (str(err).splitlines() or [type(err).__name__])[0][:300]


def _from_orbax(tb: Any) -> bool:
    return any("orbax" in frame.f_code.co_filename for frame, _ in traceback.walk_tb(tb))


class _OrbaxLeftoverTasks(logging.Filter):
    """Drops asyncio's 'Task exception was never retrieved' for orbax's own read tasks."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        leftover = "never retrieved" in record.getMessage()
        return not (leftover and error is not None and _from_orbax(error.__traceback__))


def _silence_orbax_leftovers() -> None:
    """A failed orbax read leaves its other array reads unfinished; when they are collected
    Python prints their errors as 'Exception ignored' tracebacks (unawaited coroutines) or
    asyncio logs them as 'Task exception was never retrieved' (tasks), depending on how far
    each got. The damage is already reported (once, as a warning), so those leftovers are
    dropped, and only those."""
    asyncio_log = logging.getLogger("asyncio")
    if not any(isinstance(f, _OrbaxLeftoverTasks) for f in asyncio_log.filters):
        asyncio_log.addFilter(_OrbaxLeftoverTasks())
    previous = sys.unraisablehook
    if getattr(previous, "hmk8s_orbax_filter", False):
        return

    def hook(unraisable: Any) -> None:
        code = getattr(unraisable.object, "cr_code", None)
        if code is None or "orbax" not in code.co_filename:
            previous(unraisable)

    hook.hmk8s_orbax_filter = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _listed(damaged: dict[int, str]) -> str:
    return "; ".join(f"step {step} is damaged ({why})" for step, why in damaged.items())


def array_layout(tree: Any) -> dict[str, str]:
    """Each array's path in ``tree`` -> ``dtype[shape]``: what a restore into it must match."""
    return {
        jax.tree_util.keystr(path): f"{np.dtype(leaf.dtype)}{list(leaf.shape)}"
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def process_sha256(tree: Any) -> str:
    """Digest of the data this process holds of ``tree``: each array's distinct local shards
    in the order of their place in the array (what this process writes and reads back)."""
    blocks = []
    for leaf in jax.tree.leaves(tree):
        shards = {tuple(i.start or 0 for i in s.index): s.data for s in leaf.addressable_shards}
        blocks.extend(shards[start] for start in sorted(shards))
    return params_sha256(blocks)


def tree_digest(tree: Any) -> str | list[str]:
    """What ``meta`` records of a saved tree: its sha256 on one process; with several, the
    `process_sha256` of each process in process order (every process calls this)."""
    if jax.process_count() == 1:
        return params_sha256(tree)
    digest = np.frombuffer(bytes.fromhex(process_sha256(tree)), np.uint8)
    return [bytes(row).hex() for row in all_processes(digest)]


def _digest_difference(tree: Any, saved: str | list[str]) -> str | None:
    """Why ``tree`` (as read back) differs from the digest saved with it, or None."""
    if isinstance(saved, str):
        return None if params_sha256(tree) == saved else "differ from the sha256 saved with them"
    if len(saved) != jax.process_count():
        raise CheckpointError(
            f"the checkpoint was written by {len(saved)} processes, this run has "
            f"{jax.process_count()}; resume it with as many"
        )
    if process_sha256(tree) != saved[jax.process_index()]:
        return f"differ from the sha256 process {jax.process_index()} saved with them"
    return None


def _first_difference(out: dict[str, Any], names: list[str], saved: dict) -> str | None:
    """Why the first of the trees ``names`` of ``out`` differs from its saved digest, or None."""
    for name in names:
        difference = _digest_difference(out[name], saved[name])
        if difference is not None:
            return f"the {name} arrays {difference}"
    return None


def _layout_difference(saved: dict[str, str], wanted: dict[str, str]) -> str | None:
    """The first array where a checkpoint's layout and this trainer's differ, or None."""
    for path in sorted(set(saved) | set(wanted)):
        was, now = saved.get(path, "absent"), wanted.get(path, "absent")
        if was != now:
            return f"{path}: saved {was}, here {now}"
    return None


class Checkpointer:
    """Saves and restores `TrainState`s under one directory, keeping the newest ``keep``."""

    def __init__(self, directory: str | Path, keep: int = 3, replay: bool = True) -> None:
        self.directory = Path(directory).absolute()
        self.replay = replay
        # several processes save device arrays that the next chunk donates: they wait
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=jax.process_count() == 1
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="hmk8s-checkpoint")
        self._pending: Future | None = None
        self._host: dict[str, Any] | None = None  # the last save's host copy, reused

    def latest_step(self) -> int | None:
        """The newest complete checkpoint step (a save in flight finished first), or None."""
        self.wait()
        return self._manager.latest_step()

    def wait(self) -> None:
        """Until the save in flight (if any) is on disk; raises what it failed with."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()
        self._manager.wait_until_finished()

    def save(
        self, step: int, state: TrainState, config: dict, meta: dict, *, background: bool = False
    ) -> None:
        """Write ``state`` with its config and metadata. With ``background`` (and one process)
        only a host copy is made before returning: a thread digests it and hands it to orbax,
        which writes the files while the caller trains on; the next save, a read or `close`
        waits for them (and raises what they failed with)."""
        trees = {"state": state._replace(buffer=None)}
        if self.replay and state.buffer is not None:  # PQN's state has no replay
            trees["replay"] = state.buffer
        if jax.process_count() > 1:  # each process saves its own shards, together
            self._write(step, trees, config, meta)
            return
        self.wait()  # the last save is on disk: its host copy is free again
        trees = self._host_copy(trees)
        self._pending = self._writer.submit(self._write, step, trees, config, meta)
        if not background:
            self.wait()

    def _host_copy(self, trees: dict[str, Any]) -> dict[str, Any]:
        """``trees`` copied to the host, into the arrays of the last save when it had the same
        layout: a copy of its own, since the next chunk reuses (donates) the device buffers,
        and into memory already touched, since fresh pages for the replay (about 150 MB in the
        README run) cost more than the copy itself."""
        host = jax.device_get(trees)
        if self._host is None or array_layout(self._host) != array_layout(host):
            self._host = jax.tree.map(np.array, host)
        else:
            jax.tree.map(np.copyto, self._host, host)
        return self._host

    def _write(self, step: int, trees: dict[str, Any], config: dict, meta: dict) -> None:
        integrity = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "layout": {name: array_layout(tree) for name, tree in trees.items()},
            "sha256": {name: tree_digest(tree) for name, tree in trees.items()},
        }
        items = {name: ocp.args.StandardSave(tree) for name, tree in trees.items()}
        items["config"] = ocp.args.JsonSave(config)
        items["meta"] = ocp.args.JsonSave({**meta, **integrity})
        if not self._manager.save(step, args=ocp.args.Composite(**items)):
            raise CheckpointError(
                f"{self.directory}: step {step} not saved, the directory holds step "
                f"{self._manager.latest_step()} already"
            )

    def read_config(self, step: int | None = None) -> tuple[int, dict, dict]:
        """(step, config, meta) of the newest checkpoint at or before ``step`` (default: the
        newest) whose config and metadata can be read, checking that it is one of ours."""
        return self._first_intact(step, lambda s: (s, *self._read(s)))

    def restore(self, like: TrainState, step: int | None = None) -> tuple[TrainState, dict, dict]:
        """Restore the newest intact checkpoint at or before ``step`` (default: the newest)
        into the structure of ``like`` (a freshly initialised state).

        A damaged step (unreadable, truncated, or arrays that differ from their sha256) is
        skipped with a `CheckpointWarning`; a foreign one, or one whose arrays have other
        shapes than ``like``'s, is refused. Without a saved replay the buffer of ``like`` is
        kept, so learning resumes from an empty buffer: correct, but no longer bit-identical
        to an uninterrupted run.
        """
        return self._first_intact(step, lambda s: self._restore(like, s))

    def _first_intact(self, step: int | None, load: Any) -> Any:
        """``load`` the newest step that is not damaged, with one warning naming the damaged
        ones and why. Those are moved aside (``<step>.damaged-<unix time>``), so the resumed
        run can save their steps anew and the damaged files stay for a look."""
        damaged: dict[int, str] = {}
        self.wait()
        for candidate in self._steps_from(step):
            try:
                out = load(candidate)
            except _Damaged as err:
                damaged[candidate] = str(err)
                _silence_orbax_leftovers()
                continue
            if damaged:
                aside = self._set_aside(damaged)
                if is_primary():  # process 0 named and moved them
                    warnings.warn(
                        f"{self.directory}: {_listed(damaged)}; resuming from step {candidate}, "
                        f"the newest intact checkpoint (the damaged ones are now "
                        f"{', '.join(aside)})",
                        CheckpointWarning,
                        stacklevel=3,
                    )
            return out
        raise CheckpointError(f"{self.directory}: no intact checkpoint left ({_listed(damaged)})")

    def _set_aside(self, steps: Iterable[int]) -> list[str]:
        stamp = int(time.time())
        names = [f"{step}.damaged-{stamp}" for step in steps]
        if is_primary():
            for step, name in zip(steps, names, strict=True):
                (self.directory / str(step)).rename(self.directory / name)
        barrier("hmk8s-set-aside")
        self._manager.reload()
        return names

    def _read(self, step: int) -> tuple[dict, dict]:
        """The config and meta of ``step``; `_Damaged` if unreadable, refused if foreign."""
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()),
            )
        except Exception as err:
            raise _Damaged(f"no readable config/meta: {_reason(err)}") from err
        meta = out["meta"]
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{self.directory}: step {step} is not an hmk8s train checkpoint")
        if meta.get("version") not in (FORMAT_VERSION, UNVERIFIED_VERSION):
            raise CheckpointError(
                f"{self.directory}: checkpoint format version {meta.get('version')}, "
                f"this trainer reads {UNVERIFIED_VERSION} and {FORMAT_VERSION}"
            )
        return out["config"], meta

    def _restore(self, like: TrainState, step: int) -> tuple[TrainState, dict, dict]:
        config, meta = self._read(step)
        trees = {"state": like._replace(buffer=None)}
        saved_replay = (self.directory / str(step) / "replay").is_dir()
        if self.replay and like.buffer is not None and saved_replay:
            trees["replay"] = like.buffer
        verified = meta["version"] == FORMAT_VERSION
        if verified:
            self._check_layout(step, meta["layout"], trees)
        items = {name: ocp.args.StandardRestore(_abstract(t)) for name, t in trees.items()}
        why, cause = None, None
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:
            why, cause = f"unreadable arrays: {_reason(err)}", err
        if why is None and verified:
            why = _first_difference(out, list(trees), meta["sha256"])
        if any_process(why is not None):
            raise _Damaged(why or "damaged on another process") from cause
        if not verified:
            warnings.warn(
                f"{self.directory}: checkpoint step {step} has format version "
                f"{UNVERIFIED_VERSION}, which stores no checksums: restored unverified",
                CheckpointWarning,
                stacklevel=4,
            )
        buffer = out["replay"] if "replay" in trees else like.buffer
        return out["state"]._replace(buffer=buffer), config, meta

    def steps(self) -> list[int]:
        """Every complete checkpoint step, oldest first."""
        self.wait()
        return sorted(self._manager.all_steps())

    def restore_state_tree(self, step: int | None = None) -> tuple[int, dict, dict, Any]:
        """(step, config, meta, state) with the state as saved (nested dicts, no target), so a
        reader needs no trainer to rebuild its structure; the replay buffer is not read. The
        arrays come to this process's first device, whatever devices and processes wrote them."""
        step, config, meta = self.read_config(step)
        here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(fallback_sharding=here)),
            )
        except Exception as err:
            reason = str(err).splitlines()[0][:300]
            raise CheckpointError(
                f"{self.directory}: step {step} has no readable state ({reason})"
            ) from err
        return step, config, meta, out["state"]

    def read_params(self, step: int | None = None) -> tuple[int, dict, Any]:
        """(step, config, Q-network parameters) of a checkpoint, as host arrays with the leading
        seed axis the Anakin trainer gives them."""
        step, config, _, state = self.restore_state_tree(step)
        learner = state.get("learner") if isinstance(state, dict) else None
        params = learner.get("params") if isinstance(learner, dict) else None
        if not params or not jax.tree.leaves(params):
            raise CheckpointError(
                f"{self.directory} step {step}: the checkpoint holds no Q-network parameters"
            )
        return step, config, jax.tree.map(np.asarray, params)

    def _check_layout(self, step: int, saved: dict[str, dict], trees: dict[str, Any]) -> None:
        for name, tree in trees.items():
            difference = _layout_difference(saved.get(name, {}), array_layout(tree))
            if difference is not None:
                raise CheckpointError(
                    f"{self.directory}: cannot restore step {step} into this trainer's state: "
                    f"it was saved by a different model or env shape ({name}{difference})"
                )

    def _steps_from(self, step: int | None) -> list[int]:
        """The checkpoint steps to try, newest first: all of them, or those up to ``step``."""
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            raise CheckpointError(f"{self.directory}: no checkpoint found")
        if step is None:
            return steps
        if step not in steps:
            raise CheckpointError(f"{self.directory}: no checkpoint at step {step} (have {steps})")
        return [s for s in steps if s <= step]

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._writer.shutdown()
            self._manager.close()


def run_checkpoints(run_dir: str | Path) -> Checkpointer:
    """The checkpoints of the run in ``run_dir``, to read (refused when it has none)."""
    directory = Path(run_dir) / "checkpoints"
    if not directory.is_dir():
        raise CheckpointError(f"{run_dir}: no checkpoints (trained with checkpoint.enabled=false?)")
    return Checkpointer(directory, replay=False)


def load_params(run_dir: str | Path, step: int | None = None) -> tuple[int, dict, Any]:
    """(step, config, parameters) of the run in ``run_dir`` at ``step`` (default: its last
    intact checkpoint); see `Checkpointer.read_params`."""
    checkpoints = run_checkpoints(run_dir)
    try:
        return checkpoints.read_params(step)
    finally:
        checkpoints.close()


def check_resume_config(saved: dict, current: dict) -> None:
    """Refuse to resume when the config changed in anything but resume-safe keys."""
    diffs = resume_mismatches(saved, current)
    if diffs:
        raise CheckpointError(
            "cannot resume: the config differs from the checkpoint's in " + "; ".join(diffs)
        )
