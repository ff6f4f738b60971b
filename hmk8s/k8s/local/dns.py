"""Cluster DNS for the local node: `<service>.<namespace>.svc.cluster.local` (and the
multi-cluster `...svc.clusterset.local`) -> the Service's ClusterIP, as CoreDNS answers it.

The proxies address their hops by these names. Only Services are answered; every other name is
NXDOMAIN, with no upstream, so no pod's lookup leaves the machine. The table is re-read from the
API server every `--refresh` seconds.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import DNSLogger, DNSServer

from hmk8s.k8s.client import new_api_client

ZONES = ("svc.cluster.local", "svc.clusterset.local")
TTL_S = 5
log = logging.getLogger(__name__)


def service_names(services: list) -> dict[str, str]:
    """Fully qualified names (lower case, no trailing dot) -> ClusterIP, for every Service that
    has one."""
    table = {}
    for svc in services:
        ip = svc.spec.cluster_ip
        if not ip or ip == "None":
            continue
        for zone in ZONES:
            table[f"{svc.metadata.name}.{svc.metadata.namespace}.{zone}"] = ip
    return table


class ServiceResolver:
    """dnslib resolver over a table of Service names that a thread keeps fresh."""

    def __init__(self) -> None:
        self.table: dict[str, str] = {}

    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip(".").lower()
        ip = self.table.get(name)
        if ip is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype in (QTYPE.A, QTYPE.ANY):
            reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=TTL_S))
        return reply


def refresh_forever(resolver: ServiceResolver, kubeconfig: Path, every_s: float) -> None:
    from kubernetes import client

    api = client.CoreV1Api(new_api_client(kubeconfig, "admin"))
    while True:
        try:
            resolver.table = service_names(api.list_service_for_all_namespaces().items)
        except Exception as err:  # keep answering from the last table; say why it is old
            log.warning("cannot list Services (%s); answering from the last table", err)
        time.sleep(every_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--address", required=True, help="the bridge's gateway address")
    parser.add_argument("--port", type=int, default=53)
    parser.add_argument("--refresh", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    resolver = ServiceResolver()
    threading.Thread(
        target=refresh_forever, args=(resolver, args.kubeconfig, args.refresh), daemon=True
    ).start()
    server = DNSServer(
        resolver,
        address=args.address,
        port=args.port,
        logger=DNSLogger("-request,-reply,-truncated"),
    )
    server.start()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
