"""A throwaway Consul cluster on loopback: three servers and a few client agents (for benchmarks).

    from tests.support.consul_cluster import ConsulCluster

    with ConsulCluster(servers=3, clients=3, http_max_conns_per_client=20000) as cluster:
        cluster.servers[0].url        # "http://127.0.0.1:<port>" of a server's HTTP API
        cluster.clients[1].http_port  # a client agent's HTTP port (what a proxy's watcher talks to)
        cluster.server_cpu_seconds()  # CPU time the server processes used so far (from /proc)

Every agent is a real ``consul agent`` (not -dev) with its own data directory in one temporary
directory, its own ports on 127.0.0.1 (HTTP, serf LAN, serf WAN, server RPC; no DNS, no gRPC), and
joins the others with ``retry_join``. ``start()`` returns once a leader is elected and every agent
is a live member; ``stop()`` (also on exit of the ``with`` block, on failure and at interpreter exit)
ends every process (SIGTERM, then SIGKILL) and removes the temporary directory.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.support.consul import consul_binary
from tests.support.nginx_lua import end_process_group, start_process_group
from tests.support.ports import free_ports

_LIVE = set()


def process_cpu_seconds(pid):
    """CPU time (user + system) of every thread of ``pid`` so far, in seconds, from
    /proc/PID/task/*/schedstat (nanoseconds; /proc/PID/stat counts in 10 ms ticks, too coarse for
    one flip). Threads that already ended are not counted: Go keeps its threads."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as handle:
                total += int(handle.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended while we read
    return total / 1e9


class Agent:
    """One agent of the cluster (server or client)."""

    def __init__(self, binary, workdir, name, server, join, bootstrap_expect, limits):
        self.binary = binary
        self.name = name
        self.server = server
        self.dir = Path(workdir) / name
        (self.dir / "data").mkdir(parents=True)
        self.ports = dict(zip(("http", "serf_lan", "serf_wan", "server"), free_ports(4)))
        self.join = join
        self.bootstrap_expect = bootstrap_expect
        self.limits = limits
        self.process = None

    @property
    def http_port(self):
        return self.ports["http"]

    @property
    def url(self):
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def serf_address(self):
        return f"127.0.0.1:{self.ports['serf_lan']}"

    def start(self):
        config = {
            "node_name": self.name, "datacenter": "dc1", "data_dir": str(self.dir / "data"),
            "bind_addr": "127.0.0.1", "client_addr": "127.0.0.1", "server": self.server,
            "ports": {"http": self.ports["http"], "dns": -1, "grpc": -1, "serf_lan": self.ports["serf_lan"],
                      "serf_wan": self.ports["serf_wan"], "server": self.ports["server"]},
            "retry_join": list(self.join), "retry_interval": "1s", "disable_update_check": True,
            "enable_script_checks": False, "log_level": "warn",
            "limits": self.limits,
        }
        if self.server:
            config["bootstrap_expect"] = self.bootstrap_expect
        path = self.dir / "config.json"
        path.write_text(json.dumps(config))
        env = dict(os.environ, CHECKPOINT_DISABLE="1")
        env.pop("CONSUL_HTTP_TOKEN", None)
        self.process = start_process_group([self.binary, "agent", "-config-file", str(path)],
                                           self.dir / "agent.log", env=env)

    def log_tail(self, size=3000):
        try:
            return (self.dir / "agent.log").read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def get(self, path, timeout=5.0):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as answer:
            return json.loads(answer.read())

    def stop(self, timeout=15.0):
        process, self.process = self.process, None
        end_process_group(process, signal.SIGTERM, timeout)


class ConsulCluster:
    """``servers`` server agents (bootstrap_expect = servers) and ``clients`` client agents."""

    def __init__(self, servers=3, clients=1, http_max_conns_per_client=200, binary=None):
        self.binary = binary or consul_binary()
        self.workdir = tempfile.mkdtemp(prefix="consul-cluster-")
        limits = {"http_max_conns_per_client": int(http_max_conns_per_client)}
        self.servers = []
        for number in range(servers):
            self.servers.append(Agent(self.binary, self.workdir, f"server-{number + 1}", True, (), servers, limits))
        join = [server.serf_address for server in self.servers]
        for server in self.servers:
            server.join = [address for address in join if address != server.serf_address]
        self.clients = [Agent(self.binary, self.workdir, f"client-{number + 1}", False, join, servers, limits)
                        for number in range(clients)]

    @property
    def agents(self):
        return self.servers + self.clients

    def start(self, timeout=90.0):
        _LIVE.add(self)
        try:
            for agent in self.agents:
                agent.start()
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        names = {agent.name for agent in self.agents}
        while True:
            for agent in self.agents:
                if agent.process.poll() is not None:
                    raise RuntimeError(f"{agent.name} exited with {agent.process.returncode}:\n{agent.log_tail()}")
            try:
                if all(agent.get("/v1/status/leader") for agent in self.agents):
                    alive = {member["Name"] for member in self.servers[0].get("/v1/agent/members")
                             if member.get("Status") == 1}
                    if names <= alive:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster was not ready after {timeout}s:\n{self.servers[0].log_tail()}")
            time.sleep(0.2)

    def leader(self, timeout=30.0):
        """The server that is leader now (its server RPC address is what /v1/status/leader names);
        waits up to ``timeout`` seconds for an election."""
        deadline = time.monotonic() + timeout
        while True:
            address = self.servers[0].get("/v1/status/leader")
            for server in self.servers:
                if address == f"127.0.0.1:{server.ports['server']}":
                    return server
            if time.monotonic() > deadline:
                raise RuntimeError(f"no server of this cluster is the leader {address!r} after {timeout}s")
            time.sleep(0.2)

    def server_cpu_seconds(self):
        return sum(process_cpu_seconds(server.process.pid) for server in self.servers)

    def stop(self):
        for agent in reversed(self.agents):
            agent.stop()
        _LIVE.discard(self)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@atexit.register
def _stop_leftovers():
    for cluster in list(_LIVE):
        cluster.stop()
