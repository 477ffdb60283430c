"""How long N POSTs to the dyups interface take over 1, 2, 4 ... kept-alive connections, or pipelined on one
(issue 22 item 3).

    nice -n 10 .venv/bin/python tests/benchmarks/bench_dyups_posts.py --upstreams 5000 --connections 1,2,4,8
    .venv/bin/python tests/benchmarks/bench_dyups_posts.py --upstreams 5000 --connections 1,pipelined

Per flavor of ``--flavors`` (default ``lua`` and, when ``$TENGINE_BIN`` is set, ``tengine``): one proxy
with 2 workers on loopback (tests/support/nginx_lua.py with the role's reference configuration, or
tests/support/tengine.py), started and stopped here; an empty interface. Then, per round and per
connection count C in turn (the order rotating from round to round): ``--upstreams`` upstreams of 3
servers POSTed by the watcher's own code (``DyupsClient`` on one ``KeepAliveTransport``, which keeps a
connection per thread in flight) from C threads, each thread taking the next name; every upstream is
then deleted (not timed) so that each count starts from an empty interface. ``pipelined`` in place of a
count: every POST through ``DyupsClient.apply_many`` (what the watcher's full resync does: HTTP/1.1
pipelining on one connection, module_utils/_http_pipeline.py). A 409 (busy) is retried by
the client as the watcher retries it; any other failure is counted. Printed: per flavor and C, the
median wall time of the POSTs over ``--rounds`` and the median of POSTs a second, and the load
average before and after (the machine may be shared: compare counts within one run).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient  # noqa: E402
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import DyupsError  # noqa: E402
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream  # noqa: E402
from ansible_collections.swallowkeeper.dyups.plugins.watcher.transport import KeepAliveTransport  # noqa: E402
from tests.support.nginx_lua import NginxLua  # noqa: E402
from tests.support.tengine import Tengine  # noqa: E402


def upstreams(count):
    return [build_upstream(f"Svc{index}", [f"127.0.{index // 250}.{index % 250 + 1}:{port}"
                                           for port in (8001, 8002, 8003)], []) for index in range(count)]


def post_all(api_url, items, threads):
    """Wall time of POSTing ``items`` from ``threads`` threads sharing one transport, or all of them pipelined
    (``threads`` "pipelined"); (seconds, failures)."""
    transport = KeepAliveTransport(max_idle=8 if threads == "pipelined" else max(8, threads))
    client = DyupsClient(api_url, transport, timeout=10)
    names = iter(items)
    lock = threading.Lock()
    failures = []

    def work():
        while True:
            with lock:
                upstream = next(names, None)
            if upstream is None:
                return
            try:
                client.update(upstream)
            except DyupsError as exc:
                failures.append(str(exc))

    started = time.perf_counter()
    if threads == "pipelined":
        failures += [str(outcome) for outcome in client.apply_many([(item.name, item) for item in items])
                     if outcome is not True]
    else:
        workers = [threading.Thread(target=work) for _unused in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    took = time.perf_counter() - started
    for upstream in items:
        try:
            client.delete(upstream.name)
        except DyupsError as exc:
            failures.append(str(exc))
    transport.close()
    return took, failures


def proxy(flavor):
    if flavor == "tengine":
        return Tengine(workers=2)
    return NginxLua(workers=2, dict_size="128m")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--upstreams", type=int, default=5000)
    parser.add_argument("--connections", default="1,2,4,8")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flavors", default=None, help="lua,tengine (default: tengine too when $TENGINE_BIN is set)")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    flavors = (args.flavors or ("lua,tengine" if os.environ.get("TENGINE_BIN") else "lua")).split(",")
    counts = [value if value == "pipelined" else int(value) for value in args.connections.split(",")]
    items = upstreams(args.upstreams)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_before": os.getloadavg(),
              "upstreams": args.upstreams, "results": {}}
    for flavor in flavors:
        with proxy(flavor) as nginx:
            times = {count: [] for count in counts}
            failed = {count: 0 for count in counts}
            for round_index in range(args.rounds):
                shift = round_index % len(counts)
                for count in itertools.chain(counts[shift:], counts[:shift]):
                    took, failures = post_all(nginx.api_url, items, count)
                    times[count].append(took)
                    failed[count] += len(failures)
            report["results"][flavor] = {
                str(count): {"median_s": round(statistics.median(times[count]), 3),
                             "posts_per_s": round(args.upstreams / statistics.median(times[count])),
                             "runs_s": [round(value, 3) for value in times[count]], "failures": failed[count]}
                for count in counts}
    report["load_after"] = os.getloadavg()
    print(f"{report['date']}, {args.upstreams} upstreams, {args.rounds} rounds; load average before "
          f"{' '.join(f'{value:.2f}' for value in report['load_before'])}, after "
          f"{' '.join(f'{value:.2f}' for value in report['load_after'])}")
    for flavor, results in report["results"].items():
        for count, figures in results.items():
            print(f"{flavor:8} {count:>9} connection(s): median {figures['median_s']} s "
                  f"({figures['posts_per_s']} POSTs/s), runs {figures['runs_s']}, failures {figures['failures']}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
