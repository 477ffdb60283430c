"""The two stacks the resilience suite runs, and what it measures about them.

Both stacks serve the same two services from the same real backends, through nginx with two
workers, on loopback:

* ``Web``: HTTP (tests/support/backends.py, one nginx answering on several ports);
* ``Ws``: websockets (ws_echo.py, several ports), location ``/ws/`` with the usual upgrade headers.

Approach A (``stack_a``): this collection. Stock nginx with the Lua flavor of the dyups interface
(tests/support/nginx_lua.py), ``set $dyups_upstream NAME; proxy_pass http://dyups_balancer``, or
(``flavor="tengine"``) a real Tengine with its dyups module (tests/support/tengine.py),
``set $dyups_upstream NAME; proxy_pass http://$dyups_upstream``, and
the real watcher process (tests/support/watcher.py) with the product's defaults (retry, wait,
drift and resync intervals as documented in docs/watcher.md), reading a real Consul agent.

Approach B (``stack_b``): the reload approach. Stock nginx without Lua, ``include`` of the
upstream file, ``proxy_pass http://NAME`` (static), and reload_approach.py (consul-template's
behaviour: render, ``nginx -s reload``). ``worker_shutdown_timeout`` is set or not. ``binary`` runs
the same configuration on Tengine instead (``tengine -s reload``).

Measured here: nginx's processes (``NginxAccounting``: workers, workers "shutting down" left by
reloads, RSS and PSS of all nginx processes, sampled over time), the load (``Load``: loadgen.py
as a subprocess) and what Consul says should serve (``Fleet``).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from tests.support.backends import Backends
from tests.support.consul import ConsulAgent
from tests.support.nginx_lua import NGINX, NginxLua, _children, http_request
from tests.support.ports import free_port, free_ports, wait_port
from tests.support.tengine import Tengine
from tests.support.watcher import WatcherProcess

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _dyups_wire, _upstream_file

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PYTHON = sys.executable
SERVICES = ("Web", "Ws")

WS_LOCATION = """
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_read_timeout 60s;"""

A_LOCATIONS = f"""
        location /ws/ {{
            set $dyups_upstream Ws;
            proxy_pass http://dyups_balancer;{WS_LOCATION}
        }}
        location / {{
            set $dyups_upstream Web;
            proxy_pass http://dyups_balancer;
        }}
"""

# The same for Tengine: the upstream through a variable (the role's README), Tengine's own balancer.
AT_LOCATIONS = f"""
        location /ws/ {{
            set $dyups_upstream Ws;
            proxy_pass http://$dyups_upstream;{WS_LOCATION}
        }}
        location / {{
            set $dyups_upstream Web;
            proxy_pass http://$dyups_upstream;
        }}
