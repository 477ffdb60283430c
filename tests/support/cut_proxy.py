"""A loopback TCP relay in front of a real server (Consul, nginx's dyups interface) that a test can cut.

    with CutProxy(target_port) as relay:
        url = f"http://127.0.0.1:{relay.port}"   # give this to the watcher instead of the server's
        relay.cut()       # every open connection is closed; new ones are accepted and closed at once
        relay.restore()   # relays again
        relay.hold()      # a connection to the server opened now, nothing sent on it yet
        relay.use_held(b"POST ")   # the next client connection that starts so is relayed over it
        relay.held_answer # what the server answered on it (bytes)

Not a stand-in: the server behind it is real and answers everything that passes. It makes one fault a
real server does not make on demand: the server unreachable for a while, with no request of that while
delivered later (stopping the server's processes would leave requests queued in the kernel, answered on
resume). Loopback only.

``hold``/``use_held`` make a request reach a server process chosen earlier: nginx gives a connection to
one worker when it is opened, and a worker told to stop (a reload) keeps a connection that has not sent
its request yet, while it closes its idle kept-alive ones and takes no new connection.
"""

from __future__ import annotations

import socket
import threading

from tests.support.ports import close_listener


class CutProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._cut = False
        self._stopped = False
        self._held: socket.socket | None = None
        self._held_prefix: bytes | None = None
        self.held_answer = b""
        self.accepted = 0   # client connections taken
        self._thread = threading.Thread(target=self._accept, name=f"cut-proxy-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> CutProxy:
        self._thread.start()
        return self

    def __enter__(self) -> CutProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cut(self) -> None:
        with self._lock:
            self._cut = True
            sockets, self._open = self._open, set()
        for sock in sockets:
            _close(sock)

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def hold(self) -> None:
        """Open a connection to the server now and keep it unused (see the module docstring)."""
        self._held = socket.create_connection(self.target, timeout=5)
        self._held.settimeout(None)

    @property
    def held_port(self) -> int:
        """The local port of the held connection (the server sees it as the client's)."""
        assert self._held is not None
        return self._held.getsockname()[1]

    def use_held(self, prefix: bytes) -> None:
        """Relay the next client connection whose first bytes are ``prefix`` over the held connection."""
        with self._lock:
            self._held_prefix = prefix

    def stop(self) -> None:
        self._stopped = True
        self.cut()
        if self._held is not None:
            _close(self._held)
        close_listener(self.listener, self._thread, 5)

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _address = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                cut = self._cut
                held = self._held_prefix is not None
            if cut:
                _close(client)
                continue
            if held:   # the first bytes decide: read them in a thread of its own
                threading.Thread(target=self._relay, args=(client,), daemon=True).start()
            else:
                self._relay(client)

    def _relay(self, client: socket.socket) -> None:
        upstream = self._take_held(client)
        was_held = upstream is not None
        try:
            if upstream is None:
                upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            _close(client)
            return
        upstream.settimeout(None)
        with self._lock:
            if self._cut:
                _close(client)
                _close(upstream)
                return
            self._open.update((client, upstream))
        for source, sink, held in ((client, upstream, False), (upstream, client, was_held)):
            threading.Thread(target=self._pump, args=(source, sink, held), daemon=True).start()

    def _take_held(self, client: socket.socket) -> socket.socket | None:
        """The held connection when the client's first bytes are the prefix ``use_held`` gave (else None)."""
        with self._lock:
            prefix = self._held_prefix
        if prefix is None or self._held is None:
            return None
        client.settimeout(5)
        try:
            first = client.recv(len(prefix), socket.MSG_PEEK | socket.MSG_WAITALL)
        except OSError:
            first = b""
        client.settimeout(None)
        with self._lock:
            if first != prefix or self._held_prefix is None:
                return None
            self._held_prefix, held, self._held = None, self._held, None
        return held

    def _pump(self, source: socket.socket, sink: socket.socket, held: bool = False) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if held:
                    self.held_answer += data
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            with self._lock:
                self._open.discard(sock)
            _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
