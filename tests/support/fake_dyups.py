"""A STAND-IN for Tengine's dyups interface, for error paths a real server will not produce on demand.

This is not the project's server and not Tengine. It follows /work/shared/dyups-wire-contract.md (copied
into the tests as the behaviour of Tengine 3.2.0): the same paths, statuses and bodies, including what
Tengine gets wrong. The real target of the integration tests is the stock-nginx Lua flavor
(tests/support/nginx_lua.py); use this stand-in where that one cannot do what a test needs:

* answer 409 on demand (``busy(n)``: the next n requests), as Tengine with ``dyups_trylock on``;
* answer Tengine's 500 ``add server failed`` to a bad body (empty, garbage, port 0 or 70000, an
  unresolvable host, ``foo=1``, ``weight=0``, a body that closes the block);
* accept names that break nginx (``bad name``, ``x{y``, 300 characters), as Tengine does;
* record every request it receives (``requests``), so that a test can assert that none was sent.

Host names are resolved from a fixed table (``hosts``, default: ``localhost`` only) and never through
DNS, so a test never sends a query off the machine; a name not in the table is unresolvable, and a
POST naming it gets the 500 Tengine gives.

    with FakeDyups() as fake:
        fake.api_url            # http://127.0.0.1:PORT
        fake.requests           # [Request(method, path, body), ...]
        fake.busy(2)            # the next two requests answer 409
        fake.upstreams          # {name: {"servers": [dict, ...], "directives": [str, ...]}}

    FakeDyups(on_request=callback)  # callback(Request) runs before each answer (to look at a file then)
"""

from __future__ import annotations

import re
import threading
from collections import namedtuple
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

Request = namedtuple("Request", "method path body")

ADD_FAILED = b"add server failed"
NOT_SUPPORTED = b"not support this interface"
_UPSTREAM_DIRECTIVES = ("ip_hash", "least_conn", "hash", "keepalive", "keepalive_timeout", "keepalive_requests",
                        "check", "check_http_send", "check_http_expect_alive", "check_keepalive_requests")
