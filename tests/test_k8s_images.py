"""The data-plane programs under deploy/images, run as processes on loopback: network functions
that do their work at the use case's CPU cost, and a proxy passing requests along the chain the
backend writes, both under the limits a server facing a cluster needs."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import http.server
import importlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from hmk8s.domain.usecases import load_usecase
from hmk8s.k8s import objects
from hmk8s.k8s.config import load_cluster_map
from hmk8s.k8s.objects import Hop

IMAGES = Path(__file__).resolve().parents[1] / "deploy" / "images"
KEY = bytes(range(32))
RULES = {
    "default": "allow",
    "rules": [
        {"name": "partner", "action": "allow", "source": "10.1.0.0/16"},
        {"name": "private", "action": "deny", "source": "10.0.0.0/8"},
        {"name": "no-delete", "action": "deny", "methods": ["DELETE"]},
        {"name": "no-admin", "action": "deny", "path": "^/admin"},
        {"name": "no-sql", "action": "deny", "payload": "(?i)drop\\s+table"},
    ],
}
USECASE = load_usecase("ml")


def image_module(name: str):
    """A program of deploy/images imported in-process (its sibling httpio must be importable)."""
    if str(IMAGES) not in sys.path:
        sys.path.insert(0, str(IMAGES))
    return importlib.import_module(name)


class Program:
    """A deploy/images program as a process; `address` is where it listens."""

    def __init__(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, str(IMAGES / f"{name}.py"), "--host", "127.0.0.1", "--port", "0"]
        self.proc = subprocess.Popen(
            [*cmd, *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("listening on "), line + self.proc.stderr.read()
        self.address = line.split()[-1]
        self.port = int(self.address.rsplit(":", 1)[1])

    def cpu_s(self) -> float:
        """User + system CPU of the process, as the kernel accounts it (what cAdvisor reads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(next(ln for ln in status.splitlines() if ln.startswith("VmRSS:")).split()[1])

    def stop(self) -> int:
        """SIGTERM, then the exit code; what the program wrote on stderr is kept in `stderr`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=15)
        self.stderr = self.proc.stderr.read()
        self.proc.stdout.close()
        self.proc.stderr.close()
        return code


def function_env(function: str, config: str = "small") -> dict[str, str]:
    """The settings the backend renders for instance (function, config) of ML."""
    f, c = objects.FUNCTION_NAMES.index(function), objects.CONFIG_NAMES.index(config)
    deployment = objects.deployment(load_cluster_map(), USECASE, "test", f, c, 1)
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e["value"] for e in container["env"]}


def cpu_per_request(function: str, config: str) -> float:
    profile = getattr(getattr(USECASE.functions, function), config)
    return profile.cpu_limit / profile.mu


def call(
    address: str,
    method: str = "GET",
    path: str = "/",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def metrics(address: str) -> dict[str, float]:
    _, _, body = call(address, path="/metrics")
    return {k: float(v) for k, v in (ln.rsplit(" ", 1) for ln in body.decode().splitlines())}


def write_chain(path: Path, hops: list[tuple[str, str | None]]) -> None:
    """Replace the chain file atomically, as the kubelet does with a ConfigMap volume."""
    document = {"hops": [{"function": f, "endpoint": e} for f, e in hops]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(document))
    tmp.replace(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("nf")
    (root / "key").write_text(KEY.hex() + "\n")
    (root / "rules.json").write_text(json.dumps(RULES))
    return root


def material(files: Path, function: str) -> tuple[str, str]:
    """The option giving the function its mounted file: the rules or the key."""
    return (
        ("--rules", str(files / "rules.json"))
        if function == "firewall"
        else ("--key", str(files / "key"))
    )


@pytest.fixture(scope="module")
def functions(files):
    """One instance of each function, configured as ML's small config."""
    programs = {
        f: Program("nf", *material(files, f), env=function_env(f))
        for f in ("firewall", "encrypt", "decrypt")
    }
    yield programs
    for p in programs.values():
        assert p.stop() == 0


@pytest.fixture(scope="module")
def proxy(tmp_path_factory):
    """A proxy that accepts loopback endpoints; tests write its chain."""
    chain = tmp_path_factory.mktemp("proxy") / "chain.json"
    program = Program(
        "proxy",
        "--chain",
        str(chain),
        "--allow-loopback",
        "--timeout",
        str(USECASE.timeout_ms / 1000),
        "--window",
        "5",
        env={"HMK8S_PROXY": "proxy0"},
    )
    yield program, chain
    assert program.stop() == 0


# the functions


def test_encrypt_is_aes_gcm_and_decrypt_inverts_it(functions):
    payload = b"patient 42: blood pressure 120/80"
    status, headers, sealed = call(functions["encrypt"].address, "POST", "/r", payload)
    assert status == 200 and headers["hmk8s-function"] == "encrypt"
    assert len(sealed) == 12 + len(payload) + 16 and payload not in sealed
    assert AESGCM(KEY).decrypt(sealed[:12], sealed[12:], None) == payload  # the key, read here
    status, _, plain = call(functions["decrypt"].address, "POST", "/r", sealed)
    assert (status, plain) == (200, payload)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    status, _, body = call(functions["decrypt"].address, "POST", "/r", tampered)
    assert status == 400 and b"authenticate" in body


@pytest.mark.parametrize(
    ("source", "method", "path", "body", "rule"),
    [
        ("10.1.2.3", "DELETE", "/admin", b"drop table x", None),  # the partner rule comes first
        ("10.9.9.9", "GET", "/", b"", "private"),
        ("192.0.2.7", "DELETE", "/items/1", b"", "no-delete"),
        ("192.0.2.7", "GET", "/admin/users?x=1", b"", "no-admin"),
        ("192.0.2.7", "POST", "/q", b"1; DROP  TABLE users", "no-sql"),
        ("192.0.2.7", "POST", "/q", b"select 1", None),
        ("192.0.2.7", "GET", "/dashboard/admin", b"", None),  # the path rule is anchored
    ],
)
def test_firewall_applies_the_first_matching_rule(functions, source, method, path, body, rule):
    status, headers, answer = call(
        functions["firewall"].address, method, path, body, {"X-Forwarded-For": source}
    )
    assert headers["hmk8s-function"] == "firewall"
    if rule is None:
        assert (status, answer) == (200, body)
    else:
        assert status == 403 and json.loads(answer)["rule"] == rule


@pytest.mark.parametrize(("function", "config"), [("firewall", "small"), ("encrypt", "large")])
def test_cpu_per_request_is_cpu_limit_over_mu(files, function, config):
    """Process CPU time over N requests, against the simulator's cost cpu_limit / mu (1 / mu
    would be twice it for a small config and half of it for a large one)."""
    program = Program("nf", *material(files, function), env=function_env(function, config))
    try:
        n = 60
        call(program.address, "POST", "/", b"warm-up")
        before = program.cpu_s()
        for _ in range(n):
            assert call(program.address, "POST", "/", b"x" * 512)[0] == 200
        per_request = (program.cpu_s() - before) / n  # clock ticks: 10 ms in 0.5 s and more
    finally:
        program.stop()
    expected = cpu_per_request(function, config)
    print(
        f"{function}/{config}: {per_request * 1e3:.2f} ms CPU per request, "
        f"cpu_limit/mu = {expected * 1e3:.2f} ms"
    )
    assert per_request == pytest.approx(expected, rel=0.1)


def test_health_is_answered_while_every_worker_is_busy(files):
    env = {"HMK8S_FUNCTION": "encrypt", "HMK8S_SERVICE_RATE": "1", "HMK8S_CPU_LIMIT": "1"}
    program = Program("nf", "--key", str(files / "key"), "--workers", "1", env=env)
    try:
        busy = threading.Thread(target=call, args=(program.address, "POST", "/", b"x"))
        busy.start()
        time.sleep(0.2)
        start = time.perf_counter()
        assert call(program.address, path="/healthz")[0] == 200
        assert call(program.address, path="/readyz")[0] == 200
        assert time.perf_counter() - start < 0.5  # the request in flight takes 1 s of CPU
        busy.join()
    finally:
        program.stop()


def test_sigterm_finishes_the_request_in_flight_then_exits(files):
    env = {"HMK8S_FUNCTION": "encrypt", "HMK8S_SERVICE_RATE": "2", "HMK8S_CPU_LIMIT": "1"}
    program = Program("nf", "--key", str(files / "key"), env=env)
    answers: list[int] = []
    inflight = threading.Thread(
        target=lambda: answers.append(call(program.address, "POST", "/", b"x")[0])
    )
    inflight.start()
    time.sleep(0.15)
    start = time.perf_counter()
    assert program.stop() == 0
    inflight.join()
    assert answers == [200]  # 0.5 s of work, finished before the exit
    assert time.perf_counter() - start < 3.0
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", program.port), timeout=1)


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"HMK8S_FUNCTION": "nat"}, (), "HMK8S_FUNCTION must be one of"),
        ({"HMK8S_FUNCTION": "encrypt", "HMK8S_SERVICE_RATE": "0"}, (), "HMK8S_SERVICE_RATE"),
        (function_env("encrypt"), (), "--key /etc/hmk8s/nf/key: cannot read"),
        (function_env("decrypt"), ("--key", "/nonexistent"), "cannot read"),
        (function_env("firewall"), ("--rules", "{key}"), "--rules"),
        (function_env("encrypt"), ("--key", "{key}", "--max-body", "0"), "--max-body"),
    ],
)
def test_bad_settings_end_with_one_line(files, env, args, message):
    args = [a.format(key=files / "key") for a in args]
    out = subprocess.run(
        [sys.executable, str(IMAGES / "nf.py"), "--port", "0", *args],
        env={k: v for k, v in os.environ.items() if not k.startswith("HMK8S_")} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith("nf: ") and message in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# both servers


@pytest.fixture(params=["nf", "proxy"])
def server(request, functions, proxy):
    return functions["firewall"] if request.param == "nf" else proxy[0]


def test_a_100_mb_body_is_refused_before_it_is_read(server):
    before = server.rss_kib()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: {100 << 20}\r\n\r\n"
    sock.sendall(head.encode())

    def push() -> None:
        chunk = bytes(1 << 20)
        with contextlib.suppress(OSError):
            for _ in range(100):
                sock.sendall(chunk)

    pusher = threading.Thread(target=push)
    pusher.start()
    answer = sock.recv(4096).decode("latin-1")
    assert answer.startswith("HTTP/1.1 413 ")
    sock.shutdown(socket.SHUT_RD)
    pusher.join(timeout=10)
    sock.close()
    growth = server.rss_kib() - before
    print(f"100 MB body refused: resident memory grew by {growth} KiB")
    assert growth < 5 * 1024


def test_a_head_trickled_byte_by_byte_is_cut_off(files):
    program = Program(
        "nf",
        *material(files, "firewall"),
        "--head-timeout-s",
        "0.5",
        "--idle-timeout-s",
        "0.5",
        env=function_env("firewall"),
    )
    try:
        slow = socket.create_connection(("127.0.0.1", program.port), timeout=5)
        idle = socket.create_connection(("127.0.0.1", program.port), timeout=5)
        start, closed = time.perf_counter(), False
        with contextlib.suppress(OSError):
            for byte in b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 40:
                slow.sendall(bytes([byte]))
                time.sleep(0.05)
        try:
            closed = slow.recv(1) == b""
        except ConnectionResetError:
            closed = True
        assert closed and time.perf_counter() - start < 2.0
        assert idle.recv(1) == b""  # nothing sent: closed after the idle timeout
    finally:
        program.stop()


def test_200_concurrent_connections_are_served_within_2_s(server):
    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status = int((await reader.readline()).split()[1])
        await reader.read()
        writer.close()
        return status

    async def all_at_once() -> list[int]:
        return await asyncio.gather(*(one() for _ in range(200)))

    start = time.perf_counter()
    statuses = asyncio.run(asyncio.wait_for(all_at_once(), 10))
    seconds = time.perf_counter() - start
    print(f"200 concurrent connections: {seconds:.3f} s")
    assert statuses == [200] * 200 and seconds < 2.0


# the proxy


def test_a_real_request_through_firewall_and_encrypt_is_measured(functions, proxy):
    program, chain = proxy
    write_chain(
        chain,
        [("firewall", functions["firewall"].address), ("encrypt", functions["encrypt"].address)],
    )
    payload = b'{"features": [0.1, 0.2, 0.3]}'
    for _ in range(4):
        start = time.perf_counter()
        status, _, sealed = call(program.address, "POST", "/infer", payload)
        wall = time.perf_counter() - start
        assert status == 200 and AESGCM(KEY).decrypt(sealed[:12], sealed[12:], None) == payload
    status, _, denied = call(program.address, "POST", "/admin", payload)
    assert status == 403 and json.loads(denied)["rule"] == "no-admin"  # relayed, not a failure
    _, _, body = call(program.address, path="/probe")
    probe = json.loads(body)
    # the two functions burn cpu_limit/mu of CPU each; the wall time of a request can be a
    # little under their sum (the learned overhead is subtracted, and a pod's hashing may use
    # both cores), but a chain that skipped the work would answer in about a millisecond
    least = (cpu_per_request("firewall", "small") + cpu_per_request("encrypt", "small")) / 2
    assert probe["ok"] and least <= probe["latency_s"] < 1.0
    values = metrics(program.address)
    assert values['hmk8s_proxy_chain_ok{proxy="proxy0"}'] == 1
    assert least <= values['hmk8s_proxy_latency_seconds{proxy="proxy0"}'] < 1.0
    assert values['hmk8s_proxy_requests_per_second{proxy="proxy0"}'] >= 5 / 5.0
    print(
        f"firewall -> encrypt through the proxy: last request {wall * 1e3:.1f} ms, "
        f"probe {probe['latency_s'] * 1e3:.1f} ms, CPU floor {least * 1e3:.1f} ms"
    )


def test_encrypt_then_decrypt_through_the_proxy_returns_the_payload(functions, proxy):
    program, chain = proxy
    write_chain(
        chain,
        [("encrypt", functions["encrypt"].address), ("decrypt", functions["decrypt"].address)],
    )
    payload = os.urandom(2048)
    assert call(program.address, "PUT", "/blob", payload)[:3:2] == (200, payload)


def test_a_broken_hop_fails_and_counts_as_the_timeout(functions, proxy):
    program, chain = proxy
    name = 'hmk8s_proxy_latency_seconds{proxy="proxy0"}'
    write_chain(chain, [("firewall", functions["firewall"].address)])
    assert call(program.address, "POST", "/", b"x")[0] == 200
    before = metrics(program.address)[name]
    write_chain(chain, [("firewall", functions["firewall"].address), ("encrypt", None)])
    assert call(program.address, path="/readyz")[0] == 200  # a chain the backend meant
    assert call(program.address, "POST", "/", b"x")[0] == 502
    _, _, body = call(program.address, path="/probe")
    assert json.loads(body)["ok"] is False
    # two failures, each counted as the timeout in the mean (weight 0.2 on the newest)
    timeout = USECASE.timeout_ms / 1000
    expected = timeout - (timeout - before) * 0.8**2
    assert metrics(program.address)[name] == pytest.approx(expected)


@pytest.mark.parametrize(
    "document", ['{"hops":[1]}', '{"hops":[]}', "not json", '{"hops":[{"function":"nat"}]}']
)
def test_a_malformed_chain_makes_the_proxy_unready(functions, proxy, document):
    program, chain = proxy
    write_chain(chain, [("firewall", functions["firewall"].address)])
    assert call(program.address, "POST", "/", b"x")[0] == 200
    chain.with_suffix(".tmp").write_text(document)
    chain.with_suffix(".tmp").replace(chain)
    status, _, body = call(program.address, path="/readyz")
    assert status == 503 and "malformed chain" in json.loads(body)["reason"]
    assert call(program.address, path="/healthz")[0] == 200  # alive, only not ready
    assert call(program.address, "POST", "/", b"x")[0] == 502
    values = metrics(program.address)
    assert values['hmk8s_proxy_chain_ok{proxy="proxy0"}'] == 0
    assert values['hmk8s_proxy_latency_seconds{proxy="proxy0"}'] == USECASE.timeout_ms / 1000
    write_chain(chain, [("firewall", functions["firewall"].address)])
    assert call(program.address, path="/readyz")[0] == 200


def test_endpoints_must_have_the_form_of_the_backends_templates():
    proxy = image_module("proxy")
    cmap = load_cluster_map()
    rendered = [objects.endpoint(cmap, 0, Hop(f, k, 1)) for f in range(3) for k in range(3)]
    assert any("clusterset" in e for e in rendered) and any(".cluster." in e for e in rendered)
    for endpoint in rendered:  # local and remote templates of the shipped cluster map
        host, port = proxy.parse_endpoint(endpoint, cmap.port, allow_loopback=False)
        assert f"{host}:{port}" == endpoint
    refused = [
        "example.com:8080",
        "10.0.0.7:8080",
        "127.0.0.1:8080",  # loopback only with the explicit flag
        "hmk8s-firewall-small.hmk8s-0.svc.cluster.local:9090",  # not the function port
        "hmk8s-firewall-small.hmk8s-0.svc.cluster.local.example.com:8080",
        "a.b.c.svc.cluster.local:8080",
        "hmk8s-firewall-small.hmk8s-0.svc.cluster.local",
        "user@hmk8s-firewall-small.hmk8s-0.svc.cluster.local:8080",
    ]
    for endpoint in refused:
        with pytest.raises(proxy.ChainError):
            proxy.parse_endpoint(endpoint, cmap.port, allow_loopback=False)


def test_without_the_loopback_flag_a_loopback_chain_is_refused(functions, tmp_path):
    chain = tmp_path / "chain.json"
    write_chain(chain, [("firewall", functions["firewall"].address)])
    program = Program("proxy", "--chain", str(chain))
    try:
        status, _, body = call(program.address, path="/readyz")
        assert status == 503 and "not a cluster Service address" in json.loads(body)["reason"]
        assert json.loads(call(program.address, path="/probe")[2])["ok"] is False
    finally:
        program.stop()


class _Imposter(http.server.BaseHTTPRequestHandler):
    """Answers like some other web server: a redirect to a real function, or a plain 200."""

    target = ""

    def do_GET(self) -> None:
        if self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", f"http://{self.target}/")
            self.send_header("Hmk8s-Function", "firewall")
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_POST = do_GET

    def log_message(self, format: str, *args: object) -> None:
        del format, args


def test_redirects_and_foreign_answers_are_failures(functions, proxy):
    program, chain = proxy
    _Imposter.target = functions["firewall"].address
    imposter = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Imposter)
    threading.Thread(target=imposter.serve_forever, daemon=True).start()
    try:
        write_chain(chain, [("firewall", f"127.0.0.1:{imposter.server_address[1]}")])
        assert call(program.address, "POST", "/redirect")[0] == 502  # not followed
        _, _, body = call(program.address, path="/probe")  # a 200 without the function's name
        assert (
            json.loads(body)["ok"] is False and "not from a firewall" in json.loads(body)["detail"]
        )
    finally:
        imposter.shutdown()
        imposter.server_close()


