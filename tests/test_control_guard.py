"""The guard rails as pure checks: which actions they refuse, why, and which refusals hold."""

from __future__ import annotations

import pytest

from hmk8s.control import guard
from hmk8s.control.config import GuardConfig
from hmk8s.control.guard import Health, check, hold_reason
from hmk8s.domain.spaces import OP_ASSIGN, OP_DEPLOY, OP_REMOVE

ENC, FW, MEDIUM, SMALL = 0, 2, 1, 0  # ML's chain is firewall -> encrypt


@pytest.fixture(scope="module")
def params(quiet_params):
    return quiet_params("ml", {"start": "empty"})


@pytest.fixture(scope="module")
def observe(params, make_state, jitted):
    """``observe(ready=..., pending=..., routes=...)``: the observation of a hand-built state."""

    def build(**placement):
        return jitted.get_obs(make_state(params, **placement), params)

    return build


def every_proxy_to(inst: int, function: int) -> dict[tuple[int, int], int]:
    return {(p, function): inst for p in range(3)}


def remove(params, k, f, c) -> int:
    return int(params.layout.encode(k, OP_REMOVE, c, f, 0))


OK = Health()


def test_removing_the_only_ready_instance_of_a_routed_hop_is_refused(params, observe):
    obs = observe(ready={(0, ENC, MEDIUM): 1}, routes=every_proxy_to(0 * 3 + MEDIUM, ENC))
    v = check(remove(params, 0, ENC, MEDIUM), obs, params, GuardConfig(), OK, 0)
    assert (v.allowed, v.reason, v.hold) == (False, guard.BREAKS_CHAIN, False)
    assert "the only instance serving proxies 0, 1, 2" in v.detail


@pytest.mark.parametrize(
    ("extra", "allowed"),
    [
        ({"ready": {(1, ENC, SMALL): 1}}, True),  # re-routed to a ready instance
        ({"pending": {(1, ENC, SMALL, 0): 1}}, False),  # the only other one is still starting
        ({"ready": {(0, ENC, MEDIUM): 2}}, True),  # a ready pod stays
        ({"pending": {(0, ENC, MEDIUM, 0): 1}}, True),  # the starting pod goes first
    ],
)
def test_a_removal_is_allowed_only_when_every_routed_hop_keeps_a_ready_pod(
    params, observe, extra, allowed
):
    ready = {(0, ENC, MEDIUM): 1, **extra.get("ready", {})}
    obs = observe(ready=ready, pending=extra.get("pending"), routes=every_proxy_to(MEDIUM, ENC))
    v = check(remove(params, 0, ENC, MEDIUM), obs, params, GuardConfig(), OK, 0)
    assert v.allowed is allowed
    assert v.reason == (None if allowed else guard.BREAKS_CHAIN)


def test_an_unrouted_instance_may_go_and_protection_can_be_switched_off(params, observe):
    obs = observe(
        ready={(0, ENC, MEDIUM): 1, (2, ENC, SMALL): 1},
        routes=every_proxy_to(MEDIUM, ENC),
    )
    assert check(remove(params, 2, ENC, SMALL), obs, params, GuardConfig(), OK, 0).allowed
    only = observe(ready={(0, ENC, MEDIUM): 1}, routes=every_proxy_to(MEDIUM, ENC))
    breaking = remove(params, 0, ENC, MEDIUM)
    off = GuardConfig(protect_chains=False)
    assert not check(breaking, only, params, GuardConfig(), OK, 0).allowed
    assert check(breaking, only, params, off, OK, 0).allowed
    assert check(breaking, only, params, GuardConfig(enabled=False), OK, 0).allowed


def test_pod_caps_per_cluster_and_in_total(params, observe):
    obs = observe(ready={(0, ENC, MEDIUM): 2, (0, FW, MEDIUM): 1, (1, FW, SMALL): 1})
    deploy0 = int(params.layout.encode(0, OP_DEPLOY, MEDIUM, ENC, 0))
    deploy2 = int(params.layout.encode(2, OP_DEPLOY, MEDIUM, ENC, 0))
    per_cluster = GuardConfig(max_pods_per_cluster=3)
    v = check(deploy0, obs, params, per_cluster, OK, 0)
    assert (v.reason, v.detail) == (guard.CLUSTER_CAP, "cluster 0 would run 4 pods (cap 3)")
    assert check(deploy2, obs, params, per_cluster, OK, 0).allowed
    v = check(deploy2, obs, params, GuardConfig(max_pods_total=4), OK, 0)
    assert (v.reason, v.detail) == (guard.TOTAL_CAP, "the clusters would run 5 pods (cap 4)")
    assert check(deploy2, obs, params, GuardConfig(max_pods_total=5), OK, 0).allowed


def test_the_change_budget_holds_once_spent(params, observe):
    obs = observe(ready={(0, ENC, MEDIUM): 1}, routes=every_proxy_to(MEDIUM, ENC))
    assign = int(params.layout.encode(0, OP_ASSIGN, MEDIUM, ENC, 1))
    cfg = GuardConfig(max_changes=2, window_steps=5)
    assert check(assign, obs, params, cfg, OK, 1).allowed
    v = check(assign, obs, params, cfg, OK, 2)
    assert (v.allowed, v.reason, v.hold) == (False, guard.RATE_LIMIT, True)


@pytest.mark.parametrize(
    ("health", "cfg", "reason"),
    [
        (Health(paused=True), GuardConfig(), guard.PAUSED),
        (Health(paused=True), GuardConfig(enabled=False), guard.PAUSED),  # even unguarded
        (Health(assumed=("cpu_pods 2",)), GuardConfig(), guard.STALE),
        (Health(api_errors=("list PodMetrics: 503",)), GuardConfig(), guard.API_FAILING),
        (Health(assumed=("latency 1",)), GuardConfig(hold_on_stale=False), None),
        (Health(api_errors=("boom",)), GuardConfig(enabled=False), None),
    ],
)
def test_holds_refuse_every_change_but_never_the_noop(params, observe, health, cfg, reason):
    obs = observe(ready={(0, ENC, MEDIUM): 1}, routes=every_proxy_to(MEDIUM, ENC))
    deploy = int(params.layout.encode(1, OP_DEPLOY, MEDIUM, ENC, 0))
    held = hold_reason(health, cfg)
    assert (held.reason if held else None) == reason
    v = check(deploy, obs, params, cfg, health, 0)
    assert v.allowed is (reason is None)
    assert v.reason == reason and v.hold is (reason is not None)
    assert check(params.layout.noop_index, obs, params, cfg, health, 0).allowed
