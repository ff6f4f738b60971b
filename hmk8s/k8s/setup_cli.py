"""Set clusters up for a `backend=k8s` run (namespaces, ServiceAccounts, Roles, proxies), or tear
that down.

    python scripts/setup_clusters.py --num-envs 4 --write-kubeconfig run.kubeconfig
    python scripts/setup_clusters.py --num-envs 4 --dry-run        # only show the plan
    python scripts/setup_clusters.py teardown --num-envs 4

It acts with admin rights from `--kubeconfig` (default: the map's kubeconfig, else
$KUBECONFIG, else ~/.kube/config), through the map's contexts or `--admin-context` for every
cluster; every namespace of the run (`<namespace>-e<i>` with several envs) gets
deploy/rbac.yaml's ServiceAccount, Role and RoleBinding and the proxies homed there.
`--write-kubeconfig` writes contexts named as in the map that act as those ServiceAccounts
(tokens from the TokenRequest API, valid `--token-hours`); train with
`backend.kubeconfig=<that file>`. Running it again changes nothing.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import yaml

from hmk8s.domain.usecases import UseCaseError, load_usecase
from hmk8s.k8s import setup
from hmk8s.k8s.client import ClusterAccessError, api_errors, kubeconfig_path
from hmk8s.k8s.config import CONFIG_PATH, ClusterMapError
from hmk8s.shell.exit import EXIT_RUN_FAILED, refuse


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", nargs="?", choices=["setup", "teardown"], default="setup")
    parser.add_argument("--backend", default=str(CONFIG_PATH), help="backend config YAML")
    parser.add_argument("--usecase", default="ml", help="use case name or YAML (proxies, K)")
    parser.add_argument("--num-envs", type=int, default=1, help="envs of the run (num_envs)")
    parser.add_argument("--kubeconfig", help="admin kubeconfig (default: the map's)")
    parser.add_argument("--admin-context", help="admin context for every cluster of the map")
    parser.add_argument("--write-kubeconfig", help="write the ServiceAccounts' kubeconfig here")
    parser.add_argument("--token-hours", type=float, default=24.0, help="token lifetime")
    parser.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    if args.num_envs < 1:
        return refuse("--num-envs must be at least 1")
    try:
        backend = yaml.safe_load(Path(args.backend).read_text())
        usecase = load_usecase(args.usecase)
        plan = setup.plan(backend, usecase, args.num_envs)
    except OSError as err:
        return refuse(f"{args.backend}: cannot read ({err.strerror})")
    except (ClusterMapError, UseCaseError, yaml.YAMLError) as err:
        return refuse(err)
    if args.dry_run:
        for item in plan.namespaces:
            for doc in setup.manifests(item, plan.cmap, plan.usecase):
                print(f"would {args.action} {setup.describe(doc)}")
        print("\n".join(setup.env_lines(plan)))
        return 0
    path = Path(args.kubeconfig).expanduser() if args.kubeconfig else kubeconfig_path(plan.cmap)
    admin = setup.Admin(path, lambda context: args.admin_context or context)
    try:
        if args.action == "teardown":
            print("\n".join(setup.teardown(admin, plan)))
            return 0
        print("\n".join(setup.setup(admin, plan)))
        if args.write_kubeconfig:
            seconds = int(args.token_hours * 3600)
            doc = setup.kubeconfig(admin, plan, seconds)
            out = Path(args.write_kubeconfig)
            out.write_text(yaml.safe_dump(doc, sort_keys=False))
            os.chmod(out, 0o600)
            print(f"kubeconfig {out}: contexts {', '.join(c['name'] for c in doc['contexts'])}")
        print("\n".join(setup.env_lines(plan)))
    except ClusterAccessError as err:
        return refuse(err)
    except api_errors() as err:
        return refuse(f"{args.action} failed: {_reason(err)}", EXIT_RUN_FAILED)
    finally:
        admin.close()
    return 0


def _reason(err: BaseException) -> str:
    status = getattr(err, "status", None)
    reason = getattr(err, "reason", None)
    return f"HTTP {status} {reason}" if status else str(err)
