"""A request loop that records which worker answered when: how long a worker served nothing (a stall)."""

from __future__ import annotations

import http.client
import threading
import time


def huge_body(servers, first_octet=10):
    """A POST body of ``servers`` distinct IPv4 servers (never contacted): about 22 bytes a server."""
    return "".join(f"server {first_octet}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:80;\n" for i in range(servers))


class RequestLoop:
    """Requests for ``paths`` (in turn) through ``nginx``'s proxy, in threads, each on kept-alive
    connections (spread over the workers by the kernel): ``answers`` [(end time, worker pid, seconds
    taken)] of the answered ones (X-Dyups-Worker), ``failures`` the others, ``failed`` [(end time,
    status or error, worker pid or 0, path)] of them."""

    def __init__(self, nginx, paths, threads=4, connections=4):
        self.nginx, self.paths, self.connections = nginx, list(paths), connections
        self.answers, self.failures, self.failed = [], 0, []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _unused in range(threads)]

    def _connect(self):
        return http.client.HTTPConnection("127.0.0.1", self.nginx.proxy_port, timeout=30)

    def _run(self):
        connections = [self._connect() for _unused in range(self.connections)]
        count = 0
        while not self.stop.is_set():
            index = count % len(connections)
            count += 1
            began = time.monotonic()
            path = self.paths[count % len(self.paths)]
            try:
                connections[index].request("GET", path)
                response = connections[index].getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.failures += 1
                self.failed.append((time.monotonic(), type(exc).__name__, 0, path))
                connections[index].close()
                connections[index] = self._connect()
                continue
            now = time.monotonic()
            if response.status != 200:
                self.failures += 1
                self.failed.append((now, response.status, int(response.getheader("X-Dyups-Worker", "0")), path))
            self.answers.append((now, int(response.getheader("X-Dyups-Worker", "0")), now - began))
        for connection in connections:
            connection.close()

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)

    def longest_silence(self, worker, start, end):
        """The longest time within [start, end] in which ``worker`` answered nothing."""
        times = [start] + sorted(at for at, pid, _took in self.answers if pid == worker and start < at < end) + [end]
        return max(later - earlier for earlier, later in zip(times, times[1:]))

    def slowest(self, start, end):
        """The longest a request answered within [start, end] took (0: none)."""
        return max((took for at, _pid, took in self.answers if start < at < end), default=0.0)
