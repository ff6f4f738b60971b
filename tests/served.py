"""Clusters for the k8s backend's end-to-end tests, one kind per parameter: `emulator` (kmock's
loopback emulator, with fault injection) or `apiserver` (fresh namespaces of the session's real
kube-apiserver, see the `apiserver` fixture)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

import pytest

from hmk8s.k8s.emulated.harness import Emulation, emulation, on_server

SERVED = ("emulator", "apiserver")


def played(
    request: pytest.FixtureRequest, kind: str, *args: Any, **options: Any
) -> AbstractContextManager[Emulation]:
    """`emulation(*args, **options)` or `on_server(apiserver, *args, **options)`."""
    if kind == "emulator":
        return emulation(*args, **options)
    return on_server(request.getfixturevalue("apiserver"), *args, **options)
