"""WebSockets through a vhost the role made (templates/vhosts.conf.j2 rendered by Ansible's template module),
on a real proxy of each flavor (``[lua]``, ``[tengine]``), with real websocket backends
(tests/resilience/ws_echo.py: each answers ``PORT:MESSAGE``).

A websocket opened through the vhost stays open and keeps echoing across scale events made through the
dyups interface (scale-out, then a scale-in that removes the very server it is connected to), while new
websockets follow the upstream. A location with ``websocket: false`` refuses the upgrade (nginx passes no
Upgrade header). Until the template passed Upgrade on (``Connection ""`` hard-coded), no websocket connected.
"""

from __future__ import annotations

import subprocess
import sys
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
