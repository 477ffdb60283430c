"""consul_services at scale: wall time and peak RSS of one module run against a real Consul agent.

A Consul agent (tests/support/consul.py) gets SIZE services x 3 instances through the catalog API in
bulk (``bench_watcher.populate``) and BAD services whose names break the upstream name rule; the
module then runs as Ansible runs it on a managed node (a Python process given its arguments as JSON),
REPEAT times per case (this checkout with its defaults, this checkout with ``report_instances: false`` as
sync.yml runs it, and the checkout of ``--before-root`` with its defaults), and its wall time, peak RSS (VmHWM, read as the process exits) and result
size are printed as JSON lines, with the medians at the end.

    tests/benchmarks/bench_consul_services.py --size 5000 --bad 500
    git worktree add /tmp/before 940f60b
    tests/benchmarks/bench_consul_services.py --before-root /tmp/before     # the same, for both checkouts

Outside CI (a minute or more); docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK_OPT_IN = {"allowed_networks": ["127.0.0.0/8"]}  # as tests/support/consul.py's (populate registers 127.0.0.1)
MODULE = "ansible_collections.swallowkeeper.dyups.plugins.modules.consul_services"
PORTS = (18801, 18802, 18803)

# Runs the module in this process, then prints the peak RSS: the module ends with sys.exit (exit_json).
CHILD = """
import runpy, sys
sys.argv = sys.argv[1:]   # [module, args.json], as Ansible runs it
try:
    runpy.run_module(sys.argv[0], run_name="__main__")
finally:
    status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    sys.stderr.write("VmHWM_kB=" + status["VmHWM"].split()[0] + "\\n")
"""


def run_module(root, consul_url, workdir, profile=None, extra=None):
    """{seconds, peak_mb, result_mb, upstreams, skipped} of one run of the module of checkout ``root``;
    with ``profile``, run under cProfile, its statistics written there."""
    links = Path(tempfile.mkdtemp(prefix="bench-cs-", dir=workdir))
    link = links / "ansible_collections" / "swallowkeeper" / "dyups"
    link.parent.mkdir(parents=True)
    link.symlink_to(Path(root).resolve(), target_is_directory=True)
    args = links / "args.json"
    # the catalog's addresses are loopback, refused by default: opt in where the checkout has the options
    opt_in = LOOPBACK_OPT_IN if (Path(root) / "plugins" / "module_utils" / "_server_policy.py").exists() else {}
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(opt_in, **(extra or {}), consul_url=consul_url)}))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(links), "ANSIBLE_COLLECTIONS_PATH": str(links)}
    started = time.perf_counter()
    command = ["-m", "cProfile", "-o", profile, "-m", MODULE] if profile else ["-c", CHILD, MODULE]
    done = subprocess.run([sys.executable, *command, str(args)], capture_output=True, text=True,
                          env=env, cwd=links, timeout=1800, check=False)
    seconds = time.perf_counter() - started
    try:
        result = json.loads(done.stdout)
    except ValueError:
        raise RuntimeError(f"the module printed no JSON (rc {done.returncode}):\n{done.stderr[-3000:]}") from None
    if result.get("failed"):
        raise RuntimeError(f"the module failed: {result.get('msg')}")
    peak = [line for line in done.stderr.splitlines() if line.startswith("VmHWM_kB=")] or ["VmHWM_kB=0"]
    return {"seconds": round(seconds, 2), "peak_mb": round(int(peak[-1].split("=")[1]) / 1024, 1),
            "result_mb": round(len(done.stdout) / 2 ** 20, 2), "upstreams": len(result["upstreams"]),
            "skipped": result.get("skipped_count", len(result["skipped_items"]))}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--size", type=int, default=5000, help="services, 3 instances each")
    parser.add_argument("--bad", type=int, default=500, help="services whose names break the name rule")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--before-root", help="also measure the module of this checkout (e.g. a worktree of main)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--profile", help="then run this checkout's module once more under cProfile, stats to this file")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_watcher import NODES, CatalogWriter, populate
    from tests.support.consul import ConsulAgent

    cases = {"ours": (ROOT, {}), "ours, report_instances=false": (ROOT, {"report_instances": False})}
    if args.before_root:
        cases["before"] = (Path(args.before_root).resolve(), {})
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_average": os.getloadavg(), "size": args.size,
               "bad": args.bad, "roots": {label: str(root) for label, (root, _extra) in cases.items()}, "runs": []}
    with ConsulAgent() as agent, tempfile.TemporaryDirectory(prefix="bench-cs-") as workdir:
        started = time.perf_counter()
        writer = CatalogWriter(int(agent.url.rsplit(":", 1)[1]))
        populate(writer, args.size, PORTS)
        for i in range(args.bad):
            writer.register(NODES[0], f"bad name {i}", f"bad-{i}", PORTS[0])
        results["populate_seconds"] = round(time.perf_counter() - started, 1)
        for _round in range(args.repeat):
            for label, (root, extra) in cases.items():
                figures = dict(run_module(root, agent.url, workdir, extra=extra), label=label)
                results["runs"].append(figures)
                print(json.dumps(figures), flush=True)
        if args.profile:
            print(json.dumps(dict(run_module(ROOT, agent.url, workdir, profile=args.profile), label="profiled")))
    results["load_average_end"] = os.getloadavg()
    results["medians"] = {label: {key: statistics.median(run[key] for run in results["runs"] if run["label"] == label)
                                  for key in ("seconds", "peak_mb", "result_mb")} for label in cases}
    for label, medians in results["medians"].items():
        print(label, "median:", ", ".join(f"{key} {value}" for key, value in medians.items()), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
