"""Benchmarks of the stock-nginx Lua flavor, each against a baseline measured in the same run.

    .venv/bin/python tests/benchmarks/bench_lua.py            # full: ~10 minutes
    .venv/bin/python tests/benchmarks/bench_lua.py --short    # CI: under 2 minutes (or BENCH_SHORT=1)
    options: --runs N --duration S --connections C --workers W --rounds R --json --output FILE

1. Throughput and latency. Two proxies on the same backends (tests/support/backends.py, one
   nginx, 4 ports), with the same worker count, HTTP/1.1 and a keepalive pool of 64 to the
   backends: a plain stock nginx with a static ``upstream { server ...; }`` (no Lua module
   loaded at all: the baseline) and the Lua flavor (tests/support/nginx_lua.py, the role's
   reference configuration, ``set $dyups_upstream`` + ``proxy_pass http://dyups_balancer``).
   wrk runs against each in turn, ``--runs`` back-to-back pairs (the order alternates), once with
   ``--connections`` (enough to saturate this machine) and once with ``--light-connections``
   (below saturation, where latency is the proxy's own, not queueing). Reported:
   medians of requests/s, of wrk's p99 latency and of the proxy workers' CPU time per request
   (from /proc: less sensitive to other load on the machine than requests/s), and the median of
   the per-pair Lua/static ratios (a pair's two runs share the machine's conditions).

2. Propagation. For ``--rounds`` rounds: one kept-alive client connection pinned to each worker
   (identified by X-Dyups-Worker), a POST that switches the upstream between two disjoint
   backend sets, then each pinned connection requests until it gets the new set. Reported per
   round: the POST's own round trip, and the time from sending the POST until every worker
   served the new set; plus the number of answers from the old set after the POST returned
   (expected 0). Tengine's figure for the same thing is in ../shared/dyups-wire-contract.md.

Timing is reported, not asserted (tests/run.sh's bench stage runs --short and keeps the output).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()

from tests.support.backends import Backends  # noqa: E402
from tests.support.nginx_lua import NGINX, NginxLua, _children  # noqa: E402
from tests.support.ports import free_port, wait_port  # noqa: E402

PROXY_SETTINGS = """
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_next_upstream error timeout;
"""


class StaticNginx:
    """The baseline: stock nginx, no Lua, a static upstream with the same servers and keepalive."""

    def __init__(self, addresses, workers, keepalive=64):
        self.port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="nginx-static-"))
        self.prefix.chmod(0o755)
        servers = "\n".join(f"        server {address};" for address in addresses)
        temp = "\n".join(f"    {kind}_temp_path {self.prefix}/tmp_{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.prefix / "nginx.conf").write_text(f"""
worker_processes {workers};
daemon off;
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    upstream static_pool {{
{servers}
        keepalive {keepalive};
    }}
    server {{
        listen 127.0.0.1:{self.port} reuseport;
{PROXY_SETTINGS}
        location / {{ proxy_pass http://static_pool; }}
    }}
}}
""")
        self.process = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/"

    def __enter__(self):
        self.process = subprocess.Popen([NGINX, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
                                         "-e", str(self.prefix / "error.log")], start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.port)
        return self

    def __exit__(self, *exc):
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        shutil.rmtree(self.prefix, ignore_errors=True)


def wrk(url, duration, connections, headers=()):
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency"]
    for header in headers:
        command += ["-H", header]
    output = subprocess.run(command + [url], capture_output=True, text=True, timeout=duration + 60,
                            check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", output)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    return {"rps": rps, "p99_ms": float(p99.group(1)) * scale,
            "non_2xx": int(bad.group(1)) if bad else 0, "socket_errors": errors.group(1) if errors else None}


def cpu_seconds(pids):
    """User + system CPU time of these processes so far (from /proc)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measured_run(url, pids, args, connections):
    """One wrk run, plus the proxy workers' CPU time per request (less sensitive to other load)."""
    before = cpu_seconds(pids)
    result = wrk(url, args.duration, connections)
    used = cpu_seconds(pids) - before
    if result["non_2xx"] or result["socket_errors"]:
        raise RuntimeError(f"failed requests under load at {url}: {result}")
    result["cpu_us_per_request"] = used / (result["rps"] * args.duration) * 1e6
    return result


