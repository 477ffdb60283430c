"""A real Tengine (dyups + upstream check modules) started on free loopback ports for tests, and the
``proxy`` fixture that runs a test on both flavors.

The binary is ``$TENGINE_BIN``: tests/run.sh sets it from tests/tools/get-tengine.sh (the role's own
source build of ``$TENGINE_TARBALL`` or ``../shared/tengine/tengine-3.2.0.tar.gz``, cached outside the
clone). Without it the Tengine cases are skipped, saying why; with ``CI=true`` they fail instead.

``Tengine`` has the API of ``tests.support.nginx_lua.NginxLua`` (start/stop/reload/restart/kill,
api_url, proxy_url, api(), request(), client(), worker_pids(), error_log, wait_for ...), so a test
written against one runs on the other. The configuration is what the role writes for the tengine
flavor (templates/dyups.conf.j2), with this instance's paths and ports::

    include <upstream_file>;              # when given (and when it exists: see config_text)
    dyups_read_msg_timeout 20ms;          # read_msg_timeout=; default: the role's default
    dyups_trylock off;
    server { listen 127.0.0.1:<api_port> reuseport;
             location / { dyups_interface; add_header X-Dyups-Worker $pid always; } }
    server { listen 127.0.0.1:<proxy_port>; ... }   # the proxy, as in NginxLua

The proxy locations route like NginxLua's: ``/u/NAME/...`` and the ``X-Dyups-Upstream`` header, here
through ``set $dyups_upstream NAME; resolver_file /dev/null; proxy_pass http://$dyups_upstream;`` (how
the role's vhosts route on Tengine: a name that is no upstream gets 502, never a DNS lookup). Options the
Lua flavor only has (lua_path, dict_size, keepalive, lock_timeout, hosts) are accepted and ignored; host
names in server lines resolve through the system resolver at POST time
(Tengine's behaviour), which for ``localhost`` is /etc/hosts.

Fixtures::

    tengine                      # one instance per test module (2 workers)
    tengine_factory              # factory(**options) -> started Tengine; all cleaned up after the test
    proxy                        # params "lua" / "tengine": a started instance of each flavor per module
    proxy_factory                # params "lua" / "tengine": factory(**options) of that flavor
    make_tengine_fixture(scope="module", **options)

``proxy`` and ``proxy_factory`` carry the flavor in the test id (``test_x[lua]``, ``test_x[tengine]``)
and as ``instance.flavor``. Import them into a test module or conftest to use them.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.nginx_lua import NginxLua, make_server_fixture, started_servers

TENGINE_ENV = "TENGINE_BIN"
ROLE_DEFAULTS = Path(__file__).resolve().parents[2] / "roles" / "tengine_dyups" / "defaults" / "main.yml"
# What the role ships, so the tests run Tengine as the role configures it.
DEFAULT_READ_MSG_TIMEOUT = str(yaml.safe_load(ROLE_DEFAULTS.read_text())["tengine_dyups_read_msg_timeout"])
FLAVORS = ("lua", "tengine")

TENGINE_LOCATIONS = """
        location ~ ^/u/(?<dyups_name>[^/]+) {
            set $dyups_upstream $dyups_name;
            resolver_file /dev/null;
            proxy_pass http://$dyups_upstream;
        }
        location / {
            set $dyups_upstream $http_x_dyups_upstream;
            resolver_file /dev/null;
            proxy_pass http://$dyups_upstream;
        }
