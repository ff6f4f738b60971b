"""Delete leftovers of hmk8s runs from the clusters of a cluster map, by label.

    python scripts/cleanup.py --run-id run-1a2b3c4d      # one run's objects
    python scripts/cleanup.py --all                      # every object labelled managed-by=hmk8s
    python scripts/cleanup.py --all --dry-run            # only list them

Objects are found by `app.kubernetes.io/managed-by=hmk8s` (and `hmk8s.io/run-id`), in every
namespace of the cluster map (`--backend`, default configs/backend/k8s.yaml); `--envs N` looks
in the namespaces a run of N envs uses instead (`<namespace>-e0` ... `-e<N-1>` when N > 1, as
`scripts/setup_clusters.py --num-envs N` creates them).
"""

from __future__ import annotations

import argparse
import logging

from hmk8s.k8s import objects
from hmk8s.k8s.cleanup import delete_labelled
from hmk8s.k8s.client import KINDS, ClusterAccessError, connect
from hmk8s.k8s.config import ClusterMapError, env_cluster_maps, load_cluster_map
from hmk8s.shell.exit import EXIT_RUN_FAILED, refuse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run-id", help="delete the objects of this run")
    which.add_argument("--all", action="store_true", help="delete the objects of every run")
    parser.add_argument("--backend", help="cluster map YAML (default configs/backend/k8s.yaml)")
    parser.add_argument("--kubeconfig", help="kubeconfig to use instead of the map's")
    parser.add_argument(
        "--envs", type=int, default=1, help="the namespaces of a run of N envs (<namespace>-e<i>)"
    )
    parser.add_argument("--dry-run", action="store_true", help="list, do not delete")
    parser.add_argument("--wait", type=float, default=60.0, help="seconds to wait for deletion")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.envs < 1:
        return refuse("--envs must be at least 1")
    try:
        overrides = {"kubeconfig": args.kubeconfig} if args.kubeconfig else {}
        data = load_cluster_map(args.backend, **overrides).model_dump(mode="json")
        clients = [
            client
            for env_map in env_cluster_maps(data, args.envs)
            for client in connect(load_cluster_map(env_map), check_metrics=False)
        ]
    except (ClusterMapError, ClusterAccessError) as err:
        return refuse(err)
    run_id = None if args.all else args.run_id
    if args.dry_run:
        selector = objects.run_selector(run_id)
        for client in clients:
            for kind in KINDS:
                for item in client.list(kind, selector):
                    labels = item.metadata.labels or {}
                    print(
                        f"{client.namespace}\t{kind}\t{item.metadata.name}\t"
                        f"{labels.get(objects.RUN_ID, '')}"
                    )
        return 0
    report = delete_labelled(clients, run_id, wait_s=args.wait)
    for where, count in sorted(report.deleted.items()):
        print(f"deleted {count:3d} {where}")
    if not report.clean:
        return refuse(f"{report.remaining} objects left; {report.errors}", EXIT_RUN_FAILED)
    print(f"clean: no object of {'any run' if run_id is None else 'run ' + run_id} is left")
    return 0
