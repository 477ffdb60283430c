"""Lua flavor: an upstream of 10 000 servers does not hold up the requests of other upstreams (issue 25).

A 10 000-server POST (about 220 kB) was parsed, checked and encoded in one go by the worker that took it,
and every worker then decoded and built it in one go on its next request: requests to every other upstream
waited 378-448 ms (issue 25; over a second on this loaded machine). Now the parse lets nginx in every few
milliseconds (rules.lua's ``pause``, cache.pause) and a big changed upstream is built in the background
(cache.lua), the previous copy serving meanwhile. Figures, old and new, with the load average:
docs/resilience.md, "A 10 000-server upstream" (tests/benchmarks/bench_lua_big_upstream.py).

The stall itself depends on the machine's load; what these tests check does not: while the POST is
parsed, the worker that parses it keeps answering (its longest time without an answer is a small part of
the POST's; on the old code it was nearly all of it), and what the background builds is what every worker
then serves and shows, a later change winning over a build still under way.
"""

from __future__ import annotations

import http.client
import threading
import time

from tests.support.backends import make_backends_fixture
from tests.support.nginx_lua import nginx_lua_factory  # noqa: F401  (fixture)  # pylint: disable=unused-import

backends = make_backends_fixture(2)
SERVERS = 10000
SMALL = 20


def huge_body(first_octet=10):
    return "".join(f"server {first_octet}.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}:80;\n" for i in range(SERVERS))


class Loop:
    """Requests to the small upstreams on kept-alive connections (spread over the workers) in threads:
    ``answers`` [(end time, worker pid)] of the answered ones."""

    def __init__(self, nginx, threads=4, connections=4):
        self.nginx, self.connections = nginx, connections
        self.answers, self.failures = [], 0
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
            try:
                connections[index].request("GET", f"/u/small{count % SMALL}/")
                response = connections[index].getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                self.failures += 1
                connections[index].close()
                connections[index] = self._connect()
                continue
            if response.status != 200:
                self.failures += 1
            self.answers.append((time.monotonic(), int(response.getheader("X-Dyups-Worker", "0"))))
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
        times = [start] + sorted(at for at, pid in self.answers if pid == worker and start < at < end) + [end]
        return max(later - earlier for earlier, later in zip(times, times[1:]))


def detail_of_every_worker(nginx, tries=40):
    """{worker pid: /detail text}, read on new connections until every worker answered."""
    seen, workers = {}, set(nginx.worker_pids())
    for _unused in range(tries):
        status, text, headers = nginx.api("GET", "/detail", timeout=30)
        assert status == 200, (status, text[:300])
        seen[int(headers["x-dyups-worker"])] = text
        if set(seen) >= workers:
            return seen
    raise AssertionError(f"not every worker answered /detail: {sorted(seen)} of {sorted(workers)}")


def test_the_worker_parsing_a_10000_server_post_keeps_answering_other_upstreams(nginx_lua_factory, backends):  # noqa: F811
    nginx = nginx_lua_factory(workers=2, dict_size="64m")
    for index in range(SMALL):
        assert nginx.api("POST", f"/upstream/small{index}", f"server 127.0.0.1:{backends.ports[0]};")[0] == 200
    body = huge_body()
    with Loop(nginx) as loop:
        time.sleep(0.5)
        started = time.monotonic()
        status, text, headers = nginx.api("POST", "/upstream/huge", body, timeout=120)
        ended = time.monotonic()
        assert status == 200, text
        worker = int(headers["x-dyups-worker"])
        assert any(pid == worker for _at, pid in loop.answers), "no request reached the worker that took the POST"
        silence = loop.longest_silence(worker, started, ended)
        time.sleep(0.2)
    took = ended - started
    print(f"POST of {SERVERS} servers ({len(body)} bytes) took {took * 1000:.0f} ms; the worker that parsed it "
          f"was silent for at most {silence * 1000:.0f} ms meanwhile")
    # the old code: silent for nearly the whole POST (the parse); now: a small part of it
    assert silence < took / 2, f"silent {silence:.3f}s of the POST's {took:.3f}s"
    assert loop.failures == 0
    # every worker built it (in the background) and shows and serves all of it
    for pid, text in detail_of_every_worker(nginx).items():
        assert text.count("\nserver 10.") == SERVERS, f"worker {pid}"


def test_a_change_made_while_a_big_upstream_is_built_in_the_background_wins(nginx_lua_factory, backends):  # noqa: F811
    """A small replacement POSTed right after a big one: each worker's background build of the big one is
    dropped, whichever finishes first, and every worker serves the small one."""
    nginx = nginx_lua_factory(workers=2, dict_size="64m")
    port = backends.ports[1]
    for _round in range(3):
        assert nginx.api("POST", "/upstream/huge", huge_body(), timeout=120)[0] == 200
        nginx.request("/u/huge/")          # a worker notices the change and queues its build
        assert nginx.api("POST", "/upstream/huge", f"server 127.0.0.1:{port};")[0] == 200
        for pid, text in detail_of_every_worker(nginx).items():
            assert "\nserver 10." not in text and f"server 127.0.0.1:{port} " in text, f"worker {pid}: {text[:300]}"
        for _unused in range(20):
            status, answer, _headers = nginx.request("/u/huge/")
            assert (status, answer.strip()) == (200, str(port))
