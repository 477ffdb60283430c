"""systemd's notify protocol (plugins/watcher/systemd_notify.py), against a datagram socket of the test's
own standing in for systemd's (a path and the abstract namespace), and through a running Daemon."""

import os
import socket
import threading
import time

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.watcher import systemd_notify as sn


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request, tmp_path):
    """(NOTIFY_SOCKET value, a function returning the next datagram or None after a timeout)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
        value = address
    else:
        name = f"swk-notify-test-{os.getpid()}-{id(sock)}"
        sock.bind("\0" + name)
        value = "@" + name

    def receive(timeout=3.0):
        sock.settimeout(timeout)
        try:
            return sock.recv(4096).decode()
        except socket.timeout:
            return None

    yield value, receive
    sock.close()


def test_send_reaches_the_socket(notify_socket):
    value, receive = notify_socket
    assert sn.send(sn.notify_address({"NOTIFY_SOCKET": value}), "READY=1", "STATUS=x")
    assert receive() == "READY=1\nSTATUS=x"


def test_without_a_socket_nothing_is_sent():
    assert sn.notify_address({}) is None
    assert sn.send(None, "READY=1") is False
    supervision = sn.Supervision(time.time, lambda: True, lambda: None, environ={}).start()
    assert supervision.thread is None
    supervision.ready()
    supervision.stop()


@pytest.mark.parametrize("environ, expected", [
    ({"WATCHDOG_USEC": "20000000"}, 20.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "OURS"}, 20.0),
    ({"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "1"}, None),   # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
    ({}, None),
])
def test_watchdog_interval(environ, expected):
    environ = {key: str(os.getpid()) if value == "OURS" else value for key, value in environ.items()}
    assert sn.watchdog_interval(environ) == expected


def test_ready_once_and_stopping(notify_socket):
    value, receive = notify_socket
    supervision = sn.Supervision(time.time, lambda: True, lambda: None, environ={"NOTIFY_SOCKET": value})
    supervision.ready()
    supervision.ready()
    assert receive().startswith("READY=1\n")
    supervision.stop()
    assert receive() == "STOPPING=1"   # not a second READY


def test_watchdog_pings_only_while_loop_and_polls_are_alive(notify_socket):
    value, receive = notify_socket
    state = {"heartbeat": time.time(), "polls": True, "wakes": 0, "loop_runs": False}

    def wake():
        state["wakes"] += 1
        if state["loop_runs"]:
            state["heartbeat"] = time.time()   # a running loop comes round when woken

    supervision = sn.Supervision(lambda: state["heartbeat"], lambda: state["polls"], wake,
                                 environ={"NOTIFY_SOCKET": value, "WATCHDOG_USEC": "400000"})
    assert supervision.interval == 0.4
    assert supervision.beat() and receive() == "WATCHDOG=1" and state["wakes"] == 1
    state["heartbeat"] = time.time() - 0.3    # the loop silent for over half the interval
    assert not supervision.beat() and receive(0.3) is None and state["wakes"] == 2
    state["heartbeat"] = time.time()
    state["polls"] = False                    # a long poll thread died
    assert not supervision.beat() and receive(0.3) is None
    state["polls"] = True
    state["loop_runs"] = True
    state["heartbeat"] = time.time()
    supervision.start()                       # the thread: a ping every quarter interval
    try:
        assert receive() == "WATCHDOG=1"
    finally:
        supervision.stop()


def test_daemon_sends_ready_and_watchdog_tied_to_its_loop(notify_socket, tmp_path, monkeypatch):
    """A real Daemon (Consul and dyups on closed ports: its first attempt fails) says READY=1 after
    that attempt, pings the watchdog while its loop runs, and stops pinging when the loop is stuck."""
    from ansible_collections.swallowkeeper.dyups.plugins.watcher import daemon as d
    from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as s
    from tests.support.ports import free_port

    value, receive = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    monkeypatch.setenv("WATCHDOG_USEC", "800000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    settings = s.build({"consul_url": f"http://127.0.0.1:{free_port()}", "dyups_url": f"http://127.0.0.1:{free_port()}",
                        "upstream_file": str(tmp_path / "upstreams.conf"), "status_listen": "",
                        "retry_initial": 0.05, "retry_max": 0.1}, environ={})
    daemon = d.Daemon(settings)
    stuck = threading.Event()
    calls = []
    original_refresh = daemon._refresh

    def refresh():
        calls.append(time.time())
        while stuck.is_set():   # the loop stuck (in a request that never ends, say)
            time.sleep(0.05)
        return original_refresh()

    daemon._refresh = refresh
    runner = threading.Thread(target=daemon.run)
    runner.start()
    try:
        messages = [receive(), receive(), receive()]
        assert messages[0].startswith("READY=1"), messages
        assert messages[1:] == ["WATCHDOG=1", "WATCHDOG=1"], messages
        stuck.set()
        time.sleep(0.7)     # the loop enters the stuck refresh at its next retry (0.1 s), and is
        while receive(0.05) is not None:   # seen stuck half an interval (0.4 s) after its last round
            pass            # pings sent before that
        assert receive(1.0) is None, calls          # no ping while the loop is stuck
        stuck.clear()
        assert receive() == "WATCHDOG=1"     # and pings again once it comes round
    finally:
        stuck.clear()
        daemon.request_stop()
        runner.join(10)
    assert not runner.is_alive()
    rest = []
    while True:
        message = receive(0.5)
        if message is None:
            break
        rest.append(message)
    assert rest[-1] == "STOPPING=1", rest


def test_daemon_counts_a_dead_long_poll_thread(tmp_path):
    """The daemon's polls_alive: False as soon as one long poll thread has ended (a poll that died)."""
    from ansible_collections.swallowkeeper.dyups.plugins.watcher import daemon as d
    from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as s

    daemon = d.Daemon(s.build({"upstream_file": str(tmp_path / "upstreams.conf"), "status_listen": ""}, environ={}))
    assert daemon._polls_alive()           # not watching yet: no thread to be dead
    release = threading.Event()
    running = threading.Thread(target=release.wait)
    ended = threading.Thread(target=lambda: None)
    running.start()
    ended.start()
    ended.join()
    try:
        daemon.source.threads = [running]
        assert daemon._polls_alive()
        daemon.source.threads = [running, ended]
        assert not daemon._polls_alive()
    finally:
        release.set()
        running.join()
