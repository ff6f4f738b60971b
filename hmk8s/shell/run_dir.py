"""A run directory: its fresh name, the check that it can be written, its lock, and the guard
that no run (training or evaluation) writes over another's directory.

The trainer (`hmk8s.train.run`, which runs each step on every process of a multi-process run)
and the evaluation (`claim_run_dir`) use these same pieces.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

#: The advisory lock a process holds on a run directory while it writes there.
LOCK_FILE = ".lock"


class RunDirError(ValueError):
    """A run directory that cannot be used: it holds another run, or it cannot be written."""


def timestamped(*parts: str, root: str | Path = "runs") -> Path:
    """``<root>/<part>-<part>-<UTC timestamp>``: a fresh run directory's name."""
    return Path(root) / "-".join([*parts, time.strftime("%Y%m%d-%H%M%S", time.gmtime())])


def holds_files(directory: Path) -> bool:
    """Whether ``directory`` holds anything but its lock file."""
    return directory.is_dir() and any(p.name != LOCK_FILE for p in directory.iterdir())


def make_writable(directory: Path) -> None:
    """Create ``directory`` and check that a file can be written there."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / ".hmk8s-write-check"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise RunDirError(f"run_dir {directory} cannot be written: {err.strerror or err}") from err


@contextlib.contextmanager
def hold_run_dir(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s advisory lock while the block writes there; a directory another
    process holds is refused in one line naming that process."""
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise RunDirError(f"run_dir {directory} cannot be written: {err.strerror or err}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirError(
                f"{directory} is in use by another process (PID {holder}): wait for it to end, "
                "or choose another run_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, so no two processes lock two files


@contextlib.contextmanager
def claim_run_dir(directory: Path, used: Callable[[Path], str | None]) -> Iterator[Path]:
    """Create, lock and hold ``directory`` for one process's run. ``used`` says why the
    directory may not be written (a refusal), or None; it is asked before the directory is
    made and again once it is locked, so a run that filled it in between is not overwritten."""
    refuse_if(used(directory))
    make_writable(directory)
    with hold_run_dir(directory):
        refuse_if(used(directory))
        yield directory


def refuse_if(refusal: str | None) -> None:
    """Raise `RunDirError` with ``refusal``, when there is one."""
    if refusal is not None:
        raise RunDirError(refusal)