"""


def tengine_binary():
    """The Tengine binary to test, or None (with the reason in missing_reason())."""
    path = os.environ.get(TENGINE_ENV, "")
    if path and os.access(path, os.X_OK):
        return path
    return None


def missing_reason():
    path = os.environ.get(TENGINE_ENV, "")
    if path:
        return f"{TENGINE_ENV}={path} is not an executable"
    return (f"no Tengine: {TENGINE_ENV} is not set (tests/run.sh sets it from tests/tools/get-tengine.sh, "
            "which builds one from $TENGINE_TARBALL or ../shared/tengine/tengine-3.2.0.tar.gz)")


def require_tengine():
    """The binary; skips the test without one, or fails it under CI=true (CI must run the Tengine parts)."""
    binary = tengine_binary()
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {missing_reason()}")
        pytest.skip(missing_reason())
    return binary


class Tengine(NginxLua):
    """One Tengine master with the dyups interface; see the module docstring."""

    flavor = "tengine"

    def __init__(self, workers=2, read_msg_timeout=DEFAULT_READ_MSG_TIMEOUT, binary=None, locations=None, **options):
        super().__init__(workers=workers, locations=TENGINE_LOCATIONS if locations is None else locations, **options)
        self.binary = binary or tengine_binary()
        if self.binary is None:
            raise RuntimeError(missing_reason())
        self.read_msg_timeout = read_msg_timeout
        # NginxLua named the prefix nginx-lua-*; rename ours so leftovers say what they were.
        if self._own_prefix:
            renamed = self.prefix.with_name(self.prefix.name.replace("nginx-lua-", "tengine-"))
            self.prefix.rename(renamed)
            self.prefix = renamed
            self.conf_path = self.prefix / "nginx.conf"
            self.error_log = self.prefix / "logs" / "error.log"
            self.access_log_path = self.prefix / "logs" / "access.log"

    def config_text(self):
        include = ""
        if self.upstream_file:
            # The last character as a one-letter glob class: nginx includes the file when it exists and
            # starts without it (a glob that matches nothing is no error), as the Lua flavor does; the
            # role instead creates the file before nginx starts.
            name = str(self.upstream_file)
            include = f"    include {name[:-1]}[{name[-1]}];"
        return f"""# generated by tests/support/tengine.py
worker_processes {self.workers};
daemon off;
pid {self.prefix}/nginx.pid;
error_log {self.error_log} {self.error_log_level};
events {{ worker_connections 4096; }}
http {{
{self.http_common()}
{include}
    dyups_read_msg_timeout {self.read_msg_timeout};
    dyups_trylock off;
    server {{
        listen 127.0.0.1:{self.api_port} reuseport;
        access_log off;
        location / {{
            allow 127.0.0.1;
            deny all;
{self.guard_line()}
            dyups_interface;
            add_header X-Dyups-Worker $pid always;
        }}
    }}
{self.http_snippet}
{self.proxy_server()}
}}
"""

    def write_config(self):
        (self.prefix / "logs").mkdir(exist_ok=True)
        (self.prefix / "tmp").mkdir(exist_ok=True)
        self.conf_path.write_text(self.config_text())

    def _command(self, *extra):
        return [self.binary, "-p", str(self.prefix), "-c", str(self.conf_path), "-e", str(self.error_log), *extra]

    def test_config(self):
        """``tengine -t`` on this configuration (includes the upstream file): CompletedProcess."""
        self.write_config()
        return subprocess.run(self._command("-t"), capture_output=True, text=True, timeout=60, check=False)


NginxLua.flavor = "lua"


def make_tengine_fixture(scope="module", **options):
    """A pytest fixture that yields a started Tengine with these options and cleans it up after."""
    return make_server_fixture(lambda: flavor_class("tengine"), scope, **options)


tengine = make_tengine_fixture(scope="module")


def flavor_class(flavor):
    """NginxLua or Tengine by flavor name; for "tengine", skips (or fails under CI=true) without a binary."""
    if flavor == "tengine":
        require_tengine()
        return Tengine
    if flavor == "lua":
        return NginxLua
    raise ValueError(f"unknown flavor {flavor!r} (known: {', '.join(FLAVORS)})")


@pytest.fixture
def tengine_factory():
    """``factory(**options) -> started Tengine``; every instance made is cleaned up after the test."""
    with started_servers(_checked_tengine) as factory:
        yield factory


def _checked_tengine(**options):
    """A Tengine, after checking there is a binary (skips the test, or fails it under CI=true)."""
    return flavor_class("tengine")(**options)


@pytest.fixture(scope="module", params=FLAVORS)
def proxy(request):
    """A started proxy of each flavor (2 workers, default options), shared by the module's tests."""
    instance = flavor_class(request.param)(workers=2)
    try:
        instance.start()
        yield instance
    finally:
        instance.cleanup()


@pytest.fixture(params=FLAVORS)
def proxy_factory(request):
    """``factory(**options) -> started instance`` of the flavor in the test id; all cleaned up after."""
    with started_servers(flavor_class(request.param)) as factory:
        factory.flavor = request.param
        yield factory
