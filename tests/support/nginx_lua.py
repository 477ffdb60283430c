"""Stock nginx with the Lua flavor of the dyups interface, started on free loopback ports for tests.

Shared by the conformance, module, watcher, role and benchmark tests: keep this API stable.

The configuration is ``roles/tengine_dyups/files/nginx/dyups_lua.conf`` (the role's reference file),
rendered with this instance's paths and ports, included in a generated nginx.conf that adds a proxy
server. nginx runs in the foreground (``daemon off``) as a child of the test process, with its own
prefix in a temporary directory; Debian's nginx, libnginx-mod-http-lua and lua-resty-core
(tests/tools/install-system-deps.sh) are all it needs.

Starting and stopping::

    from tests.support.nginx_lua import NginxLua, nginx_lua, nginx_lua_factory, make_nginx_lua_fixture

    with NginxLua(workers=2) as nginx:          # start() on enter, stop() on exit (also on failure)
        nginx.api_url                           # "http://127.0.0.1:<port>": the dyups interface
        nginx.proxy_url                         # "http://127.0.0.1:<port>": the proxy server
    nginx = NginxLua(upstream_file="/tmp/x/upstreams.conf").start()
    nginx.reload()        # SIGHUP; returns when every worker is new (the shared dict stays)
    nginx.restart()       # stop, then start on the same ports (the upstream file is read again)
    nginx.stop()          # SIGTERM (fast), SIGKILL after a timeout; safe to call twice
    nginx.kill()          # SIGKILL to the master (workers follow)

Options (all keyword): ``workers`` (2), ``upstream_file`` (None: nothing is loaded at start),
``http_snippet`` / ``server_snippet`` (text added inside http {} / the proxy server {}),
``locations`` (text replacing the default proxy locations), ``lua_path`` (extra Lua directories),
``dict_size`` ("16m"), ``keepalive`` (64, the dyups_balancer pool), ``proxy_next_upstream``
("error timeout"), ``proxy_next_upstream_tries`` (0: no limit), ``connect_timeout`` ("2s"),
``read_timeout`` ("10s"), ``hosts`` (TEST_HOSTS: host names resolve from this text only, never through
DNS; None: the system resolver), ``error_log_level`` ("notice"), ``access_log`` (False; True writes
``logs/access.log`` with the upstream address and status of every try), ``api_port`` /
``proxy_port`` (None: free ports), ``lock_timeout`` (None: the state module's default),
``worker_header`` (True: every proxied answer carries ``X-Dyups-Worker``, see below).

The default proxy locations choose the upstream per request:

* ``/u/NAME/...``: ``set $dyups_upstream NAME`` (the path after /u/NAME is sent on as is);
* any other path: the upstream named by the request header ``X-Dyups-Upstream``.

Both send HTTP/1.1 without ``Connection: close``, so the dyups_balancer keepalive pool is used.
Every proxied answer carries ``X-Dyups-Worker: <pid>``, the worker that served it.

Inspecting::

    nginx.master_pid()          # the master's PID (same after reload(), new after restart())
    nginx.worker_pids()         # sorted PIDs of the current worker processes
    nginx.error_log             # Path of the error log; nginx.error_log_text(since=mark)
    mark = nginx.log_mark()     # current size of the error log, for error_log_text(since=mark)
    nginx.client()              # DyupsClient(api_url, stdlib_transport)
    nginx.api("POST", "/upstream/x", "server 127.0.0.1:1;")   # raw HTTP: (status, text, headers)
    nginx.request("/u/x/")      # through the proxy: (status, text, headers)
    nginx.request("/", upstream="x")                          # X-Dyups-Upstream: x
    nginx.wait_for(predicate, "what", timeout=10)             # poll; AssertionError with the log tail

Fixtures: ``nginx_lua`` (one instance per test module, default options), ``nginx_lua_factory``
(a function ``factory(**options) -> started NginxLua``; all stopped after the test), and
``make_nginx_lua_fixture(scope="module", **options)`` to declare a fixture with other options.
Every instance is also killed at interpreter exit if a test forgot it.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.ports import free_ports, wait_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
LUA_DIR = ROOT / "roles" / "tengine_dyups" / "files" / "lua"
TEST_LUA_DIR = ROOT / "tests" / "support" / "lua"
REFERENCE_CONF = ROOT / "roles" / "tengine_dyups" / "files" / "nginx" / "dyups_lua.conf"
NGINX = os.environ.get("NGINX_BIN", "/usr/sbin/nginx")
MODULES = ("/usr/lib/nginx/modules/ndk_http_module.so", "/usr/lib/nginx/modules/ngx_http_lua_module.so")
UPSTREAM_HEADER = "X-Dyups-Upstream"
_LIVE = set()

# Values of the reference file that an instance replaces; each must occur exactly once there.
# Host names in server lines resolve from this hosts file only (the state option hosts_file): a test
# never sends a DNS query off the machine, and an unknown name fails at once. ``hosts=None`` uses the
# system resolver instead.
TEST_HOSTS = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n"

REFERENCE_DEFAULTS = {
    "lua_path": '"/usr/share/swallowkeeper-dyups/lua/?.lua;;"',
    "upstream_file": '"/var/lib/swallowkeeper-dyups/upstreams.conf"',
    "api_listen": "listen 127.0.0.1:18882;",
    "dict_size": "lua_shared_dict dyups_state 16m;",
    "keepalive": "keepalive 64;",
    "state_options": 'dict = "dyups_state",',
}

DEFAULT_LOCATIONS = f"""
        location ~ ^/u/(?<dyups_name>[^/]+) {{
            set $dyups_upstream $dyups_name;
            proxy_pass http://dyups_balancer;
        }}
        location / {{
            set $dyups_upstream $http_{UPSTREAM_HEADER.lower().replace('-', '_')};
            proxy_pass http://dyups_balancer;
        }}
