"""KeepAliveTransport (plugins/watcher/transport.py) against small HTTP servers on loopback.

``CountingServer`` is a real HTTP/1.1 server (http.server) that counts the connections it accepted
and can close a kept connection while it is idle, as nginx does after keepalive_timeout.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import TransportError
from ansible_collections.swallowkeeper.dyups.plugins.watcher.transport import KeepAliveTransport
from tests.support.ports import close_listener, free_port


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        self.server.connections += 1
        self.server.sockets.append(self.connection)

    def _answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.path == "/slow":
            time.sleep(1.0)
        text = f"{self.command} {self.path} {body.decode()} {self.headers.get('X-Extra', '')}".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(text)))
        self.send_header("X-Answer", "yes")
        self.end_headers()
        self.wfile.write(text)

    do_GET = do_POST = do_DELETE = _answer  # noqa: N815  (http.server's names)

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass


class CountingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.connections = 0
        self.sockets = []

    def close_idle_connections(self):
        for sock in self.sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


@pytest.fixture
def server():
    srv = CountingServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def url(srv, path):
    return f"http://127.0.0.1:{srv.server_address[1]}{path}"


def test_requests_share_one_kept_connection(server):
    transport = KeepAliveTransport(headers={"X-Extra": "base"})
    for number in range(5):
        status, body, headers = transport("POST", url(server, f"/upstream/u{number}?x=1"), b"server a:1;", 2)
        assert (status, body) == (200, f"POST /upstream/u{number}?x=1 server a:1; base".encode())
        assert headers["x-answer"] == "yes"
    assert transport("GET", url(server, "/list"), None, 2, {"X-Extra": "call"})[1] == b"GET /list  call"
    assert server.connections == 1
    transport.close()


def test_a_connection_the_server_closed_while_idle_is_replaced_once(server):
    transport = KeepAliveTransport()
    assert transport("GET", url(server, "/a"), None, 2)[0] == 200
    server.close_idle_connections()
    time.sleep(0.05)
    assert transport("DELETE", url(server, "/upstream/x"), None, 2)[1] == b"DELETE /upstream/x  "
    assert server.connections == 2
    transport.close()


def test_no_server_is_a_transport_error_naming_the_reason():
    transport = KeepAliveTransport()
    with pytest.raises(TransportError, match="ConnectionRefusedError"):
        transport("GET", f"http://127.0.0.1:{free_port()}/list", None, 2)


def test_a_slow_answer_is_a_timeout(server):
    transport = KeepAliveTransport()
    with pytest.raises(TransportError, match="timed out"):
        transport("GET", url(server, "/slow"), None, 0.2)
    assert transport("GET", url(server, "/after"), None, 2)[0] == 200   # a new connection after a timeout
    transport.close()


def test_threads_that_come_and_go_reuse_the_connections_they_leave(server):
    """A fetch pool's threads end after each full read; their connections must not pile up."""
    transport = KeepAliveTransport(max_idle=2)
    for _round in range(10):
        threads = [threading.Thread(target=lambda: transport("GET", url(server, "/t"), None, 2)) for _unused in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
    idle, busy = transport.connections()
    assert busy == 0 and idle <= 2
    assert server.connections <= 3 + 10   # at most 3 at once; beyond max_idle a connection is closed, not kept
    before = server.connections
    for _unused in range(20):             # one thread after another: the idle connections serve them all
        thread = threading.Thread(target=lambda: transport("GET", url(server, "/t"), None, 2))
        thread.start()
        thread.join(5)
    assert server.connections == before
    transport.close()
    assert transport.connections() == (0, 0)


def test_an_unknown_scheme_is_refused():
    with pytest.raises(TransportError, match="unsupported URL scheme"):
        KeepAliveTransport()("GET", "ftp://127.0.0.1/x", None, 1)


def test_close_ends_a_request_in_flight_at_once_and_refuses_later_ones(server):
    transport = KeepAliveTransport()
    assert transport("GET", url(server, "/warm"), None, 2)[0] == 200
    box = {}

    def slow():
        started = time.monotonic()
        try:
            transport("GET", url(server, "/slow"), None, 30)
        except TransportError as exc:
            box["error"] = exc
        box["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.2)
    transport.close()
    thread.join(5)
    assert "error" in box and box["seconds"] < 0.9, box   # the server would answer after 1 s
    with pytest.raises(TransportError, match="closed"):
        transport("GET", url(server, "/later"), None, 2)


@pytest.fixture
def streaming_server():
    """A raw socket server whose answers announce 200 kB and send them in 1 kB pieces: a reader is
    mid-body for tens of milliseconds (http.server answers too fast to be caught there)."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def answer(connection):
        try:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n")
            for _piece in range(200):
                if stop.is_set():
                    break
                connection.sendall(b"x" * 1000)
                time.sleep(0.0001)
        except OSError:
            pass
        finally:
            connection.close()

    def accept():
        while not stop.is_set():
            try:
                connection, _address = listener.accept()
            except OSError:
                return
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    accepting = threading.Thread(target=accept, daemon=True)
    accepting.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}/"
    stop.set()
    close_listener(listener, accepting)


def test_close_during_a_body_read_is_a_transport_error_never_another_exception(streaming_server):
    """A SIGHUP reload closes the transport under the long polls' reads; whatever point of the read
    the close hits, the reader gets a TransportError (before the fix, about half the rounds raised
    AttributeError from http.client, which killed the long-poll thread with a traceback)."""
    others = []
    for round_number in range(60):
        transport = KeepAliveTransport()

        def read(transport=transport):
            try:
                transport("GET", streaming_server, None, 5)
            except TransportError:
                pass
            except Exception as exc:  # noqa: BLE001 - what the test counts
                others.append(f"{type(exc).__name__}: {exc}")

        thread = threading.Thread(target=read)
        thread.start()
        time.sleep(0.001 + (round_number % 20) / 1000)
        transport.close()
        thread.join(5)
    assert others == []
