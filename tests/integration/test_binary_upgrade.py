"""The role's binary upgrade (roles/tengine_dyups/files/binary_upgrade.sh, run by the handler "tengine_dyups upgrade
nginx" after a Tengine version or build change) on a real Tengine ($TENGINE_BIN) run as systemd runs it (daemonized,
a pid file), with the role's vhost (templates/vhosts.conf.j2) and the upstream file included as the role includes it.

The binary is put in place as `make install` does into one prefix (the running one moved to BINARY.old, the new one
at BINARY): the layout of a package, or of the role before versioned builds. The new binary here is a copy of the
same build; test_binary_upgrade_builds.py upgrades between two builds in their own directories through the link the
role now installs, and the container check (extensions/molecule/tengine_host/upgrade.yml, named only) runs the role
across a build change. A websocket held open and a request loop through the vhost see no error
across the upgrade; the new master serves the upstreams of the file. A new binary that fails `-t`, or passes it
but cannot run as a master, is rolled back: the old master (same PID) serves, the old binary is back at BINARY.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.integration.test_role_vhosts_conf import render
from tests.support.ports import free_port, wait_port
from tests.support.tengine import require_tengine, tengine_binary

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "roles/tengine_dyups/files/binary_upgrade.sh"


_RENDERED = {}


def rendered_vhost(work):
    """The role's vhosts.conf for one vhost (/ to upstream web) listening on 127.0.0.1:1, rendered once."""
    if "text" not in _RENDERED:
        work.mkdir(parents=True, exist_ok=True)
        _RENDERED["text"] = render(work, [{"listen": "127.0.0.1:1", "locations": [{"upstream": "web"}]}], "tengine")
    return _RENDERED["text"]


class Master:
    """A daemonized Tengine in a prefix of its own: sbin/tengine (a copy of $TENGINE_BIN), conf/tengine.conf."""

    def __init__(self, prefix, backend_port):
        self.prefix = prefix
        self.binary = prefix / "sbin" / "tengine"
        self.old_binary = prefix / "sbin" / "tengine.old"
        self.config = prefix / "conf" / "tengine.conf"
        self.pid_file = prefix / "logs" / "tengine.pid"
        self.api_port = free_port()
        self.vhost_port = free_port()
        for directory in ("sbin", "conf", "logs"):
            (prefix / directory).mkdir(parents=True, exist_ok=True)
        shutil.copy2(tengine_binary(), self.binary)
        upstream_file = prefix / "upstreams.conf"
        upstream_file.write_text(f"upstream web {{ server 127.0.0.1:{backend_port}; }}\n"
                                 f"upstream other {{ server 127.0.0.1:{backend_port}; }}\n")
        vhosts = prefix / "conf" / "vhosts.conf"
        vhosts.write_text(rendered_vhost(prefix.parent).replace("listen 127.0.0.1:1;",
                                                                f"listen 127.0.0.1:{self.vhost_port};"))
        self.config.write_text(f"""worker_processes 2;
pid {self.pid_file};
error_log {prefix}/logs/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    include {upstream_file};
    dyups_read_msg_timeout 20ms;
    server {{
        listen 127.0.0.1:{self.api_port} reuseport;
        location / {{ dyups_interface; }}
    }}
    include {vhosts};
}}
""")

    def start(self):
        subprocess.run([str(self.binary), "-p", f"{self.prefix}/", "-c", str(self.config)], check=True, timeout=30)
        wait_port(self.vhost_port)
        wait_port(self.api_port)
        # the daemon writes its pid file after the starting process returned
        deadline = time.monotonic() + 15
        while not self.pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.pid_file.exists(), f"no {self.pid_file}"

    def pid(self):
        return int(self.pid_file.read_text().strip())

    def install(self, new_binary):
        """As `make install`: the running binary becomes BINARY.old, the new one BINARY."""
        os.replace(self.binary, self.old_binary)
        shutil.copy2(new_binary, self.binary)

    def upgrade(self, timeout=20):
        return subprocess.run(["sh", str(SCRIPT), str(self.binary), str(self.config), str(self.pid_file),
                               str(self.old_binary), f"http://127.0.0.1:{self.api_port}", sys.executable,
                               str(timeout)], capture_output=True, text=True, timeout=timeout * 3, check=False)

    def stop(self):
        for name in ("tengine.pid", "tengine.pid.oldbin"):
            try:
                os.kill(int((self.prefix / "logs" / name).read_text().strip()), signal.SIGTERM)
            except (OSError, ValueError):
                pass

    def upstreams(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api_port}/list", timeout=5) as answer:
            return sorted(answer.read().decode().split())


