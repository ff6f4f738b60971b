"""The container sources under deploy/images, run on loopback: a proxy forwarding along the chain
the backend writes, through network functions that serve at their rate."""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from hmk8s.k8s import objects
from hmk8s.k8s.config import load_cluster_map
from hmk8s.k8s.objects import Hop

IMAGES = Path(__file__).resolve().parents[1] / "deploy" / "images"


def load(name: str):
    spec = importlib.util.spec_from_file_location(
        f"hmk8s_image_{name}", IMAGES / name / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def serve(server) -> str:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"127.0.0.1:{server.server_address[1]}"


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def chain_setup(tmp_path):
    nf, proxy = load("nf"), load("proxy")
    servers = [
        nf.make_server("127.0.0.1", 0, "firewall", "small", 50.0),
        nf.make_server("127.0.0.1", 0, "encrypt", "small", 100.0),
    ]
    hops = [serve(s) for s in servers]
    # the chain document as the backend writes it, with loopback addresses as endpoints
    cmap = load_cluster_map(None, address={"local": hops[0], "remote": hops[1]})
    document = objects.chain_document(cmap, 0, 0, (Hop(2, 0, 0), Hop(0, 1, 0)))
    path = tmp_path / "chain.json"
    path.write_text(document)
    front = proxy.make_server("127.0.0.1", 0, "proxy0", proxy.Chain(path), 1.0, 5.0)
    url = f"http://{serve(front)}"
    yield url, path, cmap
    for s in [*servers, front]:
        s.shutdown()
        s.server_close()


def test_proxy_forwards_along_the_chain_and_reports(chain_setup):
    url, _, _ = chain_setup
    for _ in range(5):
        status, body = get(url + "/")
        assert status == 200 and json.loads(body)["ok"]
        # two hops: 1/50 s + 1/100 s of service at least
        assert json.loads(body)["latency_s"] >= 0.03
    status, body = get(url + "/probe")
    probe = json.loads(body)
    assert status == 200 and probe["ok"] and probe["latency_s"] >= 0.03
    assert probe["rate"] == pytest.approx(5 / 5.0)  # 5 user requests in the 5 s window
    _, metrics = get(url + "/metrics")
    values = dict(line.rsplit(" ", 1) for line in metrics.splitlines())
    assert float(values['hmk8s_proxy_requests_per_second{proxy="proxy0"}']) == pytest.approx(1.0)
    assert 0.03 <= float(values['hmk8s_proxy_latency_seconds{proxy="proxy0"}']) < 1.0


def test_a_broken_hop_fails_the_request_and_counts_as_the_timeout(chain_setup):
    url, path, cmap = chain_setup
    time.sleep(0.01)  # a new modification time
    path.write_text(objects.chain_document(cmap, 0, 0, (Hop(2, 0, 0), Hop(0, None, None))))
    status, body = get(url + "/")
    assert status == 502 and not json.loads(body)["ok"]
    status, body = get(url + "/probe")
    assert status == 200 and json.loads(body)["ok"] is False
    _, metrics = get(url + "/metrics")
    assert 'hmk8s_proxy_latency_seconds{proxy="proxy0"} 1.0' in metrics


def test_function_health_answers_without_work():
    nf = load("nf")
    server = nf.make_server("127.0.0.1", 0, "decrypt", "large", 0.5)  # 2 s per request
    address = serve(server)
    try:
        start = time.perf_counter()
        status, body = get(f"http://{address}/healthz")
        assert status == 200 and time.perf_counter() - start < 1.0
        assert json.loads(body) == {"function": "decrypt", "config": "large"}
    finally:
        server.shutdown()
        server.server_close()
