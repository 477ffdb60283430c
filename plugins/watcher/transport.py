# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The watcher's transport for the shared clients: keep-alive ``http.client`` connections.

A transport is ``transport(method, url, body, timeout, extra_headers=None) -> (status, body,
headers)`` and raises TransportError when no answer came (the contract of
plugins/module_utils/_http_ansible.py). Each thread (two Consul long polls, the fetch pool, the
sync loop) keeps one connection per host and reuses it: a full sync sends thousands of POSTs to the
local interface, and a kept connection with the standard library costs about a third of what a
``requests`` session costs per request (docs/benchmarks.md). Proxy variables and .netrc play no
part: the watcher talks to the local agent and the local nginx only.

A request that fails on a kept connection before any answer came (the server closed it while idle:
nginx's keepalive_timeout) is sent once more on a new connection. Every request the watcher sends is
safe to repeat: GETs, and POST and DELETE of a whole upstream.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
from urllib.parse import urlsplit

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import TransportError

STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
                    http.client.CannotSendRequest, http.client.BadStatusLine)


class KeepAliveTransport:
    """A callable transport; ``verify`` (True, False or a CA bundle path) and ``cert`` ((cert, key))
    apply to https URLs."""

    def __init__(self, headers=None, verify=True, cert=None):
        self._headers = dict(headers or {})
        self._verify = verify
        self._cert = cert
        self._context = None
        self._closed = False
        self._local = threading.local()
        self._connections = []
        self._lock = threading.Lock()

    def _ssl_context(self):
        if self._context is None:
            context = ssl.create_default_context(cafile=self._verify if isinstance(self._verify, str) else None)
            if self._verify is False:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            if self._cert:
                context.load_cert_chain(*self._cert)
            self._context = context
        return self._context

    def _connection(self, parts, timeout):
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = {}
        key = (parts.scheme, parts.netloc)
        connection = pool.get(key)
        if connection is None:
            if parts.scheme == "https":
                connection = http.client.HTTPSConnection(parts.hostname, parts.port or 443, timeout=timeout,
                                                         context=self._ssl_context())
            elif parts.scheme == "http":
                connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
            else:
                raise TransportError(f"unsupported URL scheme {parts.scheme!r} (http or https)")
            pool[key] = connection
            with self._lock:
                self._connections.append(connection)
        connection.timeout = timeout
        if connection.sock is not None:
            connection.sock.settimeout(timeout)
        return connection

    def __call__(self, method, url, body, timeout, extra_headers=None):
        if self._closed:
            raise TransportError("the transport was closed (the watcher is stopping or reloading)")
        parts = urlsplit(url)
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
        headers = dict(self._headers, **(extra_headers or {}))
        for attempt in (1, 2):
            connection = self._connection(parts, timeout)
            reused = connection.sock is not None
            try:
                connection.request(method, target, body=body, headers=headers)
                response = connection.getresponse()
                data = response.read()
            except STALE_CONNECTION as exc:
                connection.close()
                if reused and attempt == 1 and not self._closed:
                    continue
                raise TransportError(_reason(exc)) from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                connection.close()
                raise TransportError(_reason(exc)) from None
            if response.will_close:
                connection.close()
            return response.status, data, {key.lower(): value for key, value in response.getheaders()}
        raise TransportError("no answer")  # not reached: the second attempt returns or raises

    def close(self):
        """Close every connection of every thread; a request in flight (a long poll) ends at once
        with a TransportError, and so does any later request."""
        self._closed = True
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            sock = connection.sock
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it; close() alone does not
                except OSError:
                    pass
            connection.close()


def _reason(exc):
    text = str(exc) or type(exc).__name__
    text = text if len(text) < 300 else text[:300] + "..."
    return f"{type(exc).__name__}: {text}"
