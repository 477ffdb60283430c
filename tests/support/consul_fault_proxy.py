"""A loopback HTTP proxy in front of a real Consul agent that can make chosen reads fail.

A stand-in for one thing a real Consul does not do on request: answer 500 (or 429) for the read of
one service while every other request, blocking queries included, goes to the real agent unchanged.
Consul answers 500 when a server is overloaded or a leader election is under way, and 429 under rate
limits, but not for a service a test picks; this proxy makes that fault deterministic
(tests/integration/test_watcher_faults.py, tests/integration/test_watcher_bursts.py). Everything it
does not fail is the real agent's answer, headers (X-Consul-Index) included.
"""

from __future__ import annotations

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_PASSED_HEADERS = ("Content-Type", "X-Consul-Index", "X-Consul-Knownleader", "X-Consul-Lastcontact", "Location")


class FaultProxy:
    """``FaultProxy(agent_url).start()``; ``url`` is where the watcher connects. ``fail(prefix, status)``
    makes every GET whose path (as sent, still quoted) starts with ``prefix`` answer ``status``;
    ``heal(prefix)`` (or ``heal()``: all) ends it. ``stop()`` closes it (also on failure: use ``with``)."""

    def __init__(self, agent_url: str) -> None:
        parts = urlsplit(agent_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.failing: dict[str, int] = {}
        self.failed = 0  # requests answered with a fault
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.handle_error = lambda *args: None  # a watcher stopped mid-poll closes its connection: not news
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="consul-fault-proxy", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FaultProxy":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def fail(self, prefix: str, status: int = 500) -> None:
        with self.lock:
            self.failing[prefix] = status

    def heal(self, prefix: str | None = None) -> None:
        with self.lock:
            if prefix is None:
                self.failing.clear()
            else:
                self.failing.pop(prefix, None)

    def _fault(self, path: str) -> int | None:
        with self.lock:
            for prefix, status in self.failing.items():
                if path.startswith(prefix):
                    self.failed += 1
                    return status
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                status = proxy._fault(self.path) if self.command == "GET" else None
                if status is not None:
                    body = b"injected fault (tests/support/consul_fault_proxy.py)"
                    self.send_response(status)
                    self.send_header("Content-Type", "text/plain")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {key: value for key, value in self.headers.items()
                           if key.lower() in ("x-consul-token", "content-type", "accept")}
                connection = http.client.HTTPConnection(*proxy.upstream, timeout=660)
                try:
                    connection.request(self.command, self.path, body=body, headers=headers)
                    answer = connection.getresponse()
                    data = answer.read()
                    self.send_response(answer.status)
                    for key in _PASSED_HEADERS:
                        value = answer.getheader(key)
                        if value is not None:
                            self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    connection.close()

            do_GET = do_PUT = do_POST = do_DELETE = _forward

        return Handler
