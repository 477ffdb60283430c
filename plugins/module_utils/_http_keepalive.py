# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the HTTP transport of the modules and the watcher.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The transport of the shared clients: keep-alive ``http.client`` connections (standard library only).

A transport is ``transport(method, url, body, timeout, extra_headers=None) -> (status, body,
headers)`` with header names in lower case, and raises TransportError when no answer came. Every
HTTP status, 4xx and 5xx included, is an answer and is returned, not raised. Connections are kept
open and reused by whichever thread (the two Consul long polls, a fetch pool, the sync loop) asks
next: a full sync sends thousands of POSTs to the local interface, consul_services thousands of
GETs to the local agent, and a kept connection with the standard library costs about a third of what
a ``requests`` session costs per request (docs/benchmarks.md); the TLS context is built once, for
https only. Proxy variables, .netrc and redirects play no part: the collection talks to the local
agent and the local nginx only.

Each request has ``timeout`` seconds in all, from connecting to the last byte of the answer (each read
waits only for what is left: a server that sends a byte at a time is cut off like a silent one), and an
answer larger than ``max_answer`` bytes (MAX_ANSWER, 64 MiB, unless told) is refused, not read whole.

A URL ``unix:/PATH/TO.sock`` names a unix socket (the dyups interface and the watcher's endpoint where
the role puts them: reachable only by who may enter the socket's directory); a request to it is
``unix:/PATH/TO.sock:/REQUEST/PATH`` (``join_url``; nginx's own spelling), so a socket path holds no ``:``.

A request that fails on a kept connection before any answer came (the server closed it while idle:
nginx's keepalive_timeout) is sent once more on a new connection. Every request the collection sends
is safe to repeat: GETs, and POST and DELETE of a whole upstream.
"""

from __future__ import annotations

import functools
import http.client
import socket
import threading
import time
from http.client import HTTPConnection
from typing import TYPE_CHECKING, Any, Mapping, Sequence
from urllib.parse import SplitResult, urlsplit

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._deadline_io import deadline_reader
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import TransportError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_pipeline import exchange, request_bytes

if TYPE_CHECKING:
    import ssl

MAX_ANSWER = 64 * 1024 * 1024   # a Consul answer of 100,000 health checks is about 40 MB
_CHUNK = 1024 * 1024
PIPELINE_WINDOW = 64   # requests in flight on a pipelined connection (many)

STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.BadStatusLine)


class TLSConnection(HTTPConnection):
    """``http.client.HTTPSConnection`` without its proxy tunnel (the collection talks to loopback and the
    local agent): the socket wrapped by ``context``, the host name checked as the context says. Its own
    class because ``http.client.HTTPSConnection`` exists only when ``ssl`` was importable as
    ``http.client`` was imported, and the watcher imports ``http.client`` without ``ssl`` (libssl and
    libcrypto, about 4 MB of RSS) when no URL of its needs TLS (plugins/watcher/__main__.py)."""

    default_port = 443

    def __init__(self, host: str, port: int, timeout: float, context: ssl.SSLContext) -> None:
        super().__init__(host, port, timeout=timeout)
        self._context = context

    def connect(self) -> None:
        super().connect()
        self.sock = self._context.wrap_socket(self.sock, server_hostname=self.host)


UNIX_PREFIX = "unix:"


def join_url(base: str, path: str) -> str:
    """``base`` (an http(s) URL, or ``unix:/SOCKET``) with the request ``path`` (``/detail``) after it."""
    return (base + ":" + path) if base.startswith(UNIX_PREFIX) else base + path


def split_unix(url: str) -> tuple[str, str]:
    """(socket path, request path) of ``unix:/SOCKET[:/PATH]``."""
    socket_path, _sep, path = url[len(UNIX_PREFIX):].partition(":")
    return socket_path, path or "/"


class UnixHTTPConnection(HTTPConnection):
    """HTTP over a unix socket (``Host: localhost``)."""

    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _DeadlineResponse(http.client.HTTPResponse):
    """An answer read within ``deadline`` (time.monotonic()), status line and headers included."""

    def __init__(self, sock: Any, *args: Any, deadline: float = 0.0, **kwargs: Any) -> None:
        super().__init__(sock, *args, **kwargs)
        self.fp.close()
        self.fp = deadline_reader(sock, deadline)


class KeepAliveTransport:
    """A callable transport; ``verify`` (True, False or a CA bundle path) and ``cert`` ((cert, key), the key
    None when the cert file holds it) apply to https URLs; ``max_answer``: the largest answer body read.

    Connections are shared, not bound to threads: a request takes an idle connection to its host
    (or opens one) and gives it back after the answer; at most ``max_idle`` per host are kept. So
    the short-lived threads of a fetch pool reuse the connections of the last one instead of
    leaving theirs open behind them.
    """

    def __init__(self, headers: Mapping[str, str] | None = None, verify: bool | str = True,
                 cert: tuple[str, str | None] | None = None, max_idle: int = 8, max_answer: int = MAX_ANSWER) -> None:
        self._headers = dict(headers or {})
        self._max_answer = max_answer
        self._verify = verify
        self._cert = cert
        self._max_idle = max_idle
        self._context: ssl.SSLContext | None = None
        self._closed = False
        self._idle: dict[tuple[str, str], list[HTTPConnection]] = {}  # (scheme, netloc) -> [connection, ...]
        self._busy: set[HTTPConnection] = set()  # connections with a request in flight
        self._lock = threading.Lock()

    def _ssl_context(self) -> ssl.SSLContext:
        import ssl  # pylint: disable=import-outside-toplevel,redefined-outer-name  # https only (TLSConnection)

        if self._context is None:
            context = ssl.create_default_context(cafile=self._verify if isinstance(self._verify, str) else None)
            if self._verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self._cert:
                context.load_cert_chain(*self._cert)
            self._context = context
        return self._context

    def _take(self, parts: SplitResult, timeout: float, fresh: bool) -> tuple[tuple[str, str], HTTPConnection]:
        """An idle connection to the URL's host (none when ``fresh``), or a new one; marked busy."""
        unix = parts.scheme == "unix"
        key = (parts.scheme, split_unix(parts.geturl())[0] if unix else parts.netloc)
        connection = None
        with self._lock:
            idle = self._idle.get(key)
            if idle and not fresh:
                connection = idle.pop()
        if connection is None and unix:
            connection = UnixHTTPConnection(key[1], timeout)
        if connection is None:
            if not parts.hostname:
                raise TransportError(f"no host in the URL {parts.geturl()!r}")
            if parts.scheme == "https":
                connection = TLSConnection(parts.hostname, parts.port or 443, timeout=timeout,
                                           context=self._ssl_context())
            elif parts.scheme == "http":
                connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
            else:
                raise TransportError(f"unsupported URL scheme {parts.scheme!r} (http or https)")
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        with self._lock:
            self._busy.add(connection)
        return key, connection

    def _give_back(self, key: tuple[str, str], connection: HTTPConnection, keep: bool) -> None:
        with self._lock:
            self._busy.discard(connection)
            idle = self._idle.setdefault(key, [])
            if keep and not self._closed and connection.sock is not None and len(idle) < self._max_idle:
                idle.append(connection)
                return
        connection.close()

    def __call__(self, method: str, url: str, body: bytes | None, timeout: float,
                 extra_headers: Mapping[str, str] | None = None) -> tuple[int, bytes, dict[str, str]]:
        if self._closed:
            raise TransportError("the transport was closed (the watcher is stopping or reloading)")
        parts = urlsplit(url)
        target = _target(parts)
        headers = dict(self._headers, **(extra_headers or {}))
        deadline = time.monotonic() + timeout
        for attempt in (1, 2):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TransportError(f"no answer within {timeout:g}s")
            key, connection = self._take(parts, left, fresh=attempt == 2)
            connection.response_class = functools.partial(_DeadlineResponse, deadline=deadline)  # type: ignore[assignment]
            reused = connection.sock is not None
            try:
                connection.request(method, target, body=body, headers=headers)
                response = connection.getresponse()
                data = self._read(response)
            except STALE_CONNECTION as exc:
                self._give_back(key, connection, keep=False)
                if reused and attempt == 1 and not self._closed:
                    continue
                raise TransportError(_reason(exc)) from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self._give_back(key, connection, keep=False)
                raise TransportError(_reason(exc)) from None
            except AttributeError:
                # close() from another thread took the socket from under a read in flight: http.client
                # then reads from None (a SIGHUP reload stops the long polls this way)
                self._give_back(key, connection, keep=False)
                if not self._closed:
                    raise
                raise TransportError("the transport was closed while the request was in flight") from None
            self._give_back(key, connection, keep=not response.will_close)
            return response.status, data, {name.lower(): value for name, value in response.getheaders()}
        raise TransportError("no answer")  # not reached: the second attempt returns or raises

    def many(self, requests: Sequence[tuple[str, str, bytes | None]], timeout: float,
             window: int = PIPELINE_WINDOW) -> list[tuple[int, bytes, dict[str, str]] | TransportError]:
        """The answers to ``requests`` ((method, url, body), all to one host), in their order, each a
        ``(status, body, headers)`` as ``__call__`` returns or the TransportError of a request that got no
        answer. They are pipelined (_http_pipeline.py) on a connection of their own, ``window`` at a time,
        each window within ``timeout``; where the server closes the connection (nginx's
        ``keepalive_requests``) or it breaks, the requests not answered are sent again on a new one, which
        every request the collection sends allows (see the module's text). A new connection that brings no
        answer at all ends it: the rest get that error."""
        answers: list[tuple[int, bytes, dict[str, str]] | None] = [None] * len(requests)
        if not requests:
            return []
        if self._closed:
            raise TransportError("the transport was closed (the watcher is stopping or reloading)")
        parts = urlsplit(requests[0][1])
        host = "localhost" if parts.scheme == "unix" else parts.netloc
        framed = [request_bytes(method, _target(urlsplit(url)), host, self._headers, body)
                  for method, url, body in requests]
        index, error = 0, "no answer"
        while index < len(requests):
            before = index
            connection = None
            try:
                _key, connection = self._take(parts, timeout, fresh=True)
                if connection.sock is None:
                    connection.connect()
                index = exchange(connection.sock, framed, index, window, answers,
                                 lambda: time.monotonic() + timeout, self._max_answer)
            except TransportError as exc:
                error = exc.reason
            except (OSError, ValueError, AttributeError) as exc:   # AttributeError: close() took the socket
                error = _reason(exc)
                while index < len(requests) and answers[index] is not None:
                    index += 1
            finally:
                if connection is not None:
                    with self._lock:
                        self._busy.discard(connection)
                    connection.close()
            if index == before or self._closed:
                break
        failed = TransportError(error)
        return [failed if answer is None else answer for answer in answers]

    def _read(self, response: http.client.HTTPResponse) -> bytes:
        """The answer's body; ValueError when it is larger than ``max_answer`` (not read further)."""
        if response.length is not None and response.length > self._max_answer:
            raise ValueError(f"the answer announces {response.length} bytes, more than the {self._max_answer} bytes read")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self._max_answer:
                raise ValueError(f"the answer is longer than the {self._max_answer} bytes read")
            chunks.append(chunk)

    def connections(self) -> tuple[int, int]:
        """(idle, busy) connection counts, for tests and the curious."""
        with self._lock:
            return sum(len(idle) for idle in self._idle.values()), len(self._busy)

    def close(self) -> None:
        """Close every connection; a request in flight (a long poll) ends at once with a
        TransportError, and so does any later request."""
        self._closed = True
        with self._lock:
            connections = [c for idle in self._idle.values() for c in idle] + list(self._busy)
            self._idle = {}
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it; close() alone does not
                except OSError:
                    pass
            connection.close()


def _target(parts: SplitResult) -> str:
    """The request target of a split URL: the path and query, or a ``unix:`` URL's request path."""
    if parts.scheme == "unix":
        return split_unix(parts.geturl())[1]
    return (parts.path or "/") + ("?" + parts.query if parts.query else "")


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    text = text if len(text) < 300 else text[:300] + "..."
    return f"{type(exc).__name__}: {text}"
