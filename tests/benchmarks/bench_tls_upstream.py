"""HTTPS upstream servers: what the Lua flavor's missing TLS session reuse costs, against Tengine (dyups)
and a static ``proxy_pass https://`` upstream on stock nginx, in the same run.

    .venv/bin/python tests/benchmarks/bench_tls_upstream.py [--duration S] [--connections C] [--runs N] [--json]

Not in CI (about 2 minutes at the defaults); the figures are in docs/lua-flavor.md, "HTTPS upstream servers".
Needs $TENGINE_BIN (tests/tools/get-tengine.sh) for the Tengine rows; without it they are left out.

Set-up: one TLS backend (a stock nginx, one worker, two ``listen ... ssl`` ports, self-signed
certificate, ``return 200``), which logs ``$ssl_session_reused $connection_requests`` for every
request. Three proxies, one worker each, all with ``proxy_ssl_session_reuse on`` (nginx's default) and
both backend ports in the upstream:

* ``lua``: the Lua flavor (tests/support/nginx_lua.py), ``proxy_pass https://dyups_balancer``;
* ``tengine``: Tengine with dyups, ``proxy_pass https://$dyups_upstream``;
* ``static``: stock nginx, ``upstream { server ...; server ...; keepalive 64; }``, ``proxy_pass https://``.

Two modes each: ``close`` (``proxy_set_header Connection close``: a new upstream connection for every
request, the case session reuse is for) and ``keepalive`` (HTTP/1.1 with an empty ``Connection`` header:
the upstream keepalive pool, 64 connections per worker). wrk sends ``--connections`` kept-alive client
connections for ``--duration`` seconds per run; runs alternate between the proxies, ``--runs`` times.

Reported per proxy and mode (medians over the runs): requests/s, wrk's p50 and p99 latency; from the
backend's log, new upstream connections per request and how many of them were full handshakes (not
resumed); CPU time per request of the proxy's worker and of the backend's worker (from /proc).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()

from tests.benchmarks.bench_lua import cpu_seconds, machine  # noqa: E402
from tests.support.consul_tls import self_signed  # noqa: E402
from tests.support.nginx_lua import NGINX, NginxLua, _children  # noqa: E402
from tests.support.ports import free_port, wait_port  # noqa: E402
from tests.support.tengine import Tengine, tengine_binary  # noqa: E402

MODES = {"close": 'proxy_set_header Connection close;', "keepalive": 'proxy_set_header Connection "";'}


class Nginx:
    """A stock nginx (or Tengine) from a configuration text, in its own prefix, one worker."""

    def __init__(self, name, http, binary=NGINX):
        self.prefix = Path(tempfile.mkdtemp(prefix=f"bench-tls-{name}-"))
        self.prefix.chmod(0o755)
        self.binary = binary
        temp = "\n".join(f"    {kind}_temp_path {self.prefix}/tmp_{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        (self.prefix / "nginx.conf").write_text(f"""
worker_processes 1;
daemon off;
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
{temp}
{http.replace("PREFIX", str(self.prefix))}
}}
""")
        self.process = None

    def start(self, port):
        self.process = subprocess.Popen([self.binary, "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf"),
                                         "-e", str(self.prefix / "error.log")], start_new_session=True,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(port)
        return self

    def workers(self):
        return _children(self.process.pid)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)
        shutil.rmtree(self.prefix, ignore_errors=True)


def tls_backend(ports, cert, key):
    servers = "\n".join(f"""    server {{
        listen 127.0.0.1:{port} ssl backlog=4096;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_session_cache shared:bench:10m;
        location / {{ return 200 "$server_port\\n"; }}
    }}""" for port in ports)
    return Nginx("backend", f"""    log_format reuse '$ssl_session_reused $connection_requests';
    access_log PREFIX/access.log reuse;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
{servers}""")


def location(target, mode):
    return f"""
        location / {{
            set $dyups_upstream bench;
            proxy_pass {target};
            proxy_http_version 1.1;
            {MODES[mode]}
            proxy_ssl_session_reuse on;
        }}
