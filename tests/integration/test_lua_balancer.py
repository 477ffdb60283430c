"""The Lua balancer with real traffic: real nginx, real backends on loopback (tests/support/backends.py).

Weights, backup, down, passive failure accounting, retries, keepalive, max_conns and unknown
upstreams, checked against what nginx's own round robin does. Failure state is per worker, so
the tests that count tries run one worker.
"""

from __future__ import annotations

import http.server
import re
import socket
import threading
import time
from collections import Counter

from tests.support.backends import backends  # noqa: F401  (fixture)  # pylint: disable=unused-import  # pytest fixtures
from tests.support.nginx_lua import nginx_lua_factory  # noqa: F401  (fixture)  # pylint: disable=unused-import  # pytest fixtures


def post(nginx, name, body):
    status, text, _unused = nginx.api("POST", f"/upstream/{name}", body)
    assert (status, text) == (200, "success"), text


def hits(nginx, name, count):
    """Port (int) of each of ``count`` sequential requests, each on a new connection; all must be 200."""
    ports = []
    for _unused in range(count):
        status, text, _headers = nginx.request(f"/u/{name}/")
        assert status == 200, (status, text, nginx.error_log_text()[-2000:])
        ports.append(int(text))
    return ports


def tries_per_request(nginx, requests):
    """[[port of each try], ...] of the first ``requests`` proxied requests, from the access log
    (access_log=True); waits for the lines, which nginx writes after the answer is sent."""
    out = []

    def read():
        out[:] = []
        for line in nginx.access_log_path.read_text().splitlines():
            match = re.search(r"upstream=(.*?) upstream_status=", line)
            if line.startswith("GET ") and match:
                out.append([int(port) for port in re.findall(r"127\.0\.0\.1:(\d+)", match.group(1))])
        return len(out) >= requests

    nginx.wait_for(read, f"{requests} lines in the access log", timeout=5)
    return out[:requests]


def swrr(weights, count):
    """nginx's smooth weighted round robin, as a reference: the index picked at each step."""
    current = [0] * len(weights)
    picks = []
    for _unused in range(count):
        for i, weight in enumerate(weights):
            current[i] += weight
        best = max(range(len(weights)), key=lambda i: (current[i], -i))
        current[best] -= sum(weights)
        picks.append(best)
    return picks


# -- selection -------------------------------------------------------------------------------------------

def test_smooth_weighted_round_robin_per_worker(nginx_lua_factory, backends):
    nginx = nginx_lua_factory(workers=2)
    p1, p2, p3 = backends.ports[:3]
    post(nginx, "web", f"server 127.0.0.1:{p1} weight=5; server 127.0.0.1:{p2}; server 127.0.0.1:{p3};")
    per_worker = {}
    for _unused in range(140):
        status, text, headers = nginx.request("/u/web/")
        assert status == 200
        per_worker.setdefault(headers["x-dyups-worker"], []).append(int(text))
    assert len(per_worker) == 2, "both workers should have served (reuseport spreads new connections)"
    for sequence in per_worker.values():
        expected = [(p1, p2, p3)[i] for i in swrr([5, 1, 1], len(sequence))]
        assert sequence == expected
    total = Counter(port for sequence in per_worker.values() for port in sequence)
    assert abs(total[p1] - 100) <= 2 and abs(total[p2] - 20) <= 2 and abs(total[p3] - 20) <= 2, total


def test_down_servers_never_get_traffic(nginx_lua_factory, backends):
    nginx = nginx_lua_factory(workers=2)
    p1, p2, p3 = backends.ports[:3]
    post(nginx, "web", f"server 127.0.0.1:{p1}; server 127.0.0.1:{p2} down weight=100; server 127.0.0.1:{p3};")
    assert set(hits(nginx, "web", 60)) == {p1, p3}