"""

# The watcher with the product's defaults (docs/watcher.md), not the test helper's faster ones.
PRODUCT_WATCHER = {"consul_wait": 300.0, "retry_initial": 0.5, "retry_max": 5.0, "log_level": "info"}


# -- nginx processes ------------------------------------------------------------------------------
def proc_kb(pid, key, name="status"):
    """The kB figure of line ``key`` in /proc/PID/NAME (status: VmRSS; smaps_rollup: Pss); 0 if gone."""
    try:
        with open(f"/proc/{pid}/{name}") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _cmdline(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def nginx_snapshot(master_pid):
    """{"workers", "shutting_down", "rss_kb", "pss_kb"} of a master and all its children, now."""
    pids = [master_pid] + _children(master_pid)
    shutting = sum(1 for pid in pids[1:] if "shutting down" in _cmdline(pid))
    return {"processes": len(pids), "workers": len(pids) - 1 - shutting, "shutting_down": shutting,
            "rss_kb": sum(proc_kb(pid, "VmRSS") for pid in pids),
            "pss_kb": sum(proc_kb(pid, "Pss", "smaps_rollup") for pid in pids)}


class NginxAccounting(threading.Thread):
    """Samples ``nginx_snapshot`` every ``interval`` seconds until ``stop()``; ``summary()``."""

    def __init__(self, master_pid, interval=0.5):
        super().__init__(daemon=True)
        self.master_pid = master_pid
        self.interval = interval
        self.samples = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            sample = nginx_snapshot(self.master_pid)
            sample["t"] = time.time()
            self.samples.append(sample)
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)
        return self

    def summary(self, until=None):
        samples = [s for s in self.samples if until is None or s["t"] <= until]
        if not samples:
            return {}
        shutting = [s["shutting_down"] for s in samples]
        return {
            "samples": len(samples),
            "shutting_down_max": max(shutting),
            "shutting_down_mean": round(sum(shutting) / len(shutting), 2),
            "shutting_down_last": shutting[-1],
            "rss_mb_first": round(samples[0]["rss_kb"] / 1024, 1),
            "rss_mb_max": round(max(s["rss_kb"] for s in samples) / 1024, 1),
            "rss_mb_last": round(samples[-1]["rss_kb"] / 1024, 1),
            "pss_mb_first": round(samples[0]["pss_kb"] / 1024, 1),
            "pss_mb_max": round(max(s["pss_kb"] for s in samples) / 1024, 1),
            "pss_mb_last": round(samples[-1]["pss_kb"] / 1024, 1),
            "processes_max": max(s["processes"] for s in samples),
        }


# -- approach B's nginx -----------------------------------------------------------------------------
class StockNginx:
    """Stock nginx (no Lua) proxying to static upstreams from an included file; reloaded by command."""

    def __init__(self, upstream_file, workers=2, worker_shutdown_timeout=None, reuseport=True, binary=None):
        self.binary = binary or NGINX
        self.upstream_file = str(upstream_file)
        self.workers = workers
        self.worker_shutdown_timeout = worker_shutdown_timeout
        self.reuseport = reuseport
        self.proxy_port = free_port()
        self.prefix = Path(tempfile.mkdtemp(prefix="nginx-reload-"))
        self.prefix.chmod(0o755)
        self.conf_path = self.prefix / "nginx.conf"
        self.error_log = self.prefix / "error.log"
        self.process = None

    def config_text(self):
        temp = "\n".join(f"    {kind}_temp_path {self.prefix}/tmp_{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        shutdown = (f"worker_shutdown_timeout {self.worker_shutdown_timeout};"
                    if self.worker_shutdown_timeout else "# no worker_shutdown_timeout")
        return f"""# approach B (tests/resilience/stack.py): static upstreams, reloaded on every change