LUA_LOCATION = """
        location / {
            set $dyups_upstream bench;
            proxy_pass http://dyups_balancer;
        }
"""


def throughput(args, backends, connections):
    addresses = backends.addresses()
    lua = NginxLua(workers=args.workers, error_log_level="warn", keepalive=64, locations=LUA_LOCATION,
                   worker_header=False)
    samples = {"static": [], "lua": []}
    ratios = {"rps": [], "p99": [], "cpu": []}
    with StaticNginx(addresses, args.workers) as static:
        lua.start()
        try:
            status, text, _unused = lua.api("POST", "/upstream/bench", "".join(f"server {a};" for a in addresses))
            assert status == 200, text
            targets = {"static": (static.url, _children(static.process.pid)),
                       "lua": (lua.proxy_url + "/", lua.worker_pids())}
            for url, _pids in targets.values():       # warm-up, not counted
                wrk(url, 1, connections)
            for number in range(args.runs):
                order = ("static", "lua") if number % 2 == 0 else ("lua", "static")
                pair = {name: measured_run(*targets[name], args, connections) for name in order}
                for name, result in pair.items():
                    samples[name].append(result)
                ratios["rps"].append(pair["lua"]["rps"] / pair["static"]["rps"])
                ratios["p99"].append(pair["lua"]["p99_ms"] / pair["static"]["p99_ms"])
                ratios["cpu"].append(pair["lua"]["cpu_us_per_request"] / pair["static"]["cpu_us_per_request"])
        finally:
            lua.cleanup()
    report = {}
    for name, runs in samples.items():
        report[name] = {"rps_median": round(statistics.median(r["rps"] for r in runs)),
                        "p99_ms_median": round(statistics.median(r["p99_ms"] for r in runs), 3),
                        "cpu_us_per_request_median": round(statistics.median(r["cpu_us_per_request"] for r in runs), 2),
                        "rps_runs": [round(r["rps"]) for r in runs],
                        "p99_ms_runs": [round(r["p99_ms"], 3) for r in runs]}
    report["lua_vs_static"] = {key: round(statistics.median(values), 3) for key, values in ratios.items()}
    report["lua_vs_static"]["rps_pairs"] = [round(value, 3) for value in ratios["rps"]]
    report["connections"] = connections
    return report


def pinned_connections(nginx, workers, attempts=200):
    """One kept-alive connection per worker: {worker pid: HTTPConnection}."""
    pinned, spare = {}, []
    for _unused in range(attempts):
        connection = http.client.HTTPConnection("127.0.0.1", nginx.proxy_port, timeout=5)
        connection.request("GET", "/u/switch/")
        response = connection.getresponse()
        response.read()
        worker = response.getheader("X-Dyups-Worker")
        if worker not in pinned:
            pinned[worker] = connection
        else:
            spare.append(connection)
        if len(pinned) == workers:
            break
    for connection in spare:
        connection.close()
    if len(pinned) != workers:
        raise RuntimeError(f"could not reach all {workers} workers")
    return pinned