"""


def _lua_string(value):
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_reference(lua_paths, api_port, upstream_file=None, dict_size="16m", keepalive=64, lock_timeout=None,
                     hosts_file=None):
    """The text of dyups_lua.conf with these values; raises if the reference file no longer has a default."""
    text = REFERENCE_CONF.read_text()
    for key, default in REFERENCE_DEFAULTS.items():
        count = text.count(default)
        if count != 1:
            raise RuntimeError(f"{REFERENCE_CONF} holds {default!r} {count} times; tests/support/nginx_lua.py "
                               "renders it by replacing that text once: update REFERENCE_DEFAULTS")
    path = ";".join(f"{directory}/?.lua" for directory in lua_paths) + ";;"
    state_options = 'dict = "dyups_state",'
    if lock_timeout is not None:
        state_options += f" lock_timeout = {float(lock_timeout)},"
    if hosts_file:
        state_options += f" hosts_file = {_lua_string(hosts_file)},"
    replacements = {
        "lua_path": _lua_string(path),
        "upstream_file": _lua_string(upstream_file) if upstream_file else "nil",
        "api_listen": f"listen 127.0.0.1:{api_port};",
        "dict_size": f"lua_shared_dict dyups_state {dict_size};",
        "keepalive": f"keepalive {int(keepalive)};",
        "state_options": state_options,
    }
    for key, value in replacements.items():
        text = text.replace(REFERENCE_DEFAULTS[key], value)
    return text


INTERFACE_LOCATION = '    location / {\n        content_by_lua_block { require("swallowkeeper_dyups.api").handle() }'


def guard_directive(secret):
    """What the role's api-guard.conf.j2 puts in the interface's location: a request without
    ``X-Dyups-Secret: secret`` is refused (403)."""
    return f'if ($http_x_dyups_secret != "{secret}") {{ return 403 "the dyups interface needs its X-Dyups-Secret header\\n"; }}'


def with_secret_guard(text, secret):
    """The reference snippet with ``guard_directive(secret)`` first in its interface location."""
    if text.count(INTERFACE_LOCATION) != 1:
        raise RuntimeError(f"{REFERENCE_CONF} no longer holds its interface location once: update INTERFACE_LOCATION")
    head = "    location / {\n"
    return text.replace(INTERFACE_LOCATION, head + "        " + guard_directive(secret) + "\n" + INTERFACE_LOCATION[len(head):])


def _children(pid):
    """PIDs whose parent is ``pid`` (from /proc, as the watcher reads them), sorted."""
    from tests.support.collection import ensure_importable   # also from scripts that did not call it
    ensure_importable()
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.nginx_processes import children
    return sorted(children(pid))


def http_request(port, method, path, body=None, headers=None, timeout=10.0, host="127.0.0.1"):
    """One request on a new connection: (status, text, {lower-case header: value})."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = body.encode("utf-8") if isinstance(body, str) else body
        connection.request(method, path, body=data, headers=dict(headers or {}))
        response = connection.getresponse()
        raw = response.read()
        return response.status, raw.decode("utf-8", "replace"), {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def start_process_group(command, output_path, env=None):
    """Popen ``command`` in a new session (so its whole group can be signalled), output appended to a file;
    ``env``: its environment (None: this process's)."""
    with open(output_path, "ab") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, env=env)