# requests that could be read two ways

DENIED_SPELLINGS = [
    "/admin",
    "//admin",
    "///admin?x=1",
    "/./admin",
    "/x/../admin",
    "/a/b/../../admin/users",
    "/../admin",
    "/admin/./",
    "/%61dmin",
    "/%61%64%6D%69%6E",
    "/%2e/admin",
    "/x/%2E%2E/admin",
    "/x/.%2e/admin",
]
REFUSED_TARGETS = [
    "/%2fadmin",  # an encoded slash
    "/x%2F..%2Fadmin",
    "/%5cadmin",  # an encoded backslash
    "/\\admin",
    "/%2561dmin",  # encoded twice: /%61dmin once decoded
    "/%zzadmin",  # a malformed escape
    "/%00admin",
    "/%ff",  # not UTF-8 once decoded
    "http://127.0.0.1/admin",  # absolute-form
    "*",
]


def test_the_normal_path_of_every_spelling_is_the_path():
    httpio = image_module("httpio")
    normal = {t: httpio.normal_path(t) for t in DENIED_SPELLINGS}
    assert normal == {
        "/admin": "/admin",
        "//admin": "/admin",
        "///admin?x=1": "/admin",
        "/./admin": "/admin",
        "/x/../admin": "/admin",
        "/a/b/../../admin/users": "/admin/users",
        "/../admin": "/admin",
        "/admin/./": "/admin/",
        "/%61dmin": "/admin",
        "/%61%64%6D%69%6E": "/admin",
        "/%2e/admin": "/admin",
        "/x/%2E%2E/admin": "/admin",
        "/x/.%2e/admin": "/admin",
    }
    assert [httpio.normal_path(t) for t in ("/", "/a/..", "/a/b/", "/%25", "/caf%C3%A9")] == [
        "/", "/", "/a/b/", "/%", "/café",
    ]  # fmt: skip
    for target in REFUSED_TARGETS:
        with pytest.raises(httpio.HttpError) as refused:
            httpio.normal_path(target)
        assert refused.value.status == 400, target


