"""The full resync alone: ``--once`` against an empty interface and an empty upstream file, this checkout's
watcher against earlier commits', alternating which runs first (issue 22, item 3).

    .venv/bin/python tests/benchmarks/bench_resync.py --size 5000 --runs 4 --before a710ecd [--flavor tengine]

Set-up as bench_watcher.py's (a Consul ``-dev`` agent with ``--size`` services of 3 instances on three
catalog nodes; one proxy of ``--flavor`` with 2 workers; no ``dyups_shm_zone_size`` set), all on loopback,
started and stopped here. Each run DELETEs every upstream first; its time is the wall time of the
``--once`` process, which must exit 0 with every upstream held by the interface after it. Printed: the
median and every run per watcher, and the load average before and after.
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
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "benchmarks"))

import bench_watcher  # noqa: E402  # pylint: disable=wrong-import-position
from tests.support.watcher import run_once  # noqa: E402  # pylint: disable=wrong-import-position


def measure(args, work, entries):
    """{watcher: [seconds of each run]}."""
    times = {name: [] for name in entries}
    with bench_watcher.ConsulAgent() as agent, bench_watcher.Backends(count=4) as backends:
        bench_watcher.populate(bench_watcher.CatalogWriter(int(agent.url.rsplit(":", 1)[1])), args.size,
                               backends.ports)
        with bench_watcher.make_proxy(args.flavor, work, work / "proxy.conf") as nginx:
            common = {"consul_url": agent.url, "dyups_url": nginx.api_url, "log_level": "warning",
                      "drift_interval": 3600, "consul_resync_interval": 3600, "removal_guard_min": 10 ** 6}
            order = list(entries)
            for run in range(args.runs):
                for number, name in enumerate(order if run % 2 == 0 else order[::-1]):
                    bench_watcher.empty_interface(nginx, args.size)
                    upstream_file = work / f"run{run}-{number}.conf"
                    started = time.perf_counter()
                    once = run_once(work, upstream_file=str(upstream_file), timeout=600, entry=entries[name], **common)
                    times[name].append(round(time.perf_counter() - started, 3))
                    held = nginx.api("GET", "/list")[1].split()
                    if once.returncode != 0 or len(held) != args.size:
                        raise RuntimeError(f"{name}: --once exit {once.returncode}, {len(held)} upstreams held:\n"
                                           f"{once.stderr[-2000:]}")
    return times


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--size", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--flavor", default="lua", choices=("lua", "tengine"))
    parser.add_argument("--before", default="", metavar="REV[,REV...]")
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-resync-") as tmp:
        work = Path(tmp)
        entries = {"this checkout": ROOT / "plugins" / "watcher"}
        before_roots = {rev: bench_watcher.before_worktree(rev, tmp) for rev in args.before.split(",") if rev}
        entries.update({rev: root / "plugins" / "watcher" for rev, root in before_roots.items()})
        try:
            times = measure(args, work, entries)
        finally:
            for root in before_roots.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(root)], check=False,
                               capture_output=True)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "size": args.size, "flavor": args.flavor,
              "load_before": load_before, "load_after": os.getloadavg(),
              "median_s": {name: statistics.median(values) for name, values in times.items()}, "runs_s": times}
    print(f"{report['date']}, {args.size} upstreams, {args.flavor}; load average before "
          f"{' '.join(f'{v:.2f}' for v in load_before)}, after {' '.join(f'{v:.2f}' for v in report['load_after'])}")
    for name, values in times.items():
        print(f"{name:14} median {statistics.median(values):.3f} s, runs {values}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
