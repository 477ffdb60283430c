"""How long an upstream of 10 000 servers holds up the requests of other upstreams (issue 25 item 4).

    nice -n 10 .venv/bin/python tests/benchmarks/bench_lua_big_upstream.py [--rounds 3] [--servers 10000]
        [--old REF] [--json]

For each proxy in turn (the Lua flavor of this checkout; with ``--old REF`` the Lua files of that commit,
e.g. 940f60b; Tengine when ``$TENGINE_BIN`` is set), 2 workers, 20 small upstreams and a request loop on
them (tests/support/request_loop.py: 4 threads x 4 kept-alive connections, spread over both workers), and
``--rounds`` times: a POST of an upstream of ``--servers`` servers (alternately two different ones, so
each is a change), then 1.5 s for every worker to take it. Reported per round: the POST's round trip,
the longest time a worker answered no request (the stall: the loop keeps both busy, so any silence is
the worker's), the slowest request; and the same for a quiet window of the same length before the first
POST (what the machine's load alone does). The loop starts once every worker serves the small upstreams
(``wait_served``); failed requests are counted per window and in all. The load average is printed: on a loaded machine every
figure grows, the quiet window's too. Figures: docs/resilience.md, "A 10 000-server upstream".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()

from tests.support.backends import Backends  # noqa: E402
from tests.support.nginx_lua import TEST_LUA_DIR, NginxLua  # noqa: E402
from tests.support.request_loop import RequestLoop, huge_body  # noqa: E402
from tests.support.tengine import Tengine, tengine_binary  # noqa: E402

LUA_PACKAGE = "roles/tengine_dyups/files/lua/swallowkeeper_dyups"
SMALL = 20
SETTLE = 1.5


def old_lua_dir(ref, into):
    """The Lua package of commit ``ref`` under ``into``: a directory to put first on lua_package_path."""
    package = Path(into) / "swallowkeeper_dyups"
    package.mkdir(parents=True)
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "--name-only", f"{ref}:{LUA_PACKAGE}"],
                           check=True, capture_output=True, text=True).stdout.split()
    for name in names:
        text = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{LUA_PACKAGE}/{name}"],
                              check=True, capture_output=True, text=True).stdout
        (package / name).write_text(text)
    return str(into)


def window(loop, workers, start, end):
    return {"stall_ms": round(max(loop.longest_silence(pid, start, end) for pid in workers) * 1000),
            "slowest_ms": round(loop.slowest(start, end) * 1000),
            "failed": sum(1 for at, *_rest in loop.failed if start < at <= end)}


def wait_served(nginx, paths, timeout=10.0):
    """Until every worker answered 200 for each of ``paths`` (new connections; the proxy listens with
    reuseport): a Tengine worker takes the POSTs that another worker answered at its dyups_read_msg_timeout
    timer, and a new worker's first timer comes up to 1 s after its start (ngx_http_dyups_init_process),
    so a loop started at once got 502 from it for the last small upstreams posted (the 152 failed requests
    of docs/resilience.md's first figures: all before the quiet window). Returns the seconds waited."""
    started = time.monotonic()
    workers = set(nginx.worker_pids())
    for path in paths:
        served = set()
        while served != workers:
            assert time.monotonic() - started < timeout, f"{path}: served by {served} of {workers}"
            status, _text, headers = nginx.request(path)
            if status == 200:
                served.add(int(headers.get("x-dyups-worker", 0)))
    return time.monotonic() - started


def measure(nginx, backend_port, servers, rounds):
    for index in range(SMALL):
        status, text, _headers = nginx.api("POST", f"/upstream/small{index}", f"server 127.0.0.1:{backend_port};")
        assert status == 200, text
    bodies = [huge_body(servers, 10), huge_body(servers, 11)]
    results = {"body_bytes": len(bodies[0]), "rounds": []}
    results["served_after_ms"] = round(wait_served(nginx, [f"/u/small{index}/" for index in range(SMALL)]) * 1000)
    with RequestLoop(nginx, [f"/u/small{index}/" for index in range(SMALL)]) as loop:
        time.sleep(1.0)
        workers = set(nginx.worker_pids())
        quiet_start = time.monotonic()
        time.sleep(SETTLE + 0.5)
        results["quiet"] = window(loop, workers, quiet_start, time.monotonic())
        for number in range(rounds):
            started = time.monotonic()
            status, text, _headers = nginx.api("POST", "/upstream/huge", bodies[number % 2], timeout=120)
            answered = time.monotonic()
            assert status == 200, text[:300]
            time.sleep(SETTLE)
            entry = window(loop, workers, started, time.monotonic())
            entry["post_ms"] = round((answered - started) * 1000)
            results["rounds"].append(entry)
    results["failed_requests"] = loop.failures
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", type=int, default=10000)
    parser.add_argument("--old", help="also measure the Lua files of this commit (e.g. 940f60b)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    report = {"load_average_before": os.getloadavg(), "servers": args.servers, "proxies": {}}
    with Backends(count=1) as backends, tempfile.TemporaryDirectory(prefix="bench-big-") as scratch:
        proxies = [("lua", lambda: NginxLua(workers=2, dict_size="64m"))]
        if args.old:
            old_dir = old_lua_dir(args.old, Path(scratch) / "old")

            def old_proxy():
                nginx = NginxLua(workers=2, dict_size="64m")
                nginx.lua_paths = [old_dir, str(TEST_LUA_DIR)]
                return nginx
            proxies.append((f"lua@{args.old}", old_proxy))
        if tengine_binary():
            proxies.append(("tengine", lambda: Tengine(workers=2, http_snippet="    dyups_shm_zone_size 16m;")))
        for name, make in proxies:
            nginx = make()
            nginx.start()
            try:
                report["proxies"][name] = measure(nginx, backends.ports[0], args.servers, args.rounds)
            finally:
                nginx.stop()
    report["load_average_after"] = os.getloadavg()
    if args.json:
        print(json.dumps(report, indent=1))
        return
    print(f"{args.servers} servers; load average before {report['load_average_before'][0]:.1f}, "
          f"after {report['load_average_after'][0]:.1f}")
    for name, result in report["proxies"].items():
        rounds = "; ".join(f"POST {r['post_ms']} ms, stall {r['stall_ms']} ms, slowest {r['slowest_ms']} ms, "
                           f"failed {r['failed']}" for r in result["rounds"])
        print(f"  {name} ({result['body_bytes']} B; small upstreams served by every worker after "
              f"{result['served_after_ms']} ms): quiet window: stall {result['quiet']['stall_ms']} ms, slowest "
              f"{result['quiet']['slowest_ms']} ms, failed {result['quiet']['failed']} | {rounds} | "
              f"failed requests in all {result['failed_requests']}")


if __name__ == "__main__":
    main()