@pytest.mark.parametrize("target", DENIED_SPELLINGS)
def test_every_spelling_of_a_denied_path_is_denied_through_the_proxy(functions, proxy, target):
    program, chain = proxy
    write_chain(chain, [("firewall", functions["firewall"].address)])
    status, _, body = call(program.address, "GET", target)
    assert status == 403 and json.loads(body)["rule"] == "no-admin", (target, body)
    assert call(program.address, "GET", "/x/admin/..")[0] == 200  # "/x/": allowed


@pytest.mark.parametrize("target", REFUSED_TARGETS)
def test_a_target_that_could_be_read_two_ways_is_refused(functions, proxy, target):
    program, chain = proxy
    write_chain(chain, [("firewall", functions["firewall"].address)])
    assert call(program.address, "GET", target)[0] == 400
    assert call(functions["firewall"].address, "GET", target)[0] == 400


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send bytes as they are and read the answer until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
    return answer


SMUGGLED_HEADS = [
    (b"Content-Type: text/plain\nX-Injected: 1\r\n", 400),  # a bare LF inside a value
    (b"Content-Type: text/plain\rX-Injected: 1\r\n", 400),  # a bare CR
    (b"X-Note: a\x00b\r\n", 400),
    (b"Content-Length: \xb2\r\n", 400),  # a superscript two: a digit to str.isdigit
    (b"Content-Length: +1\r\n", 400),
    (b"Content-Length: " + b"9" * 5000 + b"\r\n", 413),
]


