"""The dyups client: every status of the wire contract mapped to a result or an error.

Statuses come from a scripted transport (the HTTP boundary); "refused", "timed out" and "not HTTP"
come from real sockets on loopback, through both real transports.
"""

import socket
import threading

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    DyupsBusy, DyupsProtocolError, DyupsRejected, DyupsUnavailable, TransportError)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_ansible import ansible_transport
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from tests.support.http_stdlib import stdlib_transport

URL = "http://127.0.0.1:18882"
UP = build_upstream("Web", ["10.0.0.1:80 weight=2"], ["keepalive 4"])


class Scripted:
    """A transport that answers from a list and records what it was asked."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.calls = []

    def __call__(self, method, url, body, timeout, extra_headers=None):
        self.calls.append((method, url, body, timeout))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, text = answer
        return status, text.encode(), {}


def client(*answers, **options):
    """(DyupsClient, its transport, the pauses it slept) for scripted answers."""
    transport = Scripted(*answers)
    sleeps = []
    return DyupsClient(URL, transport, sleep=sleeps.append, **options), transport, sleeps


def answering(*answers):
    return client(*answers)[0]


def test_list_and_detail_200_and_204():
    dyups, transport, _sleeps = client((200, "a\nb\n"), (204, ""), (200, "a\nserver 10.0.0.1:80 weight=2\n\n"), (204, ""))
    assert dyups.list() == ["a", "b"]
    assert dyups.list() == []
    assert dyups.detail() == {"a": [Server("10.0.0.1", 80, weight=2)]}
    assert dyups.detail() == {}
    assert [call[:2] for call in transport.calls] == [("GET", URL + "/list"), ("GET", URL + "/list"),
                                                      ("GET", URL + "/detail"), ("GET", URL + "/detail")]


def test_get_404_is_absent():
    dyups = answering((404, ""), (200, "server 10.0.0.1:80\n"))
    assert dyups.get("Web") is None
    assert dyups.get("Web") == [("10.0.0.1", 80)]


def test_update_posts_the_whole_upstream():
    dyups, transport, _sleeps = client((200, "success"))
    dyups.update(UP)
    method, url, body, timeout = transport.calls[0]
    assert (method, url, timeout) == ("POST", URL + "/upstream/Web", 5.0)
    assert body == b"server 10.0.0.1:80 weight=2;\nkeepalive 4;\n"


def test_update_takes_only_a_built_upstream():
    dyups, transport, _sleeps = client()
    with pytest.raises(TypeError):
        dyups.update("server 10.0.0.1:80;")
    assert transport.calls == []


def test_delete_200_and_404():
    dyups = answering((200, "success"), (404, ""))
    assert dyups.delete("Web") is True
    assert dyups.delete("Web") is False


def test_409_is_sent_again_with_bounded_growing_backoff():
    dyups, transport, sleeps = client((409, ""), (409, ""), (409, ""), (200, "success"))
    dyups.update(UP)
    assert len(transport.calls) == 4
    assert sleeps == [0.05, 0.1, 0.2]


def test_409_gives_up_after_the_retries():
    dyups, transport, sleeps = client(*[(409, "")] * 7)
    with pytest.raises(DyupsBusy) as caught:
        dyups.delete("Web")
    assert len(transport.calls) == 7
    assert sleeps == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0]  # capped at 1 s, about 2.5 s in all
    assert caught.value.status == 409 and "409" in str(caught.value) and URL in str(caught.value)


def test_400_from_the_lua_flavor_is_rejected():
    dyups = answering((400, "invalid server '10.0.0.1:0'"))
    with pytest.raises(DyupsRejected) as caught:
        dyups.update(UP)
    assert caught.value.status == 400 and "invalid server" in str(caught.value)


def test_500_from_tengine_says_a_reload_may_be_needed():
    dyups = answering((500, "add server failed"), (500, "del failed"))
    with pytest.raises(DyupsRejected) as caught:
        dyups.update(UP)
    message = str(caught.value)
    assert caught.value.status == 500 and "add server failed" in message
    assert "reload" in message and URL + "/upstream/Web" in message
    with pytest.raises(DyupsRejected):
        dyups.delete("Web")


@pytest.mark.parametrize("status, hint", [(404, "is dyups_interface configured"), (405, "does not allow"), (502, "")])
def test_unexpected_status_is_a_protocol_error(status, hint):
    dyups = answering((status, "nope"))
    with pytest.raises(DyupsProtocolError) as caught:
        dyups.detail()
    assert str(status) in str(caught.value) and hint in str(caught.value)


def test_garbage_detail_is_a_protocol_error():
    dyups = answering((200, "server 10.0.0.1:80 weight=1\n"))
    with pytest.raises(DyupsProtocolError) as caught:
        dyups.detail()
    assert "does not follow the wire format" in str(caught.value)


def test_no_answer_is_unavailable_naming_the_url():
    dyups = answering(TransportError("ConnectionRefusedError: [Errno 111] Connection refused"))
    with pytest.raises(DyupsUnavailable) as caught:
        dyups.detail()
    assert caught.value.url == URL + "/detail"
    assert f"the dyups interface at {URL}/detail did not answer GET" in str(caught.value)


def test_bad_names_never_reach_the_transport():
    dyups, transport, _sleeps = client()
    for call in (dyups.get, dyups.delete):
        for name in ("bad name", "x{y", "a/b"):
            with pytest.raises(ValueError):
                call(name)
    assert transport.calls == []


# -- real sockets, both transports -------------------------------------------------------------------------
TRANSPORTS = {"ansible": ansible_transport(), "stdlib": stdlib_transport}


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Silent:
    """Accepts connections, then either says nothing or answers ``reply`` (not HTTP); on loopback."""

    def __init__(self, reply=None):
        self.reply = reply
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self.stopped.is_set():
            try:
                conn, _address = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(5)
            self.conns.append(conn)
            if self.reply is not None:
                try:
                    conn.recv(65536)
                    conn.sendall(self.reply)
                    conn.close()
                except OSError:
                    pass

    def close(self):
        self.stopped.set()
        self.thread.join(timeout=5)
        self.sock.close()
        for conn in self.conns:
            conn.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_refused(kind):
    url = f"http://127.0.0.1:{closed_port()}"
    dyups = DyupsClient(url, TRANSPORTS[kind], timeout=2)
    with pytest.raises(DyupsUnavailable) as caught:
        dyups.list()
    assert url + "/list" in str(caught.value) and "refused" in str(caught.value).lower()


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_timeout(kind):
    server = Silent()
    try:
        dyups = DyupsClient(f"http://127.0.0.1:{server.port}", TRANSPORTS[kind], timeout=0.3)
        with pytest.raises(DyupsUnavailable) as caught:
            dyups.detail()
        assert f"127.0.0.1:{server.port}/detail" in str(caught.value)
        assert "timed out" in str(caught.value).lower()
    finally:
        server.close()


@pytest.mark.parametrize("kind", TRANSPORTS)
def test_an_answer_that_is_not_http(kind):
    server = Silent(reply=b"SSH-2.0-OpenSSH_9.2\r\n")
    try:
        dyups = DyupsClient(f"http://127.0.0.1:{server.port}", TRANSPORTS[kind], timeout=2)
        with pytest.raises(DyupsUnavailable) as caught:
            dyups.detail()
        assert f"127.0.0.1:{server.port}/detail" in str(caught.value)
    finally:
        server.close()
