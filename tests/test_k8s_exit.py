"""However a run ends (crash, Ctrl-C, SIGTERM), its objects are deleted; and
`scripts/cleanup.py` removes what is left of any run, by label. On a real API server, Ctrl-C and
SIGTERM are tested on whole training runs (tests/test_k8s_server.py), an exception in
tests/test_k8s_backend.py."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from served import SERVED, labelled, played

from hmk8s.k8s import objects
from hmk8s.k8s.client import ClusterClient, new_api_client

ROOT = Path(__file__).resolve().parents[1]
CHILD = textwrap.dedent(
    """
    import signal, sys, time, yaml
    from hmk8s.k8s.env import KubernetesClusterEnv
    # Ctrl-C as in a terminal, even when the test runner was started with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    env = KubernetesClusterEnv("ml", {"start": "empty"}, yaml.safe_load(open(sys.argv[1])))
    env.reset(seed=0)
    env.step(env.params.layout.encode(0, 2, 0, 2, 0))  # deploy firewall/small on cluster 0
    print("DEPLOYED", env.run_id, flush=True)
    if sys.argv[2] == "crash":
        raise RuntimeError("crash mid-episode")
    time.sleep(120)
    """
)


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory) -> dict[str, str]:
    """A persistent compilation cache, so only the first child process compiles."""
    folder = tmp_path_factory.mktemp("jax-cache")
    return {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": str(folder),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
    }


@pytest.fixture(scope="module")
def emu(request):
    """Parametrised indirectly with the kind of clusters (tests/served.py)."""
    with played(request, request.param, "ml") as e:
        yield e


def child_map(emu, tmp_path: Path) -> Path:
    """A cluster map for a separate process: wall-clock steps of 10 ms, quick give-ups."""
    data = emu.cmap.model_dump(mode="json")
    data.update(step_seconds=0.01, ready_timeout_s=2.0, poll_interval_s=0.05)
    data["api"].update(max_attempts=2, backoff_base_s=0.01)
    path = tmp_path / "backend.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize("emu", ["emulator"], indirect=True)
@pytest.mark.parametrize("how", ["crash", "sigint", "sigterm"])
def test_a_run_that_dies_still_deletes_its_objects(emu, tmp_path, jax_cache, how):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(child_map(emu, tmp_path)), how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("DEPLOYED"), proc.stderr.read()
        run_id = line.split()[1]
        if how != "crash":
            assert labelled(emu.clusters, run_id)
            proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    expected = {"crash": "crash mid-episode", "sigint": "KeyboardInterrupt", "sigterm": ""}[how]
    assert expected in err
    assert labelled(emu.clusters, run_id) == []


@pytest.mark.parametrize("emu", SERVED, indirect=True)
def test_cleanup_script_removes_leftovers_by_label(emu, tmp_path, capsys):
    cmap = emu.cmap
    ref = cmap.clusters[1]
    client = ClusterClient(new_api_client(emu.kubeconfig, ref.context), ref, cmap)
    client.apply(objects.deployment(cmap, emu.usecase, "old-b", 0, 0, 1), exists=False)
    client.apply(objects.chain_configmap(cmap, "old-b", 1, 1, ()), exists=False)
    client.apply(objects.service(cmap, "old-a", 2, 2), exists=False)
    backend = tmp_path / "backend.yaml"
    backend.write_text(yaml.safe_dump(cmap.model_dump(mode="json")))

    spec = importlib.util.spec_from_file_location("cleanup_script", ROOT / "scripts" / "cleanup.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def cleanup(*args: str) -> subprocess.CompletedProcess:
        """The script's main() in this process (the client still goes over HTTP)."""
        try:
            code = script.main(["--backend", str(backend), *args])
        except SystemExit as exit_:  # argparse refusing the arguments
            code = exit_.code
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    assert len(labelled(emu.clusters, "old-a")) == 1  # the Service
    assert len(labelled(emu.clusters, "old-b")) == 2  # the Deployment and the ConfigMap
    done = cleanup("--run-id", "old-a")
    assert done.returncode == 0, done.stderr
    assert labelled(emu.clusters, "old-a") == [] and len(labelled(emu.clusters, "old-b")) == 2
    listed = cleanup("--all", "--dry-run")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2
    assert len(labelled(emu.clusters, "old-b")) == 2
    done = cleanup("--all")
    assert done.returncode == 0 and "clean" in done.stdout
    assert labelled(emu.clusters) == []
    refused = cleanup()
    assert refused.returncode == 2 and "--run-id" in refused.stderr
    # a multi-env run's per-env namespaces: found with --envs
    ref_e1 = ref.model_copy(update={"namespace": f"{ref.namespace}-e1"})
    if hasattr(emu.clusters, "create_namespaces"):  # a real server has namespaces
        emu.clusters.create_namespaces([ref_e1.namespace])
    ClusterClient(client.api_client, ref_e1, cmap).apply(
        objects.service(cmap, "old-c", 0, 0), exists=False
    )
    assert cleanup("--all").returncode == 0 and len(labelled(emu.clusters, "old-c")) == 1
    done = cleanup("--all", "--envs", "2")
    assert done.returncode == 0 and labelled(emu.clusters) == []