def test_backup_only_when_every_primary_is_down_or_failed(nginx_lua_factory, backends):
    nginx = nginx_lua_factory(workers=2)
    p1, p2, p3, p4 = backends.ports
    body = f"server 127.0.0.1:{p1} fail_timeout=1s; server 127.0.0.1:{p2} fail_timeout=1s; " \
           f"server 127.0.0.1:{p3} backup; server 127.0.0.1:{p4} backup;"
    post(nginx, "web", body)
    assert set(hits(nginx, "web", 40)) == {p1, p2}
    # primaries marked down: the backups take everything
    post(nginx, "web", body.replace("fail_timeout=1s", "down"))
    assert set(hits(nginx, "web", 20)) == {p3, p4}
    # primaries failing: every request still succeeds, on the backups, inside the same request
    post(nginx, "web", body)
    backends.stop_port(p1)
    backends.stop_port(p2)
    assert set(hits(nginx, "web", 30)) == {p3, p4}
    # primaries back: after fail_timeout they get all the traffic again
    backends.start_port(p1)
    backends.start_port(p2)
    time.sleep(1.1)
    nginx.wait_for(lambda: set(hits(nginx, "web", 10)) == {p1, p2}, "traffic back on the primaries", timeout=5)


def test_one_server_is_used_even_after_failures(nginx_lua_factory, backends):
    """nginx ignores max_fails for an upstream of a single server (and never marks it failed)."""
    nginx = nginx_lua_factory(workers=1)
    port = backends.ports[0]
    post(nginx, "single", f"server 127.0.0.1:{port} max_fails=1 fail_timeout=60s;")
    backends.stop_port(port)
    assert [nginx.request("/u/single/")[0] for _unused in range(3)] == [502, 502, 502]
    backends.start_port(port)
    assert hits(nginx, "single", 3) == [port] * 3


# -- passive failure accounting and retries -------------------------------------------------------------------

def test_max_fails_and_fail_timeout(nginx_lua_factory, backends):
    nginx = nginx_lua_factory(workers=1, access_log=True)
    dead, alive = backends.ports[:2]
    post(nginx, "web", f"server 127.0.0.1:{dead} max_fails=2 fail_timeout=2s; server 127.0.0.1:{alive};")
    backends.stop_port(dead)
    started = time.monotonic()
    assert set(hits(nginx, "web", 20)) == {alive}           # every failed try was retried on the other
    tried_dead = sum(tries.count(dead) for tries in tries_per_request(nginx, 20))
    assert tried_dead == 2, "the dead server is tried max_fails times, then left alone"
    assert time.monotonic() - started < 2, "the window above must stay inside fail_timeout"
    assert "temporarily disabled (2 failures, max_fails=2)" in nginx.error_log_text()
    time.sleep(3.1)    # fail_timeout, counted like nginx in whole seconds (ngx_time), has passed
    # after fail_timeout: one more try, which fails and disables it again at once
    assert set(hits(nginx, "web", 10)) == {alive}
    assert sum(tries.count(dead) for tries in tries_per_request(nginx, 30)) == 3
    # back up: used again after fail_timeout, and a success clears its failures
    backends.start_port(dead)
    time.sleep(3.1)
    assert Counter(hits(nginx, "web", 20)) == Counter({dead: 10, alive: 10})


def test_max_fails_zero_never_disables(nginx_lua_factory, backends):
    nginx = nginx_lua_factory(workers=1, access_log=True)
    dead, alive = backends.ports[:2]
    post(nginx, "web", f"server 127.0.0.1:{dead} max_fails=0; server 127.0.0.1:{alive};")
    backends.stop_port(dead)
    assert set(hits(nginx, "web", 20)) == {alive}
    assert sum(tries.count(dead) for tries in tries_per_request(nginx, 20)) >= 9


def test_http_5xx_in_proxy_next_upstream_counts_as_a_failure(nginx_lua_factory, backends):
    nginx = nginx_lua_factory(workers=1, access_log=True, proxy_next_upstream="error timeout http_502")
    bad, good = backends.ports[:2]
    backends.set_mode(bad, "status:502")
    post(nginx, "web", f"server 127.0.0.1:{bad} max_fails=1 fail_timeout=30s; server 127.0.0.1:{good};")
    assert set(hits(nginx, "web", 20)) == {good}
    assert sum(tries.count(bad) for tries in tries_per_request(nginx, 20)) == 1


def test_without_proxy_next_upstream_the_error_reaches_the_client(nginx_lua_factory, backends):
    """No retry: the failed last try is counted in the log phase, so the dead server is left alone."""
    nginx = nginx_lua_factory(workers=1, proxy_next_upstream="off")
    dead, alive = backends.ports[:2]
    post(nginx, "web", f"server 127.0.0.1:{dead} max_fails=1 fail_timeout=30s; server 127.0.0.1:{alive};")
    backends.stop_port(dead)
    statuses = [nginx.request("/u/web/")[0] for _unused in range(20)]
    assert statuses[0] == 502
    assert statuses[1:] == [200] * 19