"""


def static_proxy(port, addresses, mode):
    servers = "\n".join(f"        server {address};" for address in addresses)
    return Nginx("static", f"""    access_log off;
    upstream static_tls {{
{servers}
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass https://static_tls;
            proxy_http_version 1.1;
            {MODES[mode]}
            proxy_ssl_session_reuse on;
        }}
    }}""").start(port)


class Proxy:
    """One proxy under test: url, worker PIDs, stop()."""

    def __init__(self, kind, mode, addresses):
        self.kind = kind
        body = "".join(f"server {address}; " for address in addresses) + "keepalive 64;"
        if kind == "static":
            self.port = free_port()
            self.server = static_proxy(self.port, addresses, mode)
            self.pids = self.server.workers
            return
        if kind == "lua":
            self.server = NginxLua(workers=1, error_log_level="warn", keepalive=64, worker_header=False,
                                   locations=location("https://dyups_balancer", mode)).start()
        else:
            self.server = Tengine(workers=1, error_log_level="warn", worker_header=False,
                                  locations=location("https://$dyups_upstream", mode)).start()
        self.port = self.server.proxy_port
        self.pids = self.server.worker_pids
        status = self.server.api("POST", "/upstream/bench", body)[:2]
        if status != (200, "success"):
            raise RuntimeError(f"{kind}: POST /upstream/bench {body!r} -> {status}")

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}/"

    def stop(self):
        if self.kind == "static":
            self.server.stop()
        else:
            self.server.cleanup()


def wrk(url, duration, connections):
    output = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
                            capture_output=True, text=True, timeout=duration + 60, check=True).stdout

    def latency(percent):
        found = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s)\b", output, re.M)
        return float(found.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[found.group(2)]

    requests = int(re.search(r"(\d+) requests in", output).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: (.*)", output)
    if bad or errors:
        raise RuntimeError(f"failed requests at {url}: {output}")
    return {"requests": requests, "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
            "p50_ms": latency(50), "p99_ms": latency(99)}


def one_run(proxy, backend, args):
    log = backend.prefix / "access.log"
    offset = log.stat().st_size if log.exists() else 0
    proxy_pids, backend_pids = proxy.pids(), backend.workers()
    proxy_cpu, backend_cpu = cpu_seconds(proxy_pids), cpu_seconds(backend_pids)
    result = wrk(proxy.url, args.duration, args.connections)
    proxy_cpu, backend_cpu = cpu_seconds(proxy_pids) - proxy_cpu, cpu_seconds(backend_pids) - backend_cpu
    with log.open("rb") as lines:
        lines.seek(offset)
        entries = [line.split() for line in lines.read().decode().splitlines() if line.strip()]
    new = [reused for reused, count in entries if count == "1"]
    requests = len(entries)
    result.update({
        "backend_requests": requests,
        "new_connections_per_request": len(new) / requests,
        "full_handshakes_per_request": sum(1 for reused in new if reused != "r") / requests,
        "resumed_share_of_new": (sum(1 for reused in new if reused == "r") / len(new)) if new else None,
        "proxy_cpu_us_per_request": proxy_cpu / requests * 1e6,
        "backend_cpu_us_per_request": backend_cpu / requests * 1e6,
    })
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    kinds = ["lua", "static"] + (["tengine"] if tengine_binary() else [])
    work = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    cert, key = self_signed(work)
    ports = [free_port(), free_port()]
    backend = tls_backend(ports, cert, key).start(ports[0])
    wait_port(ports[1])
    addresses = [f"127.0.0.1:{port}" for port in ports]
    results = {}
    try:
        for mode in MODES:
            samples = {kind: [] for kind in kinds}
            for run in range(args.runs):
                order = kinds if run % 2 == 0 else kinds[::-1]
                for kind in order:
                    proxy = Proxy(kind, mode, addresses)
                    try:
                        samples[kind].append(one_run(proxy, backend, args))
                    finally:
                        proxy.stop()
            for kind in kinds:
                runs = samples[kind]
                results[f"{kind}/{mode}"] = {key: (round(statistics.median(r[key] for r in runs), 4)
                                                   if all(r[key] is not None for r in runs) else None)
                                             for key in runs[0]}
    finally:
        backend.stop()
        shutil.rmtree(work, ignore_errors=True)
    report = {"machine": machine(), "tengine": tengine_binary(), "duration_s": args.duration,
              "connections": args.connections, "runs": args.runs, "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(json.dumps(report["machine"]))
    print(f"{'proxy/mode':20} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'new conn/req':>12} {'full hs/req':>11} "
          f"{'proxy CPU us/req':>16} {'backend CPU us/req':>18}")
    for name, row in results.items():
        print(f"{name:20} {row['rps']:8.0f} {row['p50_ms']:7.2f} {row['p99_ms']:7.2f} "
              f"{row['new_connections_per_request']:12.4f} {row['full_handshakes_per_request']:11.4f} "
              f"{row['proxy_cpu_us_per_request']:16.0f} {row['backend_cpu_us_per_request']:18.0f}")


if __name__ == "__main__":
    main()