def propagation(args, backends):
    ports = backends.ports
    sets = [set(ports[:2]), set(ports[2:])]
    nginx = NginxLua(workers=args.workers, error_log_level="warn")
    nginx.start()
    try:
        def post(chosen):
            body = "".join(f"server 127.0.0.1:{port};" for port in sorted(chosen))
            started = time.perf_counter()
            status, text, _unused = nginx.api("POST", "/upstream/switch", body)
            answered = time.perf_counter()
            assert status == 200, text
            return started, answered

        post(sets[0])
        pinned = pinned_connections(nginx, args.workers)
        post_rtt, all_workers, stale = [], [], 0
        for number in range(args.rounds):
            chosen = sets[(number + 1) % 2]
            started, answered = post(chosen)
            waiting = dict(pinned)
            done_at = None
            for _unused in range(1000):
                for worker, connection in list(waiting.items()):
                    connection.request("GET", "/u/switch/")
                    response = connection.getresponse()
                    port = int(response.read())
                    if port in chosen:
                        del waiting[worker]
                    else:
                        stale += 1
                if not waiting:
                    done_at = time.perf_counter()
                    break
            if done_at is None:
                raise RuntimeError("a worker never served the new set")
            post_rtt.append(answered - started)
            all_workers.append(done_at - started)
        for connection in pinned.values():
            connection.close()
    finally:
        nginx.cleanup()

    def summary(values):
        ordered = sorted(values)
        return {"median_ms": round(statistics.median(ordered) * 1000, 3),
                "p90_ms": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 3),
                "max_ms": round(ordered[-1] * 1000, 3)}

    return {"rounds": args.rounds, "workers": args.workers, "post_round_trip": summary(post_rtt),
            "post_to_every_worker_new_set": summary(all_workers), "old_set_answers_after_post": stale}


def machine():
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nginx_version = subprocess.run([NGINX, "-v"], capture_output=True, text=True, check=False).stderr.strip()
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True, check=False).stdout.splitlines()[0]
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpus": os.cpu_count(), "cpu": cpu,
            "kernel": platform.release(), "nginx": nginx_version, "wrk": wrk_version}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", default=os.environ.get("BENCH_SHORT") == "1")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--duration", type=int)
    parser.add_argument("--connections", type=int, default=32, help="wrk connections: enough to saturate")
    parser.add_argument("--light-connections", type=int, default=4, help="wrk connections: below saturation")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--output")
    args = parser.parse_args(argv)
    args.runs = args.runs or (2 if args.short else 7)   # --short: CI proves the benchmark runs; figures come from the long run
    args.duration = args.duration or (3 if args.short else 10)
    args.rounds = args.rounds or (30 if args.short else 300)
    if not shutil.which("wrk"):
        parser.error("wrk is not installed (tests/tools/install-system-deps.sh installs it)")
    report = {"machine": machine(), "settings": {"runs": args.runs, "duration_s": args.duration,
                                                 "connections": [args.connections, args.light_connections],
                                                 "workers": args.workers,
                                                 "backend_ports": 4, "short": args.short}}
    with Backends(count=4) as backends:
        report["throughput"] = throughput(args, backends, args.connections)
        report["throughput_light"] = throughput(args, backends, args.light_connections)
        report["propagation"] = propagation(args, backends)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(report, indent=1))
    if args.json:
        print(json.dumps(report, indent=1))
        return 0
    p = report["propagation"]
    print(f"{report['machine']['date']}, {report['machine']['cpus']} CPUs ({report['machine']['cpu']}), "
          f"{report['machine']['nginx']}, {report['machine']['wrk']}")
    for key in ("throughput", "throughput_light"):
        t = report[key]
        print(f"\nwrk -t1 -c{t['connections']} -d{args.duration}s --latency, {args.runs} back-to-back pairs "
              f"(order alternating); {args.workers} workers each")
        print("| proxy | requests/s (median) | p99 ms (median) | proxy CPU us/request (median) | runs (req/s) |")
        print("| --- | --- | --- | --- | --- |")
        for name in ("static", "lua"):
            print(f"| {name} | {t[name]['rps_median']} | {t[name]['p99_ms_median']} | "
                  f"{t[name]['cpu_us_per_request_median']} | {t[name]['rps_runs']} |")
        ratio = t["lua_vs_static"]
        print(f"Lua / static, median of the per-pair ratios: requests/s {ratio['rps']}, p99 {ratio['p99']}, "
              f"CPU per request {ratio['cpu']}")
    print()
    print(f"propagation, {p['rounds']} rounds, {p['workers']} workers: POST round trip {p['post_round_trip']}; "
          f"POST sent -> every worker on the new set {p['post_to_every_worker_new_set']}; "
          f"old-set answers after the POST returned: {p['old_set_answers_after_post']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
