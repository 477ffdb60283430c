"""The Lua flavor's interface beyond the wire contract: persistence, the upstream file, locking, limits.

Real nginx (tests/support/nginx_lua.py); the wire contract itself is tests/conformance/.
"""

from __future__ import annotations

import time

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import detail_line
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import DyupsBusy
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream_file import render, render_block
from tests.support.backends import backends  # noqa: F401  (fixture)  # pylint: disable=unused-import
from tests.support.http_stdlib import stdlib_transport
from tests.support.nginx_lua import NginxLua, nginx_lua_factory  # noqa: F401  (fixture)  # pylint: disable=unused-import  # pytest fixtures

LOCK_HOLDER = """
        location = /_test/hold_lock {
            content_by_lua_block {
                ngx.shared.dyups_state:set("lock", 0, tonumber(ngx.var.arg_seconds))
                ngx.say("held")
            }
        }
"""


BEHIND_THE_PAGE = """
        location = /_test/write_dict_only {
            content_by_lua_block {
                -- what a POST that an old worker answers during a reload does: the dict changes,
                -- the new version page (mapped by the new master) does not
                local upstream = require("swallowkeeper_dyups.upstream")
                local record = assert(upstream.from_body("late", "server 127.0.0.1:" .. ngx.var.arg_port .. ";"))
                local dict = ngx.shared.dyups_state
                assert(dict:set("u:late", upstream.encode(record)))
                local version = dict:get("v") + 1
                assert(dict:set("j:" .. (version % 1024), version .. " late"))
                assert(dict:set("v", version))
                ngx.say(version, " page=", tostring(require("swallowkeeper_dyups.state").version_cell() ~= nil))
            }
        }
"""


def detail(nginx):
    status, text, _unused = nginx.api("GET", "/detail")
    return text if status == 200 else ""


# -- state across reload and restart ------------------------------------------------------------------

def test_state_survives_hup_reload(nginx_lua_factory):
    nginx = nginx_lua_factory(workers=2)
    client = nginx.client()
    client.update(build_upstream("Kept", ["127.0.0.1:18101 weight=3", "127.0.0.1:18102 backup"], ["keepalive 16"]))
    client.update(build_upstream("Gone", ["127.0.0.1:18103"]))
    client.delete("Gone")
    before = detail(nginx)
    master, workers = nginx.master_pid(), nginx.worker_pids()
    new_workers = nginx.reload()
    assert nginx.master_pid() == master
    assert not set(new_workers) & set(workers)
    assert detail(nginx) == before
    assert client.list() == ["Kept"]
    assert "kept 1 upstreams" in nginx.error_log_text()


def test_restart_loads_the_upstream_file(nginx_lua_factory, tmp_path):
    """A restart starts from the upstream file (the format _upstream_file.render writes)."""
    path = tmp_path / "dyups.upstream.conf"
    upstreams = [build_upstream("WebappReadonly", ["127.0.0.1:18101 weight=2 max_fails=3 fail_timeout=5s",
                                                   "127.0.0.1:18102 backup"], ["keepalive 32"]),
                 build_upstream("WebappReadonly_b", ["127.0.0.1:18103 down", "[::1]:18104"])]
    path.write_text(render(upstreams))
    nginx = nginx_lua_factory(workers=2, upstream_file=path)
    expected = {u.name: [detail_line(s) for s in u.servers] for u in upstreams}
    got = {name: sorted(detail_line(server) for server in servers) for name, servers in nginx.client().detail().items()}
    assert got == expected
    # a POST not written to the file is lost by a restart, as with Tengine
    nginx.client().update(build_upstream("NotInFile", ["127.0.0.1:18105"]))
    master = nginx.master_pid()
    nginx.restart()
    assert nginx.master_pid() != master
    assert sorted(nginx.client().list()) == ["WebappReadonly", "WebappReadonly_b"]


def test_upstream_file_host_names_are_resolved_at_start(nginx_lua_factory, tmp_path):
    path = tmp_path / "dyups.upstream.conf"
    path.write_text("upstream named {\n    server localhost:18102;  # resolved when nginx starts\n}\n")
    nginx = nginx_lua_factory(upstream_file=path)
    assert nginx.api("GET", "/upstream/named")[1] == "server 127.0.0.1:18102\n"


