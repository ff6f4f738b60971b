"""Emulated Kubernetes clusters on loopback, for trying `backend=k8s` without a cluster.

    python scripts/emulate.py --usecase ml --out emulated        # then, in another shell:
    KUBECONFIG=emulated/kubeconfig python scripts/train.py usecase=ml backend=k8s \\
        num_envs=2 backend.step_seconds=1 backend.latency.source=prometheus

It serves the Kubernetes API (kmock's emulator) on 127.0.0.1, writes a kubeconfig with one
context per cluster (`hmk8s-0` ... `hmk8s-<K-1>`, each defaulting to the namespace of the same
name, as configs/backend/k8s.yaml expects), and runs the twin: every `--step-seconds` it reads
the Deployments and chain ConfigMaps the backend wrote, plays one step of the simulator's
dynamics, and writes back Deployment status, PodMetrics and what the proxies measure (answered
to probes and to Prometheus queries). Ctrl-C stops it.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from hmk8s.k8s.config import load_cluster_map
from hmk8s.k8s.emulated.emulator import FAULT_KINDS, EmulatedClusters
from hmk8s.k8s.emulated.twin import TwinPool
from hmk8s.usecases import load_usecase


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--usecase", default="ml", help="use case name or YAML (sets K)")
    parser.add_argument("--out", default="emulated", help="folder for the kubeconfig")
    parser.add_argument("--port", type=int, default=0, help="API port on 127.0.0.1 (0: any)")
    parser.add_argument(
        "--step-seconds", type=float, default=1.0, help="wall-clock seconds per twin step"
    )
    parser.add_argument("--start", default="empty", help="env.start the runs use")
    parser.add_argument("--api-latency", type=float, default=0.0, help="seconds per request")
    parser.add_argument(
        "--fault-rate", type=float, default=0.0, help="share of requests answered with a fault"
    )
    parser.add_argument(
        "--fault-kinds",
        default=",".join(FAULT_KINDS),
        help=f"comma-separated subset of {','.join(FAULT_KINDS)}",
    )
    parser.add_argument("--no-metrics", action="store_true", help="do not serve metrics.k8s.io")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    usecase = load_usecase(args.usecase)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clusters = EmulatedClusters(
        usecase.clusters.count,
        port=args.port or None,
        api_latency_s=args.api_latency,
        fault_rate=args.fault_rate,
        fault_kinds=args.fault_kinds.split(","),
        metrics_api=not args.no_metrics,
        seed=args.seed,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with clusters:
        kubeconfig = clusters.kubeconfig(out / "kubeconfig")
        cmap = load_cluster_map(None, **clusters.cluster_map_data(kubeconfig))
        pool = TwinPool(clusters, usecase, cmap, {"start": args.start})
        print(f"Kubernetes API emulator on {clusters.url}")
        print(f"kubeconfig: {kubeconfig} (contexts {', '.join(clusters.contexts)})")
        print(
            f"try: KUBECONFIG={kubeconfig} python scripts/train.py usecase={usecase.name} "
            "backend=k8s num_envs=2 backend.step_seconds=1 backend.latency.source=prometheus"
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


if __name__ == "__main__":
    sys.exit(main())
