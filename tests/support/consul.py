"""Throwaway real Consul agents for the tests (``consul agent -dev`` on free loopback ports).

Shared by the Consul, watcher, role and benchmark tests: keep this API stable.

Binary: ``$CONSUL_BIN``, else ``.cache/tools/consul-*/usr/bin/consul``, else ``tests/tools/get-consul.sh``
is run (``consul_binary()``).

Starting and stopping::

    from tests.support.consul import ConsulAgent, consul_agent, consul_acl_agent, consul_tls_acl_agent   # pytest fixtures

    with ConsulAgent() as agent:              # start() on enter (leader elected), stop() on exit
        agent.url                             # "http://127.0.0.1:<port>"
    agent = ConsulAgent(acl=True).start()     # ACLs on, default deny; agent.master_token manages all
    agent = ConsulAgent(tls=True).start()     # HTTPS only (no http port), verify_incoming/outgoing, with a
                                              # throwaway CA made at start (tests/support/consul_tls.py):
                                              # agent.url is https://...; agent.tls.ca_file / client_cert /
                                              # client_key; agent.request() presents that client certificate
    agent.stop() / agent.kill() / agent.restart()   # -dev keeps no data: a restart empties the catalog
                                                    # and sends X-Consul-Index back to a small number

Every agent started here is stopped by ``stop()``, by the context manager, by the fixtures, and
(last resort) at interpreter exit. Agents are ``-dev`` servers: no DNS, no gRPC, no update check,
http / serf LAN / serf WAN / server RPC on free ports of 127.0.0.1, data in memory, log in
``agent.log_path`` (``agent.log_text()``).

Services (through the agent API, which is how real instances register)::

    agent.register("web", "web-1", port=18101, tags=["gray=b"], meta={"dyups_weight": "2"},
                   status="passing", address="127.0.0.1")   # a TTL check "service:web-1"; waits until
                                                            # /v1/health/service/web shows it
    agent.set_status("web-1", "warning")   # also agent.pass_check / warn_check / fail_check(id);
                                           # waits until the catalog shows the new status
    agent.deregister("web-1")              # waits until it is gone
    agent.clear_services()                 # deregister everything this agent registered
    agent.catalog_register("n2", "127.0.0.2", "web", "web-9", port=80, status="critical")
                                           # an instance on another (external) node, with a node address
    agent.catalog_deregister("n2")

HTTP helpers: ``agent.request(method, path, body=None, token=None) -> (status, data, headers)``
(``data`` parsed JSON when possible), ``agent.get(path)`` (raises on non-200), ``agent.index(path)``
(the X-Consul-Index of a plain read). With ``acl=True`` every helper sends ``master_token`` unless
``token=`` says otherwise; ``agent.create_token(rules_hcl, name=None) -> secret`` makes a limited
token (1.8 ACL policy syntax; the default is the readers' least-privilege policy,
tests/support/consul_acl_policy.hcl, ``reader_policy_rules()``).
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from tests.support.consul_tls import make_tls_material
from tests.support.ports import free_ports

ROOT = Path(__file__).resolve().parents[2]
READER_POLICY_FILE = Path(__file__).resolve().parent / "consul_acl_policy.hcl"
# Test backends listen on this host's loopback (register's default address), which the watcher and
# consul_services refuse from Consul by default (docs/security.md): tests opt in with these settings /
# module options, also to host names of the test hosts file (they resolve to loopback).
LOOPBACK_OPT_IN = {"allowed_networks": ["127.0.0.0/8", "::1/128"], "allow_host_names": True}


def reader_policy_rules():
    """The least-privilege policy (HCL) of the module, sync.yml and the watcher: tests/support/consul_acl_policy.hcl."""
    return READER_POLICY_FILE.read_text(encoding="utf-8")


READ_ALL_RULES = reader_policy_rules()
_LIVE = set()


def consul_binary():
    """Path of a consul binary: $CONSUL_BIN, the cached one, or the one get-consul.sh fetches now."""
    explicit = os.environ.get("CONSUL_BIN")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise RuntimeError(f"CONSUL_BIN={explicit} is not an executable file")
        return explicit
    cached = sorted(glob.glob(str(ROOT / ".cache" / "tools" / "consul-*" / "usr" / "bin" / "consul")))
    if cached:
        return cached[-1]
    done = subprocess.run([str(ROOT / "tests" / "tools" / "get-consul.sh")], capture_output=True, text=True,
                          timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"tests/tools/get-consul.sh failed: {done.stderr.strip()[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


class ConsulAgent:
    """One ``consul agent -dev`` process; see the module docstring."""

    def __init__(self, acl=False, master_token=None, log_level="info", binary=None, node_name="consul-test",
                 tls=False):
        self.binary = binary or consul_binary()
        self.acl = acl
        self.tls = None       # TlsMaterial once started with tls=True
        self._want_tls = tls
        self._ssl_context = None
        self.master_token = (master_token or str(uuid.uuid4())) if acl else None
        self.log_level = log_level
        self.node_name = node_name
        self.workdir = Path(tempfile.mkdtemp(prefix="consul-agent-"))
        self.log_path = self.workdir / "agent.log"
        self.ports = None
        self.process = None
        self._registered = set()
        self._external_nodes = set()

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def http_port(self):
        return self.ports["http"]

    @property
    def url(self):
        return f"{'https' if self._want_tls else 'http'}://127.0.0.1:{self.http_port}"

    def _config(self):
        config = {"disable_update_check": True, "enable_script_checks": False}
        if self._want_tls:
            if self.tls is None:
                self.tls = make_tls_material(self.workdir / "tls", binary=self.binary)
            # the API on HTTPS only: the http port is off, and a client must show a certificate of this CA
            config.update({"ports": {"http": -1, "https": self.ports["http"]},
                           "ca_file": str(self.tls.ca_file), "cert_file": str(self.tls.server_cert),
                           "key_file": str(self.tls.server_key), "verify_incoming": True,
                           "verify_outgoing": True, "verify_server_hostname": True})
        if self.acl:
            config["acl"] = {"enabled": True, "default_policy": "deny", "down_policy": "extend-cache",
                             "tokens": {"master": self.master_token, "agent": self.master_token}}
        path = self.workdir / "config.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def start(self, timeout=60.0):
        """Start on free ports (the same ports again after stop()), wait for a leader; returns self."""
        if self.process is not None and self.process.poll() is None:
            return self
        if self.ports is None:
            self.ports = dict(zip(("http", "serf_lan", "serf_wan", "server"), free_ports(4)))
        command = [
            self.binary, "agent", "-dev", "-node", self.node_name, "-bind", "127.0.0.1", "-client", "127.0.0.1",
            "-http-port", "-1" if self._want_tls else str(self.ports["http"]), "-dns-port", "-1", "-grpc-port", "-1",
            "-serf-lan-port", str(self.ports["serf_lan"]), "-serf-wan-port", str(self.ports["serf_wan"]),
            "-server-port", str(self.ports["server"]), "-log-level", self.log_level,
            "-config-file", str(self._config()),
        ]
        env = dict(os.environ, CHECKPOINT_DISABLE="1")
        env.pop("CONSUL_HTTP_TOKEN", None)
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=env, start_new_session=True)
        finally:
            log.close()
        _LIVE.add(self)
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"consul exited with {self.process.returncode}:\n{self.log_text()[-3000:]}")
            try:
                status, leader, _unused = self.request("GET", "/v1/status/leader", timeout=2)
                if status == 200 and leader:
                    status, nodes, _unused = self.request("GET", "/v1/catalog/nodes", timeout=2)
                    if status == 200 and any(node.get("Node") == self.node_name for node in nodes or []):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"consul at {self.url} had no leader after {timeout}s:\n{self.log_text()[-3000:]}")
            time.sleep(0.1)

    def _end(self, first_signal, timeout):
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, first_signal)
                process.wait(timeout=timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        _LIVE.discard(self)
        self._registered.clear()
        self._external_nodes.clear()

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL after ``timeout``; safe to call twice."""
        self._end(signal.SIGTERM, timeout)

    def kill(self):
        """SIGKILL at once (an agent that dies); safe to call twice."""
        self._end(signal.SIGKILL, 10)

    def restart(self, timeout=60.0):
        """Stop and start on the same ports. -dev keeps nothing: services are gone, indexes start over."""
        self.stop()
        return self.start(timeout=timeout)

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- HTTP ----------------------------------------------------------------------------------------
    def request(self, method, path, body=None, token=None, timeout=10.0):
        """(status, parsed JSON or text or None, headers) of one request; raises OSError when no answer."""
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(self.url + path, data=data, method=method)
        token = self.master_token if token is None else token
        if token:
            request.add_header("X-Consul-Token", token)
        handlers = [urllib.request.ProxyHandler({})]
        if self._want_tls:
            if self._ssl_context is None:
                context = ssl.create_default_context(cafile=str(self.tls.ca_file))
                context.load_cert_chain(str(self.tls.client_cert), str(self.tls.client_key))
                self._ssl_context = context
            handlers.append(urllib.request.HTTPSHandler(context=self._ssl_context))
        handler = urllib.request.build_opener(*handlers)
        try:
            with handler.open(request, timeout=timeout) as response:
                status, raw, headers = response.status, response.read(), dict(response.headers)
        except urllib.error.HTTPError as exc:
            status, raw, headers = exc.code, exc.read(), dict(exc.headers or {})
        text = raw.decode("utf-8", "replace")
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return status, parsed, headers

    def call(self, method, path, body=None, token=None):
        status, data, _unused = self.request(method, path, body, token=token)
        if status != 200:
            raise RuntimeError(f"{method} {path} answered {status}: {data!r}")
        return data

    def get(self, path, token=None):
        return self.call("GET", path, token=token)

    def index(self, path, token=None):
        status, data, headers = self.request("GET", path, token=token)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {data!r}")
        return int(headers.get("X-Consul-Index"))

    def wait_until(self, predicate, what, timeout=10.0, interval=0.02):
        """Call ``predicate()`` until it returns a true value (returned); TimeoutError naming ``what``."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"consul at {self.url}: {what} not seen after {timeout}s")
            time.sleep(interval)

    def _instance_status(self, service, instance_id):
        """None when absent, else the worst status of the instance's checks in the catalog."""
        status, entries, _unused = self.request("GET", f"/v1/health/service/{urllib.request.quote(service, safe='')}")
        if status != 200:
            return None
        for entry in entries or []:
            if entry["Service"]["ID"] == instance_id:
                statuses = [check["Status"] for check in entry.get("Checks") or []]
                for worst in ("critical", "warning"):
                    if worst in statuses:
                        return worst
                return "passing"
        return None

    # -- services --------------------------------------------------------------------------------------
    def register(self, name, instance_id=None, port=80, address="127.0.0.1", tags=(), meta=None, status="passing",
                 ttl="600s", check=True, wait=True):
        """Register an instance with a TTL check ``service:ID`` in ``status``; returns its ID.

        ``address=None`` (or "") leaves Service.Address empty, so the node's address applies.
        ``check=False`` registers no check at all.
        """
        instance_id = instance_id or f"{name}-{port}"
        body = {"Name": name, "ID": instance_id, "Port": port, "Tags": list(tags), "Meta": dict(meta or {})}
        if address:
            body["Address"] = address
        if check:
            body["Check"] = {"TTL": ttl, "Status": status}
        self.call("PUT", "/v1/agent/service/register", body)
        self._registered.add(instance_id)
        if wait:
            expected = status if check else "passing"
            self.wait_until(lambda: self._instance_status(name, instance_id) == expected,
                            f"instance {instance_id} of {name} in state {expected}")
        return instance_id

    def set_status(self, instance_id, status, wait=True, service=None, note=None):
        """Set the TTL check of ``instance_id`` to passing / warning / critical (agent API)."""
        verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
        path = f"/v1/agent/check/{verb}/service:{urllib.request.quote(instance_id, safe='')}"
        if note:
            path += "?note=" + urllib.request.quote(note)
        self.call("PUT", path)
        if wait:
            service = service or self._service_of(instance_id)
            self.wait_until(lambda: self._instance_status(service, instance_id) == status,
                            f"instance {instance_id} in state {status}")

    def pass_check(self, instance_id, **kwargs):
        self.set_status(instance_id, "passing", **kwargs)

    def warn_check(self, instance_id, **kwargs):
        self.set_status(instance_id, "warning", **kwargs)

    def fail_check(self, instance_id, **kwargs):
        self.set_status(instance_id, "critical", **kwargs)

    def _service_of(self, instance_id):
        services = self.get("/v1/agent/services")
        if instance_id not in services:
            raise KeyError(f"no agent service with ID {instance_id!r}")
        return services[instance_id]["Service"]

    def deregister(self, instance_id, wait=True):
        service = self._service_of(instance_id) if wait else None
        self.call("PUT", f"/v1/agent/service/deregister/{urllib.request.quote(instance_id, safe='')}")
        self._registered.discard(instance_id)
        if wait:
            self.wait_until(lambda: self._instance_status(service, instance_id) is None,
                            f"instance {instance_id} gone")

    def clear_services(self):
        """Deregister every agent service and external node this helper registered (or that exists)."""
        for instance_id in sorted(set(self.get("/v1/agent/services"))):
            self.call("PUT", f"/v1/agent/service/deregister/{urllib.request.quote(instance_id, safe='')}")
        for node in sorted(self._external_nodes):
            self.catalog_deregister(node)
        self._registered.clear()
        self.wait_until(lambda: set(self.get("/v1/catalog/services")) <= {"consul"}, "an empty catalog")

    def catalog_register(self, node, node_address, name, instance_id, port=80, address=None, tags=(), meta=None,
                         status="passing", wait=True):
        """An instance on an external node (catalog API): Node.Address is ``node_address``."""
        body = {
            "Node": node, "Address": node_address,
            "Service": {"Service": name, "ID": instance_id, "Port": port, "Tags": list(tags), "Meta": dict(meta or {}),
                        "Address": address or ""},
            "Check": {"Node": node, "CheckID": f"service:{instance_id}", "Name": f"{name} check",
                      "Status": status, "ServiceID": instance_id},
        }
        self.call("PUT", "/v1/catalog/register", body)
        self._external_nodes.add(node)
        if wait:
            self.wait_until(lambda: self._instance_status(name, instance_id) == status,
                            f"instance {instance_id} of {name} on {node}")
        return instance_id

    def catalog_deregister(self, node):
        self.call("PUT", "/v1/catalog/deregister", {"Node": node})
        self._external_nodes.discard(node)

    # -- ACL -------------------------------------------------------------------------------------------
    def create_token(self, rules=READ_ALL_RULES, name=None):
        """A token limited to ``rules`` (1.8 policy HCL); returns its secret."""
        if not self.acl:
            raise RuntimeError("this agent was started without ACLs")
        name = name or f"policy-{uuid.uuid4().hex[:8]}"
        self.call("PUT", "/v1/acl/policy", {"Name": name, "Rules": rules})
        token = self.call("PUT", "/v1/acl/token", {"Description": name, "Policies": [{"Name": name}]})
        return token["SecretID"]


@atexit.register
def _stop_leftovers():
    for agent in list(_LIVE):
        agent.kill()


@pytest.fixture(scope="module")
def consul_agent():
    """A plain -dev agent for the module's tests; tests should ``clear_services()`` what they add."""
    agent = ConsulAgent()
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def consul_tls_acl_agent():
    """A -dev agent with the API on HTTPS only (client certificates required) and ACLs on, default deny."""
    agent = ConsulAgent(acl=True, tls=True, log_level="debug")
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def consul_acl_agent():
    """A -dev agent with ACLs enabled, default deny; ``.master_token`` manages everything."""
    agent = ConsulAgent(acl=True, log_level="debug")
    try:
        agent.start()
        yield agent
    finally:
        agent.stop()