def test_upstream_file_entries_this_flavor_cannot_take_are_left_out(nginx_lua_factory, tmp_path):
    """Valid for the rules, but not for this flavor (ip_hash, a host that does not resolve): logged and
    left out, the rest loaded, nginx starts (the client wrote the file before the POST that failed)."""
    path = tmp_path / "dyups.upstream.conf"
    blocks = [build_upstream("Good", ["127.0.0.1:18103"]), build_upstream("good", ["127.0.0.1:18101"]),
              build_upstream("hashed", ["127.0.0.1:18102"], ["ip_hash"]),
              build_upstream("unknown", ["no-such-host.invalid:80"])]
    path.write_text("".join(render_block(upstream) for upstream in blocks))  # by hand: render() refuses Good+good
    nginx = nginx_lua_factory(upstream_file=path)
    assert nginx.client().list() == ["Good"]   # the file is sorted by name: "Good" comes before "good"
    log = nginx.error_log_text()
    assert 'upstream "hashed" of' in log and "ip_hash" in log
    assert 'upstream "unknown" of' in log and "no-such-host.invalid" in log
    assert 'upstream "good" of' in log and "letter case" in log


@pytest.mark.parametrize("text, words", [
    ("upstream bad name {\n    server 127.0.0.1:1;\n}\n", ["line 1", "expected 'upstream NAME {'"]),
    ("upstream a {\n    server 127.0.0.1:0;\n}\n", ["line 1", "port 0"]),
    ("upstream a {\n    server 127.0.0.1:1\n}\n", ["line 3", "missing ';'"]),
    ("upstream a {\n    server 127.0.0.1:1;\n}\nupstream a {\n    server 127.0.0.1:2;\n}\n", ["defined twice"]),
])
def test_invalid_upstream_file_stops_nginx_from_starting(tmp_path, text, words):
    """A file that breaks the rules fails the start, naming the line, like an invalid include would.

    (``nginx -t`` cannot catch it: lua-nginx-module does not run init_by_lua in test mode. The
    collection's Python rules, identical to the Lua ones, validate the file before it is written.)
    """
    path = tmp_path / "dyups.upstream.conf"
    path.write_text(text)
    nginx = NginxLua(upstream_file=path)
    try:
        with pytest.raises(RuntimeError) as failed:
            nginx.start(timeout=10)
        message = str(failed.value)
        assert "the upstream file" in message and "is not valid" in message
        for word in words:
            assert word in message, message
        assert not nginx.running
    finally:
        nginx.cleanup()


def test_missing_upstream_file_is_an_empty_start(nginx_lua_factory, tmp_path):
    nginx = nginx_lua_factory(upstream_file=tmp_path / "not-yet-written.conf")
    assert nginx.api("GET", "/list")[0] == 204


def test_a_change_the_version_page_missed_is_seen_within_a_second(nginx_lua_factory):
    """Workers read the version from a shared page and, once a second, from the dict itself."""
    nginx = nginx_lua_factory(workers=1, server_snippet=BEHIND_THE_PAGE)
    assert nginx.request("/", upstream="late")[0] == 502        # the worker has synced once
    status, text, _unused = nginx.request("/_test/write_dict_only?port=18101")
    assert (status, text.split()[1]) == (200, "page=true")
    started = time.monotonic()
    nginx.wait_for(lambda: nginx.api("GET", "/upstream/late")[0] == 200, "the late change", timeout=3)
    assert time.monotonic() - started < 2.5


# -- writers -------------------------------------------------------------------------------------------

def test_busy_writer_answers_409(nginx_lua_factory):
    """Another writer holding the lock longer than lock_timeout: 409, which the client retries."""
    nginx = nginx_lua_factory(workers=1, lock_timeout=0.2, server_snippet=LOCK_HOLDER)
    assert nginx.request("/_test/hold_lock?seconds=3")[0] == 200
    status, text, _unused = nginx.api("POST", "/upstream/busy", "server 127.0.0.1:18101;")
    assert (status, text) == (409, "wait and try again\n")
    client = DyupsClient(nginx.api_url, stdlib_transport, busy_retries=1, busy_backoff=0.01)
    with pytest.raises(DyupsBusy):
        client.update(build_upstream("busy", ["127.0.0.1:18101"]))
    patient = DyupsClient(nginx.api_url, stdlib_transport, busy_retries=8, busy_backoff=0.5)
    patient.update(build_upstream("busy", ["127.0.0.1:18101"]))
    assert patient.get("busy") == [("127.0.0.1", 18101)]


def test_full_shared_dict_answers_500_with_the_reason(nginx_lua_factory):
    nginx = nginx_lua_factory(workers=1, dict_size="64k")
    body = "".join(f"server 127.0.0.{i // 250 + 1}:{1000 + i % 250} weight={i % 9 + 1};" for i in range(120))
    answers = [nginx.api("POST", f"/upstream/big{n}", body) for n in range(10)]
    statuses = [status for status, _unused, _unused in answers]
    assert 200 in statuses and 500 in statuses, statuses
    refused = next(text for status, text, _unused in answers if status == 500)
    assert "is full" in refused and "lua_shared_dict" in refused
    # what was stored is still served whole
    listed = nginx.client().list()
    assert listed and all(len(nginx.client().get(name)) == 120 for name in listed)


