"""What `scripts/control.py` and `scripts/export_agent.py` do with their ``key=value`` arguments.

Every expected failure (a bad setting, a missing or foreign agent, clusters that cannot be used)
is one line on stderr and exit status 2, raised before anything is written to a cluster.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import jax

from hmk8s.control.agent import Agent, AgentError, export_agent, load_agent
from hmk8s.control.config import (
    ControlConfig,
    ControlConfigError,
    ExportConfig,
    parse,
    parse_settings,
)
from hmk8s.control.loop import Backend, Controller, Sink, Summary
from hmk8s.control.observe import ControllerMetrics, DecisionLog, DryRunPrinter, LiveView
from hmk8s.domain.settings import START_MODES
from hmk8s.shell.exit import refuse


class Stop(threading.Event):
    """Set by Ctrl-C or SIGTERM (the loop then ends after the current step); ``signum`` says
    which, for the exit status 128 + signum."""

    signum: int | None = None


@contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """A `Stop` that Ctrl-C or SIGTERM sets."""
    stop = Stop()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum: int, frame: object) -> None:
        stop.signum = signum
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _sim_backend(cfg: ControlConfig, agent: Agent) -> tuple[Backend, int]:
    from hmk8s.control.sim_backend import SimBackend

    params = agent.env_params
    if cfg.sim.start is not None:
        if cfg.sim.start not in START_MODES:
            raise ControlConfigError(f"sim.start must be one of {START_MODES}")
        params = params.replace(start=cfg.sim.start)
    if cfg.steps is not None:
        params = params.replace(episode_steps=cfg.steps)
    key = jax.random.PRNGKey(cfg.sim.seed)
    return SimBackend(params, key, dry_run=cfg.dry_run), params.episode_steps


def _k8s_backend(
    cfg: ControlConfig, agent: Agent, stop: threading.Event, stack: ExitStack
) -> Backend:
    from hmk8s.control.cluster import ClusterBackend, StopClock
    from hmk8s.k8s.client import connect
    from hmk8s.k8s.config import load_cluster_map

    cmap = load_cluster_map(cfg.cluster_map)
    cmap.check_against(agent.usecase)
    clients = connect(cmap, check_metrics=False)
    elector = hold_lease(clients, stack, stop)
    return ClusterBackend(
        agent.env_params,
        agent.usecase,
        cmap,
        clients,
        run_id=cfg.run_id,
        bootstrap=cfg.bootstrap,
        dry_run=cfg.dry_run,
        clock=StopClock(stop),
        step_seconds=cfg.step_seconds,
        seed=cfg.seed,
        on_conflict=cfg.guard.on_conflict,
        leading=lambda: elector.leading,
    )


def hold_lease(clients: Sequence[Any], stack: ExitStack, stop: threading.Event) -> Any:
    """Take the namespaces' Lease or refuse (`LeaseHeldError`), renew it in the background
    while the controller runs, and release it on exit."""
    from hmk8s.control.lease import LeaderElector, lease_name, lease_namespace

    namespaces = [c.namespace for c in clients]
    home = next(c for c in clients if c.namespace == lease_namespace(namespaces))
    elector = LeaderElector(
        home.api_client, home.namespace, lease_name(namespaces), controller_identity()
    )
    elector.acquire_or_refuse(stop.wait)
    done = threading.Event()
    renewer = threading.Thread(target=elector.run, args=(done,), name="lease", daemon=True)
    renewer.start()
    stack.callback(renewer.join)
    stack.callback(done.set)
    return elector


def controller_identity() -> str:
    """`<host>_<random>`, as client-go makes it: unique per process even where every container
    is process 1 (a restarted container must not take its dead self's Lease as its own)."""
    import socket
    import uuid

    return f"{socket.gethostname()}_{uuid.uuid4().hex[:12]}"


def _sinks(cfg: ControlConfig, agent: Agent, stack: ExitStack) -> list[Sink]:
    sinks: list[Sink] = []
    if cfg.metrics_port is not None:
        metrics = ControllerMetrics()
        metrics.serve(cfg.metrics_port)
        sinks.append(metrics)
    if cfg.log is not None:
        decisions = DecisionLog(cfg.log, agent.env_params)
        stack.callback(decisions.close)
        sinks.append(decisions)
    live = cfg.live == "on" or (cfg.live == "auto" and sys.stdout.isatty())
    if live:
        view = LiveView(agent.env_params)
        stack.callback(view.close)
        sinks.append(view)
    elif cfg.dry_run:
        sinks.append(DryRunPrinter(agent.env_params))
    return sinks


def control(cfg: ControlConfig, stop: Stop | None = None) -> Summary:
    """Run the controller as ``cfg`` says until it is out of steps or ``stop`` is set."""
    agent = load_agent(cfg.agent, cfg.step, seed=cfg.seed, usecase=cfg.usecase, key=cfg.agent_key)
    stop = stop or Stop()
    with ExitStack() as stack:
        if cfg.backend == "sim":
            backend, steps = _sim_backend(cfg, agent)
            stack.callback(backend.close)
        else:
            backend, steps = _k8s_backend(cfg, agent, stop, stack), cfg.steps
        controller = Controller(agent, cfg.guard, cfg.fallback, _sinks(cfg, agent, stack))
        return controller.run(backend, steps, stop)


def bad_input_errors() -> tuple[type[BaseException], ...]:
    """The failures that mean the input is wrong, not the program."""
    from hmk8s.control.cluster import AdoptError
    from hmk8s.control.lease import LeaseHeldError
    from hmk8s.domain.settings import EnvConfigError
    from hmk8s.domain.usecases import UseCaseError
    from hmk8s.k8s.client import ClusterAccessError
    from hmk8s.k8s.config import ClusterMapError

    return (
        ControlConfigError,
        AgentError,
        EnvConfigError,
        AdoptError,
        ClusterAccessError,
        ClusterMapError,
        UseCaseError,
        LeaseHeldError,
    )


def main(argv: Sequence[str]) -> int:
    """`scripts/control.py`: control, then print the run's summary as one JSON line; stopped by
    a signal, also one line on stderr and exit status 128 + its number (130, 143)."""
    with stop_on_signals() as stop:
        try:
            summary = control(parse(argv), stop)
        except bad_input_errors() as err:
            return refuse(err)
    print(json.dumps(summary.as_dict()))
    if stop.signum is not None:
        name = signal.Signals(stop.signum).name
        print(
            f"stopped by {name} after {summary.steps} steps; the placement is left as it is",
            file=sys.stderr,
        )
        return 128 + stop.signum
    return 0


def export_main(argv: Sequence[str]) -> int:
    """`scripts/export_agent.py run=<run> out=<folder>`: write the agent, print its manifest."""
    try:
        cfg = parse_settings(ExportConfig, argv)
        agent = load_agent(cfg.run, cfg.step, seed=cfg.seed, usecase=cfg.usecase)
        folder = export_agent(agent, cfg.out, cfg.sign_key)
    except (ControlConfigError, AgentError) as err:
        return refuse(err)
    m: dict[str, Any] = {
        "out": str(folder),
        "usecase": agent.manifest.usecase,
        "step": agent.manifest.step,
        "params_sha256": agent.manifest.params_sha256,
    }
    print(json.dumps(m))
    return 0
