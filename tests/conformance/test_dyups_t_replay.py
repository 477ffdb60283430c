"""Tengine's own dyups.t (tests/nginx-tests/tengine-tests/dyups.t in the Tengine tarball), replayed request
by request against both flavors side by side: a real Tengine ($TENGINE_BIN) and the Lua flavor, each with
the suite's two configured upstreams (host1, host2 in the upstream file) and two backends.

Every step is one of dyups.t's interface or traffic requests, with dyups.t's own expectation, which
both flavors must meet; interface answers must also be identical on both (status and body). Where the
Lua flavor differs on purpose, the step names the difference (``LUA_DIFFERS``: its reason is in
docs/conformance.md) and holds the Lua flavor's answer exactly, so a change on either side fails here.

Differences from dyups.t's setting, none of which changes what a step checks:

* routing: dyups.t proxies by ``Host`` (``proxy_pass http://$host``); the test proxies route by the
  ``X-Dyups-Upstream`` header (tests/support/tengine.py, nginx_lua.py) - the same lookup by name;
* ports: free loopback ports instead of 8080/8081/8088/8089, a unix socket in a temporary directory
  instead of /tmp/dyupssocket (served by Tengine itself, as in dyups.t);
* dyups.t's second block (the same interface requests with ``worker_processes auto``) is the first
  block's interface steps again: both servers here run 2 workers throughout;
* the ngx.dyups Lua API block needs Tengine's Lua module (not built) and the TLS session reuse block
  is docs/lua-flavor.md's "HTTPS upstream servers" (test_tls_session_reuse below holds the difference).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Optional

import pytest

from tests.support.backends import Backends
from tests.support.consul_tls import self_signed
from tests.support.nginx_lua import NginxLua
from tests.support.ports import free_port
from tests.support.tengine import Tengine, require_tengine

# Why the Lua flavor answers a step differently (docs/conformance.md, "Where Tengine and the Lua flavor
# differ"); a step that names one of these must hold the Lua flavor's answer exactly.
LUA_DIFFERS = {
    "sorted": "/list and /detail are sorted by name (Tengine: configuration, then insertion order)",
    "refused-400": "a refused body is 400 with the reason (Tengine: 500 add server failed)",
    "ip_hash": "ip_hash is refused (the Lua balancer has no ip_hash)",
    "check": "check is refused (stock nginx has no active health checks)",
    "unix": "unix-socket servers are refused by every part of the collection",
    "spelling": "the 404 body of an unknown upstream is spelt right (Tengine: not found uptream)",
}


@dataclass
class Step:
    what: str                    # dyups.t's check, in its words
    method: str                  # GET / POST / DELETE on the interface, or TRAFFIC through the proxy
    path: str                    # interface path, or the upstream name for TRAFFIC
    body: str = ""
    expect: Optional[Callable] = None    # dyups.t's expectation: (status, text) -> bool
    lua: Optional[tuple] = None          # (LUA_DIFFERS key, the Lua flavor's exact (status, text))
    tries: int = 1                       # TRAFFIC: requests sent (each on a new connection)


def like(pattern):
    return lambda status, text: re.search(pattern, text, re.M) is not None


def unlike(pattern):
    return lambda status, text: re.search(pattern, text, re.M) is None


def steps(a, b, unix):
    """dyups.t's first block, in order; a and b are the two backends' ports (dyups.t's 8088 and 8089)."""
    def detail(*listed):
        return like("\n\n".join(listed))

    host1 = f"host1\nserver 127.0.0.1:{a} weight=1 .*"
    host2 = f"host2\nserver 127.0.0.1:{b} weight=1 .*"
    dyhost_a = f"dyhost\nserver 127.0.0.1:{a} weight=1 .*"
    refused = ("refused-400", None)   # 400, the text checked by assert_refused_reason
    return [
        Step("list", "GET", "/list", expect=like("host1\nhost2")),
        Step("detail", "GET", "/detail", expect=detail(host1, host2)),
        Step("one upstream", "GET", "/upstream/host1", expect=like(f"server 127.0.0.1:{a}")),
        Step("add dyhost", "POST", "/upstream/dyhost", f"server 127.0.0.1:{a};", like("success")),
        Step("dyhost serves", "TRAFFIC", "dyhost", expect=like(f"^{a}$")),
        Step("host1 serves", "TRAFFIC", "host1", expect=like(f"^{a}$")),
        Step("host2 serves", "TRAFFIC", "host2", expect=like(f"^{b}$")),
        Step("list with dyhost", "GET", "/list", expect=like("host1\nhost2\ndyhost"),
             lua=("sorted", (200, "dyhost\nhost1\nhost2\n"))),
        Step("detail with dyhost", "GET", "/detail", expect=detail(host1, host2, dyhost_a),
             lua=("sorted", None)),
        Step("dyhost on two servers", "POST", "/upstream/dyhost", f"server 127.0.0.1:{a};server 127.0.0.1:{b};",
             like("success")),
        Step("dyhost serves from both", "TRAFFIC", "dyhost", expect=like(f"^({a}|{b})$"), tries=4),
        Step("detail with two servers", "GET", "/detail",
             expect=detail(host1, host2, dyhost_a + f"\nserver 127.0.0.1:{b} weight=1 .*"), lua=("sorted", None)),
        Step("delete dyhost", "DELETE", "/upstream/dyhost", expect=like("success")),
        Step("dyhost serves no more", "TRAFFIC", "dyhost", expect=unlike(f"^({a}|{b})$")),
        Step("detail without dyhost", "GET", "/detail", expect=unlike("dyhost")),
        Step("list without dyhost", "GET", "/list", expect=like("host1\nhost2")),
        Step("delete dyhost again", "DELETE", "/upstream/dyhost", expect=lambda s, t: s == 404,
             lua=("spelling", (404, "not found upstream"))),
        Step("delete a configured upstream", "DELETE", "/upstream/host1", expect=like("success")),
        Step("host1 serves no more", "TRAFFIC", "host1", expect=unlike(f"^({a}|{b})$")),
        Step("detail without host1", "GET", "/detail", expect=detail(host2)),
        Step("add dyhost again", "POST", "/upstream/dyhost", f"server 127.0.0.1:{a};", like("success")),
        Step("dyhost serves again", "TRAFFIC", "dyhost", expect=like(f"^{a}$")),
        Step("detail host2, dyhost", "GET", "/detail", expect=detail(host2, dyhost_a), lua=("sorted", None)),
        Step("weights", "POST", "/upstream/dyhost", f"server 127.0.0.1:{a} weight=3; server 127.0.0.1:{b} weight=1;",
             like("success")),
        Step("weighted traffic", "TRAFFIC", "dyhost", expect=like(f"^({a}|{b})$"), tries=3),
        Step("backup", "POST", "/upstream/dyhost", f"server 127.0.0.1:{a}; server 127.0.0.1:18089 backup;",
             like("success")),
        Step("the primary serves, not the backup", "TRAFFIC", "dyhost", expect=like(f"^{a}$"), tries=3),
        Step("ip_hash", "POST", "/upstream/dyhost", f"ip_hash;server 127.0.0.1:{a}; server 127.0.0.1:{b};",
             like("success"), lua=("ip_hash", None)),
        # After the refused ip_hash body the Lua flavor still has the backup body: dyhost serves from a
        # either way, as dyups.t expects of ip_hash here.
        Step("ip_hash traffic", "TRAFFIC", "dyhost", expect=like(f"^{a}$"), tries=3),
        Step("ip_hash with an argument", "POST", "/upstream/dyhost",
             f"ip_hash aaa;server 127.0.0.1:{a}; server 127.0.0.1:{b};", like("add server failed"), lua=refused),
        Step("a misspelt server", "POST", "/upstream/dyhost",
             f"ip_hash;aaserver 127.0.0.1:{a}; server 127.0.0.1:{b};", like("add server failed"), lua=refused),
        Step("a unix socket", "POST", "/upstream/dyhost", f"server unix:{unix};", like("success"),
             lua=("unix", None)),
        Step("the unix socket serves (Lua flavor: the previous servers)", "TRAFFIC", "dyhost",
             expect=like("^unix$"), lua=("unix", (200, str(a)))),
        Step("check, default up", "POST", "/upstream/dyhost",
             f"server 127.0.0.1:{a};check interval=3000 rise=2 fall=5 timeout=1000 type=http default_down=false;",
             like("success"), lua=("check", None)),
        Step("checked upstream serves", "TRAFFIC", "dyhost", expect=like(f"^{a}$")),
        Step("delete the checked upstream", "DELETE", "/upstream/dyhost", expect=like("success")),
        Step("replace a configured upstream", "POST", "/upstream/host1", f"server 127.0.0.1:{b};", like("success")),
        Step("host1 serves from the new server", "TRAFFIC", "host1", expect=like(f"^{b}$")),
        Step("replace it back", "POST", "/upstream/host1", f"server 127.0.0.1:{a};", like("success")),
        Step("host1 serves from the old server", "TRAFFIC", "host1", expect=like(f"^{a}$")),
    ]


def unix_server(path):
    """Tengine's http_snippet for dyups.t's unix-socket server (answers "unix")."""
    return f"""    server {{
        listen unix:{path};
        location / {{ return 200 "unix"; }}
    }}"""


def upstream_file(directory, a, b):
    path = directory / "upstreams.conf"
    path.write_text(f"upstream host1 {{\n    server 127.0.0.1:{a};\n}}\n"
                    f"upstream host2 {{\n    server 127.0.0.1:{b};\n}}\n")
    return path


def answer(server, step):
    """(status, text) of one step on one server; TRAFFIC: the distinct answers of ``tries`` requests."""
    if step.method != "TRAFFIC":
        status, text, _headers = server.api(step.method, step.path, step.body or None)
        return status, text
    answers = set()
    for _unused in range(step.tries):
        status, text, _headers = server.request("/", upstream=step.path)
        answers.add(text.strip() if status == 200 else f"HTTP {status}")
    return (200 if all(not a.startswith("HTTP ") for a in answers) else 502), "\n".join(sorted(answers))


def settle(server, step, answer_now):
    """Tengine's other worker applies a change within dyups_read_msg_timeout: a traffic step is asked
    again for up to 2 s until dyups.t's expectation holds (dyups.t sleeps 1 s in the same places)."""
    if step.method != "TRAFFIC":
        return answer_now
    deadline = time.monotonic() + 2
    while not step.expect(*answer_now) and time.monotonic() < deadline:
        time.sleep(0.05)
        answer_now = answer(server, step)
    return answer_now


@pytest.fixture(scope="module")
def side_by_side(tmp_path_factory):
    """(steps, tengine, lua): both flavors with host1/host2 configured and dyups.t's backends."""
    require_tengine()
    directory = tmp_path_factory.mktemp("dyups-t")
    with Backends(count=2) as backends:
        a, b = backends.ports
        tengine = Tengine(workers=2, upstream_file=upstream_file(directory, a, b))
        # in the prefix (0755): the workers run as nobody and must reach the socket
        unix = tengine.prefix / "dyupssocket"
        tengine.http_snippet = unix_server(unix)
        lua = NginxLua(workers=2, upstream_file=upstream_file(directory, a, b))
        try:
            tengine.start()
            lua.start()
            yield steps(a, b, unix), tengine, lua
        finally:
            tengine.cleanup()
            lua.cleanup()


def test_replay_both_flavors(side_by_side):
    """Every step in order on both servers: dyups.t's expectation on Tengine; the same on the Lua flavor
    and an identical interface answer, or the step's deliberate difference held exactly."""
    all_steps, tengine, lua = side_by_side
    problems = []
    for number, step in enumerate(all_steps, 1):
        on_tengine = settle(tengine, step, answer(tengine, step))
        on_lua = settle(lua, step, answer(lua, step))
        label = f"{number} {step.what} ({step.method} {step.path} {step.body!r})"
        if not step.expect(*on_tengine):
            problems.append(f"{label}: Tengine {on_tengine} does not meet dyups.t's expectation")
        if step.lua is None:
            if not step.expect(*on_lua):
                problems.append(f"{label}: Lua {on_lua} does not meet dyups.t's expectation")
            if step.method != "TRAFFIC" and on_lua != on_tengine:
                problems.append(f"{label}: Lua {on_lua} != Tengine {on_tengine}")
            continue
        reason, exact = step.lua
        assert reason in LUA_DIFFERS
        if reason == "sorted" and exact is None:
            held = (on_lua[0] == on_tengine[0] and sorted_blocks(on_lua[1])
                    and same_blocks(on_lua[1], on_tengine[1]))
        elif exact is not None:
            held = on_lua == exact
        else:
            held = on_lua[0] == 400 and refusal_names(reason, on_lua[1])
        if not held:
            problems.append(f"{label}: Lua {on_lua} is not the documented difference {reason!r} "
                            f"({LUA_DIFFERS[reason]}); Tengine {on_tengine}")
    assert not problems, "\n".join(problems)


def blocks(text):
    return [block for block in text.strip("\n").split("\n\n") if block]


def sorted_blocks(text):
    names = [block.split("\n", 1)[0] for block in blocks(text)]
    return names == sorted(names)


def same_blocks(one, other):
    return sorted(blocks(one)) == sorted(blocks(other))


def refusal_names(reason, text):
    """The Lua flavor's 400 says what it refused."""
    words = {"ip_hash": "ip_hash", "check": "check", "unix": "unix", "refused-400": ""}[reason]
    return bool(text.strip()) and words in text


# -- TLS session reuse to HTTPS upstream servers (dyups.t's last block) -------------------------------------

def tls_backend(port, cert, key):
    """dyups.t's HTTPS backend: answers "<port> <$ssl_session_reused>" (r: resumed, .: full handshake)."""
    return f"""    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        access_log off;
        location / {{ return 200 "$server_port $ssl_session_reused"; }}
    }}"""


def https_locations(flavor):
    """A location that proxies over HTTPS with session reuse and a new connection per request."""
    target = "https://$dyups_upstream" if flavor == "tengine" else "https://dyups_balancer"
    return f"""
        location / {{
            set $dyups_upstream $http_x_dyups_upstream;
            proxy_pass {target};
            proxy_ssl_session_reuse on;
            proxy_set_header Connection close;
        }}
"""


@pytest.mark.parametrize("flavor", ["tengine", "lua"])
def test_tls_session_reuse(tmp_path, flavor):
    """dyups.t: the second request to an HTTPS upstream server resumes the first one's TLS session.
    Tengine does; the Lua flavor cannot (lua-nginx-module 0.10.23 saves no session for a peer set by
    balancer_by_lua: every new connection is a full handshake; docs/lua-flavor.md measures the cost and
    the workaround, upstream keepalive). This test holds both, so a module that starts reusing shows up."""
    if flavor == "tengine":
        require_tengine()
    cert, key = self_signed(tmp_path)
    port = free_port()
    server_class = Tengine if flavor == "tengine" else NginxLua
    with server_class(workers=1, http_snippet=tls_backend(port, cert, key), locations=https_locations(flavor)) as proxy:
        assert proxy.api("POST", "/upstream/tlshost", f"server 127.0.0.1:{port};")[:2] == (200, "success")
        answers = [proxy.request("/", upstream="tlshost")[1] for _unused in range(4)]
    if flavor == "tengine":
        assert answers == [f"{port} ."] + [f"{port} r"] * 3, answers
    else:
        assert answers == [f"{port} ."] * 4, answers
