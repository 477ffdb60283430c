"""A fault-injecting HTTP proxy on loopback: a STAND-IN for a misbehaving dyups interface or Consul.

Real servers do not answer 500 or 429 on demand, or send invalid JSON, so the resilience suite
puts this proxy between the watcher and the real server (the real Lua-flavor interface, the
real Consul agent). While no fault is set it passes every request through unchanged, blocking
queries included (HTTP/1.1, keep-alive on the client side, one upstream connection per
request). Then:

    proxy = FaultProxy(target_port).start()
    proxy.url                                   # give this to the watcher instead of the server's
    proxy.set_fault(500, b"add server failed")  # every request answered 500 by the proxy itself
    proxy.set_fault(429, when=lambda r: r.path.startswith("/v1/"))
    proxy.set_fault("drop")                     # close the client connection without an answer
    proxy.clear_fault()                         # pass through again
    proxy.set_mutator(fn)                       # fn(request, answer) -> Answer | "drop" | None (unchanged):
                                                # rewrite the real server's answers
    proxy.records                               # [(epoch, method, path, request body, status or None,
                                                #   "proxy" | "server" | "mutated")]
    proxy.stop()

A request already waiting on the server (a blocking query) when a fault is set is answered with
the fault at once, as a server that starts refusing would do. ``Answer(status, body, headers)``
is what the client gets (``headers`` a dict; Content-Length is set by the proxy).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.support.ports import free_port

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade",
              "proxy-connection"}
UPSTREAM_TIMEOUT = 900.0


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: bytes


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict = field(default_factory=dict)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args):
        pass

    def _any(self):
        self.server.proxy.handle(self)

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any


class FaultProxy:
    def __init__(self, target_port, target_host="127.0.0.1", port=None):
        self.target = (target_host, target_port)
        self.port = port or free_port()
        self.fault = None            # (answer or "drop", predicate)
        self.mutator = None
        self.records = []
        self.lock = threading.Lock()
        self.changed = threading.Event()
        self.server = None
        self.thread = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.server = _Server(("127.0.0.1", self.port), _Handler)
        self.server.proxy = self
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- control -----------------------------------------------------------------------------------
    def set_fault(self, answer, body=b"", when=None):
        """``answer``: a status code, an Answer, a function(request) -> Answer, or "drop"."""
        if isinstance(answer, int):
            answer = Answer(answer, body if isinstance(body, bytes) else body.encode())
        self.fault = (answer, when or (lambda _request: True))
        self.changed.set()

    def clear_fault(self):
        self.fault = None

    def set_mutator(self, mutator):
        self.mutator = mutator

    def _fault_for(self, request):
        fault = self.fault
        if fault is None or not fault[1](request):
            return None
        answer = fault[0]
        return answer(request) if callable(answer) else answer

    # -- serving -----------------------------------------------------------------------------------
    def handle(self, handler):
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = Request(handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}, body)
        answer, source = self._fault_for(request), "proxy"
        if answer is None:
            answer, source = self._forward(request)
        if answer is not None and source == "server" and self.mutator is not None:
            mutated = self.mutator(request, answer)
            if mutated is not None:
                answer, source = mutated, "mutated"
        if answer is None or answer == "drop":
            self._record(request, None, source)
            handler.close_connection = True
            return
        self._record(request, answer.status, source)
        try:
            handler.send_response(answer.status)
            for key, value in answer.headers.items():
                if key.lower() not in HOP_BY_HOP:
                    handler.send_header(key, value)
            handler.send_header("Content-Length", str(len(answer.body)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(answer.body)
        except OSError:
            handler.close_connection = True

    def _record(self, request, status, source):
        with self.lock:
            self.records.append((time.time(), request.method, request.path, request.body, status, source))

    def _forward(self, request):
        """The server's answer, or the fault's if one is set while waiting; None when unreachable."""
        result = {}
        done = threading.Event()
        connection = http.client.HTTPConnection(*self.target, timeout=UPSTREAM_TIMEOUT)

        def call():
            try:
                # no accept-encoding: the server answers plain text, which a mutator can read
                headers = {k: v for k, v in request.headers.items()
                           if k not in HOP_BY_HOP and k not in ("host", "accept-encoding")}
                connection.request(request.method, request.path, body=request.body or None, headers=headers)
                response = connection.getresponse()
                result["answer"] = Answer(response.status, response.read(),
                                          dict(response.getheaders()))
            except (OSError, http.client.HTTPException) as exc:
                result["error"] = exc
            finally:
                done.set()

        threading.Thread(target=call, daemon=True).start()
        deadline = time.monotonic() + UPSTREAM_TIMEOUT
        try:
            while not done.wait(0.05):
                fault = self._fault_for(request)
                if fault is not None:
                    return fault, "proxy"
                if time.monotonic() > deadline:
                    return None, "proxy"
        finally:
            if not done.is_set():
                _abort(connection)
        if "answer" in result:
            connection.close()
            return result["answer"], "server"
        return None, "proxy"


def _abort(connection):
    """Wake the thread blocked on this connection's answer (close() alone does not), then close it."""
    sock = connection.sock
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    connection.close()
