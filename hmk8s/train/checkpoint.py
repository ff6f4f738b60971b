"""Orbax checkpoints of the whole train state plus the config that produced it.

A checkpoint step is the number of env steps (per seed) done so far. Each step
directory holds four items: ``state`` (the train state without the replay
buffer), ``replay`` (the buffer, optional), ``config`` and ``meta`` (JSON).
Orbax writes into a temporary directory and renames it when complete, so a
process killed mid-save leaves the previous checkpoints intact and the partial
one is ignored (and cleaned up) on the next open.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from hmk8s.train.config import resume_mismatches
from hmk8s.train.state import TrainState

FORMAT = "hmk8s-train-state"
FORMAT_VERSION = 1
_ITEMS = ("state", "replay", "config", "meta")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed: missing, foreign, corrupt or from another config."""


def _abstract(tree: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


class Checkpointer:
    """Saves and restores `TrainState`s under one directory, keeping the newest ``keep``."""

    def __init__(self, directory: str | Path, keep: int = 3, replay: bool = True) -> None:
        self.directory = Path(directory).absolute()
        self.replay = replay
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=False
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    def latest_step(self) -> int | None:
        """The newest complete checkpoint step, or None when there is none."""
        return self._manager.latest_step()

    def save(self, step: int, state: TrainState, config: dict, meta: dict) -> None:
        """Write ``state`` (blocking until it is on disk) with its config and metadata."""
        items = {
            "state": ocp.args.StandardSave(state._replace(buffer=None)),
            "config": ocp.args.JsonSave(config),
            "meta": ocp.args.JsonSave({"format": FORMAT, "version": FORMAT_VERSION, **meta}),
        }
        if self.replay:
            items["replay"] = ocp.args.StandardSave(state.buffer)
        self._manager.save(step, args=ocp.args.Composite(**items))
        self._manager.wait_until_finished()

    def read_config(self, step: int | None = None) -> tuple[int, dict, dict]:
        """(step, config, meta) of a checkpoint, checking that it is one of ours."""
        step = self._require_step(step)
        try:
            out = self._manager.restore(
                step,
                args=ocp.args.Composite(config=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()),
            )
        except Exception as err:
            reason = str(err).splitlines()[0][:300]
            raise CheckpointError(
                f"{self.directory}: step {step} has no readable config/meta ({reason})"
            ) from err
        meta = out["meta"]
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise CheckpointError(f"{self.directory}: step {step} is not an hmk8s train checkpoint")
        if meta.get("version") != FORMAT_VERSION:
            raise CheckpointError(
                f"{self.directory}: checkpoint format version {meta.get('version')}, "
                f"this trainer reads {FORMAT_VERSION}"
            )
        return step, out["config"], meta

    def restore(self, like: TrainState, step: int | None = None) -> tuple[TrainState, dict, dict]:
        """Restore into the structure of ``like`` (a freshly initialised state).

        Without a saved replay the buffer of ``like`` is kept, so learning resumes
        from an empty buffer: correct, but no longer bit-identical to an
        uninterrupted run.
        """
        step, config, meta = self.read_config(step)
        items = {"state": ocp.args.StandardRestore(_abstract(like._replace(buffer=None)))}
        try:
            if self.replay and (self.directory / str(step) / "replay").is_dir():
                items["replay"] = ocp.args.StandardRestore(_abstract(like.buffer))
            out = self._manager.restore(step, args=ocp.args.Composite(**items))
        except Exception as err:
            reason = str(err).splitlines()[0][:300]
            raise CheckpointError(
                f"{self.directory}: cannot restore step {step} into this trainer's state "
                f"(corrupt, or saved by a different model/env shape): {reason}"
            ) from err
        buffer = out["replay"] if "replay" in items else like.buffer
        return out["state"]._replace(buffer=buffer), config, meta

    def restore_state_tree(self, step: int | None = None) -> tuple[int, dict, dict, Any]:
        """(step, config, meta, state) with the state as saved (nested dicts, no target), so a
        reader needs no trainer to rebuild its structure; the replay buffer is not read."""
        step, config, meta = self.read_config(step)
        try:
            out = self._manager.restore(
                step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
            )
        except Exception as err:
            reason = str(err).splitlines()[0][:300]
            raise CheckpointError(
                f"{self.directory}: step {step} has no readable state ({reason})"
            ) from err
        return step, config, meta, out["state"]

    def _require_step(self, step: int | None) -> int:
        steps = self._manager.all_steps()
        if step is None:
            if not steps:
                raise CheckpointError(f"{self.directory}: no checkpoint found")
            return max(steps)
        if step not in steps:
            raise CheckpointError(f"{self.directory}: no checkpoint at step {step} (have {steps})")
        return step

    def close(self) -> None:
        self._manager.close()


def check_resume_config(saved: dict, current: dict) -> None:
    """Refuse to resume when the config changed in anything but resume-safe keys."""
    diffs = resume_mismatches(saved, current)
    if diffs:
        raise CheckpointError(
            "cannot resume: the config differs from the checkpoint's in\n  " + "\n  ".join(diffs)
        )
