"""Bring a one-machine Kubernetes node up in a directory, and take it down leaving nothing.

`up(dir)` starts, in order: a bridge `hmk8s0` with the gateway address (the kubelet refuses a
loopback node IP), etcd and kube-apiserver (through the shared test scripts), containerd with a
config, root and state of its own, the kubelet, kube-proxy, kube-controller-manager (with the
HPA controller) and kube-scheduler, then the host services the node needs: cluster DNS for
`*.svc.cluster.local` and the PodMetrics writer (hmk8s), and a `socat` relay that serves the
loopback API server on the gateway address for pods that call it, as the `kubernetes` Service.
Every process id, and every host setting it changed, goes into `dir/node.json`; `down(dir)`
undoes exactly that and reports anything it could not remove.

Traffic never leaves the machine: pods get addresses on the bridge only, forwarding between the
bridge and any other interface is dropped by a chain of ours, and DNS answers cluster names
only (no upstream).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hmk8s.k8s.client import new_api_client
from hmk8s.k8s.emulated import apiserver

BRIDGE = "hmk8s0"
GATEWAY = "10.244.0.1"
POD_SUBNET = "10.244.0.0/24"
CLUSTER_CIDR = "10.244.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"  # start-test-cluster.sh's --service-cluster-ip-range
NODE_NAME = "hmk8s-node"
PAUSE_IMAGE = "registry.k8s.io/pause:3.4"
KUBELET_PORT = 10250
ISOLATION_CHAIN = "HMK8S-NODE-ISOLATION"
CNI_BIN = Path("/usr/lib/cni")
NODE_BINARIES = ("kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler")
DEBIAN_COMMANDS = {
    "containerd": "containerd",
    "ctr": "containerd",
    "runc": "runc",
    "iptables": "iptables",
    "ip": "iproute2",
    "etcd": "etcd-server",
    "umoci": "umoci",
    "conntrack": "conntrack",
    "socat": "socat",
}
SYSCTLS = ("net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables")
READY_TIMEOUT_S = 90.0
# The real HPA's sync period; kube-controller-manager's default is 15 s.
HPA_SYNC_PERIOD = "15s"
# Where pods reach kube-apiserver (which listens on loopback only): GATEWAY:API_RELAY_PORT,
# relayed to the loopback port; the `kubernetes` Service's Endpoints point here.
API_RELAY_PORT = 6443


class NodeError(RuntimeError):
    """The node cannot be brought up (or down) here; the message says why, on one line."""


def node_dir_default() -> Path:
    """`$HMK8S_KUBE_NODE_DIR`, else `../shared/kube-node` beside the repository."""
    return Path(
        os.environ.get("HMK8S_KUBE_NODE_DIR") or apiserver.REPO.parent / "shared" / "kube-node"
    )


@dataclass
class Layout:
    """Where everything of one node lives, below its directory."""

    root: Path

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.state = self.root / "node.json"
        self.bin = self.root / "bin"
        self.logs = self.root / "logs"
        self.control_plane = self.root / "control-plane"
        self.containerd = self.root / "containerd"
        self.socket = self.containerd / "containerd.sock"
        self.runc_root = self.containerd / "runc"
        self.cni = self.root / "cni"
        self.kubelet = self.root / "kubelet"
        self.kubeconfig = self.root / "kubeconfig"  # the admin's, what users act through


@dataclass
class NodeState:
    """What `up` started and changed, so that `down` undoes exactly that."""

    pids: dict[str, int] = field(default_factory=dict)
    sysctls: dict[str, str] = field(default_factory=dict)
    bridge: bool = False
    isolation: bool = False
    started: float = 0.0

    def save(self, layout: Layout) -> None:
        layout.state.write_text(json.dumps(self.__dict__, indent=1))

    @classmethod
    def load(cls, layout: Layout) -> NodeState:
        try:
            return cls(**json.loads(layout.state.read_text()))
        except FileNotFoundError:
            return cls()
        except (ValueError, TypeError) as err:
            raise NodeError(f"{layout.state}: not a node state file ({err})") from None


def preflight(node_files: Path) -> None:
    """Refuse, in one line, what would make `up` fail half-way."""
    if os.geteuid() != 0:
        raise NodeError("a local node needs root (it runs containerd, the kubelet and iptables)")
    if (
        not Path("/sys/fs/cgroup/cpu").is_dir()
        and not Path("/sys/fs/cgroup/cgroup.controllers").exists()
    ):
        raise NodeError("no cgroup hierarchy under /sys/fs/cgroup: the kubelet cannot run here")
    missing = [
        f"{c} (apt-get install {p})" for c, p in DEBIAN_COMMANDS.items() if not shutil.which(c)
    ]
    missing += [
        f"{CNI_BIN / p} (apt-get install containernetworking-plugins)"
        for p in ("bridge", "host-local", "loopback")
        if not (CNI_BIN / p).exists()
    ]
    if missing:
        raise NodeError("missing: " + ", ".join(missing))
    wanted = [f"{b}-1.20.2.gz" for b in NODE_BINARIES] + ["pause-3.4.oci.tar"]
    absent = [w for w in wanted if not (node_files / w).is_file()]
    if absent:
        raise NodeError(
            f"{node_files}: missing {', '.join(absent)} (set HMK8S_KUBE_NODE_DIR to the "
            "shared kube-node directory)"
        )
    if not apiserver.available():
        raise NodeError(f"no kube-apiserver scripts in {apiserver.scripts_dir()}")
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        raise NodeError(f"busy: network device {BRIDGE} exists (a node is up; run down first)")
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", KUBELET_PORT))
        except OSError:
            raise NodeError(f"busy: port {KUBELET_PORT} (the kubelet's) is in use") from None


def run(
    *cmd: str | Path, check: bool = True, timeout: float = 120, **kw
) -> subprocess.CompletedProcess:
    """A host command; a failure is a `NodeError` naming the command and its last error line."""
    done = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, check=False, timeout=timeout, **kw
    )
    if check and done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise NodeError(f"{' '.join(map(str, cmd[:4]))} failed: {last[0]}")
    return done


def unpack_binaries(layout: Layout, node_files: Path) -> None:
    layout.bin.mkdir(parents=True, exist_ok=True)
    for name in NODE_BINARIES:
        target = layout.bin / name
        if target.exists():
            continue
        with gzip.open(node_files / f"{name}-1.20.2.gz") as src, open(f"{target}.tmp", "wb") as out:
            shutil.copyfileobj(src, out)
        os.chmod(f"{target}.tmp", 0o755)
        os.replace(f"{target}.tmp", target)


def start_process(layout: Layout, state: NodeState, name: str, cmd: list[str | Path]) -> None:
    """Start a daemon in a session of its own, logging to `logs/<name>.log`."""
    layout.logs.mkdir(parents=True, exist_ok=True)
    with open(layout.logs / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(
            [str(c) for c in cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state.pids[name] = proc.pid
    state.save(layout)


def last_error(log: Path) -> str:
    """The last error line of a Kubernetes component's log (klog `E....`), else its last line."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return "no log"
    errors = [ln for ln in lines if re.match(r"^[EF]\d{4} ", ln)]
    return ((errors or lines or ["empty log"])[-1])[:300]


