"""What nginx loses by itself, measured under a request loop (outside CI; figures in docs/resilience.md,
"The data plane under faults").

    .venv/bin/python tests/resilience/data_plane.py [--flavor tengine|lua] [--upstreams 20] [--requests 1800]
                                                    [--old-watcher DIR/plugins/watcher]

For each fault (``kill9``: SIGKILL to one of two workers; ``reload``: SIGHUP), one run: a Consul agent,
backends, the proxy of the flavor started on an upstream file that holds none of the upstreams, a watcher
that creates ``--upstreams`` of them, then a loop of ``--requests`` requests (new connections, upstreams
in turn) with the fault after the first tenth. Printed as JSON: requests failed, the last failure's
time after the fault, and whether every worker serves every upstream at the end. ``--old-watcher``
runs another watcher (an extracted 940f60b, say) without ``nginx_pid_file``, for the figures before.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()

from tests.support.backends import Backends  # noqa: E402
from tests.support.consul import ConsulAgent  # noqa: E402
from tests.support.nginx_lua import TEST_HOSTS  # noqa: E402
from tests.support.tengine import flavor_class  # noqa: E402
from tests.support.watcher import WatcherProcess  # noqa: E402


def make_watcher(tmp_path, agent, nginx, upstream_file, old_watcher=None, **extra):
    """A watcher (not started) on ``agent`` and ``nginx``, host names from the test hosts file; with
    ``old_watcher`` (DIR/plugins/watcher) that one, without ``nginx_pid_file``."""
    hosts = tmp_path / "hosts"
    hosts.write_text(TEST_HOSTS)
    settings = {"consul_url": agent.url, "dyups_url": nginx.api_url, "upstream_file": str(upstream_file),
                "hosts_file": str(hosts), "log_level": "info", **extra}
    if old_watcher:
        return WatcherProcess(tmp_path, entry=Path(old_watcher), **settings)
    return WatcherProcess(tmp_path, nginx_pid_file=str(nginx.prefix / "nginx.pid"), **settings)


def measure(flavor, fault, upstreams, requests, old_watcher=None):
    with tempfile.TemporaryDirectory(prefix="data-plane-") as tmp, ConsulAgent() as agent, \
            Backends(count=2) as backends:
        tmp_path = Path(tmp)
        nginx_file = tmp_path / "nginx-upstreams.conf"
        nginx_file.write_text("")
        nginx = flavor_class(flavor)(workers=2, upstream_file=str(nginx_file))
        nginx.start()
        names = [f"Svc{i}" for i in range(upstreams)]
        for i, name in enumerate(names):
            agent.register(name, f"{name}-1", port=backends.ports[i % 2])
        watcher = make_watcher(tmp_path, agent, nginx, tmp_path / "ups.conf", old_watcher)
        try:
            watcher.start()
            want = {name: str(backends.ports[i % 2]) for i, name in enumerate(names)}
            watcher.wait_for(lambda: all(nginx.request(f"/u/{n}/")[1].strip() == want[n] for n in names),
                             "the first sync", timeout=30)
            time.sleep(1.5)   # every worker past its first dyups timer
            failed, last_failure, fault_at = 0, None, None
            for number in range(requests):
                if number == requests // 10:
                    fault_at = time.monotonic()
                    if fault == "kill9":
                        os.kill(nginx.worker_pids()[0], signal.SIGKILL)
                    else:
                        os.kill(nginx.master_pid(), signal.SIGHUP)
                name = names[number % len(names)]
                status, text, _headers = nginx.request(f"/u/{name}/", timeout=5)
                if status != 200 or text.strip() != want[name]:
                    failed += 1
                    last_failure = time.monotonic()
            seconds = round(time.monotonic() - fault_at, 2)
            healthy = all(nginx.request(f"/u/{n}/")[1].strip() == want[n] for n in names for _unused in range(4))
            return {"flavor": flavor, "fault": fault, "watcher": "940f60b" if old_watcher else "this",
                    "upstreams": upstreams, "requests": requests, "failed": failed,
                    "loop_seconds_after_fault": seconds,
                    "last_failure_after_fault": None if last_failure is None else round(last_failure - fault_at, 3),
                    "every_upstream_served_at_the_end": healthy}
        finally:
            watcher.stop()
            nginx.cleanup()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flavor", choices=["tengine", "lua"], action="append")
    parser.add_argument("--fault", choices=["kill9", "reload"], action="append")
    parser.add_argument("--upstreams", type=int, default=20)
    parser.add_argument("--requests", type=int, default=1800)
    parser.add_argument("--old-watcher", help="plugins/watcher of another checkout, run without nginx_pid_file")
    args = parser.parse_args()
    for flavor in args.flavor or ["tengine", "lua"]:
        for fault in args.fault or ["kill9", "reload"]:
            print(json.dumps(measure(flavor, fault, args.upstreams, args.requests, args.old_watcher)), flush=True)


if __name__ == "__main__":
    main()