def test_names_compare_case_insensitively_like_nginx(nginx_lua_factory):
    nginx = nginx_lua_factory(workers=1)
    assert nginx.api("POST", "/upstream/MixedCase", "server 127.0.0.1:18101;")[0] == 200
    assert nginx.api("GET", "/upstream/mixedcase")[1] == "server 127.0.0.1:18101\n"
    assert nginx.api("POST", "/upstream/MIXEDCASE", "server 127.0.0.1:18102;")[0] == 200
    assert nginx.api("GET", "/list")[1] == "MIXEDCASE\n"
    assert nginx.api("DELETE", "/upstream/mixedCase")[0] == 200
    assert nginx.api("GET", "/list")[0] == 204


@pytest.mark.parametrize("method, path, status, body", [
    ("GET", "/", 404, ""),
    ("GET", "/nothing", 404, ""),
    ("GET", "/upstream", 404, "not support this interface"),
    ("GET", "/LIST", 204, ""),
    ("POST", "/list", 404, "not support this interface"),
    ("POST", "/list/x", 404, "not support this api"),
    ("POST", "/upstream/a/b", 404, "not support this interface"),
    ("DELETE", "/detail", 405, "not support this interface"),
    ("DELETE", "/nothing/x", 405, "not support this api"),
    ("HEAD", "/list", 405, ""),
    ("PATCH", "/upstream/x", 405, ""),
])
def test_other_paths_and_methods_answer_like_tengine(nginx_lua_factory, method, path, status, body):
    nginx = nginx_lua_factory(workers=1)
    got_status, got_body, _unused = nginx.api(method, path, "server 127.0.0.1:1;" if method in ("POST", "PATCH") else None)
    assert (got_status, got_body) == (status, body)


def test_many_changes_while_a_worker_is_idle(nginx_lua_factory):
    """More changes than the journal holds: a worker that was idle meanwhile reloads everything."""
    nginx = nginx_lua_factory(workers=2)
    nginx.api("POST", "/upstream/counted", "server 127.0.0.1:18101;")
    for n in range(1100):
        status, _unused, _unused = nginx.api("POST", f"/upstream/many{n % 7}", f"server 127.0.0.1:{20000 + n};")
        assert status == 200
    nginx.api("DELETE", "/upstream/counted")
    for _unused in range(20):
        status, text, _unused = nginx.api("GET", "/list")
        assert sorted(text.split()) == [f"many{k}" for k in range(7)]
        assert nginx.api("GET", "/upstream/many0")[1] == f"server 127.0.0.1:{20000 + 1099 - 1099 % 7}\n"


@pytest.mark.parametrize("path, body, answer", [
    ("/upstream/a", "server 127.0.0.1:0;",
     'the request body is refused (rule server.port_range): server "127.0.0.1:0": the port 0 is outside 1-65535\n'),
    ("/upstream/a", "keepalive 16;",
     'the request body is refused (rule upstream.no_servers): upstream "a": has no server line; nginx refuses an '
     "upstream without servers (DELETE removes an upstream)\n"),
    ("/upstream/a", "server 127.0.0.1:1;\nserver 127.0.0.1:2",
     """the request body is refused (rule block.missing_semicolon): at the end: missing ';' after "server 127.0.0.1:2"\n"""),
    ("/upstream/a", " \n",
     "the request body is empty (rule body.empty): send the upstream's server lines and directives, like "
     "'server 10.0.0.1:8080 weight=2;'\n"),
    ("/upstream/x%7By", "server 127.0.0.1:1;",
     'the upstream name in the URL is refused (rule name.charset): upstream name "x{y": may hold only '
     "A-Z a-z 0-9 _ . -\n"),
    ("/upstream/a", "least_conn; server 127.0.0.1:1;",
     'the request body is refused (rule flavor.directive_unsupported): upstream directive "least_conn" is valid '
     "nginx but not supported here: the Lua flavor balances with smooth weighted round robin only; least_conn is "
     "not implemented (supported: keepalive, keepalive_timeout, keepalive_requests)\n"),
])
def test_a_refused_post_says_what_is_wrong_and_the_rule(nginx_lua_factory, path, body, answer):
    """400 in HTTP terms: the request body or the URL's name, the rule id (tests/vectors/), what is wrong."""
    nginx = nginx_lua_factory(workers=1)
    assert nginx.api("POST", path, body)[:2] == (400, answer)
    assert nginx.api("GET", "/list")[0] == 204


# -- a full dict and a reload (issue 25) --------------------------------------------------------------------

CACHE_VERSION = """
        location = /_test/cache_version {
            content_by_lua_block {
                local cache = require("swallowkeeper_dyups.cache")
                cache.sync()
                ngx.say(cache.version())
            }
        }
"""


