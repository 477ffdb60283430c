"""What a flip costs the watcher in writing upstreams to disk, by way of writing (issue 22 item 2).

    .venv/bin/python tests/benchmarks/bench_upstream_file.py                          # 1 000 and 5 000 upstreams
    nice -n 10 .venv/bin/python tests/benchmarks/bench_upstream_file.py --sizes 1000,5000 --flips 200 --json out.json

No server: the upstream file's own code (plugins/module_utils/_upstream_file.py), in this process, in a
temporary directory on the disk the watcher's file would be on (``--dir``; default the system's temporary
directory: a tmpfs there makes every fsync free, the script says which file system it wrote to).

Per size N: N upstreams of 3 servers (``SvcI``, ``10.0.I.1-3:80``) rendered once into a
``RenderedFile`` as the watcher keeps it, and the same upstreams as one file each in a directory. A
**flip** changes one random upstream (its third server marked ``down``, or back) and writes it to disk
by each way in turn, the order of the ways rotating from flip to flip so that they share the machine's
conditions. Timed per flip (``time.perf_counter``): the update of the rendered blocks, the join and the
write:

* ``whole_2fsync``: the whole file, ``replace_file`` as the watcher called it up to a4c1ad6 (temporary
  file, fsync, rename, fsync of the directory);
* ``whole_1fsync``: the whole file, fsync of the data before the rename, none of the directory
  (``replace_file(..., sync_directory=False)``, what the watcher does since issue 22);
* ``whole_0fsync``: the whole file, no fsync at all: not a candidate (a power loss could leave an
  empty file under the new name), the floor of the two above;
* ``per_upstream_2fsync`` / ``per_upstream_1fsync``: only the changed upstream's own file
  (``DIR/NAME.conf``, a few hundred bytes) replaced the same two ways: what an ``include DIR/*.conf``
  layout would cost.

Printed: per size and way, the median, p90 and p99 of the flip's time in ms, and the median of the
join alone (``RenderedFile.text``); ``--json`` writes the raw figures. The load average before and
after the run is printed with them (the machine may be shared: compare ways within one run).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file  # noqa: E402
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream  # noqa: E402

WAYS = ("whole_2fsync", "whole_1fsync", "whole_0fsync", "per_upstream_2fsync", "per_upstream_1fsync")


def upstream(index, down=False):
    servers = [f"10.{index // 250}.{index % 250}.{host}:80" for host in (1, 2, 3)]
    if down:
        servers[2] += " down"
    return build_upstream(f"Svc{index}", servers, [])


def write_unsynced(path, text):
    """The whole file replaced by rename without any fsync (the floor; not a candidate)."""
    directory, base = os.path.split(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{base}.", suffix=".tmp", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def file_system(path):
    try:
        found = subprocess.run(["stat", "-f", "-c", "%T", path], stdout=subprocess.PIPE, check=False,
                               universal_newlines=True)
    except OSError:
        return "unknown"
    return found.stdout.strip() or "unknown"


def run_size(size, flips, workdir, rng):
    whole_path = os.path.join(workdir, "upstreams.conf")
    per_dir = os.path.join(workdir, "upstreams.d")
    os.makedirs(per_dir)
    state = {index: False for index in range(size)}
    rendered = {way: _upstream_file.RenderedFile(upstream(index) for index in range(size))
                for way in WAYS if way.startswith("whole")}
    for way in rendered:
        _upstream_file.replace_file(whole_path + "." + way, rendered[way].text())
    for index in range(size):
        _upstream_file.replace_file(os.path.join(per_dir, f"Svc{index}.conf"), _upstream_file.render_block(upstream(index)))
    times = {way: [] for way in WAYS}
    joins = []
    for flip in range(flips):
        index = rng.randrange(size)
        state[index] = not state[index]
        changed = upstream(index, down=state[index])
        order = WAYS[flip % len(WAYS):] + WAYS[:flip % len(WAYS)]
        for way in order:
            started = time.perf_counter()
            if way.startswith("whole"):
                rendered[way].update({changed.name: changed})
                joined = time.perf_counter()
                text = rendered[way].text()
                if way == "whole_0fsync":
                    joins.append(time.perf_counter() - joined)
                    write_unsynced(whole_path + "." + way, text)
                else:
                    _upstream_file.replace_file(whole_path + "." + way, text, sync_directory=way == "whole_2fsync")
            else:
                _upstream_file.replace_file(os.path.join(per_dir, f"{changed.name}.conf"),
                                            _upstream_file.render_block(changed),
                                            sync_directory=way == "per_upstream_2fsync")
            times[way].append(time.perf_counter() - started)
    result = {"size": size, "flips": flips, "file_bytes": os.path.getsize(whole_path + ".whole_1fsync"),
              "join_ms_median": round(statistics.median(joins) * 1000, 3), "ways": {}}
    for way, values in times.items():
        result["ways"][way] = {"median_ms": round(statistics.median(values) * 1000, 3),
                               "p90_ms": round(percentile(values, 0.90) * 1000, 3),
                               "p99_ms": round(percentile(values, 0.99) * 1000, 3),
                               "raw_ms": [round(value * 1000, 3) for value in values]}
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000,5000")
    parser.add_argument("--flips", type=int, default=100)
    parser.add_argument("--dir", default=None, help="where to write (default: the system's temporary directory)")
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load_before": os.getloadavg(), "results": []}
    for size in (int(value) for value in args.sizes.split(",")):
        workdir = tempfile.mkdtemp(prefix="bench-upstream-file-", dir=args.dir)
        try:
            report["file_system"] = file_system(workdir)
            report["results"].append(run_size(size, args.flips, workdir, rng))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    report["load_after"] = os.getloadavg()
    print(f"{report['date']}, file system {report['file_system']}, load average before "
          f"{' '.join(f'{value:.2f}' for value in report['load_before'])}, after "
          f"{' '.join(f'{value:.2f}' for value in report['load_after'])}")
    for result in report["results"]:
        print(f"\n{result['size']} upstreams ({result['file_bytes']} bytes), {result['flips']} flips; "
              f"join alone: median {result['join_ms_median']} ms")
        print(f"{'way':22} {'median ms':>10} {'p90 ms':>10} {'p99 ms':>10}")
        for way, figures in result["ways"].items():
            print(f"{way:22} {figures['median_ms']:>10} {figures['p90_ms']:>10} {figures['p99_ms']:>10}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