worker_processes {self.workers};
{shutdown}
daemon off;
pid {self.prefix}/nginx.pid;
error_log {self.error_log} notice;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    include {self.upstream_file};
    server {{
        listen 127.0.0.1:{self.proxy_port}{" reuseport" if self.reuseport else ""};
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_next_upstream error timeout;
        proxy_connect_timeout 2s;
        proxy_read_timeout 10s;
        location /ws/ {{
            proxy_pass http://Ws;{WS_LOCATION}
        }}
        location / {{
            proxy_pass http://Web;
        }}
    }}
}}
"""

    def command(self, *extra):
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf_path), "-e", str(self.error_log), *extra]

    def reload_command(self):
        return " ".join(self.command("-s", "reload"))

    def start(self, timeout=15.0):
        self.conf_path.write_text(self.config_text())
        out = open(self.prefix / "stderr.log", "ab")
        try:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            out.close()
        wait_port(self.proxy_port, timeout=timeout)
        deadline = time.monotonic() + timeout
        while len(_children(self.process.pid)) < self.workers and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def master_pid(self):
        return self.process.pid

    def stop(self, timeout=10.0):
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        shutil.rmtree(self.prefix, ignore_errors=True)


class Subprocess:
    """A Python helper script as a child process, stopped with SIGTERM (SIGKILL after a timeout)."""

    def __init__(self, argv, log_path, ready_line=None, timeout=30.0):
        self.log_path = Path(log_path)
        self.lines = []
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen([PYTHON, *map(str, argv)], stdout=subprocess.PIPE, stderr=log,
                                        stdin=subprocess.DEVNULL, cwd=str(ROOT), start_new_session=True,
                                        env=dict(os.environ, PYTHONUNBUFFERED="1"))
        log.close()
        self.ready = threading.Event()
        self.ready_line = ready_line
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        if ready_line and not self.ready.wait(timeout):
            self.stop()
            raise RuntimeError(f"{argv[0]} did not print {ready_line!r} within {timeout}s: {self.tail()}")

    def _read(self):
        with open(self.log_path, "ab") as log:
            for raw in self.process.stdout:
                log.write(raw)
                log.flush()
                line = raw.decode("utf-8", "replace").rstrip()
                self.lines.append(line)
                if self.ready_line and line == self.ready_line:
                    self.ready.set()

    def tail(self):
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def alive(self):
        return self.process.poll() is None

    def stop(self, timeout=30.0):
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        self.reader.join(timeout=5)
        return self.process.returncode


class Load:
    """loadgen.py as a subprocess: ``start()`` returns once every websocket client is connected."""

    def __init__(self, workdir, port, rate=300, connections=16, ws=0, ws_lifetime="", reuse=100, cap=3600,
                 record_backends=False):
        self.output = Path(workdir) / f"load-{port}-{time.monotonic_ns()}.json"
        self.argv = [HERE / "loadgen.py", "--port", port, "--rate", rate, "--connections", connections,
                     "--ws", ws, "--reuse", reuse, "--duration", cap, "--output", self.output]
        if record_backends:
            self.argv.append("--record-backends")
        if ws_lifetime:
            self.argv += ["--ws-lifetime", ws_lifetime]
        self.process = None

    def start(self):
        self.process = Subprocess(self.argv, str(self.output) + ".log", ready_line="ready", timeout=60)
        return self

    def stop(self):
        self.process.stop(timeout=60)
        return json.loads(self.output.read_text())


# -- what Consul says ----------------------------------------------------------------------------------
class Fleet:
    """The instances of Web and Ws in Consul (registered through the agent API, TTL checks) and what
    should serve; ``event(rng)`` makes one random scale-out, scale-in or health flip, never leaving a
    service with fewer than ``keep`` passing instances."""

    def __init__(self, agent, ports, initial=3, keep=2):
        self.agent = agent
        self.ports = {service: list(service_ports) for service, service_ports in ports.items()}
        self.initial = initial
        self.keep = keep
        self.instances = {}   # id -> {"service", "port", "passing"}

    @staticmethod
    def instance_id(service, port):
        return f"{service}-{port}"

    def register(self, service, port, wait=True):
        instance = self.instance_id(service, port)
        self.agent.register(service, instance, port=port, status="passing", wait=wait)
        self.instances[instance] = {"service": service, "port": port, "passing": True}
        return instance

    def status(self, instance):
        """The instance's check status as Consul reports it now (None when not registered)."""
        data = self.instances[instance]
        for entry in self.agent.get(f"/v1/health/service/{data['service']}"):
            if entry["Service"]["ID"] == instance:
                statuses = [check["Status"] for check in entry.get("Checks") or []]
                return next((s for s in ("critical", "warning") if s in statuses), "passing")
        return None

    def populate(self):
        for service, ports in self.ports.items():
            for port in ports[:self.initial]:
                self.register(service, port)
        return self

    def expected(self):
        """{service: sorted ["127.0.0.1:port", ...]} of the passing instances."""
        out = {service: [] for service in self.ports}
        for data in self.instances.values():
            if data["passing"]:
                out.setdefault(data["service"], []).append(f"127.0.0.1:{data['port']}")
        return {service: sorted(addresses) for service, addresses in out.items()}

    def passing(self, service):
        return [i for i, d in self.instances.items() if d["service"] == service and d["passing"]]

    def options(self):
        moves = []
        for service, ports in self.ports.items():
            used = {d["port"] for d in self.instances.values() if d["service"] == service}
            free = [port for port in ports if port not in used]
            passing = self.passing(service)
            failing = [i for i, d in self.instances.items() if d["service"] == service and not d["passing"]]
            if free:
                moves.append(("scale_out", service, free[0]))
            if len(passing) > self.keep:
                moves.append(("scale_in", service, sorted(passing)[0]))
                moves.append(("health_fail", service, sorted(passing)[-1]))
            if failing:
                moves.append(("health_pass", service, sorted(failing)[0]))
                moves.append(("scale_in", service, sorted(failing)[0]))
        return moves

    def apply(self, move, wait=True):
        kind, service, target = move
        if kind == "scale_out":
            self.register(service, target, wait=wait)
        elif kind == "scale_in":
            self.agent.deregister(target, wait=wait)
            del self.instances[target]
        elif kind == "health_fail":
            self.agent.set_status(target, "critical", wait=wait, service=service)
            self.instances[target]["passing"] = False
        else:
            self.agent.set_status(target, "passing", wait=wait, service=service)
            self.instances[target]["passing"] = True
        return f"{kind} {service} {target}"

    def event(self, rng, wait=True):
        return self.apply(rng.choice(self.options()), wait=wait)

    def definitions(self):
        """The instances as service definitions of an agent's config file (see ConsulWithDefinitions)."""
        return [{"name": d["service"], "id": instance, "address": "127.0.0.1", "port": d["port"],
                 "check": {"ttl": "600s", "status": "passing" if d["passing"] else "critical"}}
                for instance, d in sorted(self.instances.items())]


