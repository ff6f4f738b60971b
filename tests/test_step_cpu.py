"""Step-long CPU readings on the local node: the kubelet's cumulative counters at a step's two
ends, turned into each instance's utilisation the way the backend reads PodMetrics. Numbers
worked out by hand."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from hmk8s.domain.usecases import CONFIG_NAMES, FUNCTION_NAMES
from hmk8s.k8s import objects
from hmk8s.k8s.local.fidelity import step_utilisation
from hmk8s.k8s.local.podmetrics import Sample, window_usage

FW, ENC = FUNCTION_NAMES.index("firewall"), FUNCTION_NAMES.index("encrypt")
SMALL, MEDIUM = CONFIG_NAMES.index("small"), CONFIG_NAMES.index("medium")


def labels(function: str, config: str) -> dict[str, str]:
    return {objects.FUNCTION: function, objects.CONFIG: config}


def test_window_usage_is_the_counters_slope_and_skips_what_cannot_be_measured():
    before = {
        ("a", "fw-1"): {"nf": Sample(100.0, 4.0)},
        ("a", "restarted"): {"nf": Sample(100.0, 9.0)},
        ("a", "two"): {"nf": Sample(100.0, 1.0), "side": Sample(100.0, 1.0)},
    }
    after = {
        ("a", "fw-1"): {"nf": Sample(110.0, 5.5)},  # 1.5 core-seconds in 10 s: 0.15 cores
        ("a", "restarted"): {"nf": Sample(110.0, 0.5)},  # the counter went back
        ("a", "new"): {"nf": Sample(110.0, 0.2)},  # no sample at the step's start
        ("a", "two"): {"nf": Sample(110.0, 2.0), "side": Sample(110.0, 1.0)},  # 0.1 and 0.0
    }
    usage = window_usage(before, after)
    assert usage.keys() == {("a", "fw-1"), ("a", "two")}
    assert usage[("a", "fw-1")] == {"nf": pytest.approx(0.15)}
    assert usage[("a", "two")] == {"nf": pytest.approx(0.1), "side": 0.0}


def test_step_utilisation_groups_pods_by_instance_and_divides_by_the_requests():
    request = np.zeros((len(FUNCTION_NAMES), len(CONFIG_NAMES)))
    request[FW, SMALL], request[ENC, MEDIUM] = 0.05, 0.1
    ready = np.zeros((2, len(FUNCTION_NAMES), len(CONFIG_NAMES)), np.int32)
    ready[0, FW, SMALL], ready[1, ENC, MEDIUM] = 2, 1
    usage = {
        ("hmk8s-0", "fw-a"): {"nf": 0.04},
        ("hmk8s-0", "fw-b"): {"nf": 0.02},
        ("hmk8s-1", "enc"): {"nf": 0.03, "side": 0.01},
        ("other", "unrelated"): {"nf": 1.0},
    }
    pod_labels = {
        ("hmk8s-0", "fw-a"): labels("firewall", "small"),
        ("hmk8s-0", "fw-b"): labels("firewall", "small"),
        ("hmk8s-1", "enc"): labels("encrypt", "medium"),
        ("other", "unrelated"): labels("firewall", "small"),
    }
    util = step_utilisation(usage, pod_labels, ["hmk8s-0", "hmk8s-1"], ready, request)
    assert util[0, FW, SMALL] == pytest.approx((0.04 + 0.02) / (2 * 0.05))  # 0.6
    assert util[1, ENC, MEDIUM] == pytest.approx((0.03 + 0.01) / 0.1)  # 0.4
    assert np.count_nonzero(util) == 2


def synthetic_recording(node_usecase, seed: int, steps: int = 8):
    """An episode as a node that *is* `node_usecase`'s model would record it: the simulator's
    mean prediction written where the kubelet's and the load generator's readings go."""
    import jax

    from hmk8s.domain.placement import initial_placement
    from hmk8s.domain.settings import params_from_usecase
    from hmk8s.k8s.local import fidelity
    from hmk8s.sim.load_trace import rate_trace

    params = params_from_usecase(node_usecase).replace(start="minimal")
    ready, routes = initial_placement(jax.random.PRNGKey(seed), params)
    rates = rate_trace(node_usecase, steps, seed) * 0.15  # no pod near saturation
    rec = fidelity.Recording(
        usecase=node_usecase.name,
        step_seconds=10.0,
        load_scale=0.15,
        rates=rates,
        placement={"ready": np.asarray(ready).tolist(), "routes": np.asarray(routes).tolist()},
        node_util=np.zeros(0),
        node_latency_s=np.zeros(0),
        sent=rates * 10.0,
        ok=rates * 10.0,
        start_delays_s={"medium": [2.0, 4.0]},
    )
    truth = fidelity.predict(node_usecase, rec)
    rec.node_util, rec.node_latency_s = truth["util"], truth["latency_s"]
    return rec


def test_calibrate_pools_episodes_and_recovers_a_slower_service_rate():
    """A node whose firewall pods serve at 0.8 of the modelled rate: fitted on two episodes
    pooled, every mu factor is 1 / 0.8 for the firewall and 1 for the rest."""
    from hmk8s.domain.usecases import load_usecase
    from hmk8s.k8s.local import fidelity

    model = load_usecase("ml")
    functions = model.functions.model_dump()
    for config in functions["firewall"].values():
        config["mu"] *= 0.8
    node = model.model_copy(update={"functions": type(model.functions).model_validate(functions)})
    recs = [synthetic_recording(node, seed) for seed in (0, 1)]
    _, fitted = fidelity.calibrate(model, recs)
    assert fitted["episodes"] == 2
    assert fitted["mu_factor"]["firewall"] == pytest.approx(1 / 0.8, rel=0.02)
    for name, factor in fitted["mu_factor"].items():
        if name != "firewall":
            assert factor == pytest.approx(1.0, rel=0.02)
    assert fitted["startup_s"] == {"medium": 3.0}  # the median of both episodes' starts
    with pytest.raises(ValueError, match="one step length and load scale"):
        fidelity.calibrate(model, [recs[0], dataclasses.replace(recs[1], load_scale=0.5)])


def test_a_disturbed_step_does_not_move_the_fitted_service_rate():
    """One step where the load stopped early (the node read about 0 where the model is busy):
    the fitted factor is still the firewall's 1 / 0.8, as the absolute error asks, where a
    least-squares fit would be pulled down by that one step."""
    from hmk8s.domain.usecases import load_usecase
    from hmk8s.k8s.local import fidelity

    model = load_usecase("ml")
    functions = model.functions.model_dump()
    for config in functions["firewall"].values():
        config["mu"] *= 0.8
    node = model.model_copy(update={"functions": type(model.functions).model_validate(functions)})
    rec = synthetic_recording(node, 0)
    rec.node_util[-1] = 0.01
    _, fitted = fidelity.calibrate(model, [rec])
    assert fitted["mu_factor"]["firewall"] == pytest.approx(1 / 0.8, rel=0.02)


def test_weighted_median_minimises_the_weighted_absolute_error():
    from hmk8s.k8s.local.fidelity import weighted_median

    values = np.array([3.0, 1.0, 2.0, 10.0])
    weights = np.array([1.0, 1.0, 1.0, 0.5])
    best = weighted_median(values, weights)
    grid = np.linspace(0, 11, 1101)
    errors = [(weights * np.abs(values - c)).sum() for c in grid]
    assert (weights * np.abs(values - best)).sum() == pytest.approx(min(errors))
    assert best == 2.0


def test_a_container_seen_first_is_read_from_its_start():
    """A pod the writer has no sample of yet gets its mean since the container started (the
    counter's origin); a container already sampled keeps its last sample as the window's start."""
    from hmk8s.k8s.local.podmetrics import container_samples, container_starts, since_start

    summary = {
        "pods": [
            {
                "podRef": {"namespace": "a", "name": "new"},
                "containers": [
                    {
                        "name": "nf",
                        "startTime": "2026-01-01T00:00:00Z",
                        "cpu": {"time": "2026-01-01T00:00:04Z", "usageCoreNanoSeconds": 2e8},
                    }
                ],
            },
            {
                "podRef": {"namespace": "a", "name": "old"},
                "containers": [
                    {
                        "name": "nf",
                        "startTime": "2026-01-01T00:00:00Z",
                        "cpu": {"time": "2026-01-01T00:01:10Z", "usageCoreNanoSeconds": 8e9},
                    }
                ],
            },
        ]
    }
    now = container_samples(summary)
    start = now[("a", "old")]["nf"].at - 70.0
    last = {("a", "old"): {"nf": Sample(start + 60.0, 7.0)}}
    usage = window_usage(since_start(last, container_starts(summary)), now)
    assert usage[("a", "new")] == {"nf": pytest.approx(0.2 / 4)}  # 0.2 core-s in 4 s
    assert usage[("a", "old")] == {"nf": pytest.approx(1.0 / 10)}  # since the last sample


def test_calibrate_recovers_service_time_its_variation_and_the_network_delay():
    """A node whose pods serve a request in half of 1 / mu with no variation (M/D/1) and whose
    clusters are 3 ms apart: the joint fit finds all three."""
    from hmk8s.domain.usecases import load_usecase
    from hmk8s.k8s.local import fidelity

    model = load_usecase("ml")
    functions = model.functions.model_dump()
    for configs in functions.values():
        for config in configs.values():
            config.update(service_ms=0.5 * 1000.0 / config["mu"], service_cv2=0.0)
    count = model.clusters.count
    clusters = model.clusters.model_copy(update={"network_delay_ms": ((3.0,) * count,) * count})
    node = model.model_copy(
        update={
            "functions": type(model.functions).model_validate(functions),
            "clusters": clusters,
        }
    )
    recs = [synthetic_recording(node, seed) for seed in (0, 1)]
    _, fitted = fidelity.calibrate(model, recs)
    assert (fitted["service_factor"], fitted["service_cv2"]) == (0.5, 0.0)
    assert fitted["network_delay_ms"] == pytest.approx(3.0, abs=0.01)


def test_a_rate_factor_is_kept_only_where_it_predicts_the_episode_left_out():
    """Two episodes 1.2 and 0.8 times the model: each left-out episode is predicted worse by
    the other's factor (error 0.4 against 0.2 per unit), so the model's rate stays; two
    episodes both 1.25 times the model keep the fitted factor."""
    from hmk8s.k8s.local.fidelity import holds_out

    model = np.array([0.5, 0.7, 0.9])
    assert not holds_out([1.2 * model, 0.8 * model], [model, model])
    assert holds_out([1.25 * model, 1.25 * model], [model, model])
    assert holds_out([1.2 * model], [model])  # one episode: nothing to check it on


def test_a_predicted_episode_starts_from_a_reading_of_its_first_rates():
    """The simulator's first observation of a recorded episode is the start placement measured
    on the first step's rates (as its reset and the node's first reading are), not zeros."""
    from hmk8s.domain.settings import params_from_usecase
    from hmk8s.domain.usecases import load_usecase
    from hmk8s.k8s.local import fidelity

    usecase = load_usecase("ml")
    rec = synthetic_recording(usecase, 0)
    params = params_from_usecase(fidelity.quiet(usecase, rec.rates, rec.step_seconds))
    start = fidelity.start_state(params, rec)
    placed = np.asarray(rec.placement["ready"]) > 0
    first = np.asarray(start.measurement.instance_util)
    assert (first[placed] > 0).all()
    np.testing.assert_allclose(first, fidelity.predict(usecase, rec)["util"][0], rtol=1e-6)