def network_up(state: NodeState, layout: Layout) -> None:
    """The bridge with the gateway address, the sysctls pods need, and our isolation chain."""
    run("ip", "link", "add", BRIDGE, "type", "bridge")
    state.bridge = True
    state.save(layout)
    run("ip", "addr", "add", f"{GATEWAY}/24", "dev", BRIDGE)
    run("ip", "link", "set", BRIDGE, "up")
    for key in SYSCTLS:
        path = Path("/proc/sys") / key
        state.sysctls[key] = path.read_text().strip()
        path.write_text("1")
    run("iptables", "-N", ISOLATION_CHAIN)
    state.isolation = True
    state.save(layout)
    run("iptables", "-A", ISOLATION_CHAIN, "-i", BRIDGE, "-o", BRIDGE, "-j", "RETURN")
    run("iptables", "-A", ISOLATION_CHAIN, "-i", BRIDGE, "-j", "DROP")
    run("iptables", "-A", ISOLATION_CHAIN, "-o", BRIDGE, "-j", "DROP")
    run("iptables", "-I", "FORWARD", "1", "-j", ISOLATION_CHAIN)


def write_configs(layout: Layout, server_kubeconfig: Path, reserved_cpu: str) -> None:
    """containerd's config, the CNI bridge, the kubelet's config, an empty resolv.conf."""
    layout.cni.mkdir(parents=True, exist_ok=True)
    (layout.cni / "10-hmk8s.conflist").write_text(
        json.dumps(
            {
                "cniVersion": "0.4.0",
                "name": "hmk8s",
                "plugins": [
                    {
                        "type": "bridge",
                        "bridge": BRIDGE,
                        "isGateway": True,
                        "ipMasq": False,
                        "hairpinMode": True,
                        "ipam": {
                            "type": "host-local",
                            "subnet": POD_SUBNET,
                            "rangeStart": "10.244.0.10",
                            "gateway": GATEWAY,
                            "dataDir": str(layout.root / "cni-ipam"),
                            # Services only: pods have no default route off the node
                            "routes": [{"dst": SERVICE_CIDR, "gw": GATEWAY}],
                        },
                    },
                    {"type": "loopback"},
                ],
            },
            indent=1,
        )
    )
    c = layout.containerd
    c.mkdir(parents=True, exist_ok=True)
    (c / "config.toml").write_text(
        f"""version = 2
root = "{c / "root"}"
state = "{c / "state"}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = "{layout.socket}"
[ttrpc]
  address = "{layout.socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{layout.cni}"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{layout.runc_root}"
"""
    )
    k = layout.kubelet
    k.mkdir(parents=True, exist_ok=True)
    (k / "resolv.conf").write_text("# pods resolve cluster names only\n")
    (k / "config.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "address": GATEWAY,
                "port": KUBELET_PORT,
                "readOnlyPort": 0,
                "healthzBindAddress": "127.0.0.1",
                "healthzPort": 0,
                "cgroupDriver": "cgroupfs",
                "failSwapOn": False,
                "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
                "authorization": {"mode": "AlwaysAllow"},
                "clusterDNS": [GATEWAY],
                "clusterDomain": "cluster.local",
                "resolvConf": str(k / "resolv.conf"),
                "systemReserved": {"cpu": reserved_cpu},
                "evictionHard": {
                    "memory.available": "100Mi",
                    "nodefs.available": "1%",
                    "imagefs.available": "1%",
                },
                "serializeImagePulls": False,
                # how soon a chain ConfigMap's edit reaches the proxy's volume (default 1 min)
                "syncFrequency": "5s",
                "nodeStatusReportFrequency": "10s",
                "volumeStatsAggPeriod": "0s",
            }
        )
    )
    shutil.copy(server_kubeconfig, layout.kubeconfig)


