"""How new connections to the dyups interface spread over nginx's workers: a ``listen unix:`` socket against
TCP with ``reuseport`` (docs/security.md, "Why not the unix socket by default: measured").

    .venv/bin/python tests/benchmarks/bench_worker_spread.py [--trials 40] [--workers 2 4]

The watcher's drift check reads ``/detail`` from every worker, each read on a new connection, at most
``READS_PER_WORKER`` connections per worker (plugins/watcher/nginx_processes.py). For each flavor (a real
Tengine from ``$TENGINE_BIN``, stock nginx with the Lua modules) and worker count, one nginx serves the
interface's location (answering its worker's PID in ``X-Dyups-Worker``, as the role's does) on both a unix
socket and TCP ``reuseport``; each trial opens new connections one after another until every worker has
answered, or the budget of 16 per worker is spent. Prints, per case: trials that reached every worker, the
connections it took (median and max), and the answers per worker; then one sequence of answering workers.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.nginx_lua import MODULES, NGINX  # noqa: E402
from tests.support.ports import free_port  # noqa: E402
from tests.support.tengine import tengine_binary  # noqa: E402

BUDGET_PER_WORKER = 16   # READS_PER_WORKER of plugins/watcher/nginx_processes.py


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=5)
        self.socket_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(self.socket_path)


def answering_worker(target):
    """The PID of the worker that answered one request on a new connection (unix path, or TCP port)."""
    connection = UnixConnection(target) if isinstance(target, str) else http.client.HTTPConnection(
        "127.0.0.1", target, timeout=5)
    try:
        connection.request("GET", "/detail", headers={"Connection": "close"})
        answer = connection.getresponse()
        answer.read()
        return int(answer.getheader("X-Dyups-Worker"))
    finally:
        connection.close()


def start(flavor, workers, prefix, socket_path, port):
    handler = "dyups_interface;" if flavor == "tengine" else 'content_by_lua_block { ngx.say("{}") }'
    loads = "" if flavor == "tengine" else "".join(f"load_module {module};\n" for module in MODULES)
    location = f"location / {{ {handler} add_header X-Dyups-Worker $pid always; }}"
    temp = " ".join(f"{kind}_temp_path {prefix}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    with open(f"{prefix}/nginx.conf", "w", encoding="utf-8") as conf:
        conf.write(f"{loads}worker_processes {workers};\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
                   f"events {{ worker_connections 256; }}\nhttp {{ access_log off; {temp}\n"
                   f"  server {{ listen unix:{socket_path}; {location} }}\n"
                   f"  server {{ listen 127.0.0.1:{port} reuseport; {location} }}\n}}\n")
    binary = tengine_binary() if flavor == "tengine" else NGINX
    subprocess.run([binary, "-p", prefix, "-c", f"{prefix}/nginx.conf", "-e", f"{prefix}/error.log"], check=True,
                   timeout=60)
    time.sleep(1.0)
    with open(f"{prefix}/nginx.pid", encoding="ascii") as pid_file:
        return int(pid_file.read())


def measure(target, workers, trials):
    needed, shares = [], {}
    for _trial in range(trials):
        seen = set()
        for count in range(1, workers * BUDGET_PER_WORKER + 1):
            worker = answering_worker(target)
            seen.add(worker)
            shares[worker] = shares.get(worker, 0) + 1
            if len(seen) == workers:
                needed.append(count)
                break
        time.sleep(0.05)
    return {"trials": trials, "reached_every_worker": len(needed),
            "connections_median": statistics.median(needed) if needed else None,
            "connections_max": max(needed) if needed else None,
            "answers_per_worker": sorted(shares.values(), reverse=True)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args()
    with open("/proc/loadavg", encoding="ascii") as loadavg:
        print("load average", loadavg.read().split()[:3])
    for flavor in (["tengine"] if tengine_binary() else []) + ["nginx_lua"]:
        for workers in args.workers:
            prefix = tempfile.mkdtemp(prefix="worker-spread-")
            os.chmod(prefix, 0o755)
            socket_path, port = f"{prefix}/dyups.sock", free_port()
            master = start(flavor, workers, prefix, socket_path, port)
            try:
                found = {"unix": measure(socket_path, workers, args.trials),
                         "tcp_reuseport": measure(port, workers, args.trials)}
                ids = {}
                order = "".join(str(ids.setdefault(answering_worker(socket_path), len(ids))) for _n in range(70))
                print(flavor, workers, json.dumps(found), "unix order:", order, flush=True)
            finally:
                os.kill(master, signal.SIGTERM)


if __name__ == "__main__":
    main()
