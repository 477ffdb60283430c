"""KeepAliveTransport.many and _http_pipeline.py on the error paths a real nginx does not produce on
demand: a scripted loopback server (a stand-in, for these paths only; the real exchange with both
interfaces is tests/integration/test_pipelined_posts.py) that answers a given number of requests per
connection and then closes it, with or without ``Connection: close``, cuts an answer in the middle,
answers in chunks, or never answers."""

from __future__ import annotations

import io
import socket
import threading

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import TransportError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_keepalive import KeepAliveTransport
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_pipeline import read_answer, request_bytes


class Scripted:
    """Reads requests (Content-Length bodies) and answers each with ``answer(n)`` bytes, n counting from 0
    over all connections; after ``per_connection`` answers on a connection it closes it. ``answer`` may
    return None: the connection is closed there, nothing answered."""

    def __init__(self, answer, per_connection=10 ** 9):
        self.answer = answer
        self.per_connection = per_connection
        self.count = 0
        self.connections = 0
        self.seen = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _addr = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                reader = conn.makefile("rb")
                for _unused in range(self.per_connection):
                    line = reader.readline()
                    if not line:
                        break
                    length = 0
                    while True:
                        header = reader.readline()
                        if header in (b"\r\n", b""):
                            break
                        name, _sep, value = header.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    self.seen.append((line.decode().strip(), reader.read(length)))
                    data = self.answer(self.count)
                    self.count += 1
                    if data is None:
                        break
                    conn.sendall(data)
                reader.close()   # else the makefile keeps the socket open after the with block

    def close(self):
        self.listener.close()


def ok(body=b"success", extra=""):
    return f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n{extra}\r\n".encode() + body


def requests_to(url, count):
    return [("POST", f"{url}/upstream/U{number}", f"server 10.0.0.{number % 250 + 1}:80;".encode())
            for number in range(count)]


@pytest.fixture
def transport():
    client = KeepAliveTransport(headers={"X-Dyups-Secret": "s3cret"})
    yield client
    client.close()


@pytest.mark.parametrize("close_header", [True, False])
def test_where_the_server_closes_the_rest_goes_on_a_new_connection(transport, close_header):
    server = Scripted(lambda n: ok(extra="Connection: close\r\n" if close_header and n % 7 == 6 else ""),
                      per_connection=7)
    try:
        answers = transport.many(requests_to(server.url, 50), timeout=5, window=4)
        assert [answer[0] for answer in answers] == [200] * 50
        # each request answered once, in order (the server reads no more than it answers on a connection)
        assert [line for line, _body in server.seen] == [f"POST /upstream/U{n} HTTP/1.1" for n in range(50)]
        assert server.connections == 8
        assert transport.connections() == (0, 0)
    finally:
        server.close()


def test_chunked_answers_and_the_headers_of_each(transport):
    chunked = b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\nX-Dyups-Free-Space: 4096\r\n\r\n3\r\nbad\r\n0\r\n\r\n"
    server = Scripted(lambda n: chunked if n == 1 else ok())
    try:
        answers = transport.many(requests_to(server.url, 3), timeout=5)
        assert answers[1] == (400, b"bad", {"transfer-encoding": "chunked", "x-dyups-free-space": "4096"})
        assert answers[0][:2] == answers[2][:2] == (200, b"success")
    finally:
        server.close()


def test_an_answer_cut_in_the_middle_is_sent_again_and_a_server_that_never_answers_ends_it(transport):
    cut = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort"
    server = Scripted(lambda n: cut if n == 2 else ok(), per_connection=3)   # closed after the cut answer
    try:
        answers = transport.many(requests_to(server.url, 5), timeout=5, window=5)
        assert [answer[0] for answer in answers] == [200] * 5   # the third went again on a new connection
        assert server.connections == 2
    finally:
        server.close()
    silent = Scripted(lambda n: None if n >= 2 else ok())
    try:
        answers = transport.many(requests_to(silent.url, 4), timeout=5, window=4)
        assert [answer[0] for answer in answers[:2]] == [200, 200]
        assert all(isinstance(answer, TransportError) for answer in answers[2:])
    finally:
        silent.close()


def test_nothing_listening_gives_every_request_its_error(transport):
    free = socket.create_server(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{free.getsockname()[1]}"
    free.close()
    answers = transport.many(requests_to(url, 3), timeout=2)
    assert len(answers) == 3 and all(isinstance(answer, TransportError) for answer in answers)
    assert "refused" in answers[0].reason.lower()


def test_the_framing_refuses_line_breaks_and_answers_that_break_it():
    with pytest.raises(ValueError, match="line break"):
        request_bytes("POST", "/upstream/a\r\nX: y", "h", {}, b"")
    with pytest.raises(ValueError, match="line break"):
        request_bytes("POST", "/upstream/a", "h", {"X-Dyups-Secret": "a\nb"}, b"")
    assert request_bytes("DELETE", "/upstream/a", "h", {"X-A": "1"}, None) == \
        b"DELETE /upstream/a HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n"
    for bad in (b"SMTP ready\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\nab"):
        with pytest.raises(ValueError):
            read_answer(io.BufferedReader(io.BytesIO(bad)), 1024)
    with pytest.raises(ValueError, match="1024"):
        read_answer(io.BufferedReader(io.BytesIO(b"HTTP/1.1 200 OK\r\nContent-Length: 2048\r\n\r\n")), 1024)
    assert read_answer(io.BufferedReader(io.BytesIO(b"")), 1024) == (None, True)
