"""WebSockets through a vhost the role made (templates/vhosts.conf.j2 rendered by Ansible's template module),
on a real proxy of each flavor (``[lua]``, ``[tengine]``), with real websocket backends
(tests/resilience/ws_echo.py: each answers ``PORT:MESSAGE``).

A websocket opened through the vhost stays open and keeps echoing across scale events made through the
dyups interface (scale-out, then a scale-in that removes the very server it is connected to), while new
websockets follow the upstream. A location with ``websocket: false`` refuses the upgrade (nginx passes no
Upgrade header). Until the template passed Upgrade on (``Connection ""`` hard-coded), no websocket connected.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.integration.test_role_vhosts_conf import render
from tests.support.ports import free_port, wait_port
from tests.support.tengine import proxy_factory  # noqa: F401  # pylint: disable=unused-import  # pytest fixture

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def ws_backends():
    ports = [free_port() for _unused in range(2)]
    process = subprocess.Popen([sys.executable, str(ROOT / "tests/resilience/ws_echo.py"), "--ports",
                                ",".join(map(str, ports))], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        for port in ports:
            wait_port(port)
        yield ports
    finally:
        process.terminate()
        process.wait(timeout=10)


def _post(proxy, name, ports):
    body = "".join(f"server 127.0.0.1:{port};" for port in ports)
    status, text = proxy.api("POST", f"/upstream/{name}", body)[:2]
    assert status == 200, text


def _echo(socket, message):
    socket.send(message)
    return socket.recv(timeout=5)


def test_a_websocket_through_a_role_vhost_survives_scale_events(tmp_path, proxy_factory, ws_backends):  # noqa: F811
    first, second = ws_backends
    port = free_port()
    vhosts = [{"listen": f"127.0.0.1:{port}", "locations": [
        {"path": "/", "upstream": "ws"},
        {"path": "/plain/", "upstream": "ws", "websocket": False}]}]
    flavor = "nginx" if proxy_factory.flavor == "lua" else "tengine"
    conf = tmp_path / "vhosts.conf"
    conf.write_text(render(tmp_path, vhosts, flavor), encoding="utf-8")
    proxy = proxy_factory(workers=2, http_snippet=f"    include {conf};")
    wait_port(port)
    _post(proxy, "ws", [first])
    url = f"ws://127.0.0.1:{port}/chat"
    # Tengine's other worker takes a POST from shared memory on its dyups_read_msg_timeout timer: until
    # then a connection it accepts gets 502. Open the held websocket once every worker answers 12 in a row.
    proxy.wait_for(lambda: all(proxy.request("/u/ws/")[0] == 200 for _unused in range(12)),
                   "every worker knows upstream ws", timeout=15)

    with connect(url, open_timeout=5) as held:
        assert _echo(held, "hello") == f"{first}:hello"
        _post(proxy, "ws", [first, second])                       # scale-out
        assert _echo(held, "after scale-out") == f"{first}:after scale-out"
        _post(proxy, "ws", [second])                              # scale-in: its own server leaves
        assert _echo(held, "after scale-in") == f"{first}:after scale-in"

        def new_ones_follow():
            with connect(url, open_timeout=5) as fresh:
                return _echo(fresh, "new") == f"{second}:new"
        proxy.wait_for(new_ones_follow, "a new websocket goes to the upstream's one server left", timeout=10)
        assert _echo(held, "still open") == f"{first}:still open"

    with pytest.raises(InvalidStatus):                            # websocket: false never upgrades
        with connect(f"ws://127.0.0.1:{port}/plain/x", open_timeout=5):
            pass


def test_a_websocket_held_across_a_rerun_of_the_role_that_reloads(tmp_path, proxy_factory, ws_backends):  # noqa: F811
    """Issue 21, item 3: the role run again with a changed vhost rewrites vhosts.conf (its template) and its
    handler reloads nginx (``systemctl reload``: SIGHUP to the master). A websocket held open through the vhost
    keeps echoing on its old worker, which outlives the reload until the websocket closes; new websockets
    connect through the new workers; a request loop through the vhost (a new connection each) fails none
    meanwhile; the changed vhost serves. The upstream is in the upstream file, as the watcher keeps it, so
    the new workers have it on both flavors."""
    first, _second = ws_backends
    port = free_port()
    flavor = "nginx" if proxy_factory.flavor == "lua" else "tengine"
    upstream_file = tmp_path / "upstreams.conf"
    upstream_file.write_text(f"upstream ws {{\n    server 127.0.0.1:{first};\n}}\n", encoding="utf-8")
    locations = [{"path": "/", "upstream": "ws"}, {"path": "/plain/", "upstream": "ws", "websocket": False}]
    conf = tmp_path / "vhosts.conf"
    conf.write_text(render(tmp_path, [{"listen": f"127.0.0.1:{port}", "locations": locations}], flavor),
                    encoding="utf-8")
    proxy = proxy_factory(workers=2, upstream_file=str(upstream_file), http_snippet=f"    include {conf};")
    wait_port(port)
    plain = f"http://127.0.0.1:{port}/plain/x"
    proxy.wait_for(lambda: all(_status(plain) == 200 for _unused in range(12)), "every worker serves ws", timeout=15)

    outcomes = []
    stop = threading.Event()

    def loop():
        while not stop.is_set():
            outcomes.append(_status(plain))

    with connect(f"ws://127.0.0.1:{port}/chat", open_timeout=5) as held:
        assert _echo(held, "before") == f"{first}:before"
        looping = threading.Thread(target=loop, daemon=True)
        looping.start()
        try:
            old = set(proxy.worker_pids())
            locations.append({"path": "/added/", "upstream": "ws", "websocket": False})   # the re-run's change
            conf.write_text(render(tmp_path, [{"listen": f"127.0.0.1:{port}", "locations": locations}], flavor),
                            encoding="utf-8")
            os.kill(proxy.master_pid(), signal.SIGHUP)
            proxy.wait_for(lambda: len(set(proxy.worker_pids()) - old) == 2, "two new workers after the reload",
                           timeout=15)
            time.sleep(1)   # the loop runs on the new workers too
        finally:
            stop.set()
            looping.join(timeout=15)
        assert _echo(held, "after the reload") == f"{first}:after the reload"
        assert set(proxy.worker_pids()) & old, "the old worker carrying the websocket left before it closed"
        with connect(f"ws://127.0.0.1:{port}/chat", open_timeout=5) as fresh:
            assert _echo(fresh, "new") == f"{first}:new"
        assert _status(f"http://127.0.0.1:{port}/added/x") == 200
    failed = [status for status in outcomes if status != 200]
    assert len(outcomes) > 20 and not failed, (f"{len(failed)} of {len(outcomes)} requests failed: {failed[:5]}; "
                                               f"error log: {proxy.error_log_text()[-3000:]}")
    proxy.wait_for(lambda: not set(proxy.worker_pids()) & old, "the old workers leave once the websocket closed",
                   timeout=15)


def _status(url):
    """The status of GET ``url`` on a new connection; the exception's name when there was none."""
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError as exc:
        return type(exc).__name__