_TIME = re.compile(r"([0-9]+)(ms|s|m|h|d)?\Z")
_SECONDS = {None: 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


class BadBody(Exception):
    pass


def _number(value, low, high=None):
    if not re.match(r"[0-9]+\Z", value):
        raise BadBody(value)
    number = int(value)
    if number < low or (high is not None and number > high):
        raise BadBody(value)
    return number


def _seconds(value):
    match = _TIME.match(value)
    if not match:
        raise BadBody(value)
    number, unit = int(match.group(1)), match.group(2)
    if unit == "ms":
        if number % 1000:
            raise BadBody(value)
        return number // 1000
    return number * _SECONDS[unit]


class _State:
    def __init__(self, hosts, on_request=None):
        self.lock = threading.Lock()
        self.on_request = on_request
        self.hosts = dict(hosts)
        self.upstreams = {}  # insertion order; /detail prints the newest first (the order is not stable)
        self.requests = []
        self.busy_left = 0
        self.busy_always = False

    def resolve(self, host):
        if host.startswith("["):
            if not host.endswith("]"):
                raise BadBody(host)
            return [host]
        if re.match(r"[0-9.]+\Z", host):
            parts = host.split(".")
            if len(parts) != 4 or any(not p or int(p) > 255 for p in parts):
                raise BadBody(host)
            return [host]
        addresses = self.hosts.get(host.lower())
        if not addresses:
            raise BadBody(host)  # Tengine: an unresolvable host name is a 500
        return [f"[{a}]" if ":" in a else a for a in addresses]

    def parse_server(self, words):
        if not words:
            raise BadBody("server")
        address = words[0]
        if address.startswith("["):
            close = address.find("]")
            host, rest = address[:close + 1], address[close + 1:]
            port_text = rest[1:] if rest.startswith(":") else ("80" if not rest else None)
        else:
            host, sep, port_text = address.partition(":")
            port_text = port_text if sep else "80"
        if port_text is None:
            raise BadBody(address)
        port = _number(port_text, 1, 65535)
        params = {"weight": 1, "max_conns": 0, "max_fails": 1, "fail_timeout": 10, "backup": 0, "down": 0}
        for word in words[1:]:
            key, sep, value = word.partition("=")
            if key in ("backup", "down") and not sep:
                params[key] = 1
            elif key == "weight" and sep:
                params[key] = _number(value, 1)
            elif key in ("max_fails", "max_conns") and sep:
                params[key] = _number(value, 0)
            elif key == "fail_timeout" and sep:
                params[key] = _seconds(value)
            else:
                raise BadBody(word)  # foo=1, weight without a value ...
        return [dict(address=f"{resolved}:{port}", **params) for resolved in self.resolve(host)]

    def parse_body(self, text):
        if "{" in text or "}" in text:
            raise BadBody("a brace")
        servers, directives = [], []
        for statement in text.split(";"):
            words = statement.split()
            if not words:
                continue
            if words[0] == "server":
                servers.extend(self.parse_server(words[1:]))
            elif words[0] in _UPSTREAM_DIRECTIVES:
                directives.append(" ".join(words))
            else:
                raise BadBody(words[0])
        if text.strip() and not text.rstrip().endswith(";"):
            raise BadBody("a statement without ';'")
        if not servers:
            raise BadBody("no server")
        return {"servers": servers, "directives": directives}

    def detail(self):
        blocks = []
        for name in reversed(list(self.upstreams)):
            lines = [name] + [
                f"server {s['address']} weight={s['weight']} max_conns={s['max_conns']} max_fails={s['max_fails']} "
                f"fail_timeout={s['fail_timeout']} backup={s['backup']} down={s['down']}"
                for s in self.upstreams[name]["servers"]]
            blocks.append("\n".join(lines) + "\n\n")
        return "".join(blocks)


class _Handler(BaseHTTPRequestHandler):
    server_version = "Tengine-stand-in"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _answer(self, status, body=b""):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _handle(self):
        state = self.server.state
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        request = Request(self.command, self.path, body.decode("utf-8", "replace"))
        if state.on_request is not None:
            state.on_request(request)
        with state.lock:
            state.requests.append(request)
            if state.busy_always or state.busy_left > 0:
                state.busy_left = max(0, state.busy_left - 1)
                return self._answer(409)
            return self._route(state, body.decode("utf-8", "replace"))

    def _route(self, state, body):
        path = self.path.split("?", 1)[0]
        method = self.command
        if method == "PUT":
            return self._answer(405)
        if path in ("/list", "/detail"):
            if method != "GET":
                return self._answer(405)
            if not state.upstreams:
                return self._answer(204)
            if path == "/list":
                return self._answer(200, "".join(f"{n}\n" for n in reversed(list(state.upstreams))).encode())
            return self._answer(200, state.detail().encode())
        if not path.startswith("/upstream/"):
            return self._answer(404, NOT_SUPPORTED)
        name = unquote(path[len("/upstream/"):])
        if "/" in name or not name:
            return self._answer(404, NOT_SUPPORTED)
        if method == "GET":
            upstream = state.upstreams.get(name)
            if upstream is None:
                return self._answer(404)
            return self._answer(200, "".join(f"server {s['address']}\n" for s in upstream["servers"]).encode())
        if method == "DELETE":
            if state.upstreams.pop(name, None) is None:
                return self._answer(404)
            return self._answer(200, b"success")
        if method == "POST":
            try:
                parsed = state.parse_body(body)
            except BadBody:
                return self._answer(500, ADD_FAILED)
            state.upstreams.pop(name, None)
            state.upstreams[name] = parsed  # any name, as Tengine: "bad name", "x{y" ...
            return self._answer(200, b"success")
        return self._answer(405)

    do_GET = do_POST = do_DELETE = do_PUT = do_HEAD = do_PATCH = _handle


class FakeDyups:
    """The stand-in server on 127.0.0.1 (a free port), in a thread of the test process."""

    def __init__(self, hosts=None, port=0, on_request=None):
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.state = _State({"localhost": ["127.0.0.1"]} if hosts is None else hosts, on_request)
        self._thread = None

    @property
    def state(self):
        return self._server.state

    @property
    def port(self):
        return self._server.server_address[1]

    @property
    def api_url(self):
        return f"http://127.0.0.1:{self.port}"

    @property
    def requests(self):
        with self.state.lock:
            return list(self.state.requests)

    def clear_requests(self):
        with self.state.lock:
            self.state.requests.clear()

    @property
    def upstreams(self):
        with self.state.lock:
            return {name: {"servers": [dict(s) for s in value["servers"]], "directives": list(value["directives"])}
                    for name, value in self.state.upstreams.items()}

    def busy(self, count=1, always=False):
        """The next ``count`` requests (or, with ``always``, every one until ``busy(0)``) answer 409."""
        with self.state.lock:
            self.state.busy_left = count
            self.state.busy_always = always

    def start(self):
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"fake-dyups-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