def test_smuggled_headers_and_odd_lengths_get_400_and_no_traceback(functions, tmp_path):
    chain = tmp_path / "chain.json"
    write_chain(chain, [("firewall", functions["firewall"].address)])
    program = Program("proxy", "--chain", str(chain), "--allow-loopback")
    try:
        for port in (program.port, functions["firewall"].port):
            for header, status in SMUGGLED_HEADS:
                request = b"POST /items HTTP/1.1\r\nHost: x\r\n" + header + b"\r\nx"
                answer = raw_exchange(port, request)
                assert answer.startswith(f"HTTP/1.1 {status} ".encode()), (header, answer[:80])
        assert call(program.address, "POST", "/items", b"x")[0] == 200  # still serving
    finally:
        assert program.stop() == 0
    assert program.stderr == ""


# the load generator


def run_loadgen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(IMAGES / "loadgen.py"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_load_generator_replays_the_rates_through_the_proxy(functions, proxy, tmp_path):
    program, chain = proxy
    write_chain(chain, [("firewall", functions["firewall"].address)])
    rates = tmp_path / "rates.csv"
    rates.write_text("proxy0\n# requests/s per step\n20\n40\n")
    out = run_loadgen(
        "--rates", str(rates), "--target", f"http://{program.address}/",
        "--step-seconds", "0.5", "--arrivals", "uniform", "--timeout", "1",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    reports = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["step"], r["sent"], r["ok"]) for r in reports] == [(0, 10, 10), (1, 20, 20)]
    assert all(
        r["latency_ms"]["p50"] >= cpu_per_request("firewall", "small") * 1e3 for r in reports
    )


