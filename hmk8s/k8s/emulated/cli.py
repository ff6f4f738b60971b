"""Clusters on loopback for trying `backend=k8s` without a cluster: a real API server where one is
available, else kmock's emulator.

    python scripts/emulate.py --usecase ml --out emulated --num-envs 2   # prints what to run next

With `--api server` (the default where `../shared/kube-apiserver` exists, or
$HMK8S_KUBE_APISERVER_DIR) it starts kube-apiserver and etcd on 127.0.0.1, sets up the
namespaces of a `--num-envs` run as scripts/setup_clusters.py does (ServiceAccounts, Roles,
proxies) and writes `<out>/kubeconfig` with the ServiceAccounts' contexts `hmk8s-0` ...
`hmk8s-<K-1>` and `<out>/admin.kubeconfig`; kubectl works against it as against any cluster.
With `--api kmock` (the fallback, and the only one that injects `--api-latency`,
`--fault-rate`, `--fault-kinds`, `--no-metrics`) it serves kmock's emulator instead (any
namespace; kubectl mostly fails on it). Either way the twin plays the clusters: every
`--step-seconds` it reads the Deployments and chain ConfigMaps the backend wrote, plays one
step of the simulator's dynamics, and writes back Deployment status, PodMetrics and what the
proxies measure (answered to Prometheus queries). Ctrl-C stops it all.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from hmk8s.domain.usecases import UseCase, load_usecase
from hmk8s.k8s import setup
from hmk8s.k8s.config import CONFIG_PATH, load_cluster_map
from hmk8s.k8s.emulated import apiserver
from hmk8s.k8s.emulated.apiclusters import ApiClusters
from hmk8s.k8s.emulated.twin import Clusters, TwinPool
from hmk8s.shell.exit import refuse

FAULT_OPTIONS = ("api_latency", "fault_rate", "no_metrics")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--usecase", default="ml", help="use case name or YAML (sets K)")
    parser.add_argument("--out", default="emulated", help="folder for the kubeconfig")
    parser.add_argument(
        "--api",
        choices=["auto", "server", "kmock"],
        default="auto",
        help="auto: a real API server when available (and no fault is asked for), else kmock",
    )
    parser.add_argument("--num-envs", type=int, default=2, help="envs of the run to set up")
    parser.add_argument("--port", type=int, default=0, help="kmock's port on 127.0.0.1")
    parser.add_argument(
        "--step-seconds", type=float, default=1.0, help="wall-clock seconds per twin step"
    )
    parser.add_argument("--start", default="empty", help="env.start the runs use")
    parser.add_argument("--api-latency", type=float, default=0.0, help="kmock: s per request")
    parser.add_argument(
        "--fault-rate", type=float, default=0.0, help="kmock: share of requests with a fault"
    )
    parser.add_argument(
        "--fault-kinds", help="kmock: comma-separated subset of 500,429,409,timeout (all)"
    )
    parser.add_argument("--no-metrics", action="store_true", help="kmock: no metrics.k8s.io")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    faults = any(getattr(args, name) for name in FAULT_OPTIONS)
    api = args.api
    if api == "auto":
        api = "server" if apiserver.available() and not faults else "kmock"
    if api == "server" and faults:
        return refuse("fault injection needs --api kmock")
    if api == "server" and not apiserver.available():
        return refuse(f"no kube-apiserver scripts in {apiserver.scripts_dir()}")
    if args.num_envs < 1:
        return refuse("--num-envs must be at least 1")

    usecase = load_usecase(args.usecase)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    served = _on_server(args, usecase, out) if api == "server" else _on_kmock(args, usecase, out)
    with served as (clusters, train_args):
        pool = TwinPool(clusters, usecase, load_cluster_map(), {"start": args.start})
        print(
            f"try: KUBECONFIG={out / 'kubeconfig'} python scripts/train.py "
            f"usecase={usecase.name} backend=k8s num_envs={args.num_envs} env.start={args.start} "
            f"backend.step_seconds={args.step_seconds} {train_args}"
        )
        sys.stdout.flush()
        runner = threading.Thread(
            target=pool.run, args=(args.step_seconds, stop, args.seed), name="twin", daemon=True
        )
        runner.start()
        try:
            while runner.is_alive() and not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            stop.set()
        runner.join(10)
    return 0


@contextmanager
def _on_server(
    args: argparse.Namespace, usecase: UseCase, out: Path
) -> Iterator[tuple[Clusters, str]]:
    """kube-apiserver in `<out>/apiserver`, set up for the run; the twin's Prometheus URL."""
    with apiserver.running(out / "apiserver") as server:
        admin = setup.Admin(server.kubeconfig, lambda _: server.context)
        backend = yaml.safe_load(CONFIG_PATH.read_text())
        plan = setup.plan(backend, usecase, args.num_envs)
        setup.setup(admin, plan)
        kubeconfig = setup.kubeconfig(admin, plan, 24 * 3600)
        admin.close()
        (out / "kubeconfig").write_text(yaml.safe_dump(kubeconfig, sort_keys=False))
        (out / "admin.kubeconfig").write_text(server.kubeconfig.read_text())
        base = [c.namespace for c in plan.cmap.clusters]
        with ApiClusters(server.kubeconfig, server.context, base) as clusters:
            print(f"kube-apiserver: admin kubeconfig {out / 'admin.kubeconfig'}")
            print("\n".join(setup.env_lines(plan)))
            print(f"watch: KUBECONFIG={out / 'admin.kubeconfig'} kubectl get deploy,svc,cm -A")
            yield (
                clusters,
                (
                    "backend.latency.source=prometheus "
                    f"backend.latency.prometheus_url={clusters.prometheus_url}"
                ),
            )


@contextmanager
def _on_kmock(
    args: argparse.Namespace, usecase: UseCase, out: Path
) -> Iterator[tuple[Clusters, str]]:
    from hmk8s.k8s.emulated.emulator import FAULT_KINDS, EmulatedClusters

    clusters = EmulatedClusters(
        usecase.clusters.count,
        port=args.port or None,
        api_latency_s=args.api_latency,
        fault_rate=args.fault_rate,
        fault_kinds=args.fault_kinds.split(",") if args.fault_kinds else FAULT_KINDS,
        metrics_api=not args.no_metrics,
        seed=args.seed,
    )
    with clusters:
        kubeconfig = clusters.kubeconfig(out / "kubeconfig")
        print(f"Kubernetes API emulator (kmock) on {clusters.url}")
        print(f"kubeconfig: {kubeconfig} (contexts {', '.join(clusters.contexts)})")
        yield clusters, "backend.latency.source=prometheus"


def entry() -> None:
    """``hmk8s-emulate`` and ``scripts/emulate.py``."""
    sys.exit(main())