def wait_for(what: str, check, timeout_s: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error(log)})" if log else ""
            raise NodeError(f"{what} not within {timeout_s:.0f} s{detail}")
        time.sleep(0.5)


def containerd_up(layout: Layout, state: NodeState, node_files: Path) -> None:
    start_process(
        layout, state, "containerd", ["containerd", "--config", layout.containerd / "config.toml"]
    )
    wait_for(
        "containerd",
        lambda: ctr(layout, "version", check=False).returncode == 0,
        30,
        layout.logs / "containerd.log",
    )
    import_image(layout, node_files / "pause-3.4.oci.tar", PAUSE_IMAGE.rsplit(":", 1)[0])


def ctr(layout: Layout, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    return run("ctr", "--address", layout.socket, "-n", "k8s.io", *args, check=check)


def import_image(layout: Layout, archive: Path, repository: str) -> None:
    """Import an OCI layout tar as `repository:<its tag>` (a plain import would store
    `import-<date>:<tag>`, which the CRI cannot find)."""
    ctr(layout, "images", "import", "--base-name", repository, archive)


def kube_up(layout: Layout, state: NodeState, hpa_sync_period: str) -> None:
    """kubelet, kube-proxy, controller manager and scheduler, all acting as the admin user (a
    one-machine test node: the components share the admin token rather than one identity each)."""
    kubeconfig = layout.kubeconfig
    certs = layout.control_plane / "certs"
    # one replica each, serving nothing: no leader election, no ports
    controller_flags = [
        "--kubeconfig",
        kubeconfig,
        "--leader-elect=false",
        "--port=0",
        "--bind-address=127.0.0.1",
        "--secure-port=0",
    ]
    start_process(
        layout,
        state,
        "kubelet",
        [
            layout.bin / "kubelet",
            "--config",
            layout.kubelet / "config.yaml",
            "--kubeconfig",
            kubeconfig,
            "--container-runtime=remote",
            f"--container-runtime-endpoint=unix://{layout.socket}",
            "--runtime-request-timeout=5m",
            f"--root-dir={layout.kubelet / 'root'}",
            f"--cert-dir={layout.kubelet / 'pki'}",
            f"--node-ip={GATEWAY}",
            f"--hostname-override={NODE_NAME}",
            "--housekeeping-interval=2s",
            "--v=1",
        ],
    )
    start_process(
        layout,
        state,
        "kube-proxy",
        [
            layout.bin / "kube-proxy",
            "--kubeconfig",
            kubeconfig,
            "--proxy-mode=iptables",
            f"--cluster-cidr={CLUSTER_CIDR}",
            f"--hostname-override={NODE_NAME}",
            "--conntrack-max-per-core=0",
            "--metrics-bind-address=127.0.0.1:10249",
            "--healthz-bind-address=127.0.0.1:10256",
            "--v=1",
        ],
    )
    start_process(
        layout,
        state,
        "kube-controller-manager",
        [
            layout.bin / "kube-controller-manager",
            *controller_flags,
            f"--service-account-private-key-file={layout.control_plane / 'sa.key'}",
            f"--root-ca-file={certs / 'apiserver.crt'}",
            "--controllers=*,-nodeipam,-csrsigning",
            f"--horizontal-pod-autoscaler-sync-period={hpa_sync_period}",
            "--v=1",
        ],
    )
    start_process(
        layout,
        state,
        "kube-scheduler",
        [layout.bin / "kube-scheduler", *controller_flags, "--v=1"],
    )


def api_server_port(kubeconfig: Path) -> int:
    """The loopback port of the API server a kubeconfig names."""
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    return int(server.rsplit(":", 1)[1])


def host_services_up(layout: Layout, state: NodeState, metrics_interval_s: float) -> None:
    """Cluster DNS on the gateway and the PodMetrics writer (hmk8s processes), and the API
    server's relay onto the gateway with the `kubernetes` Service's Endpoints."""
    python = sys.executable
    start_process(
        layout,
        state,
        "apirelay",
        [
            "socat",
            f"TCP-LISTEN:{API_RELAY_PORT},bind={GATEWAY},fork,reuseaddr",
            f"TCP:127.0.0.1:{api_server_port(layout.kubeconfig)}",
        ],
    )
    endpoints = {
        "metadata": {"name": "kubernetes"},
        "subsets": [
            {
                "addresses": [{"ip": GATEWAY}],
                "ports": [{"name": "https", "port": API_RELAY_PORT, "protocol": "TCP"}],
            }
        ],
    }
    with core_api(layout) as api:  # the server runs with --endpoint-reconciler-type=none
        if api.list_namespaced_endpoints(
            "default", field_selector="metadata.name=kubernetes"
        ).items:
            api.replace_namespaced_endpoints("kubernetes", "default", endpoints)
        else:
            api.create_namespaced_endpoints("default", endpoints)
    start_process(
        layout,
        state,
        "dns",
        [
            python,
            "-m",
            "hmk8s.k8s.local.dns",
            "--kubeconfig",
            layout.kubeconfig,
            "--address",
            GATEWAY,
        ],
    )
    start_process(
        layout,
        state,
        "podmetrics",
        [
            python,
            "-m",
            "hmk8s.k8s.local.podmetrics",
            "--kubeconfig",
            layout.kubeconfig,
            "--node",
            NODE_NAME,
            "--interval",
            str(metrics_interval_s),
        ],
    )


@contextlib.contextmanager
def core_api(layout: Layout) -> Iterator[Any]:
    """The admin's CoreV1Api on the node's API server, closed after use."""
    from kubernetes import client

    with new_api_client(layout.kubeconfig, "admin") as api_client:
        yield client.CoreV1Api(api_client)


def node_ready(layout: Layout) -> bool:
    from kubernetes.client.exceptions import ApiException

    try:
        with core_api(layout) as api:
            conditions = api.read_node(NODE_NAME).status.conditions or []
    except ApiException:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def up(
    root: Path,
    *,
    node_files: Path | None = None,
    reserved_cpu: str = "100m",
    hpa_sync_period: str = HPA_SYNC_PERIOD,
    metrics_interval_s: float = 2.0,
    ready_timeout_s: float = READY_TIMEOUT_S,
) -> Layout:
    """Start everything; on any failure take down what was started, then raise `NodeError`."""
    node_files = node_files or node_dir_default()
    preflight(node_files)
    layout = Layout(root)
    if layout.state.exists():
        raise NodeError(f"{layout.state} exists: a node was started here (run down first)")
    layout.root.mkdir(parents=True, exist_ok=True)
    state = NodeState(started=time.time())
    state.save(layout)
    try:
        unpack_binaries(layout, node_files)
        network_up(state, layout)
        try:
            server = apiserver.start(layout.control_plane)
        except (RuntimeError, apiserver.ApiServerUnavailable) as err:
            last = str(err).strip().splitlines()[-1:] or ["no output"]
            raise NodeError(
                f"kube-apiserver did not start ({last[0][:200]}; see "
                f"{layout.control_plane / 'apiserver.log'})"
            ) from None
        write_configs(layout, server.kubeconfig, reserved_cpu)
        containerd_up(layout, state, node_files)
        kube_up(layout, state, hpa_sync_period)
        host_services_up(layout, state, metrics_interval_s)
        wait_for(
            f"node {NODE_NAME} Ready",
            lambda: node_ready(layout),
            ready_timeout_s,
            layout.logs / "kubelet.log",
        )
        dead = [n for n, pid in state.pids.items() if not alive(pid)]
        if dead:
            raise NodeError(f"{dead[0]} exited: {last_error(layout.logs / f'{dead[0]}.log')}")
    except BaseException as err:
        left = down(layout.root)
        if left and isinstance(err, NodeError):
            raise NodeError(f"{err}; and left behind: {', '.join(left)}") from None
        raise
    return layout


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_pid(pid: int, grace_s: float = 10.0) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while alive(pid) and time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def shim_pids(layout: Layout) -> list[int]:
    """containerd-shim processes that serve this node's containerd (by its socket path)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and b"containerd-shim" in cmdline[0] and str(layout.socket).encode() in cmdline:
            found.append(int(proc.name))
    return found


def remove_containers(layout: Layout) -> None:
    """Kill every container runc holds for this node, then the shims."""
    root = layout.runc_root / "k8s.io"
    if root.is_dir():
        listed = run("runc", "--root", root, "list", "-q", check=False).stdout.split()
        for cid in listed:
            run("runc", "--root", root, "kill", cid, "KILL", check=False)
        for cid in listed:
            for _ in range(20):
                if (
                    run("runc", "--root", root, "delete", "--force", cid, check=False).returncode
                    == 0
                ):
                    break
                time.sleep(0.1)
    for pid in shim_pids(layout):
        stop_pid(pid, grace_s=2)


def our_mounts(layout: Layout) -> list[str]:
    """Mount points below the node's directory and the network namespaces of its pods."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(str(layout.root) + "/") or re.match(r"^/(var/)?run/netns/cni-", point):
            points.append(point)
    return sorted(set(points), key=len, reverse=True)


def our_netns(state: NodeState) -> list[Path]:
    base = Path("/run/netns")
    if not base.is_dir():
        return []
    return [p for p in base.glob("cni-*") if p.stat().st_mtime >= state.started - 1]


def kube_chains() -> dict[str, list[str]]:
    """KUBE-* chains (kube-proxy's, the kubelet's) per table."""
    chains: dict[str, list[str]] = {}
    for table in ("nat", "filter", "mangle"):
        out = run("iptables-save", "-t", table, check=False).stdout
        chains[table] = re.findall(r"^:(KUBE-[A-Z0-9-]+|HMK8S-[A-Z0-9-]+)", out, re.M)
    return chains


def flush_iptables() -> None:
    """Remove every jump to, rule of and chain named KUBE-* or HMK8S-* (nat, filter, mangle)."""
    for table, chains in kube_chains().items():
        rules = run("iptables-save", "-t", table, check=False).stdout.splitlines()
        for rule in rules:
            if rule.startswith("-A ") and re.search(r"-j (KUBE-|HMK8S-)", rule):
                chain = rule.split()[1]
                if not re.match(r"(KUBE-|HMK8S-)", chain):
                    run("iptables", "-t", table, "-D", *shlex.split(rule)[1:], check=False)
        for chain in chains:
            run("iptables", "-t", table, "-F", chain, check=False)
        for chain in chains:
            run("iptables", "-t", table, "-X", chain, check=False)


def kubepods_cgroups() -> list[Path]:
    found = []
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if top.is_dir():
            found += sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True)
            found.append(top)
    return [p for p in found if p.is_dir()]


