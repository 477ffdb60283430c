"""How fast Consul's blocking queries return after a change, on a real throwaway agent.

    .venv/bin/python tests/benchmarks/consul_wakeup.py [--flips 30] [--json]

For each of ``--flips`` rounds: a BlockingQuery (the project's own, stdlib transport) is started
and left 0.2 s to reach the agent and block, then the change is made through the agent API and the
time from just before that request to the query's return is measured. Measured:

* ``health_state_any``: /v1/health/state/any, a TTL check flipped passing <-> critical;
* ``health_service``: /v1/health/service/NAME, the same flip;
* ``catalog_services_register``: /v1/catalog/services, a new instance registered;
* ``catalog_services_flip``: /v1/catalog/services, a check flipped (a few rounds, wait=2 s): it is
  expected NOT to wake (the wait runs out with the same index).

With ``--fill N`` the agent first holds N services of 3 instances with one check each, as
bench_watcher.py registers them (issue 22: what Consul's part of a flip is at 5 000 upstreams), and two
cases are added, both the watcher's health poll (``/v1/health/state/any?filter=Status != "passing"``,
whose answer lists only the failing checks while Consul filters all of them):

* ``health_failing_read``: one plain (non-blocking) read of it, nothing changing: what the filter over
  3 x N checks costs Consul per answer;
* ``health_failing_flip``: the blocking poll woken by one filled instance's check flipped;

and, to tell what is the filter's and what a registration's compare costs Consul (plain reads, nothing
changing): ``read /v1/health/state/critical`` (Consul's index of checks by status, no filter),
``read /v1/catalog/services``, ``read /v1/catalog/nodes``, ``read /v1/catalog/node-services/bench-n1``
(N instances); and ``health_critical_flip``: a blocking ``/v1/health/state/critical`` woken by a flip.

Prints median / p90 / max in milliseconds per case (``--json``: one JSON object). Timing is
reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import (  # noqa: E402
    BlockingQuery, ConsulClient)
from tests.support.http_stdlib import stdlib_transport  # noqa: E402
from tests.support.consul import ConsulAgent  # noqa: E402

SETTLE = 0.2


def one_round(query, change, wait):
    """Seconds from the change's start to the query's return, and whether the index changed."""
    box = {}

    def run():
        box["result"] = query.poll()
        box["end"] = time.perf_counter()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(SETTLE)
    start = time.perf_counter()
    change()
    thread.join(wait * 2 + 5)
    if thread.is_alive():
        raise RuntimeError("the blocking query did not return")
    return box["end"] - start, box["result"].changed


def summary(samples):
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def flip_rounds(query, set_check, flips):
    """Seconds from each flip (``set_check(number, status)``: critical, then passing) to ``query``'s wake-up."""
    query.poll()
    samples = []
    for number in range(flips):
        for status in ("critical", "passing"):
            elapsed, changed = one_round(query, lambda n=number, s=status: set_check(n, s), 30)
            if not changed:
                raise RuntimeError(f"{query.path} returned without a new index after a flip")
            samples.append(elapsed)
    return samples


def filled_cases(agent, size, flips):
    """The two ``--fill`` cases (see the module docstring)."""
    # a script of this directory (sys.path[0] when run as a script)
    from bench_watcher import CatalogWriter, populate  # pylint: disable=import-outside-toplevel
    writer = CatalogWriter(int(agent.url.rsplit(":", 1)[1]))
    started = time.perf_counter()
    populate(writer, size, (20101, 20102, 20103))
    filled = {"services": size, "checks": 3 * size, "fill_s": round(time.perf_counter() - started, 1)}
    client = ConsulClient(agent.url, stdlib_transport)
    params = {"filter": 'Status != "passing"'}
    samples = []
    for _unused in range(flips):
        started = time.perf_counter()
        client.get("/v1/health/state/any", params=params)
        samples.append(time.perf_counter() - started)
    report = {"filled": filled, "health_failing_read": summary(samples)}
    for path in ("/v1/health/state/critical", "/v1/catalog/services", "/v1/catalog/nodes",
                 "/v1/catalog/node-services/bench-n1"):
        samples = []
        for _unused in range(flips):
            started = time.perf_counter()
            client.get(path)
            samples.append(time.perf_counter() - started)
        report[f"read {path}"] = summary(samples)
    report["health_critical_flip"] = summary(flip_rounds(
        BlockingQuery(client, "/v1/health/state/critical", wait=30, min_interval=0),
        lambda number, status: writer.set_check("bench-n2", f"Svc{number * 11 % size}-1", status), flips))
    report["health_failing_flip"] = summary(flip_rounds(
        BlockingQuery(client, "/v1/health/state/any", params=params, wait=30, min_interval=0),
        lambda number, status: writer.set_check("bench-n3", f"Svc{number * 7 % size}-2", status), flips))
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flips", type=int, default=30)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--fill", type=int, default=0, help="services of 3 instances registered first")
    args = parser.parse_args(argv)
    report = {}
    with ConsulAgent() as agent:
        version = agent.get("/v1/agent/self")["Config"]["Version"]
        if args.fill:
            report.update(filled_cases(agent, args.fill, args.flips))
        agent.register("bench", "b1", port=18101)
        client = ConsulClient(agent.url, stdlib_transport)
        state = {"status": "passing"}

        def flip():
            state["status"] = "critical" if state["status"] == "passing" else "passing"
            agent.set_status("b1", state["status"], wait=False)

        for name, path in (("health_state_any", "/v1/health/state/any"),
                           ("health_service", "/v1/health/service/bench")):
            query = BlockingQuery(client, path, wait=30, min_interval=0)
            query.poll()
            samples = []
            for _unused in range(args.flips):
                elapsed, changed = one_round(query, flip, 30)
                if not changed:
                    raise RuntimeError(f"{path}: returned without a new index after a flip")
                samples.append(elapsed)
            report[name] = summary(samples)

        query = BlockingQuery(client, "/v1/catalog/services", wait=30, min_interval=0)
        query.poll()
        samples = []
        for number in range(args.flips):
            elapsed, changed = one_round(
                query, lambda n=number: agent.register(f"new{n}", f"n{n}", port=19000 + n, wait=False), 30)
            if not changed:
                raise RuntimeError("/v1/catalog/services: returned without a new index after a registration")
            samples.append(elapsed)
        report["catalog_services_register"] = summary(samples)

        query = BlockingQuery(client, "/v1/catalog/services", wait=2, min_interval=0)
        query.poll()
        woke = 0
        samples = []
        for _unused in range(3):
            elapsed, changed = one_round(query, flip, 2)
            woke += bool(changed)
            samples.append(elapsed)
        report["catalog_services_flip"] = dict(summary(samples), woke=woke, wait_s=2)
    report["consul_version"] = version
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"Consul {version}, {args.flips} changes per case (ms from the change request to the wake-up)")
        for name, row in report.items():
            if isinstance(row, dict):
                print(f"  {name:44s} " + "  ".join(f"{key}={value}" for key, value in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
