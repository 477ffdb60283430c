# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The bounds of the watcher's HTTP listeners: a connection cap and a request deadline.

``BoundedServer`` (a ThreadingHTTPServer) serves at most ``max_connections`` connections at a time,
one thread each; a connection beyond the cap is answered ``503`` at once (without reading it) and
closed. ``BoundedHandler`` gives every connection ``request_deadline`` seconds in all to send its
request: each read waits only for what is left of that time, so a client that sends a byte at a time
is cut off at the deadline like one that sends nothing (a per-read timeout alone never fires for it).
The answer gets what is left of the deadline, at least ``WRITE_FLOOR`` seconds. A thread is thus held
at most ``request_deadline + WRITE_FLOOR`` seconds, and there are at most ``max_connections`` of them.
"""

from __future__ import annotations

import os
import socket
import socketserver
import stat
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._deadline_io import deadline_reader

MAX_CONNECTIONS = 16
REQUEST_DEADLINE = 5.0
WRITE_FLOOR = 1.0
BUSY_ANSWER = (b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 31\r\n"
               b"Connection: close\r\n\r\ntoo many connections; try again\n")


class BoundedServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with a connection cap (``max_connections``) and a request deadline
    (``request_deadline``, read by BoundedHandler); ``refused`` counts the connections over the cap."""

    daemon_threads = True
    request_queue_size = 64   # accepted at once and answered (or refused) at once: no wait in the backlog
    max_connections = MAX_CONNECTIONS
    request_deadline = REQUEST_DEADLINE

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.refused = 0
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.refused += 1
            try:
                request.setblocking(False)
                request.send(BUSY_ANSWER)   # what the socket buffer takes; never waits
                request.recv(65536)         # what came already: closing with unread data would reset the answer
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or ran out of time: no traceback on stderr (a client controls it)."""
        return


class UnixBoundedServer(BoundedServer):
    """A BoundedServer on a unix socket (``server_address``: its path), mode 0660: who may connect is who
    may enter its directory and is its owner or in its group. A socket left at the path by an earlier run
    is replaced; anything else there is refused (OSError)."""

    address_family = socket.AF_UNIX
    socket_mode = 0o660

    def server_bind(self) -> None:
        path = str(self.server_address)
        try:
            if stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        socketserver.TCPServer.server_bind(self)  # HTTPServer's would look its "host" up
        os.chmod(path, self.socket_mode)
        self.server_name, self.server_port = "localhost", 0

    def get_request(self) -> Any:
        request, _unused = self.socket.accept()
        return request, ("unix", 0)

    def server_close(self) -> None:
        super().server_close()
        try:
            os.unlink(str(self.server_address))
        except OSError:
            pass


class BoundedHandler(BaseHTTPRequestHandler):
    """One request per connection (HTTP/1.0), read within the server's ``request_deadline``."""

    server: BoundedServer

    def setup(self) -> None:
        super().setup()
        self.deadline = time.monotonic() + self.server.request_deadline
        self.rfile.close()   # the plain reader setup() made, replaced by one that keeps the deadline
        self.rfile = deadline_reader(self.connection, self.deadline)

    def send_response(self, code: int, message: Any = None) -> None:
        """The answer (error answers too) gets what is left of the deadline, at least WRITE_FLOOR seconds."""
        self.connection.settimeout(max(self.deadline - time.monotonic(), WRITE_FLOOR))
        super().send_response(code, message)
