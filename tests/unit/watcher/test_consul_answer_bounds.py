"""Consul answers are bounded (issue 19, deliver 6): each request has its timeout in all, however slowly
the answer comes, and an answer larger than the transport's ``max_answer`` is refused, not read whole.

``TricklingConsul`` is a FAKE Consul, a raw socket server: a real agent never sends its answer a byte at a
time nor an endless body, so these error paths need one. It answers every connection with a valid HTTP
status line and headers and then the body it is given, ``pace`` seconds between bytes (0: all at once),
and stops after ``limit`` seconds.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import ConsulClient, ConsulUnavailable
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import TransportError
from ansible_collections.swallowkeeper.dyups.plugins.watcher.transport import KeepAliveTransport
from tests.support.ports import close_listener


class TricklingConsul:
    def __init__(self, head, body, pace=0.0, limit=8.0):
        self.answer = head + body
        self.pace, self.limit = pace, limit
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self):
        while not self.stopping.is_set():
            try:
                conn, _unused = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                ends = time.monotonic() + self.limit
                try:
                    if not self.pace:
                        conn.sendall(self.answer)
                    for position in range(len(self.answer) if self.pace else 0):
                        if self.stopping.is_set() or time.monotonic() > ends:
                            break
                        conn.sendall(self.answer[position:position + 1])
                        time.sleep(self.pace)
                except OSError:
                    pass

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stopping.set()
        close_listener(self.listener, self.thread)


def timed(call):
    started = time.monotonic()
    try:
        call()
    except Exception as exc:  # pylint: disable=broad-except
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 5\r\n"


@pytest.mark.parametrize("where", ["headers", "body"])
def test_a_consul_that_sends_a_byte_at_a_time_times_out_in_all(where):
    """Every read gets a byte within 50 ms, so a per-read timeout never fires; the request's 1 s does."""
    body = b"[" + b'"x",' * 2000 + b'"x"]'
    head = HEAD + b"X-Pad: " + b"p" * 400 + b"\r\n" if where == "headers" else HEAD
    head += b"Content-Length: %d\r\n\r\n" % len(body)
    with TricklingConsul(head, body, pace=0.05) as consul:
        transport = KeepAliveTransport()
        client = ConsulClient(consul.url, transport, timeout=1.0)
        try:
            took, error = timed(lambda: client.get("/v1/catalog/services"))
        finally:
            transport.close()
    assert isinstance(error, ConsulUnavailable), error
    assert took < 2.0, f"the request took {took:.1f}s with a 1s timeout"


def test_a_blocking_query_keeps_its_wait_on_top_of_the_timeout():
    """The deadline of a blocking query is timeout + wait + wait/16, as before: a slow but finite answer
    within it is read whole."""
    body = b'{"web": []}'
    with TricklingConsul(HEAD + b"Content-Length: %d\r\n\r\n" % len(body), body, pace=0.02) as consul:
        transport = KeepAliveTransport()
        try:
            answer = ConsulClient(consul.url, transport, timeout=0.5).get("/v1/catalog/services", index=1, wait=5)
        finally:
            transport.close()
    assert answer.data == {"web": []} and answer.index == 5


@pytest.mark.parametrize("framing", ["length", "chunked", "close"])
def test_an_answer_over_the_size_limit_is_refused(framing):
    body = b"[" + b'"x",' * 3000 + b'"x"]'
    if framing == "length":
        head, sent = HEAD + b"Content-Length: %d\r\n\r\n" % len(body), body
    elif framing == "chunked":
        head = HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
        sent = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 1000]), body[i:i + 1000]) for i in range(0, len(body), 1000))
        sent += b"0\r\n\r\n"
    else:
        head, sent = HEAD + b"Connection: close\r\n\r\n", body
    with TricklingConsul(head, sent) as consul:
        small = KeepAliveTransport(max_answer=10000)
        big = KeepAliveTransport(max_answer=len(body))
        try:
            with pytest.raises(TransportError, match="10000 bytes"):
                small("GET", consul.url + "/v1/catalog/services", None, 5.0)
            status, data, _headers = big("GET", consul.url + "/v1/catalog/services", None, 5.0)
        finally:
            small.close()
            big.close()
    assert status == 200 and data == body
