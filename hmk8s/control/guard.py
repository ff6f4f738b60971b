"""Guard rails: pure checks of one proposed action against the observed placement.

Each refusal carries a reason code (for metrics) and a sentence (for the decision log). A *hold*
refuses every change this step, whatever it is: the kill switch, readings that cannot be
trusted, failing API calls, or the change budget spent. Any other refusal is about the action
itself, and the controller may try its fallback policy instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hmk8s.control.config import GuardConfig
from hmk8s.domain.observation import Observation
from hmk8s.domain.params import EnvParams
from hmk8s.domain.spaces import OP_DEPLOY, OP_REMOVE
from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES

PAUSED = "paused"
STALE = "stale_readings"
API_FAILING = "api_failing"
RATE_LIMIT = "rate_limit"
BREAKS_CHAIN = "breaks_chain"
CLUSTER_CAP = "cluster_cap"
TOTAL_CAP = "total_cap"
CONFLICT = "conflict"
REASONS = (PAUSED, CONFLICT, STALE, API_FAILING, RATE_LIMIT, BREAKS_CHAIN, CLUSTER_CAP, TOTAL_CAP)


@dataclass(frozen=True)
class Health:
    """How far this step's readings can be trusted, whether the operator paused changes, and
    which managed objects differ from what was applied (``repairing``: this step writes the
    applied values back, and nothing else)."""

    paused: bool = False
    assumed: tuple[str, ...] = ()
    api_errors: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    repairing: bool = False


@dataclass(frozen=True)
class Verdict:
    """``allowed``, or the ``reason`` code and ``detail`` of a refusal; ``hold``: no change at
    all this step (no fallback either)."""

    allowed: bool
    reason: str | None = None
    detail: str = ""
    hold: bool = False


ALLOWED = Verdict(True)


def hold_reason(health: Health, cfg: GuardConfig) -> Verdict | None:
    """The hold this step's health imposes, if any. The kill switch and conflicts hold even
    unguarded: no change is made on a picture that was not checked."""
    if health.paused:
        return Verdict(False, PAUSED, "the kill switch says paused", hold=True)
    if health.conflicts:
        what = "repairing" if health.repairing else "holding on"
        more = f" (+{len(health.conflicts) - 1} more)" if len(health.conflicts) > 1 else ""
        return Verdict(False, CONFLICT, f"{what} {health.conflicts[0]}{more}", hold=True)
    if not (cfg.enabled and cfg.hold_on_stale):
        return None
    if health.assumed:
        return Verdict(False, STALE, "assumed readings: " + ", ".join(health.assumed), hold=True)
    if health.api_errors:
        return Verdict(False, API_FAILING, health.api_errors[0], hold=True)
    return None


def check(
    action: int,
    obs: Observation,
    params: EnvParams,
    cfg: GuardConfig,
    health: Health,
    recent_changes: int,
) -> Verdict:
    """Whether ``action`` may be applied now. The no-op always may; ``recent_changes`` counts
    the changes applied in the last ``cfg.window_steps - 1`` steps."""
    layout = params.layout
    if action < 0 or action == layout.noop_index:
        return ALLOWED
    held = hold_reason(health, cfg)
    if held is not None:
        return held
    if not cfg.enabled:
        return ALLOWED
    if recent_changes >= cfg.max_changes:
        return Verdict(
            False,
            RATE_LIMIT,
            f"{recent_changes} changes in the last {cfg.window_steps} steps "
            f"(at most {cfg.max_changes})",
            hold=True,
        )
    a = layout.decode(action)
    k, op, c, f = int(a.cluster), int(a.op), int(a.config), int(a.function)
    if op == OP_REMOVE and cfg.protect_chains:
        detail = chain_break(obs, params, k, f, c)
        if detail:
            return Verdict(False, BREAKS_CHAIN, detail)
    if op == OP_DEPLOY:
        pods = np.asarray(obs.pods)
        if cfg.max_pods_per_cluster is not None and pods[k] + 1 > cfg.max_pods_per_cluster:
            return Verdict(
                False,
                CLUSTER_CAP,
                f"cluster {k} would run {pods[k] + 1} pods (cap {cfg.max_pods_per_cluster})",
            )
        if cfg.max_pods_total is not None and pods.sum() + 1 > cfg.max_pods_total:
            return Verdict(
                False,
                TOTAL_CAP,
                f"the clusters would run {pods.sum() + 1} pods (cap {cfg.max_pods_total})",
            )
    return ALLOWED


def chain_break(obs: Observation, params: EnvParams, k: int, f: int, c: int) -> str:
    """Why removing one pod of instance (k, f, c) would leave a routed hop without a ready pod
    ("" when it would not).

    A removal takes a starting pod first, so only the last pod of an instance with no starting
    pods matters: the instance goes, and every proxy routed to it is re-routed to a random
    remaining instance of f (`hmk8s.domain.placement.apply_action`). That is safe only when one
    remains and every one that remains has a ready pod.
    """
    layout = params.layout
    routes = np.asarray(obs.routes)
    replicas, ready = np.asarray(obs.replicas), np.asarray(obs.ready)
    routed = np.flatnonzero(routes[:, f] == k * layout.configs + c)
    if routed.size == 0 or not replicas[k, f, c] == ready[k, f, c] == 1:
        return ""
    others = [
        (kk, cc)
        for kk in range(layout.clusters)
        for cc in range(layout.configs)
        if (kk, cc) != (k, c) and replicas[kk, f, cc] > 0
    ]
    if others and all(ready[kk, f, cc] > 0 for kk, cc in others):
        return ""
    name = f"{FUNCTION_NAMES[f]}/{CONFIG_NAMES[c]} on cluster {k}"
    proxies = ", ".join(str(int(p)) for p in routed)
    if not others:
        return f"the last pod of {name}, the only instance serving proxies {proxies}"
    return f"the last ready pod of {name}; proxies {proxies} could be re-routed to no ready pod"