def end_process_group(process, first_signal, timeout):
    """Signal the group of a Popen started with start_new_session=True; SIGKILL after ``timeout``."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, first_signal)
        process.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class NginxLua:
    """One nginx master with the Lua flavor; see the module docstring."""

    def __init__(self, workers=2, upstream_file=None, http_snippet="", server_snippet="", locations=None,
                 lua_path=(), dict_size="16m", keepalive=64, proxy_next_upstream="error timeout",
                 proxy_next_upstream_tries=0, connect_timeout="2s", read_timeout="10s", error_log_level="notice",
                 access_log=False, api_port=None, proxy_port=None, lock_timeout=None, worker_header=True,
                 prefix=None, hosts=TEST_HOSTS, api_secret=None):
        self.workers = workers
        self.api_secret = api_secret   # the interface refuses (403) a request without X-Dyups-Secret: this
        self.upstream_file = str(upstream_file) if upstream_file else None
        self.http_snippet = http_snippet
        self.server_snippet = server_snippet
        self.locations = DEFAULT_LOCATIONS if locations is None else locations
        self.lua_paths = [str(LUA_DIR), str(TEST_LUA_DIR)] + [str(p) for p in lua_path]
        self.dict_size = dict_size
        self.keepalive = keepalive
        self.proxy_next_upstream = proxy_next_upstream
        self.proxy_next_upstream_tries = proxy_next_upstream_tries
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.error_log_level = error_log_level
        self.access_log = access_log
        self.lock_timeout = lock_timeout
        self.worker_header = worker_header
        self.hosts = hosts
        picked = free_ports(2)   # two different ones (free_port() twice can give one port twice)
        self.api_port = api_port or picked[0]
        self.proxy_port = proxy_port or picked[1]
        self._own_prefix = prefix is None
        self.prefix = Path(prefix or tempfile.mkdtemp(prefix="nginx-lua-"))
        self.prefix.chmod(0o755)   # workers run as nobody and need the temp paths below
        self.conf_path = self.prefix / "nginx.conf"
        self.error_log = self.prefix / "logs" / "error.log"
        self.access_log_path = self.prefix / "logs" / "access.log"
        self.process = None

    # -- configuration ---------------------------------------------------------------------------
    @property
    def api_url(self):
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def proxy_url(self):
        return f"http://127.0.0.1:{self.proxy_port}"

    def guard_line(self):
        """The guard the role's api-guard.conf.j2 writes into the interface's location (empty without a secret)."""
        return ("            " + guard_directive(self.api_secret)) if self.api_secret else ""

    def http_common(self):
        """The access log and temp path lines of the http block (shared with the Tengine fixture)."""
        temp = "\n".join(f"    {kind}_temp_path {self.prefix}/tmp/{kind};"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        if self.access_log:
            access = (f"    log_format dyups '$request $status upstream=$upstream_addr "
                      f"upstream_status=$upstream_status';\n"
                      f"    access_log {self.access_log_path} dyups;")
        else:
            access = "    access_log off;"
        return f"{access}\n{temp}"

    def proxy_server(self):
        """The proxy's server block (shared with the Tengine fixture, which routes with its own locations)."""
        return f"""    server {{
        listen 127.0.0.1:{self.proxy_port} reuseport;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_next_upstream {self.proxy_next_upstream};
        proxy_next_upstream_tries {self.proxy_next_upstream_tries};
        proxy_connect_timeout {self.connect_timeout};
        proxy_read_timeout {self.read_timeout};
{"        add_header X-Dyups-Worker $pid always;" if self.worker_header else ""}
{self.locations}
{self.server_snippet}
    }}"""

    def config_text(self):
        loads = "\n".join(f"load_module {module};" for module in MODULES)
        return f"""# generated by tests/support/nginx_lua.py
{loads}
worker_processes {self.workers};
daemon off;
pid {self.prefix}/nginx.pid;
error_log {self.error_log} {self.error_log_level};
events {{ worker_connections 4096; }}
http {{
{self.http_common()}
    include {self.prefix}/dyups_lua.conf;
{self.http_snippet}
{self.proxy_server()}
}}
"""

    def write_config(self):
        (self.prefix / "logs").mkdir(exist_ok=True)
        (self.prefix / "tmp").mkdir(exist_ok=True)
        hosts_file = None
        if self.hosts is not None:
            hosts_file = self.prefix / "hosts"
            hosts_file.write_text(self.hosts)
        text = render_reference(self.lua_paths, self.api_port, self.upstream_file, self.dict_size, self.keepalive,
                                self.lock_timeout, hosts_file)
        if self.api_secret:
            text = with_secret_guard(text, self.api_secret)
        (self.prefix / "dyups_lua.conf").write_text(text)
        self.conf_path.write_text(self.config_text())

    def _command(self, *extra):
        return [NGINX, "-p", str(self.prefix), "-c", str(self.conf_path), "-e", str(self.error_log), *extra]

    def test_config(self):
        """``nginx -t`` on this configuration: CompletedProcess. It checks the nginx syntax only:
        lua-nginx-module does not run init_by_lua in test mode, so the upstream file is not read."""
        self.write_config()
        return subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=60, check=False)

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout=15.0):
        """Write the configuration, start nginx, wait for both ports and all workers; returns self."""
        if self.running:
            return self
        self.write_config()
        self.process = start_process_group(self._command(), self.prefix / "logs" / "stderr.log")
        _LIVE.add(self)
        try:
            deadline = time.monotonic() + timeout
            for port in (self.api_port, self.proxy_port):
                while True:
                    if self.process.poll() is not None:
                        raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self._diagnostics()}")
                    try:
                        wait_port(port, timeout=0.2)
                        break
                    except TimeoutError:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"nginx did not listen on {port}:\n{self._diagnostics()}") from None
            self._wait(lambda: len(self.worker_pids()) == self.workers, f"{self.workers} workers",
                       max(0.5, deadline - time.monotonic()))
        except BaseException:
            self.kill()
            raise
        return self

    def _diagnostics(self):
        parts = []
        for path in (self.prefix / "logs" / "stderr.log", self.error_log):
            try:
                parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-4000:]}")
            except OSError:
                pass
        return "\n".join(parts)

    def _wait(self, predicate, what, timeout, interval=0.01):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"nginx: {what} not reached after {timeout:.1f}s\n{self._diagnostics()}")
            time.sleep(interval)

    @property
    def running(self):
        return self.process is not None and self.process.poll() is None

    def master_pid(self):
        if not self.running:
            raise RuntimeError("nginx is not running")
        return self.process.pid

    def worker_pids(self):
        return _children(self.process.pid) if self.running else []

    def reload(self, timeout=15.0):
        """Rewrite the configuration, SIGHUP, wait until every worker is a new one; returns the new PIDs."""
        old = set(self.worker_pids())
        self.write_config()
        os.kill(self.master_pid(), signal.SIGHUP)

        def replaced():
            current = set(self.worker_pids())
            return len(current) == self.workers and not current & old

        self._wait(replaced, "new workers after SIGHUP", timeout)
        return self.worker_pids()

    def _end(self, first_signal, timeout):
        process, self.process = self.process, None
        end_process_group(process, first_signal, timeout)
        _LIVE.discard(self)

    def stop(self, timeout=10.0):
        """SIGTERM (nginx's fast shutdown), SIGKILL after ``timeout``; safe to call twice."""
        self._end(signal.SIGTERM, timeout)

    def kill(self):
        self._end(signal.SIGKILL, 10)

    def restart(self, timeout=15.0):
        """Stop and start again on the same ports: a fresh shared dict, the upstream file loaded again."""
        self.stop()
        return self.start(timeout=timeout)

    def cleanup(self):
        """stop() and remove the prefix directory (if this instance created it)."""
        self.stop()
        if self._own_prefix:
            shutil.rmtree(self.prefix, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.cleanup()

    # -- logs ------------------------------------------------------------------------------------
    def log_mark(self):
        try:
            return self.error_log.stat().st_size
        except FileNotFoundError:
            return 0

    def error_log_text(self, since=0):
        try:
            with open(self.error_log, "rb") as handle:
                handle.seek(since)
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_for(self, predicate, what, timeout=10.0, interval=0.01):
        return wait_for(predicate, what, timeout=timeout, interval=interval, tail=self.error_log_text,
                        tail_name="error log")

    # -- HTTP ------------------------------------------------------------------------------------
    def api(self, method, path, body=None, headers=None, timeout=10.0):
        """A raw request to the dyups interface: (status, text, headers)."""
        return http_request(self.api_port, method, path, body, headers, timeout)

    def request(self, path="/", upstream=None, method="GET", body=None, headers=None, timeout=10.0):
        """A request through the proxy (new connection); ``upstream`` sets X-Dyups-Upstream."""
        headers = dict(headers or {})
        if upstream is not None:
            headers[UPSTREAM_HEADER] = upstream
        return http_request(self.proxy_port, method, path, body, headers, timeout)

    def client(self, timeout=5.0):
        """The collection's DyupsClient on this interface (standard-library transport)."""
        from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
        from tests.support.http_stdlib import stdlib_transport
        if not self.api_secret:
            return DyupsClient(self.api_url, stdlib_transport, timeout=timeout)
        secret = {"X-Dyups-Secret": self.api_secret}

        def with_secret(method, url, body, timeout, extra_headers=None):
            return stdlib_transport(method, url, body, timeout, {**secret, **(extra_headers or {})})
        return DyupsClient(self.api_url, with_secret, timeout=timeout)


@atexit.register
def _stop_leftovers():
    for instance in list(_LIVE):
        instance.kill()


def make_server_fixture(server_class, scope="module", **options):
    """A pytest fixture that yields a started ``server_class()(**options)`` and cleans it up after
    (``server_class`` is called at set-up, so it may skip the test: see tests/support/tengine.py)."""

    @pytest.fixture(scope=scope)
    def _fixture():
        instance = server_class()(**options)
        try:
            instance.start()
            yield instance
        finally:
            instance.cleanup()

    return _fixture


@contextlib.contextmanager
def started_servers(make):
    """Yields ``factory(**options) -> started make(**options)``; every instance made is cleaned up on exit."""
    made = []

    def factory(**options):
        instance = make(**options)
        made.append(instance)
        return instance.start()

    try:
        yield factory
    finally:
        for instance in made:
            instance.cleanup()


def make_nginx_lua_fixture(scope="module", **options):
    """A pytest fixture that yields a started NginxLua with these options and cleans it up after."""
    return make_server_fixture(lambda: NginxLua, scope, **options)


nginx_lua = make_nginx_lua_fixture(scope="module")


@pytest.fixture
def nginx_lua_factory():
    """``factory(**options) -> started NginxLua``; every instance made is cleaned up after the test."""
    with started_servers(NginxLua) as factory:
        yield factory
