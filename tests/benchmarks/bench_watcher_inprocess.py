"""The watcher's memory and a health flip's CPU at N upstreams, in this process, from prepared answers (issue 22).

    .venv/bin/python tests/benchmarks/bench_watcher_inprocess.py --size 5000 --flips 200
    .venv/bin/python tests/benchmarks/bench_watcher_inprocess.py --before /path/to/older/checkout --repeat 3
    .venv/bin/python tests/benchmarks/bench_watcher_inprocess.py --trace      # where the memory goes
    .venv/bin/python tests/benchmarks/bench_watcher_inprocess.py --profile    # where a flip's time goes

No server runs: Consul is a stand-in transport answering from prepared bytes the fleet bench_watcher.py
registers (N services ``SvcI``, instances ``SvcI-0..2`` on the nodes ``bench-n1..3``, one passing check
each), and the dyups interface is a stand-in transport that accepts every POST and DELETE and answers
``/detail`` with what was posted (so the drift check finds nothing). Everything else is the watcher of the
checkout measured: its ``Daemon`` built from settings (upstream file in a temporary directory, no status
listener), its ``ConsulClient`` parsing the bytes, its ``Syncer`` writing the file and rendering the POSTs.
No thread runs: the steps are the daemon's own methods, called in order, so that the figures are the
watcher's CPU and memory alone (bench_watcher.py measures end to end against real servers).

Each measured process (a child, one per checkout and repetition, ``--before`` alternating with this one):

1. ``rss_imports``: VmRSS after ``tune_allocator`` and the imports of ``cli`` and ``daemon``;
2. the full read (``ConsulSource.refresh_all``, with the daemon's ``memory.settle`` after it), the first
   sync (every upstream written and posted) and a drift check (``Syncer.repair``): ``rss_synced``;
3. ``--flips`` health flips of ``SvcK-2`` (K spread over the fleet), each in two timed halves as the
   daemon runs them: the health poll's answer read (the client's parse) and folded
   (``apply_events``) and the sync (``Daemon._sync``: file, POST); first the check goes critical (an
   in-place update: ``bad``), then passing again (the service is read again: ``back``). Printed: median,
   p90, p99 and max of each, in ms;
4. ``rss_after``: VmRSS after the flips, then ``hwm`` (VmHWM).

``--trace`` (one process per checkout, slower): tracemalloc from the start, the Python heap after the
flips by file, by file:line and by type (bench_watcher_memory.py's ``trace_figures``), and the size (``sys.getsizeof``, deep for the containers the cache
owns) of each store the watcher keeps. ``--profile``: cProfile of the flips of one process per checkout,
the top functions by cumulative and by own time.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NODES = ("bench-n1", "bench-n2", "bench-n3")
PORTS = (20101, 20102, 20103)


def proc_mb(field):
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


class FakeConsul:
    """The answers of a Consul holding the fleet (see the module docstring), as bytes."""

    def __init__(self, size):
        self.size = size
        self.index = 100
        self.critical = set()  # (node, instance id) whose check is critical
        self.catalog = json.dumps({"consul": [], **{f"Svc{i}": [] for i in range(size)}}).encode()
        self.nodes = json.dumps([{"Node": node, "Address": "127.0.0.1", "ID": f"id-{node}", "Datacenter": "dc1",
                                  "TaggedAddresses": {"lan": "127.0.0.1"}, "Meta": {}, "CreateIndex": 5,
                                  "ModifyIndex": 5} for node in NODES]).encode()

    def node_body(self, node):
        """Made at each read (not kept: the stand-in's own memory is not the watcher's)."""
        return json.dumps({"Node": {"Node": node, "Address": "127.0.0.1", "ID": f"id-{node}", "Datacenter": "dc1"},
                           "Services": [self.service(i, NODES.index(node)) for i in range(self.size)]}).encode()

    @staticmethod
    def service(i, j):
        return {"ID": f"Svc{i}-{j}", "Service": f"Svc{i}", "Tags": [], "Address": "", "Meta": {}, "Port": PORTS[j],
                "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False, "CreateIndex": 10 + i,
                "ModifyIndex": 10 + i}

    def check(self, i, j):
        node, instance = NODES[j], f"Svc{i}-{j}"
        status = "critical" if (node, instance) in self.critical else "passing"
        return {"Node": node, "CheckID": f"check:{instance}", "Name": "bench", "Status": status, "Notes": "",
                "Output": "", "ServiceID": instance, "ServiceName": f"Svc{i}", "ServiceTags": [], "Type": "",
                "Definition": {}, "CreateIndex": 10 + i, "ModifyIndex": 10 + i}

    def transport(self, method, url, body, timeout, extra_headers=None):  # pylint: disable=unused-argument
        path, _sep, query = url.split("://", 1)[1].partition("/")[2].partition("?")
        path = "/" + path
        headers = {"x-consul-index": str(self.index), "x-consul-knownleader": "true", "x-consul-lastcontact": "0"}
        if path == "/v1/catalog/services":
            return 200, self.catalog, headers
        if path == "/v1/catalog/nodes":
            return 200, self.nodes, headers
        if path.startswith("/v1/catalog/node-services/"):
            return 200, self.node_body(path.rsplit("/", 1)[1]), headers
        if path.startswith("/v1/health/state/any"):
            if "filter" in query:
                return 200, json.dumps([self.check(int(instance[3:].split("-")[0]), NODES.index(node))
                                        for node, instance in sorted(self.critical)]).encode(), headers
            return 200, json.dumps([self.check(i, j) for i in range(self.size) for j in range(3)]).encode(), headers
        if path == "/v1/health/service/consul":
            return 200, b"[]", headers
        if path.startswith("/v1/health/service/"):
            i = int(path.rsplit("/", 1)[1][3:])
            return 200, json.dumps([{"Node": {"Node": NODES[j], "Address": "127.0.0.1"}, "Service": self.service(i, j),
                                     "Checks": [self.check(i, j)]} for j in range(3)]).encode(), headers
        return 404, b"", {}


class FakeDyups:
    """The dyups interface: accepts every change (the watcher's client renders each body all the same);
    ``/detail`` is the Syncer's applied state in the interface's text (parsed by the watcher's client)."""

    def __init__(self):
        self.posts = 0
        self.applied = {}

    def transport(self, method, url, body, timeout, extra_headers=None):  # pylint: disable=unused-argument
        path = url.split("://", 1)[1].partition("/")[2]
        if method in ("POST", "DELETE"):
            self.posts += method == "POST" and bool(body)
            return 200, b"success", {}
        if path == "detail":
            return 200, "".join(
                name + "\n" + "".join(f"server {server.address} weight={server.weight} max_conns={server.max_conns} "
                                      f"max_fails={server.max_fails} fail_timeout={server.fail_timeout} "
                                      f"backup={int(server.backup)} down={int(server.down)}\n"
                                      for server in upstream.servers) + "\n"
                for name, upstream in self.applied.items()).encode(), {}
        return 404, b"", {}


def deep_size(obj, seen):
    """sys.getsizeof of ``obj`` and of what it holds (containers, NamedTuples, slotted objects), once each."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    size = sys.getsizeof(obj)
    if isinstance(obj, dict):
        size += sum(deep_size(key, seen) + deep_size(value, seen) for key, value in obj.items())
    elif isinstance(obj, (tuple, list, set, frozenset)):
        size += sum(deep_size(item, seen) for item in obj)
    else:
        for slot in getattr(type(obj), "__slots__", ()):
            if hasattr(obj, slot):
                size += deep_size(getattr(obj, slot), seen)
        if hasattr(obj, "__dict__") and not isinstance(obj, type):
            size += deep_size(vars(obj), seen)
    return size


def store_sizes(daemon):
    """MB of each store the watcher keeps (deep; what an earlier store holds is not counted again)."""
    source, syncer = daemon.source, daemon.syncer
    stores = [("source.entries", source.entries), ("source.checks", source.checks),
              ("source.failing", source.failing), ("source.node_services", source.node_services),
              ("source.catalog", source.catalog), ("source.node_digests", source.node_digests)]
    merged = source.merged
    stores += [(f"source.merged.{key}", value) for key, value in vars(merged).items()]
    stores += [("syncer.applied", syncer.applied), ("syncer._file", syncer._file),  # pylint: disable=protected-access
               ("syncer.pushes", syncer.pushes), ("syncer.hosts", syncer.hosts), ("metrics", daemon.metrics)]
    seen = set()
    return [(name, round(deep_size(value, seen) / 2 ** 20, 2)) for name, value in stores]


def child(args):  # pylint: disable=too-many-locals,too-many-statements
    """One measured process (see the module docstring); prints its figures as one JSON line."""
    import tracemalloc  # pylint: disable=import-outside-toplevel
    if args.trace:
        tracemalloc.start(1)
    links = Path(tempfile.mkdtemp(prefix="bench-inproc-"))
    link = links / "ansible_collections" / "swallowkeeper" / "dyups"
    link.parent.mkdir(parents=True)
    link.symlink_to(Path(args.root).resolve(), target_is_directory=True)
    sys.path.insert(0, str(links))
    # http.client without ssl, as the watcher's entry (plugins/watcher/__main__.py) imports it
    sys.modules["ssl"] = None
    import http.client  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    del sys.modules["ssl"]
    # pylint: disable=import-outside-toplevel
    from ansible_collections.swallowkeeper.dyups.plugins.watcher import cli  # noqa: F401  (the entry's imports)
    from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as settings_mod
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.daemon import Daemon
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.memory import tune_allocator
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import ConsulClient

    tune_allocator()
    out = {"root": str(args.root), "rss_imports": proc_mb("VmRSS")}
    consul, dyups = FakeConsul(args.size), FakeDyups()
    settings = settings_mod.build({
        "consul_url": "http://127.0.0.1:1", "dyups_url": "http://127.0.0.1:2", "status_listen": "",
        "upstream_file": str(links / "upstreams.conf"), "drift_interval": 3600, "consul_resync_interval": 3600,
        "removal_guard_min": 10 ** 6, "log_level": "warning", "allowed_networks": ["127.0.0.0/8"]}, environ={})
    daemon = Daemon(settings)
    source = daemon.source
    hook = source.client.object_hook
    source.client = ConsulClient(settings.consul_url, consul.transport, object_hook=hook)
    source.watch_client = ConsulClient(settings.consul_url, consul.transport, object_hook=hook)
    daemon.client.transport = daemon.syncer.dict_space.watching(dyups.transport)  # as _build wraps the real one
    dyups.applied = daemon.syncer.applied
    started = time.perf_counter()
    source.refresh_all()
    daemon._sync()  # pylint: disable=protected-access
    daemon.syncer.repair()
    out["full_read_sync_s"] = round(time.perf_counter() - started, 3)
    if len(daemon.syncer.applied) != args.size or dyups.posts < args.size or daemon.metrics.counters.get("repairs"):
        raise SystemExit(f"the first sync is not what was expected: {len(daemon.syncer.applied)} applied, "
                         f"{dyups.posts} posts: the benchmark is broken")
    out["rss_synced"] = proc_mb("VmRSS")
    profiler = None
    if args.profile:
        import cProfile  # pylint: disable=import-outside-toplevel
        profiler = cProfile.Profile()
    times = {"bad_fold": [], "bad_sync": [], "back_fold": [], "back_sync": [], "bad": [], "back": []}
    step = max(1, args.size // max(1, args.flips))
    for flip in range(args.flips):
        i = (flip * step) % args.size
        for half, servers in (("bad", 2), ("back", 3)):
            if half == "bad":
                consul.critical.add((NODES[2], f"Svc{i}-2"))
            else:
                consul.critical.discard((NODES[2], f"Svc{i}-2"))
            consul.index += 1
            if profiler is not None:
                profiler.enable()
            started = time.perf_counter()
            answer = source.watch_client.get("/v1/health/state/any", params={"filter": 'Status != "passing"'})
            source.apply_events([("health", answer.data, answer.index, False)])
            folded = time.perf_counter()
            daemon._sync()  # pylint: disable=protected-access
            done = time.perf_counter()
            if profiler is not None:
                profiler.disable()
            times[f"{half}_fold"].append((folded - started) * 1000)
            times[f"{half}_sync"].append((done - folded) * 1000)
            times[half].append((done - started) * 1000)
            if len(daemon.syncer.applied[f"Svc{i}"].servers) != servers:
                raise SystemExit(f"flip {flip} ({half}) not applied: the benchmark is broken")
    out["rss_after"] = proc_mb("VmRSS")
    out["hwm"] = proc_mb("VmHWM")
    out["libcrypto"] = "_hashlib" in sys.modules or "ssl" in sys.modules
    # not a module the watcher imports: imported after the RSS figures
    import statistics  # pylint: disable=import-outside-toplevel
    out["flips"] = {key: {"median": round(statistics.median(values), 3), "p90": round(percentile(values, 0.9), 3),
                          "p99": round(percentile(values, 0.99), 3), "max": round(max(values), 3)}
                    for key, values in times.items()}
    if args.trace:
        # a script of this directory (sys.path[0] when run as a script)
        from bench_watcher_memory import trace_figures  # pylint: disable=import-outside-toplevel
        out.update(trace_figures(tracemalloc, daemon))
        tracemalloc.stop()
        out["stores"] = store_sizes(daemon)
    if profiler is not None:
        import io  # pylint: disable=import-outside-toplevel
        import pstats  # pylint: disable=import-outside-toplevel
        for order in ("cumulative", "tottime"):
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).strip_dirs().sort_stats(order).print_stats(25)
            out[f"profile_{order}"] = text.getvalue()
    gc.collect()
    if os.environ.get("BENCH_MALLOC_STATS"):
        # the allocator's arenas and pools, to stderr
        sys._debugmallocstats()  # pylint: disable=protected-access
    print(json.dumps(out), flush=True)
    return 0


def run_child(root, args, trace=False, profile=False):
    # a script of this directory (sys.path[0] when run as a script)
    from bench_watcher_memory import run_measured  # pylint: disable=import-outside-toplevel
    return run_measured([sys.executable, str(Path(__file__).resolve()), "--child", "--root", str(root), "--size",
                         str(args.size), "--flips", str(args.flips)]
                        + (["--trace"] if trace else []) + (["--profile"] if profile else []))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--flips", type=int, default=200, help="health flips (each: critical, then passing)")
    parser.add_argument("--repeat", type=int, default=1, help="measured processes per checkout")
    parser.add_argument("--before", help="also measure the watcher of this checkout (e.g. a worktree of main)")
    parser.add_argument("--trace", action="store_true", help="one tracemalloc process per checkout")
    parser.add_argument("--profile", action="store_true", help="one cProfile process per checkout")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--root", default=str(ROOT), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    roots = {"this checkout": ROOT}
    if args.before:
        roots[f"before ({args.before})"] = Path(args.before).resolve()
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_before": os.getloadavg()[0], "runs": []}
    print(f"{args.size} upstreams x 3, {args.flips} flips; load average before {os.getloadavg()[0]:.2f}", flush=True)
    for _round in range(args.repeat):
        for label, root in roots.items():
            figures = dict(run_child(root, args), label=label)
            results["runs"].append(figures)
            flips = figures["flips"]
            print(f"{label}: RSS imports {figures['rss_imports']} / synced {figures['rss_synced']} / after "
                  f"{figures['rss_after']} / peak {figures['hwm']} MB "
                  f"full read + sync {figures['full_read_sync_s']} s; flip ms (median / p90 / p99 / max): "
                  + "; ".join(f"{key} {v['median']} / {v['p90']} / {v['p99']} / {v['max']}" for key, v in flips.items()),
                  flush=True)
    for label, root in roots.items():
        if args.trace:
            trace = run_child(root, args, trace=True)
            results.setdefault("trace", {})[label] = trace
            print(f"{label}: traced {trace['traced_mb']} MB, traced peak {trace['traced_peak_mb']} MB")
            for table in ("by_file", "by_line", "gc_types", "stores"):
                print(f"  {table}:")
                for row in trace[table]:
                    print("    ", *row)
        if args.profile:
            profiled = run_child(root, args, profile=True)
            results.setdefault("profile", {})[label] = profiled
            print(f"{label}: profile of the flips\n{profiled['profile_cumulative']}\n{profiled['profile_tottime']}")
    results["load_after"] = os.getloadavg()[0]
    print(f"load average after {results['load_after']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