class ConsulWithDefinitions(ConsulAgent):
    """A -dev agent whose config file also defines services, as a real agent's config directory does:
    a killed and restarted agent registers them again at start. ``definitions`` is read at ``start()``."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.definitions = []

    def _config(self):
        path = super()._config()
        config = json.loads(path.read_text())
        config["services"] = self.definitions
        path.write_text(json.dumps(config))
        return path


# -- reading the state back ---------------------------------------------------------------------------
def detail(api_port, timeout=2.0):
    """{name: sorted addresses} from the interface's /detail; None when it does not answer."""
    try:
        status, text, _unused = http_request(api_port, "GET", _dyups_wire.DETAIL_PATH, timeout=timeout)
    except OSError:
        return None
    if status == 204:
        return {}
    if status != 200:
        return None
    return {name: sorted(server.address for server in servers if not server.down)
            for name, servers in _dyups_wire.parse_detail(text).items()}


def file_state(path):
    """{name: sorted addresses} of the upstream file (parsed: raises ValidationError if invalid)."""
    return {name: sorted(s.address for s in upstream.servers if not s.down)
            for name, upstream in _upstream_file.read(str(path)).items()}


def serves(proxy_port, expected, tries=20):
    """True when ``tries`` requests on new connections to / and /ws/ all come from the expected sets."""
    for _unused in range(tries):
        for path, service in (("/", "Web"), ("/ws/", "Ws")):
            status, text, _unused = http_request(proxy_port, "GET", path, timeout=2)
            if status != 200 or f"127.0.0.1:{text.strip()}" not in expected[service]:
                return False
    return True


def wait_until(predicate, timeout, interval=0.05):
    """Seconds until ``predicate()`` was true, or None after ``timeout``."""
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except Exception:  # a server restarting: keep polling until the deadline
            pass
        if time.monotonic() - started > timeout:
            return None
        time.sleep(interval)


# -- the stacks ----------------------------------------------------------------------------------------
class Stack:
    """What both approaches share: Consul, HTTP backends, websocket backends, the fleet."""

    def __init__(self, workdir, agent, backends, ws, ws_ports, fleet):
        self.workdir = Path(workdir)
        self.agent = agent
        self.backends = backends
        self.ws = ws
        self.ws_ports = ws_ports
        self.fleet = fleet
        self.nginx = None
        self.watcher = None
        self.syncer = None
        self.proxy_port = None
        self.upstream_file = None

    def master_pid(self):
        return self.nginx.master_pid()


@contextlib.contextmanager
def shared_stack(workdir, web_ports=6, ws_ports=5, initial=3, agent=None):
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    agent = agent or ConsulAgent()
    with contextlib.ExitStack() as stack:
        agent.start()
        stack.callback(agent.stop)
        backends = Backends(count=web_ports)
        backends.start()
        stack.callback(backends.stop)
        # picked once the agent and the backends listen, all at once: picked before them, a port was free again
        # when the agent or a backend bound it (the CI rehearsal of 2026-12-08: "address already in use")
        ws_list = free_ports(ws_ports)
        ws = Subprocess([HERE / "ws_echo.py", "--ports", ",".join(map(str, ws_list))], workdir / "ws_echo.log",
                        ready_line="ready")
        stack.callback(ws.stop)
        fleet = Fleet(agent, {"Web": backends.ports, "Ws": ws_list}, initial=initial).populate()
        yield Stack(workdir, agent, backends, ws, ws_list, fleet)


