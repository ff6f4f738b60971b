"""One stop path for the long-running commands: SIGINT and SIGTERM ask the work to stop.

A signal raised as an exception at an arbitrary bytecode can land inside orbax's save (leaving
a half-written ``*-tmp`` checkpoint), inside JAX while it compiles (a crash), or between a
file's rename and its record. So by default (`stop_on_signals`) a signal is only *recorded*:
the work looks at `requested` at its safe points (between chunks, between curve points, before
an evaluation) and ends there cleanly, writing a complete checkpoint or none. A second signal
means "now": it raises `KeyboardInterrupt` where the work is.

The actor/learner, which waits on threads rather than on compiled chunks, wants the exception
at once (`interrupt_on_signals`): its own shutdown then drains the in-flight steps.

Either way the first signal is remembered, so the command ends with ``"signal"`` in its summary
and exits with 128 + its number (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _Request:
    """The first stop signal this process received (None: none)."""

    signum: int | None = None


_REQUEST = _Request()


def requested() -> int | None:
    """The stop signal received, or None: what the work checks at its safe points."""
    return _REQUEST.signum


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15."""
    return signal.Signals(signum).name


def exit_status(signum: int) -> int:
    """The shell's status for a command stopped by ``signum``: 128 + its number."""
    return 128 + signal.Signals(signum).value


def forget() -> None:
    """Clear the request (one process running several commands, as the tests do)."""
    _REQUEST.signum = None


@contextlib.contextmanager
def _handling(interrupt: bool) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; its own handlers stay in place
        return

    def handler(signum: int, frame: object) -> None:
        again = _REQUEST.signum is not None
        if not again:
            _REQUEST.signum = signum
        if interrupt or again:
            raise KeyboardInterrupt

    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    try:
        if interrupt and _REQUEST.signum is not None:
            raise KeyboardInterrupt  # a signal came before this part started: stop it now
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def stop_on_signals() -> contextlib.AbstractContextManager[None]:
    """While open, SIGINT and SIGTERM are recorded for `requested` (a second one raises
    `KeyboardInterrupt`)."""
    return _handling(interrupt=False)


def interrupt_on_signals() -> contextlib.AbstractContextManager[None]:
    """While open, SIGINT and SIGTERM are recorded and raise `KeyboardInterrupt` at once."""
    return _handling(interrupt=True)
