"""What a registration costs the watcher's CPU: the compare after a catalog change (issue 18, 22).

    .venv/bin/python tests/benchmarks/bench_catalog_compare.py --before /path/to/an/older/checkout

After every new ``/v1/catalog/services`` index the watcher compares the instances of every selected
service with its cache, read node by node (plugins/watcher/consul_source.py, ``_fold_catalog``). This
script times that step alone, in this process: ``--services`` services of ``--per-service`` instances
spread over ``--nodes`` nodes, answered by a stand-in transport from prepared bytes (not Consul: the
point is the watcher's own CPU, without Consul's or the network's time, which bench_watcher.py measures
end to end against a real agent). Each registration adds one instance of one service on the next node,
so one node answer changes; timed: ``ConsulSource.apply_events`` of the catalog event, which includes
reading that service again (``/v1/health/service``). With ``--before ROOT`` the same run is repeated,
in a child process, on the checkout at ROOT (an older commit), the two alternating ``--repeat`` times.

Printed per code: the full read's time and the median and max of the registrations' compare in ms,
and the load average before and after (the machine may be shared: compare the two within one run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def measure(root: Path, services: int, per_service: int, node_count: int, registrations: int) -> dict:
    sys.path.insert(0, str(root))
    from tests.support.collection import ensure_importable  # pylint: disable=import-outside-toplevel
    ensure_importable()
    # pylint: disable=import-outside-toplevel
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import ConsulClient
    from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import ConsulSource
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics

    nodes = {f"node-{i}": f"10.0.{i // 250}.{i % 250 + 1}" for i in range(node_count)}
    instances = {}
    for number in range(services * per_service):
        node, service = f"node-{number % node_count}", f"svc{number // per_service}"
        instances[(node, f"{service}-{number % per_service}")] = {
            "ID": f"{service}-{number % per_service}", "Service": service, "Tags": [],
            "Address": f"10.1.{number // 250 % 250}.{number % 250 + 1}", "Port": 8000 + number % per_service,
            "Meta": {}, "CreateIndex": 5, "ModifyIndex": 5}
    state = {"index": 100}

    def node_body(node):
        return json.dumps({"Node": {"Node": node, "Address": nodes[node]},
                           "Services": [item for (owner, _id), item in sorted(instances.items()) if owner == node]}).encode()

    bodies = {node: node_body(node) for node in nodes}
    catalog = json.dumps({"consul": [], **{f"svc{i}": [] for i in range(services)}}).encode()
    checks = json.dumps([{"Node": node, "CheckID": "c", "ServiceID": item["ID"], "ServiceName": item["Service"],
                          "Status": "passing"} for (node, _id), item in instances.items()]).encode()
    consul_entry = json.dumps([{"Node": {"Node": "server", "Address": "127.0.0.9"},
                                "Service": {"ID": "consul", "Service": "consul", "Port": 8300}, "Checks": []}]).encode()

    def health(name):
        return json.dumps([{"Node": {"Node": node, "Address": nodes[node]}, "Service": item,
                            "Checks": [{"Node": node, "CheckID": "c", "ServiceID": item["ID"], "Status": "passing"}]}
                           for (node, _id), item in instances.items() if item["Service"] == name]).encode()

    def transport(method, url, body, timeout, extra_headers=None):  # pylint: disable=unused-argument
        path = url.split("?")[0].split("127.0.0.1:1", 1)[1]
        headers = {"x-consul-index": str(state["index"])}
        if path == "/v1/catalog/services":
            return 200, catalog, headers
        if path == "/v1/catalog/nodes":
            return 200, json.dumps([{"Node": node, "Address": address} for node, address in nodes.items()]).encode(), headers
        if path.startswith("/v1/catalog/node-services/"):
            return 200, bodies[path.rsplit("/", 1)[1]], headers
        if path.startswith("/v1/health/state/any"):
            return 200, checks, headers
        if path == "/v1/health/service/consul":
            return 200, consul_entry, headers
        if path.startswith("/v1/health/service/"):
            return 200, health(path.rsplit("/", 1)[1]), headers
        return 404, b"", {}

    settings = watcher_settings.build({"consul_url": "http://127.0.0.1:1", "status_listen": "",
                                       "upstream_file": "/nonexistent/upstreams.conf",
                                       "allowed_networks": ["10.0.0.0/8"]})
    source = ConsulSource(settings, Metrics())
    source.client = ConsulClient(settings.consul_url, transport, object_hook=source.client.object_hook)
    started = time.perf_counter()
    source.refresh_all()
    full_read = time.perf_counter() - started
    times = []
    for step in range(registrations):
        node, service = f"node-{step % node_count}", f"svc{step % services}"
        instance_id = f"new-{step}"
        instances[(node, instance_id)] = {"ID": instance_id, "Service": service, "Tags": [],
                                          "Address": f"10.2.{step // 250}.{step % 250 + 1}", "Port": 9000,
                                          "Meta": {}, "CreateIndex": 6 + step, "ModifyIndex": 6 + step}
        bodies[node] = node_body(node)
        catalog_answer = json.loads(catalog)
        state["index"] += 1
        started = time.perf_counter()
        source.apply_events([("catalog", catalog_answer, state["index"], None)])
        times.append(time.perf_counter() - started)
        if (node, instance_id) not in source.entries.get(service, {}):
            raise SystemExit(f"registration {step} not in the cache: the benchmark is broken")
    return {"full_read_s": full_read, "median_ms": statistics.median(times) * 1000, "max_ms": max(times) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--services", type=int, default=5000)
    parser.add_argument("--per-service", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--registrations", type=int, default=20)
    parser.add_argument("--before", help="root of an older checkout to compare with, in the same run")
    parser.add_argument("--repeat", type=int, default=2, help="alternations of the two codes (with --before)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = (args.services, args.per_service, args.nodes, args.registrations)
    if args.child:
        print(json.dumps(measure(Path(args.child), *sizes)))
        return 0
    roots = {"this checkout": ROOT}
    if args.before:
        roots[f"before ({args.before})"] = Path(args.before).resolve()
    print(f"{args.services} services x {args.per_service} on {args.nodes} nodes, {args.registrations} registrations; "
          f"load before {os.getloadavg()[0]:.2f}")
    results = {name: [] for name in roots}
    for _round in range(args.repeat if args.before else 1):
        for name, root in roots.items():
            out = subprocess.run([sys.executable, __file__, "--child", str(root), "--services", str(args.services),
                                  "--per-service", str(args.per_service), "--nodes", str(args.nodes),
                                  "--registrations", str(args.registrations)],
                                 check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(out.strip().splitlines()[-1]))
    for name, runs in results.items():
        print(f"{name}: full read {statistics.median(r['full_read_s'] for r in runs):.3f} s, registration compare "
              f"median {statistics.median(r['median_ms'] for r in runs):.1f} ms, "
              f"max {max(r['max_ms'] for r in runs):.1f} ms ({len(runs)} run(s))")
    print(f"load after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
