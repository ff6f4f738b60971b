"""The processes and devices one run spans: `jax.distributed` set up from the settings or the
environment, the device count of a data-parallel run, the topology a checkpoint records (a
checkpoint's arrays are laid out per device, so it resumes only on the same topology), and the
few things the processes of one run agree on: who writes the run's files (process 0), and
whether every process passed a check before any of them goes on."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import jax
import numpy as np
from jax.experimental import multihost_utils

from hmk8s.configs import default
from hmk8s.shell.exit import refuse

T = TypeVar("T")

#: Environment variables read for any ``distributed.*`` setting left null.
ENV_VARS = {
    "coordinator_address": "HMK8S_COORDINATOR_ADDRESS",
    "num_processes": "HMK8S_NUM_PROCESSES",
    "process_id": "HMK8S_PROCESS_ID",
}


class TopologyError(ValueError):
    """Devices or processes that cannot run this config, or an unreachable coordinator."""


@dataclass
class DistributedConfig:
    """One program on several processes (hosts): ``coordinator_address`` (``host:port`` of
    process 0) null means a single process unless ``HMK8S_COORDINATOR_ADDRESS`` is set."""

    coordinator_address: str | None = default("distributed.coordinator_address")
    num_processes: int | None = default("distributed.num_processes")
    process_id: int | None = default("distributed.process_id")
    timeout_s: int = default("distributed.timeout_s")


def process_settings(
    cfg: DistributedConfig, environ: Mapping[str, str] = os.environ
) -> DistributedConfig | None:
    """The settings with nulls filled from ``environ``; None for a single-process run."""
    values: dict[str, Any] = {
        key: getattr(cfg, key) if getattr(cfg, key) is not None else environ.get(var)
        for key, var in ENV_VARS.items()
    }
    if values["coordinator_address"] is None:
        return None
    missing = [key for key in ("num_processes", "process_id") if values[key] is None]
    if missing:
        raise TopologyError(
            f"distributed.coordinator_address is set but {', '.join(missing)} is not "
            f"(set distributed.<key> or {', '.join(ENV_VARS[k] for k in missing)})"
        )
    try:
        n, pid = int(values["num_processes"]), int(values["process_id"])
    except ValueError as err:
        raise TopologyError(f"distributed: {err}") from err
    if n < 1 or not 0 <= pid < n:
        raise TopologyError(f"distributed: process_id {pid} is not in [0, num_processes={n})")
    if ":" not in values["coordinator_address"]:
        raise TopologyError(
            f"distributed.coordinator_address={values['coordinator_address']}: expected host:port"
        )
    return DistributedConfig(values["coordinator_address"], n, pid, cfg.timeout_s)


def wait_for_coordinator(address: str, timeout_s: float) -> None:
    """Return once ``address`` accepts TCP connections; `TopologyError` after ``timeout_s``.
    (JAX itself aborts the whole process when it cannot register, so this is checked first.)"""
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0):
                return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise TopologyError(
                    f"coordinator {address} not reachable within {timeout_s} s "
                    f"({err.strerror or err}); start process 0 first or check the address"
                ) from err
            time.sleep(0.2)


#: JAX's own deadline is this much later than the run's, so that the run's comes first.
JAX_GRACE_S = 10


def initialize(cfg: DistributedConfig) -> None:
    """Join the processes of a multi-process run (once per process); nothing on one process.

    JAX aborts the whole process (SIGABRT and a C++ stack trace) when the processes do not all
    register in time, and that cannot be caught. So a watchdog ends the process first, at
    ``timeout_s``, with one line and exit status 2; nothing has been written by then."""
    settings = process_settings(cfg)
    if settings is None or jax.distributed.is_initialized():
        return
    if settings.process_id != 0:
        wait_for_coordinator(settings.coordinator_address, settings.timeout_s)
    joined = threading.Event()
    threading.Thread(
        target=_give_up_unless, args=(joined, settings), name="join-watchdog", daemon=True
    ).start()
    try:
        jax.distributed.initialize(
            settings.coordinator_address,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            initialization_timeout=settings.timeout_s + JAX_GRACE_S,
        )
    finally:
        joined.set()


def _give_up_unless(joined: threading.Event, settings: DistributedConfig) -> None:
    """After ``timeout_s`` without every process registered: one line, exit 2 (see
    `initialize`)."""
    if joined.wait(settings.timeout_s):
        return
    refusal = refuse(
        f"process {settings.process_id} of {settings.num_processes}: the run's processes "
        f"did not all join at {settings.coordinator_address} within {settings.timeout_s} s "
        "(start every process with the same distributed.* settings, or raise "
        "distributed.timeout_s)"
    )
    os._exit(refusal)  # JAX's pending abort and exit barrier would follow otherwise


def resolve_devices(
    requested: int | None,
    num_envs: int,
    buffer_size: int,
    batch_size: int,
    seed_devices: int = 1,
    seeds: int = 1,
) -> int:
    """The devices the run uses: ``requested``, or every device of every process (None);
    ``seed_devices`` of them split the seeds, the rest train each seed data-parallel."""
    available = jax.device_count()
    devices = available if requested is None else requested
    if devices < 1 or devices > available:
        raise TopologyError(f"devices={devices}: this run sees {available} device(s)")
    if jax.process_count() > 1 and devices != available:
        raise TopologyError(
            f"devices={devices}: a run of {jax.process_count()} processes trains on every "
            f"process's devices ({available}); leave devices unset"
        )
    local = jax.local_device_count()
    if (
        seed_devices < 1
        or devices % seed_devices
        or (jax.process_count() > 1 and local % seed_devices)
    ):
        where = f"each process's {local}" if jax.process_count() > 1 else f"the run's {devices}"
        raise TopologyError(f"seed_devices={seed_devices} does not divide {where} device(s)")
    if seeds % seed_devices:
        raise TopologyError(f"seeds={seeds} does not split evenly over seed_devices={seed_devices}")
    data = devices // seed_devices
    per_seed = f" (devices / seed_devices = {data})" if seed_devices > 1 else ""
    if num_envs % data:
        raise TopologyError(
            f"num_envs={num_envs} does not split evenly over {data} devices{per_seed}"
        )
    if batch_size > buffer_size // data:
        raise TopologyError(
            f"agent.batch_size ({batch_size}) must be <= each device's replay "
            f"(agent.buffer_size / {data} devices = {buffer_size // data})"
        )
    return devices


def topology(devices: int, seed_devices: int = 1) -> dict[str, int]:
    """What a checkpoint records about where it was written."""
    return {"devices": devices, "processes": jax.process_count(), "seed_devices": seed_devices}


def check_topology(meta: Mapping[str, Any], current: Mapping[str, int]) -> None:
    """Refuse a checkpoint written on another topology (one without the record: one device;
    one without ``seed_devices``: 1)."""
    saved = {"seed_devices": 1, **meta.get("topology", {"devices": 1, "processes": 1})}
    if saved != dict(current):
        raise TopologyError(
            f"cannot resume: the checkpoint was written by {_where(saved)}, this run has "
            f"{_where(current)}; resume with the same devices"
        )


def _where(t: Mapping[str, int]) -> str:
    rows = f", {t['seed_devices']} seed rows" if t["seed_devices"] > 1 else ""
    return f"{t['devices']} device(s) in {t['processes']} process(es){rows}"


def is_primary() -> bool:
    """Whether this process writes the run's logs and summary (process 0)."""
    return jax.process_index() == 0


def all_processes(value: np.ndarray) -> np.ndarray:
    """``value`` of every process, stacked in process order (a collective: every process calls
    it); on one process, ``value`` with a leading axis of 1."""
    return multihost_utils.process_allgather(np.asarray(value))


def any_process(flag: bool) -> bool:
    """Whether ``flag`` holds on some process (every process calls it and gets the same)."""
    if jax.process_count() == 1:
        return flag
    return bool(all_processes(np.int32(flag)).any())


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier ``name``; nothing on one process."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def agree(check: Callable[[], T], what: str) -> T:
    """``check()`` run here, then raised on every process if it failed on any: the failed
    process its own error, the others one naming it, so that no process waits for one that
    stopped."""
    failure: Exception | None = None
    result = None
    try:
        result = check()
    except Exception as err:
        failure = err
    failed = []
    if jax.process_count() > 1:
        failed = np.flatnonzero(all_processes(np.int32(failure is not None))).tolist()
    if failure is not None:
        raise failure
    if failed:
        raise TopologyError(
            f"{what} failed on process {', '.join(map(str, failed))} (see its error)"
        )
    return result
