"""Delete a run's objects (or every run's) by label, and wait until they are gone.

Used by `close()`, by the exit hooks a crashed or interrupted run still runs, and by
`scripts/cleanup.py` for leftovers of runs that could not clean up after themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from hmk8s.k8s import objects
from hmk8s.k8s.client import KINDS, ClusterClient, api_errors

log = logging.getLogger(__name__)


@dataclass
class CleanupReport:
    deleted: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    remaining: int = 0

    @property
    def clean(self) -> bool:
        return not self.errors and self.remaining == 0


def delete_labelled(
    clients: Sequence[ClusterClient],
    run_id: str | None,
    *,
    wait_s: float = 30.0,
    poll_s: float = 0.5,
) -> CleanupReport:
    """Delete every Deployment, Service and ConfigMap of `run_id` (all runs when None).

    Chains go first, so no proxy keeps pointing at an instance being deleted.
    """
    report = CleanupReport()
    selector = objects.run_selector(run_id)
    order = ("ConfigMap", "Service", "Deployment")
    for client in clients:
        for kind in order:
            try:
                for item in client.list(kind, selector):
                    if client.delete(kind, item.metadata.name):
                        key = f"{client.namespace}/{kind}"
                        report.deleted[key] = report.deleted.get(key, 0) + 1
            except api_errors() as exc:
                report.errors.append(f"{client.namespace} {kind}: {exc}")
    deadline = time.monotonic() + wait_s
    while True:
        report.remaining = count_labelled(clients, run_id)
        if report.remaining == 0 or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    if not report.clean:
        log.error(
            "cleanup of run %s incomplete: %d objects left, errors %s",
            run_id or "<all>",
            report.remaining,
            report.errors,
        )
    return report


def count_labelled(clients: Sequence[ClusterClient], run_id: str | None) -> int:
    """Objects of the run still listed, over every cluster and kind (-1 if a list failed)."""
    selector = objects.run_selector(run_id)
    total = 0
    for client in clients:
        for kind in KINDS:
            try:
                total += len(client.list(kind, selector))
            except api_errors():
                return -1
    return total


def runs_present(clients: Sequence[ClusterClient]) -> dict[str, int]:
    """How many objects each run has in these namespaces (by the run-id label)."""
    found: dict[str, int] = {}
    selector = objects.run_selector(None)
    for client in clients:
        for kind in KINDS:
            for item in client.list(kind, selector):
                run = (item.metadata.labels or {}).get(objects.RUN_ID, "")
                found[run] = found.get(run, 0) + 1
    return found