def test_poisson_arrivals_have_the_rate_on_average():
    loadgen = image_module("loadgen")
    rng = random.Random(7)
    counts = [len(loadgen.arrival_times(30.0, 2.0, rng, poisson=True)) for _ in range(400)]
    assert abs(sum(counts) / len(counts) - 60.0) < 4 * (60.0 / 400) ** 0.5  # 4 standard errors


def test_the_load_generator_refuses_targets_that_do_not_match_the_columns(tmp_path):
    rates = tmp_path / "rates.csv"
    rates.write_text("1,2\n3,4\n")
    out = run_loadgen("--rates", str(rates), "--target", "http://127.0.0.1:9/")
    assert out.returncode == 2 and out.stderr.strip() == "loadgen: 1 targets for 2 columns of rates"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--scale", "inf"), "--scale must be positive and finite"),
        (("--scale", "1e9"), "a scaled rate of 3e+09/s exceeds --max-rate 5000"),
        (("--step-seconds", "1e6"), "a step would send over 1000000 requests"),
        (("--payload-bytes", "1e12"), "invalid int value"),
        (("--payload-bytes", str(1 << 30)), "--payload-bytes in [0, 1048576]"),
        (("--max-in-flight", "0"), "--max-in-flight must be positive"),
    ],
)
def test_the_load_generator_bounds_its_rate_and_scale(tmp_path, args, message):
    rates = tmp_path / "rates.csv"
    rates.write_text("1\n3\n")
    out = run_loadgen("--rates", str(rates), "--target", "http://127.0.0.1:9/", *args)
    assert out.returncode == 2 and message in out.stderr and out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1 or "usage:" in out.stderr


