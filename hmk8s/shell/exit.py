"""How a program ends on bad input or a failed run: one line on stderr and an exit status."""

from __future__ import annotations

import logging
import sys
from typing import Any, NoReturn

#: The input (settings, files, directories, clusters named) is wrong: nothing was started.
EXIT_BAD_INPUT = 2
#: A run that started failed in a known way (NaN, lost envs, a full disk).
EXIT_RUN_FAILED = 1


def refuse(message: object, status: int = EXIT_BAD_INPUT) -> int:
    """Print ``error: <message>`` on stderr; ``status``, for a ``main`` to return."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status


def fail(message: object, status: int = EXIT_BAD_INPUT) -> NoReturn:
    """Print ``error: <message>`` on stderr and exit with ``status``."""
    sys.exit(refuse(message, status))


def one_line(err: BaseException) -> str:
    """An error on one line. A setting OmegaConf refused (it names the setting's key) says
    which setting and why; any other error is given with up to two of its causes, without
    Hydra's search-path listing or OmegaConf's key details."""
    key = getattr(err, "full_key", None)
    if key:
        message = str(err).splitlines()[0]
        if "not in" in message:
            return f"unknown setting {key!r}"
        if "missing mandatory value" in message.lower():
            return f"{key}= is required"
        return f"{key}: {message}"
    parts: list[str] = []
    cause: BaseException | None = err
    while cause is not None and len(parts) < 3:
        text = str(cause).split("Config search path:")[0].split("\n    full_key:")[0]
        lines = [line.strip().rstrip(".") for line in text.splitlines() if line.strip()]
        if lines and "; ".join(lines) not in parts:
            parts.append("; ".join(lines))
        cause = cause.__cause__
    return ": ".join(parts)


def one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> str:
    """A warning as the command line shows it: ``warning: <message>``, without the source
    (for `warnings.formatwarning`)."""
    return f"warning: {message}\n"


class OneLineFormatter(logging.Formatter):
    """A log record as the command line shows it: ``warning: <message>``, ``error: ...``, on
    one line (an API error's text can hold line breaks)."""

    def format(self, record: logging.LogRecord) -> str:
        return f"{record.levelname.lower()}: {' '.join(record.getMessage().split())}"