def fill(nginx):
    """POST upstreams until the dict refuses even the smallest one: then it is full."""
    big = "".join(f"server 127.0.0.{i // 250 + 1}:{1000 + i % 250};" for i in range(60))
    for number in range(400):
        status = nginx.api("POST", f"/upstream/fill{number}", big if number < 200 else "server 127.0.0.1:1;")[0]
        if status == 500 and number >= 200:
            return
        assert status in (200, 500), status
        if status == 500:
            big = "server 127.0.0.1:1;"   # no room for big ones: small ones until none fits either
    raise AssertionError("the dict never filled")


def test_a_refused_replacement_on_a_full_dict_keeps_the_stored_upstream(nginx_lua_factory, backends):
    """A replacement that does not fit where the stored upstream was freed the stored one first and
    answered 500 'is full': the upstream was gone from the dict, and from every worker at the next full
    rebuild (issue 25, finding 5). Now the stored one is put back: the dict and every worker keep it."""
    p1 = backends.ports[0]
    nginx = nginx_lua_factory(workers=2, dict_size="64k")
    assert nginx.api("POST", "/upstream/keep", f"server 127.0.0.1:{p1};")[0] == 200
    fill(nginx)
    bigger = "".join(f"server 127.0.0.2:{2000 + i};" for i in range(80))
    status, text, _unused = nginx.api("POST", "/upstream/keep", bigger)
    assert status == 500 and "is full" in text, (status, text)
    assert nginx.client().get("keep") == [("127.0.0.1", p1)]
    for _unused in range(12):
        assert nginx.request("/u/keep/")[1].strip() == str(p1)
    nginx.reload()   # new workers build every upstream from the dict
    for _unused in range(12):
        assert nginx.request("/u/keep/")[1].strip() == str(p1)


def test_a_full_dict_drops_no_journal_entry(nginx_lua_factory, backends):
    """Once the dict was full, every journal entry was dropped ('journal entry ... not stored') and every
    change made each worker rebuild every upstream (issue 25). The journal's slots are now written once,
    at their full width, and replaced in place: changes on a full dict keep reaching the workers through
    the journal, one upstream each."""
    p1, p2 = backends.ports[:2]
    nginx = nginx_lua_factory(workers=2, dict_size="64k", error_log_level="info")
    assert nginx.api("POST", "/upstream/flip", f"server 127.0.0.1:{p1};")[0] == 200
    fill(nginx)
    nginx.wait_for(lambda: nginx.request("/u/flip/")[1].strip() == str(p1), "flip served")
    for _unused in range(4):
        nginx.request("/u/flip/")
    mark = nginx.log_mark()
    for port in (p2, p1, p2):   # same size: each fits where the stored one was
        assert nginx.api("POST", "/upstream/flip", f"server 127.0.0.1:{port};")[0] == 200
        nginx.wait_for(lambda port=port: all(nginx.request("/u/flip/")[1].strip() == str(port) for _unused in range(6)),
                       f"every worker serves {port}", timeout=3)
    log = nginx.error_log_text(since=mark)
    assert "not stored" not in log, log[-2000:]
    assert "rebuilt every upstream" not in log, log[-2000:]


def test_a_change_only_the_dict_saw_is_taken_once_not_rebuilt_every_second(nginx_lua_factory):
    """A POST that an old worker finishes after a reload reaches the dict but not the new workers'
    version page. The new workers took it from the dict within a second, then saw the page behind their
    own version and rebuilt every upstream, and again every second, until a POST landed on a new worker
    (issue 25, finding 6). Now a page behind the worker is no change: the version only moves forward."""
    nginx = nginx_lua_factory(workers=1, server_snippet=BEHIND_THE_PAGE + CACHE_VERSION)
    before = int(nginx.request("/_test/cache_version")[1])
    status, text, _unused = nginx.request("/_test/write_dict_only?port=18101")
    assert status == 200
    written = int(text.split()[0])
    seen = []
    started = time.monotonic()
    while time.monotonic() - started < 2.6:
        seen.append(int(nginx.request("/_test/cache_version")[1]))
        time.sleep(0.05)
    assert before < written and written in seen, seen
    assert seen[seen.index(written):] == [written] * (len(seen) - seen.index(written)), seen


def test_every_answer_says_how_much_of_the_dict_is_free(nginx_lua_factory):
    """X-Dyups-Free-Space: the dict's free bytes, which the watcher exports (docs/watcher.md)."""
    nginx = nginx_lua_factory(workers=1, dict_size="1m")
    before = int(nginx.api("GET", "/detail")[2]["x-dyups-free-space"])
    body = "".join(f"server 127.0.0.{i // 250 + 1}:{1000 + i % 250};" for i in range(100))
    for number in range(20):
        assert nginx.api("POST", f"/upstream/room{number}", body)[0] == 200
    after = int(nginx.api("GET", "/list")[2]["x-dyups-free-space"])
    assert 0 < after < before <= 1024 * 1024