REDIRECTING = """
        location / {
            set $dyups_upstream web;
            proxy_pass http://dyups_balancer;
            proxy_intercept_errors on;
            error_page 502 = /fallback;
        }
        location = /fallback {
            return 200 "fallback\\n";
        }
"""


def test_failures_and_connections_are_accounted_across_an_internal_redirect(nginx_lua_factory, backends):
    """error_page after a proxied try (an internal redirect) neither hides the failure nor keeps the
    try's connection counted against max_conns."""
    nginx = nginx_lua_factory(workers=1, proxy_next_upstream="off", locations=REDIRECTING)
    dead, alive, erring = backends.ports[:3]
    post(nginx, "web", f"server 127.0.0.1:{dead} max_fails=1 fail_timeout=30s; server 127.0.0.1:{alive};")
    backends.stop_port(dead)
    answers = [nginx.request("/")[1].strip() for _unused in range(8)]
    assert answers == ["fallback"] + [str(alive)] * 7, answers
    # a server answering 502 itself (intercepted, redirected) is used again: its slot was released
    backends.set_mode(erring, "status:502")
    post(nginx, "web", f"server 127.0.0.1:{erring} max_conns=1; server 127.0.0.1:{alive};")
    answers = [nginx.request("/")[1].strip() for _unused in range(6)]
    assert answers == ["fallback", str(alive)] * 3, answers


def test_tries_stop_at_proxy_next_upstream_tries(nginx_lua_factory, backends):
    nginx = nginx_lua_factory(workers=1, access_log=True, proxy_next_upstream_tries=2)
    ports = backends.ports
    for port in ports:
        backends.stop_port(port)
    post(nginx, "web", " ".join(f"server 127.0.0.1:{port} max_fails=0;" for port in ports))
    assert nginx.request("/u/web/")[0] == 502
    assert [len(tries) for tries in tries_per_request(nginx, 1)] == [2]


def test_all_servers_failed_gives_502_then_quick_recovery(nginx_lua_factory, backends):
    nginx = nginx_lua_factory(workers=1, access_log=True)
    p1, p2 = backends.ports[:2]
    post(nginx, "web", f"server 127.0.0.1:{p1} fail_timeout=60s; server 127.0.0.1:{p2} fail_timeout=60s;")
    backends.stop_port(p1)
    backends.stop_port(p2)
    assert nginx.request("/u/web/")[0] == 502
    assert tries_per_request(nginx, 1) == [[p1, p2]]
    assert nginx.request("/u/web/")[0] == 502      # both failed: nginx says "no live upstreams" ...
    assert 'no live upstreams in "web"' in nginx.error_log_text()
    backends.start_port(p1)
    backends.start_port(p2)
    assert set(hits(nginx, "web", 4)) == {p1, p2}  # ... and marks them live again: no 60 s wait


# -- connections -----------------------------------------------------------------------------------------------

def test_keepalive_connections_to_backends_are_reused(nginx_lua_factory, backends):
    nginx = nginx_lua_factory(workers=1)
    port = backends.ports[0]
    post(nginx, "web", f"server 127.0.0.1:{port}; keepalive 8;")
    seen = []
    for _unused in range(10):                         # a new client connection each time
        status, _text, headers = nginx.request("/u/web/")
        assert status == 200
        seen.append(int(headers["x-backend-requests"]))
    assert max(seen) >= 9, seen                 # the proxy kept one backend connection for all of them


def test_max_conns_is_honoured_per_worker(nginx_lua_factory, backends):
    nginx = nginx_lua_factory(workers=1)
    slow, fast = backends.ports[:2]
    backends.set_mode(slow, "slow:1")
    post(nginx, "web", f"server 127.0.0.1:{slow} max_conns=1; server 127.0.0.1:{fast};")
    results = []

    def one():
        status, text, _unused = nginx.request("/u/web/")
        results.append((status, int(text)))

    first = threading.Thread(target=one)
    first.start()
    time.sleep(0.3)                              # the first request now holds the slow server
    others = [threading.Thread(target=one) for _unused in range(3)]
    for thread in others:
        thread.start()
    for thread in [first] + others:
        thread.join(10)
    assert sorted(results) == sorted([(200, slow)] + [(200, fast)] * 3)
    # the slot is free again once the slow request ended (counted down in the log phase)
    assert slow in hits(nginx, "web", 2)


