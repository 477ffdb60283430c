"""A faithful re-creation of the watcher script this project replaces; a benchmark BASELINE only.

Never use it for anything else: it keeps the original's flaws on purpose, because the benchmarks
compare against what the operations team really ran (consul-facts.md, issue 5):

* it blocks on ``/v1/catalog/services?index=N&wait=180s``, which does not wake on health changes,
  and acts only when the index changed: an instance that turns critical stays in rotation until an
  unrelated registration moves the catalog;
* after a wake-up it reads every service with ``/v1/health/service/NAME?passing``;
* the server address is the NODE's address, not the service's;
* the upstream file is rewritten in place (open, write), not atomically;
* it posts bare ``server ip:port;`` lines (any ``keepalive``/``check`` is dropped), only for
  upstreams whose server list changed, and deletes nothing;
* on a Consul error it sleeps a fixed second and tries again (no backoff, no fail-static logic).

    python tests/benchmarks/original_approach.py --consul http://127.0.0.1:8500 \
        --dyups http://127.0.0.1:18882 --file /tmp/upstreams.conf [--wait 180]
"""

from __future__ import annotations

import argparse
import sys
import time

import requests


def upstream_name(service, tags):
    for tag in tags or []:
        if tag.startswith("gray=") and tag != "gray=default":
            return f"{service}_{tag[5:]}"
    return service


def read_state(session, consul, services):
    upstreams = {}
    for service in services:
        if service == "consul":
            continue
        entries = session.get(f"{consul}/v1/health/service/{service}", params={"passing": ""}, timeout=10).json()
        for entry in entries:
            name = upstream_name(service, entry["Service"].get("Tags"))
            upstreams.setdefault(name, []).append(f"{entry['Node']['Address']}:{entry['Service']['Port']}")
    return {name: sorted(servers) for name, servers in upstreams.items()}


def write_file(path, upstreams):
    with open(path, "w") as handle:  # in place, as the original did
        for name, servers in sorted(upstreams.items()):
            handle.write(f"upstream {name} {{\n")
            for server in servers:
                handle.write(f"    server {server};\n")
            handle.write("}\n")


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--consul", required=True)
    parser.add_argument("--dyups", required=True)
    parser.add_argument("--file", required=True)
    parser.add_argument("--wait", default="180s")
    args = parser.parse_args(argv)
    session = requests.Session()
    session.trust_env = False
    index = 0
    current = {}
    while True:
        try:
            response = session.get(f"{args.consul}/v1/catalog/services", params={"index": index, "wait": args.wait},
                                   timeout=400)
            new_index = int(response.headers.get("X-Consul-Index", "0"))
            if new_index == index:
                continue
            index = new_index
            upstreams = read_state(session, args.consul, response.json())
        except (requests.RequestException, ValueError) as exc:
            print(f"consul error: {exc}", file=sys.stderr, flush=True)
            time.sleep(1)
            continue
        write_file(args.file, upstreams)
        for name, servers in upstreams.items():
            if current.get(name) != servers:
                body = "".join(f"server {server};" for server in servers)
                session.post(f"{args.dyups}/upstream/{name}", data=body, timeout=5)
        current = upstreams
        print(f"synced index {index}: {len(upstreams)} upstreams", flush=True)


if __name__ == "__main__":
    sys.exit(main())