@contextlib.contextmanager
def stack_a(workdir, upstream_file=None, consul_url=None, dyups_url=None, watcher_settings=None, flavor="lua",
            **shared):
    """Approach A, synced: yields a Stack with ``nginx`` (NginxLua, or Tengine with ``flavor="tengine"``) and
    ``watcher`` (WatcherProcess).

    ``consul_url`` / ``dyups_url`` point the watcher elsewhere (a fault proxy in front of them):
    callables taking the Stack, so the proxy can be built once the real servers run.
    """
    workdir = Path(workdir)
    with shared_stack(workdir, **shared) as stack:
        stack.upstream_file = Path(upstream_file or workdir / "upstreams.conf")
        if flavor == "tengine":
            nginx = Tengine(workers=2, upstream_file=str(stack.upstream_file), locations=AT_LOCATIONS)
        else:
            nginx = NginxLua(workers=2, upstream_file=str(stack.upstream_file), locations=A_LOCATIONS)
        nginx.start()
        stack.nginx = nginx
        stack.proxy_port = nginx.proxy_port
        try:
            settings = dict(PRODUCT_WATCHER, **(watcher_settings or {}))
            stack.watcher = WatcherProcess(
                workdir / "watcher", consul_url=consul_url(stack) if consul_url else stack.agent.url,
                dyups_url=dyups_url(stack) if dyups_url else nginx.api_url,
                upstream_file=str(stack.upstream_file), **settings)
            stack.watcher.start()
            try:
                waited = wait_until(lambda: detail(nginx.api_port) == stack.fleet.expected()
                                    and serves(nginx.proxy_port, stack.fleet.expected()), 60)
                if waited is None:
                    raise RuntimeError(f"approach A did not sync: {detail(nginx.api_port)} != "
                                       f"{stack.fleet.expected()}\n{stack.watcher.log_text()[-3000:]}")
                yield stack
            finally:
                stack.watcher.stop()
        finally:
            nginx.cleanup()


@contextlib.contextmanager
def stack_b(workdir, worker_shutdown_timeout=None, reuseport=True, wait_min=0.0, binary=None, **shared):
    """Approach B, synced: yields a Stack with ``nginx`` (StockNginx; ``binary``: Tengine's) and ``syncer``
    (reload_approach.py)."""
    workdir = Path(workdir)
    with shared_stack(workdir, **shared) as stack:
        stack.upstream_file = workdir / "upstreams-b.conf"
        # nginx needs the included file to start: the first render, before consul-template runs
        from tests.resilience.reload_approach import PLACEHOLDER
        from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
        _upstream_file.replace_file(str(stack.upstream_file), _upstream_file.render(
            [build_upstream(name, [PLACEHOLDER], ["keepalive 64"]) for name in SERVICES]))
        nginx = StockNginx(stack.upstream_file, worker_shutdown_timeout=worker_shutdown_timeout, reuseport=reuseport,
                           binary=binary)
        nginx.start()
        stack.nginx = nginx
        stack.proxy_port = nginx.proxy_port
        try:
            argv = [HERE / "reload_approach.py", "--consul", stack.agent.url, "--services", ",".join(SERVICES),
                    "--file", stack.upstream_file, "--command", nginx.reload_command()]
            if wait_min:
                argv += ["--wait-min", wait_min]
            stack.syncer = Subprocess(argv, workdir / "reload_approach.log")
            try:
                waited = wait_until(lambda: file_state(stack.upstream_file) == stack.fleet.expected()
                                    and any(line.startswith("command") or " command " in line
                                            for line in stack.syncer.lines)
                                    and serves(stack.proxy_port, stack.fleet.expected()), 60)
                if waited is None:
                    raise RuntimeError(f"approach B did not sync:\n{stack.syncer.tail()}")
                yield stack
            finally:
                stack.syncer.stop()
        finally:
            nginx.stop()