@pytest.fixture
def backend():
    port = free_port()
    process = subprocess.Popen([sys.executable, str(ROOT / "tests/resilience/ws_echo.py"), "--ports", str(port)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def master(tmp_path, backend):
    require_tengine()
    instance = Master(tmp_path / "tengine", backend)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


class RequestLoop(threading.Thread):
    """GET / through the vhost, one new connection each, until stopped; counts answers and failures."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/"
        self.halt = threading.Event()
        self.ok = 0
        self.failures = []

    def run(self):
        while not self.halt.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=5) as answer:
                    answer.read()
                    self.ok += 1
            except OSError as error:  # URLError, HTTPError (a 502), a reset: all count
                self.failures.append(repr(error))

    def stop(self):
        self.halt.set()
        self.join(timeout=15)


def test_upgrade_keeps_a_websocket_and_every_request(master, backend):
    old_pid = master.pid()
    before = master.upstreams()
    loop = RequestLoop(master.vhost_port)
    loop.start()
    with connect(f"ws://127.0.0.1:{master.vhost_port}/chat", open_timeout=5) as held:
        held.send("before")
        assert held.recv(timeout=5) == f"{backend}:before"
        time.sleep(0.5)
        master.install(tengine_binary())
        done = master.upgrade()
        assert done.returncode == 0, done.stdout + done.stderr
        time.sleep(0.5)
        held.send("after")
        assert held.recv(timeout=5) == f"{backend}:after"       # the old worker still carries it
    loop.stop()
    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 20
    new_pid = master.pid()
    assert new_pid != old_pid
    assert master.upstreams() == before == ["other", "web"]     # the new master read the upstream file
    with connect(f"ws://127.0.0.1:{master.vhost_port}/chat", open_timeout=5) as fresh:
        fresh.send("new")
        assert fresh.recv(timeout=5) == f"{backend}:new"
    deadline = time.monotonic() + 15                               # the old master leaves once its socket closed
    while time.monotonic() < deadline and Path(f"/proc/{old_pid}").exists():
        time.sleep(0.1)
    assert not Path(f"/proc/{old_pid}").exists()
    assert not (master.prefix / "logs" / "tengine.pid.oldbin").exists()


def _fake_binary(path, text):
    path.write_text(text)
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("kind", ["fails -t", "cannot run as a master"])
def test_a_failed_new_binary_is_rolled_back(master, tmp_path, kind):
    real = tengine_binary()
    if kind == "fails -t":
        broken = _fake_binary(tmp_path / "broken", "#!/bin/sh\necho 'broken build' >&2\nexit 1\n")
    else:  # -t passes (the real binary checks), a start as master exits at once
        broken = _fake_binary(tmp_path / "broken",
                              f'#!/bin/sh\ncase " $* " in *" -t "*) exec {real} "$@";; esac\nexit 1\n')
    old_pid = master.pid()
    original = master.binary.read_bytes()
    loop = RequestLoop(master.vhost_port)
    loop.start()
    master.install(broken)
    done = master.upgrade(timeout=5)
    time.sleep(0.5)
    loop.stop()
    assert done.returncode == 1, done.stdout + done.stderr
    assert "rolled back" in done.stderr
    assert master.binary.read_bytes() == original                  # the old binary is back at BINARY
    assert not master.old_binary.exists()
    assert master.pid() == old_pid                                 # the old master took its pid file back
    assert not (master.prefix / "logs" / "tengine.pid.oldbin").exists()
    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 5
    assert master.upstreams() == ["other", "web"]


def test_no_master_running_is_said_apart(tmp_path):
    done = subprocess.run(["sh", str(SCRIPT), "/bin/false", "/dev/null", str(tmp_path / "none.pid"),
                           str(tmp_path / "old")], capture_output=True, text=True, check=False)
    assert done.returncode == 3
    assert "nothing to upgrade" in done.stdout
