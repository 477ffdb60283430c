"""What the watcher holds in memory at N services of 3 instances, in process, against a real Consul.

    .venv/bin/python tests/benchmarks/bench_watcher_memory.py                       # 5 000 services, this checkout
    .venv/bin/python tests/benchmarks/bench_watcher_memory.py --before-root ../main --repeat 3 --json out.json

Set-up (all on loopback, started and stopped here): a Consul ``-dev`` agent (tests/support/consul.py)
filled as tests/benchmarks/bench_watcher.py fills it: N services ``SvcI``, 3 instances each on the
catalog nodes ``bench-n1..3``, one passing check each. Then, for each checkout measured (this one,
and ``--before-root`` when given: another checkout, e.g. a git worktree of main), a fresh Python
process imports that checkout's watcher and runs its real ``Daemon`` in a thread, as the watcher's
command does (``tune_allocator`` first; the daemon's full read, sync, long polls and event folding,
the upstream file written to a temporary directory). Only the dyups interface is a stand-in: it
accepts every POST and DELETE and answers ``/detail`` with what the watcher applied (so the drift
check finds nothing); no nginx runs, and its transient parsing is not part of the figures.

Each process, in order: the full read and first sync (waits until the watcher applied N upstreams,
then 1 s); ``--flips`` health flips (the check of ``SvcK-2`` critical, wait until the watcher
applied two servers for ``SvcK``, back to passing, wait for three); ``--flips`` scale-outs (a fourth
instance of ``SvcK`` on node ``bench-n4``, wait for four servers, deregistered, wait for three);
2 s idle. Reported (MB): ``rss_start`` (after the imports, before the daemon), ``rss_synced``,
``rss_after`` (after flips and scale-outs; bench_watcher.py's ``ours_rss_mb``) and ``hwm`` (VmHWM:
the peak RSS, set by the full read). Processes alternate between the checkouts, ``--repeat`` times;
medians are printed.

Then once per checkout, a process with ``tracemalloc`` on (slower; its RSS is not reported): the
Python heap after the flips, the top allocations grouped by file and by file:line, the traced peak
(the full read), and the live objects the cyclic collector tracks, grouped by type (count and
shallow size; strings and ints are not tracked, the by-line table shows them).
"""

from __future__ import annotations

import argparse
import gc
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODES = ("bench-n1", "bench-n2", "bench-n3")
PORTS = (20101, 20102, 20103, 20104)  # server ports in the catalog only: nothing connects to them
RSS_KEYS = ("rss_start", "rss_synced", "rss_after", "hwm", "rss_after_trim")


def proc_mb(field):
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


# -- the measured process ----------------------------------------------------------------------------
class Interface:
    """Stands in for the dyups interface (see the module docstring): accepts every change, and
    ``/detail`` is what the watcher applied."""

    def __init__(self, syncer):
        self.syncer = syncer

    def update(self, upstream, body=None):
        return None

    def delete(self, name):
        return True

    def detail(self):
        return {name: list(upstream.servers) for name, upstream in self.syncer.applied.items()}


def catalog_put(connection, path, payload):
    connection.request("PUT", path, body=json.dumps(payload))
    response = connection.getresponse()
    response.read()
    if response.status != 200:
        raise RuntimeError(f"{path} answered {response.status}")


def check_body(node, instance_id, status):
    return {"Node": node, "CheckID": f"check:{instance_id}", "Name": "bench", "Status": status,
            "ServiceID": instance_id}


