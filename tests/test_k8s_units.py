"""The Kubernetes backend's pure parts: cluster map, retries, plans, readings, label selectors."""

from __future__ import annotations

import math
import random
from email.utils import formatdate

import numpy as np
import pytest
from kubernetes.client.exceptions import ApiException

from hmk8s.domain.usecases import load_usecase
from hmk8s.k8s import objects
from hmk8s.k8s.config import Api, ClusterMapError, load_cluster_map
from hmk8s.k8s.emulated.emulator import match_labels
from hmk8s.k8s.objects import Hop
from hmk8s.k8s.readings import cpu_cores, cpu_utilisation, fill_proxy_readings, usage_by_instance
from hmk8s.k8s.reconcile import Placement, placement_of, plan
from hmk8s.k8s.retry import ApiCallError, Retrier, backoff_delay, parse_retry_after

CLUSTERS = [{"context": "c", "namespace": f"ns-{k}"} for k in range(3)]


def test_default_cluster_map_fits_every_use_case():
    cmap = load_cluster_map()
    for name in ("ehr", "ml", "stream"):
        cmap.check_against(load_usecase(name))
    assert cmap.step_duration(load_usecase("ml")) == load_usecase("ml").step_seconds


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"clusters": CLUSTERS[:2]}, "lists 2 clusters"),
        ({"images": {"firewall": "x"}}, "no image for the chain's functions ['encrypt']"),
        ({"clusters": [*CLUSTERS[:2], CLUSTERS[0]]}, "share a context and namespace"),
        ({"clusters": [{"context": "c", "namespace": "Bad_NS"}, *CLUSTERS[1:]]}, "DNS label"),
        ({"proxy_name": "proxy"}, "placeholder {p}"),
        ({"memory": {"huge": {"request": "1Gi"}}}, "unknown configs"),
        ({"latency": {"source": "guess"}}, "latency.source"),
    ],
)
def test_cluster_map_errors_name_the_field(overrides, message):
    with pytest.raises(ClusterMapError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_cluster_map(None, **overrides).check_against(load_usecase("ml"))


def test_missing_cluster_map_file_is_a_clear_error(tmp_path):
    with pytest.raises(ClusterMapError, match="cannot read"):
        load_cluster_map(tmp_path / "absent.yaml")


def test_retry_after_forms():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.25") == 0.25
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_000_000.0
    assert parse_retry_after(formatdate(now + 7, usegmt=True), now=now) == pytest.approx(7, abs=1)


def test_backoff_is_capped_exponential_with_jitter():
    policy = Api(backoff_base_s=0.1, backoff_max_s=1.0)
    rng = random.Random(0)
    for attempt, step in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        delays = [backoff_delay(policy, attempt, rng) for _ in range(200)]
        assert min(delays) >= step / 2 and max(delays) <= step
        assert max(delays) - min(delays) > step / 4  # jittered, not lock-step


def _api_error(status: int, retry_after: str | None = None) -> ApiException:
    exc = ApiException(status=status, reason="x")
    exc.headers = {"Retry-After": retry_after} if retry_after else {}
    return exc


def test_retrier_honours_retry_after_and_succeeds():
    waits: list[float] = []
    outcomes = [_api_error(429, "2"), _api_error(503), TimeoutError(), "ok"]

    def call():
        item = outcomes.pop(0)
        if isinstance(item, BaseException):
            raise item
        return item

    policy = Api(backoff_base_s=0.01, backoff_max_s=0.05, max_attempts=5)
    retrier = Retrier(policy, random.Random(0), waits.append)
    assert retrier.call("op", call) == "ok"
    assert waits[0] >= 2.0 and all(w <= 0.05 for w in waits[1:])
    assert retrier.stats.retries == 3
    assert retrier.stats.by_status == {"429": 1, "503": 1, "timeout/connection": 1}


def test_retrier_gives_up_and_never_retries_permanent_errors():
    policy = Api(backoff_base_s=0.0, max_attempts=3)
    calls = []

    def always(status):
        def fn():
            calls.append(status)
            raise _api_error(status)

        return fn

    with pytest.raises(ApiCallError, match="gave up after 3 attempts"):
        Retrier(policy, sleep=lambda s: None).call("op", always(500))
    assert calls == [500, 500, 500]
    with pytest.raises(ApiException):
        Retrier(policy, sleep=lambda s: None).call("op", always(403))
    assert calls[3:] == [403]


def test_label_selectors():
    labels = {"a": "1", "b": "2"}
    assert match_labels(labels, "")
    assert match_labels(labels, "a=1,b==2")
    assert not match_labels(labels, "a=1,b=3")
    assert match_labels(labels, "a!=2") and not match_labels(labels, "a!=1")
    assert match_labels(labels, "a") and not match_labels(labels, "c")
    assert match_labels(labels, "!c") and not match_labels(labels, "!a")


def test_placement_and_plan_order():
    replicas = np.zeros((3, 3, 3), np.int32)
    replicas[0, 2, 1] = 2  # firewall medium on cluster 0
    replicas[1, 0, 0] = 1  # encrypt small on cluster 1
    routes = np.full((2, 3), -1, np.int32)
    routes[0, 2], routes[0, 0] = 0 * 3 + 1, 1 * 3 + 0
    desired = placement_of(replicas, routes, chain=(2, 0))
    assert desired.replicas == {(0, 2, 1): 2, (1, 0, 0): 1}
    assert desired.chains[0] == (Hop(2, 0, 1), Hop(0, 1, 0))
    assert desired.chains[1] == (Hop(2, None, None), Hop(0, None, None))
    applied = Placement({(0, 2, 1): 1, (2, 0, 2): 1}, {0: desired.chains[0]})
    ops = plan(desired, applied, homes=[0, 1])
    assert [(o.kind, o.instance or o.proxy) for o in ops] == [
        ("scale", (0, 2, 1)),
        ("scale", (1, 0, 0)),
        ("chain", 1),
        ("delete", (2, 0, 2)),
    ]
    assert ops[2].cluster == 1  # proxy 1's chain lives on its home cluster
    assert plan(desired, desired, homes=[0, 1]) == []


def test_chain_document_round_trip_and_addresses():
    cmap = load_cluster_map(None, clusters=CLUSTERS)
    hops = (Hop(2, 0, 1), Hop(0, 2, 0), Hop(1, None, None))
    doc = objects.chain_document(cmap, 0, 0, hops)
    assert objects.parse_chain(doc) == [(2, 0, 1), (0, 2, 0), (1, None, None)]
    assert objects.endpoint(cmap, 0, hops[0]) == "hmk8s-firewall-medium.ns-0.svc.cluster.local:8080"
    assert (
        objects.endpoint(cmap, 0, hops[1]) == "hmk8s-encrypt-small.ns-2.svc.clusterset.local:8080"
    )
    assert objects.endpoint(cmap, 0, hops[2]) is None


def test_cpu_quantities():
    assert cpu_cores("250m") == 0.25
    assert cpu_cores("1500000n") == pytest.approx(0.0015)
    assert cpu_cores("2") == 2.0
    assert math.isnan(cpu_cores(None)) and math.isnan(cpu_cores("lots"))


def _pm(f: str, c: str, cpu: str | None) -> dict:
    containers = [] if cpu is None else [{"name": f, "usage": {"cpu": cpu}}]
    return {
        "metadata": {"labels": {objects.FUNCTION: f, objects.CONFIG: c}},
        "containers": containers,
    }


def test_cpu_utilisation_fills_missing_pods_at_their_request():
    request = np.full((3, 3), 0.5)
    ready = np.zeros((2, 3, 3), np.int32)
    ready[0, 2, 1] = 3  # three ready firewall/medium pods, one sample missing, one NaN
    ready[1, 0, 0] = 1
    usage = usage_by_instance(
        0, [_pm("firewall", "medium", "250m"), _pm("firewall", "medium", "garbage")]
    )
    usage.update(
        usage_by_instance(1, [_pm("encrypt", "small", "1"), _pm("encrypt", "small", "100m")])
    )
    cpu = cpu_utilisation(ready, usage, request)
    # cluster 0: 0.25 measured + 2 pods assumed at 0.5 over 3 * 0.5 requested
    assert cpu.instance_util[0, 2, 1] == pytest.approx((0.25 + 1.0) / 1.5)
    assert cpu.cluster_cpu[0] == pytest.approx((0.25 + 1.0) / 1.5)
    # cluster 1: one ready pod, two samples: the larger one counts (conservative)
    assert cpu.instance_util[1, 0, 0] == pytest.approx(2.0)
    assert cpu.assumed_pods == 2
    assert cpu.instance_util.sum() == pytest.approx(cpu.instance_util[0, 2, 1] + 2.0)


def test_proxy_readings_fill_conservatively():
    lat = np.array([0.05, np.nan, 5.0])
    rates = np.array([10.0, np.nan, -1.0])
    r = fill_proxy_readings(lat, rates, last_rates=np.array([1.0, 2.0, 3.0]), timeout_s=1.0)
    np.testing.assert_allclose(r.latency_s, [0.05, 1.0, 1.0])
    np.testing.assert_allclose(r.rates, [10.0, 2.0, 3.0])
    assert (r.assumed_latency, r.assumed_rates) == (1, 2)