def test_the_load_generator_holds_at_most_max_in_flight_requests(tmp_path):
    """A proxy that accepts connections and never answers: only --max-in-flight requests are
    sent, the rest of the step counts as failed."""
    silent = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(silent.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    rates = tmp_path / "rates.csv"
    rates.write_text("20\n")
    try:
        out = run_loadgen(
            "--rates", str(rates), "--target", f"http://127.0.0.1:{silent.getsockname()[1]}/",
            "--step-seconds", "0.5", "--arrivals", "uniform", "--timeout", "1",
            "--max-in-flight", "3",
        )  # fmt: skip
    finally:
        silent.close()
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert (report["sent"], report["ok"], report["failed"]) == (10, 0, 10)
    assert len(held) == 3
    for conn in held:
        conn.close()


def test_the_paced_load_generator_follows_the_steps_it_is_given(functions, proxy, tmp_path):
    """With --paced, a step lasts from one line of input to the next: a step held open for 1.5
    windows of 0.5 s sends 1.5 windows of requests at its rate, and the end of input ends it."""
    program, chain = proxy
    write_chain(chain, [("firewall", functions["firewall"].address)])
    rates = tmp_path / "rates.csv"
    rates.write_text("20\n40\n")
    proc = subprocess.Popen(
        [
            sys.executable, str(IMAGES / "loadgen.py"), "--rates", str(rates),
            "--target", f"http://{program.address}/", "--step-seconds", "0.5",
            "--arrivals", "uniform", "--timeout", "1", "--paced",
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert json.loads(proc.stdout.readline()) == {"ready": True}
    proc.stdin.write("0\n")
    proc.stdin.flush()
    time.sleep(0.75)  # step 0 held open for 1.5 windows: 10 + 5 requests at 20/s
    proc.stdin.write("1\n")
    proc.stdin.flush()
    time.sleep(0.5)  # step 1 for one window: 20 requests at 40/s
    out, err = proc.communicate(timeout=30)  # the end of input ends step 1
    assert proc.returncode == 0, err
    reports = [json.loads(line) for line in out.splitlines()]
    assert [r["step"] for r in reports] == [0, 1]
    # within a few requests: the steps' edges are this process's sleeps on a busy machine
    assert reports[0]["sent"] == pytest.approx(15, abs=3) and reports[0]["ok"] == reports[0]["sent"]
    assert reports[1]["sent"] == pytest.approx(20, abs=4) and reports[1]["ok"] == reports[1]["sent"]