def wait_servers(daemon, name, count, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        upstream = daemon.syncer.applied.get(name)
        if upstream is not None and len(upstream.servers) == count:
            return
        time.sleep(0.005)
    raise RuntimeError(f"the watcher did not apply {count} servers for {name} within {timeout}s")


def child(args):
    """One measured process (see the module docstring); prints its figures as one JSON line."""
    import tracemalloc

    links = Path(tempfile.mkdtemp(prefix="bench-mem-"))
    link = links / "ansible_collections" / "swallowkeeper" / "dyups"
    link.parent.mkdir(parents=True)
    link.symlink_to(Path(args.root).resolve(), target_is_directory=True)
    sys.path.insert(0, str(links))
    from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as settings_mod
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.daemon import Daemon
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.memory import release_free_memory, tune_allocator

    tune_allocator()
    if args.trace:
        tracemalloc.start(1)
    out = {"root": str(args.root), "rss_start": proc_mb("VmRSS")}
    settings = settings_mod.build({
        "consul_url": args.consul, "upstream_file": str(links / "upstreams.conf"), "status_listen": "",
        "drift_interval": 3600, "consul_resync_interval": 3600, "removal_guard_min": 10 ** 6,
        "log_level": "warning",
        # the catalog's addresses are loopback, refused by default (where the checkout has the option)
        **({"allowed_networks": ["127.0.0.0/8"]} if "allowed_networks" in settings_mod.option_names() else {})},
        environ={})
    daemon = Daemon(settings)
    daemon.syncer.client = Interface(daemon.syncer)
    runner = threading.Thread(target=daemon.run, name="daemon", daemon=True)
    started = time.monotonic()
    runner.start()
    connection = http.client.HTTPConnection("127.0.0.1", int(args.consul.rsplit(":", 1)[1]), timeout=30)
    try:
        while len(daemon.syncer.applied) < args.size or daemon.syncer.has_pending:
            if time.monotonic() - started > 600 or not runner.is_alive():
                raise RuntimeError("the watcher did not sync every upstream")
            time.sleep(0.05)
        out["synced_seconds"] = round(time.monotonic() - started, 2)
        time.sleep(1.0)
        out["rss_synced"] = proc_mb("VmRSS")
        step = max(1, args.size // max(1, args.flips))
        for i in range(args.flips):
            name, instance = f"Svc{i * step}", f"Svc{i * step}-2"
            catalog_put(connection, "/v1/catalog/register", {
                "Node": NODES[2], "Address": "127.0.0.1", "SkipNodeUpdate": True,
                "Check": check_body(NODES[2], instance, "critical")})
            wait_servers(daemon, name, 2)
            catalog_put(connection, "/v1/catalog/register", {
                "Node": NODES[2], "Address": "127.0.0.1", "SkipNodeUpdate": True,
                "Check": check_body(NODES[2], instance, "passing")})
            wait_servers(daemon, name, 3)
        for i in range(args.flips):
            name, instance = f"Svc{i * step + 1}", f"Svc{i * step + 1}-extra"
            catalog_put(connection, "/v1/catalog/register", {
                "Node": "bench-n4", "Address": "127.0.0.1", "SkipNodeUpdate": True,
                "Service": {"ID": instance, "Service": name, "Port": PORTS[3]},
                "Check": check_body("bench-n4", instance, "passing")})
            wait_servers(daemon, name, 4)
            catalog_put(connection, "/v1/catalog/deregister", {"Node": "bench-n4", "ServiceID": instance})
            wait_servers(daemon, name, 3)
        time.sleep(2.0)
        out["rss_after"] = proc_mb("VmRSS")
        out["hwm"] = proc_mb("VmHWM")
        gc.collect()
        release_free_memory()
        out["rss_after_trim"] = proc_mb("VmRSS")  # what malloc_trim could give back: free, not live
        if args.trace:
            out.update(trace_figures(tracemalloc, daemon))
    finally:
        connection.close()
        daemon.request_stop()
        runner.join(10)
    print(json.dumps(out), flush=True)
    return 0


def trace_figures(tracemalloc, daemon):
    current, peak = tracemalloc.get_traced_memory()
    gc.unfreeze()  # the daemon froze its cache (memory.settle): get_objects() leaves frozen objects out
    sizes, counts = {}, {}
    for obj in gc.get_objects():  # before the snapshot's own lists exist
        kind = type(obj).__name__
        counts[kind] = counts.get(kind, 0) + 1
        sizes[kind] = sizes.get(kind, 0) + sys.getsizeof(obj)
    top_types = sorted(sizes, key=sizes.get, reverse=True)[:15]
    snapshot = tracemalloc.take_snapshot().filter_traces(
        (tracemalloc.Filter(False, tracemalloc.__file__), tracemalloc.Filter(False, "<frozen importlib._bootstrap>")))
    by_file = snapshot.statistics("filename")
    by_line = snapshot.statistics("lineno")

    def short(path):
        return path.split("ansible_collections/swallowkeeper/dyups/", 1)[-1].split("/lib/python3")[-1]

    return {
        "traced_mb": round(current / 2 ** 20, 1), "traced_peak_mb": round(peak / 2 ** 20, 1),
        "by_file": [(short(stat.traceback[0].filename), round(stat.size / 2 ** 20, 2), stat.count)
                    for stat in by_file[:12]],
        "by_line": [(f"{short(stat.traceback[0].filename)}:{stat.traceback[0].lineno}",
                     round(stat.size / 2 ** 20, 2), stat.count) for stat in by_line[:15]],
        "gc_types": [(kind, round(sizes[kind] / 2 ** 20, 2), counts[kind]) for kind in top_types],
    }


# -- the driver ------------------------------------------------------------------------------------
def run_child(root, consul, size, flips, trace=False):
    return run_measured([sys.executable, str(Path(__file__).resolve()), "--child", "--root", str(root), "--consul",
                         consul, "--size", str(size), "--flips", str(flips)] + (["--trace"] if trace else []))


def run_measured(command):
    """The last line of a measured process's output, as JSON (bench_watcher_inprocess.py runs its own too)."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False, cwd="/")
    if done.returncode != 0:
        raise RuntimeError(f"measured process failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--flips", type=int, default=20, help="health flips, and as many scale-outs")
    parser.add_argument("--repeat", type=int, default=3, help="measured processes per checkout")
    parser.add_argument("--before-root", help="also measure the watcher of this checkout (e.g. a worktree of main)")
    parser.add_argument("--no-trace", action="store_true", help="leave out the tracemalloc processes")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    parser.add_argument("--consul", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)

    sys.path.insert(0, str(ROOT))
    from tests.support.consul import ConsulAgent
    from bench_watcher import CatalogWriter, populate

    roots = {"ours": ROOT}
    if args.before_root:
        roots["before"] = Path(args.before_root).resolve()
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average": os.getloadavg(), "size": args.size,
               "flips": args.flips, "roots": {label: str(root) for label, root in roots.items()}, "runs": []}
    with ConsulAgent() as agent:
        started = time.perf_counter()
        populate(CatalogWriter(int(agent.url.rsplit(":", 1)[1])), args.size, PORTS)
        results["populate_seconds"] = round(time.perf_counter() - started, 1)
        for _round in range(args.repeat):
            for label, root in roots.items():
                figures = dict(run_child(root, agent.url, args.size, args.flips), label=label)
                results["runs"].append(figures)
                print(json.dumps(figures), flush=True)
        if not args.no_trace:
            results["trace"] = {label: run_child(root, agent.url, args.size, args.flips, trace=True)
                                for label, root in roots.items()}
    results["load_average_end"] = os.getloadavg()
    results["medians"] = {label: {key: statistics.median(run[key] for run in results["runs"] if run["label"] == label)
                                  for key in RSS_KEYS + ("synced_seconds",)}
                          for label in roots if any(run["label"] == label for run in results["runs"])}
    for label, medians in results["medians"].items():
        print(label, "median MB:", ", ".join(f"{key} {value}" for key, value in medians.items()), flush=True)
    for label, trace in results.get("trace", {}).items():
        print(f"{label}: traced {trace['traced_mb']} MB, traced peak {trace['traced_peak_mb']} MB")
        for table in ("by_file", "by_line", "gc_types"):
            print(f"  {table}:")
            for row in trace[table]:
                print("    ", *row)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