def test_host_name_servers_are_balanced_to_their_address(nginx_lua_factory, backends):
    """localhost is 127.0.0.1 and ::1 (TEST_HOSTS, like /etc/hosts): two peers, as nginx makes them.
    Nothing listens on [::1]:port, so a try there is refused and the request goes on to 127.0.0.1."""
    nginx = nginx_lua_factory(workers=1)
    port = backends.ports[0]
    post(nginx, "named", f"server localhost:{port};")
    assert hits(nginx, "named", 2) == [port, port]
    assert "[::1]:" + str(port) in nginx.error_log_text()     # the IPv6 peer was tried


class _Says(http.server.BaseHTTPRequestHandler):
    """A backend that answers every GET with 200 and ``BODY``."""

    BODY = b""

    def do_GET(self):  # noqa: N802  (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)
        self.answered()

    def answered(self):
        """Called after each answer."""

    def log_message(self, *args):  # pylint: disable=arguments-differ
        pass


class _ClosesSilently(_Says):
    """HTTP/1.1 answers without ``Connection: close``, then the connection closed: a kept-alive connection that
    the server drops right after answering (many backends do, at their idle timeout or request limit)."""

    protocol_version = "HTTP/1.1"
    BODY = b"ok\n"

    def answered(self):
        self.close_connection = True


def test_one_server_is_tried_again_when_its_kept_alive_connection_was_closed(nginx_lua_factory):
    """nginx sends a request on a kept-alive connection the server has just closed: the try fails before any
    answer, and nginx adds a try for it (a cached connection). With one server, nginx's round robin tries that
    server again on another connection; the Lua balancer used to refuse it as already tried: 502 "no live
    upstreams" for a few percent of back-to-back requests (issue 21's websocket-across-a-reload test found it)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ClosesSilently)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        nginx = nginx_lua_factory(workers=1)
        post(nginx, "closing", f"server 127.0.0.1:{server.server_address[1]};")
        statuses = Counter(nginx.request("/u/closing/")[0] for _unused in range(600))
        assert statuses == Counter({200: 600}), (statuses, nginx.error_log_text()[-2000:])
        assert "no live upstreams" not in nginx.error_log_text()
    finally:
        server.shutdown()
        server.server_close()


class _IPv6Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _SayIPv6(_Says):
    BODY = b"6\n"


def test_ipv6_peers_are_used(nginx_lua_factory):
    """An IPv6 literal server gets requests (the balancer passes it to nginx in brackets)."""
    server = _IPv6Server(("::1", 0), _SayIPv6)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        nginx = nginx_lua_factory(workers=1)
        post(nginx, "six", f"server [::1]:{server.server_address[1]};")
        assert hits(nginx, "six", 3) == [6, 6, 6]
    finally:
        server.shutdown()
        server.server_close()


# -- unknown upstreams -------------------------------------------------------------------------------------------

def test_unknown_upstream_is_502_with_a_log_line_naming_it(nginx_lua_factory):
    nginx = nginx_lua_factory(workers=1)
    mark = nginx.log_mark()
    status, _text, _unused = nginx.request("/", upstream="NoSuchUpstream")
    assert status == 502
    nginx.wait_for(lambda: 'dyups: upstream "NoSuchUpstream" not found' in nginx.error_log_text(mark),
                   "the log line", timeout=5)


def test_empty_upstream_variable_is_502_with_a_log_line(nginx_lua_factory):
    nginx = nginx_lua_factory(workers=1)
    mark = nginx.log_mark()
    assert nginx.request("/")[0] == 502
    nginx.wait_for(lambda: "$dyups_upstream is empty" in nginx.error_log_text(mark), "the log line", timeout=5)


def test_upstream_name_in_a_request_is_case_insensitive(nginx_lua_factory, backends):
    nginx = nginx_lua_factory(workers=1)
    port = backends.ports[0]
    post(nginx, "WebappReadonly", f"server 127.0.0.1:{port};")
    for spelled in ("WebappReadonly", "webappreadonly", "WEBAPPREADONLY"):
        status, text, _unused = nginx.request("/", upstream=spelled)
        assert (status, int(text)) == (200, port)