def down(root: Path) -> list[str]:
    """Stop and remove everything `up` made in `root`; returns what is left (empty when clean)."""
    layout = Layout(root)
    state = NodeState.load(layout)
    order = [
        "podmetrics",
        "dns",
        "apirelay",
        "kubelet",
        "kube-proxy",
        "kube-scheduler",
        "kube-controller-manager",
    ]
    for name in order:
        if name in state.pids:
            stop_pid(state.pids[name])
    remove_containers(layout)
    if "containerd" in state.pids:
        stop_pid(state.pids["containerd"])
    for point in our_mounts(layout):
        run("umount", "-l", point, check=False)
    for ns in our_netns(state):
        run("ip", "netns", "delete", ns.name, check=False)
    for group in kubepods_cgroups():
        with contextlib.suppress(OSError):
            group.rmdir()
    apiserver.stop(layout.control_plane)
    flush_iptables()
    if state.bridge and Path(f"/sys/class/net/{BRIDGE}").exists():
        run("ip", "link", "delete", BRIDGE, check=False)
    for key, value in state.sysctls.items():
        (Path("/proc/sys") / key).write_text(value)
    left = leftovers(layout, state)
    if not left:
        layout.state.unlink(missing_ok=True)
    return left


def leftovers(layout: Layout, state: NodeState) -> list[str]:
    """Anything of this node still on the machine: processes, mounts, devices, rules."""
    left = [f"process {n} ({pid})" for n, pid in state.pids.items() if alive(pid)]
    left += [f"process containerd-shim ({pid})" for pid in shim_pids(layout)]
    left += [f"mount {p}" for p in our_mounts(layout)]
    left += [f"network namespace {p.name}" for p in our_netns(state)]
    if Path(f"/sys/class/net/{BRIDGE}").exists():
        left.append(f"network device {BRIDGE}")
    left += [
        f"veth {d.name}"
        for d in Path("/sys/class/net").glob("veth*")
        if (d / "master").exists() and (d / "master").resolve().name == BRIDGE
    ]
    for table, chains in kube_chains().items():
        left += [f"iptables {table} chain {c}" for c in chains]
    left += [f"cgroup {p}" for p in kubepods_cgroups()]
    return left
