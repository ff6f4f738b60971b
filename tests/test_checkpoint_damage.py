"""After a damaged checkpoint is skipped, orbax's leftover reads are silenced, and only those:
asyncio's 'Task exception was never retrieved' for an orbax task is dropped, the same message for
any other code, and every other asyncio record, still reach the log."""

from __future__ import annotations

import logging

from hmk8s.train.checkpoint import _silence_orbax_leftovers


def raised_in(filename: str) -> BaseException:
    """An exception whose traceback runs through code compiled as ``filename``."""
    namespace: dict = {}
    exec(
        compile("def fail():\n    raise RuntimeError('read failed')\n", filename, "exec"), namespace
    )
    try:
        namespace["fail"]()
    except RuntimeError as err:
        return err
    raise AssertionError("fail() did not raise")


def record(message: str, error: BaseException) -> logging.LogRecord:
    return logging.LogRecord(
        "asyncio",
        logging.ERROR,
        __file__,
        1,
        message,
        (),
        (type(error), error, error.__traceback__),
    )


def test_only_orbax_tasks_never_retrieved_are_dropped():
    _silence_orbax_leftovers()
    _silence_orbax_leftovers()  # once is enough: no second filter
    log = logging.getLogger("asyncio")
    assert sum(type(f).__name__ == "_OrbaxLeftoverTasks" for f in log.filters) == 1
    orbax = raised_in("/site-packages/orbax/checkpoint/_src/serialization/serialization.py")
    other = raised_in("/site-packages/mylib/reader.py")
    assert not log.filter(record("Task exception was never retrieved", orbax))
    assert log.filter(record("Task exception was never retrieved", other))
    assert log.filter(record("Unclosed client session", orbax))
