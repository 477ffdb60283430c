"""The dyups wire contract (../shared/dyups-wire-contract.md), one test per row.

Each test names its row. Where Tengine and the Lua flavor legitimately differ, the test accepts
both and says why (Tengine: 500 "add server failed"; Lua: 400 with the reason). Bodies use the
contract's own addresses (127.0.0.1:18101, :18102): nothing is proxied, only the interface is
exercised. See docs/conformance.md.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import DyupsRejected
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import parse_detail_line
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from tests.conformance.conftest import PREFIX, assert_refused
from tests.support.tengine import FLAVORS, flavor_class

DETAIL_LINE = re.compile(r"server (\S+) weight=\d+ max_conns=\d+ max_fails=\d+ fail_timeout=\d+ backup=[01] down=[01]\Z")


def post(target, name, body):
    return target.raw("POST", f"/upstream/{quote(name)}", body)


def created(target, name, body):
    status, text, _unused = post(target, name, body)
    assert (status, text) == (200, "success"), (status, text)


def detail_block(target, name):
    """The lines of ``name``'s block in GET /detail (server lines only), or None when absent."""
    status, text, _unused = target.raw("GET", "/detail")
    assert status in (200, 204), (status, text)
    blocks = text.split("\n\n")
    for block in blocks:
        lines = block.strip("\n").split("\n")
        if lines and lines[0] == name:
            return lines[1:]
    return None


def own_upstreams_absent(target):
    """True when the interface holds nothing (the 204 rows need that)."""
    status, text, _unused = target.raw("GET", "/list")
    return status == 204


def require_empty(target):
    if not own_upstreams_absent(target):
        if target.external:
            pytest.skip("the target holds upstreams; the 204 rows need an empty interface")
        pytest.fail(f"the suite's own {target.flavor} server holds upstreams left over by another test")


# -- Endpoints --------------------------------------------------------------------------------------

def test_list_200_one_name_a_line(target, names):
    """GET /list: 200, one upstream name a line (host1\\n)."""
    first, second = names(), names()
    created(target, first, "server 127.0.0.1:18101;")
    created(target, second, "server 127.0.0.1:18102;")
    status, text, _unused = target.raw("GET", "/list")
    assert status == 200
    assert text.endswith("\n")
    lines = text.split("\n")[:-1]
    assert first in lines and second in lines
    assert all(line and line == line.strip() for line in lines)


def test_list_204_empty_body_when_none(target):
    """GET /list: 204, empty body, when there is no upstream."""
    require_empty(target)
    status, text, _unused = target.raw("GET", "/list")
    assert (status, text) == (204, "")


def test_detail_200_name_servers_blank_line(target, names):
    """GET /detail: per upstream its name on a line, one line per server, then a blank line."""
    name = names()
    created(target, name, "server 127.0.0.1:18101 weight=2;\nserver 127.0.0.1:18102;")
    status, text, _unused = target.raw("GET", "/detail")
    assert status == 200
    lines = text.split("\n")
    start = lines.index(name)
    block = lines[start + 1:start + 3]
    assert all(DETAIL_LINE.match(line) for line in block), block
    assert lines[start + 3] == ""
    assert text.endswith("\n\n")


def test_detail_204_when_none(target):
    """GET /detail: 204 when there is no upstream."""
    require_empty(target)
    status, text, _unused = target.raw("GET", "/detail")
    assert (status, text) == (204, "")


def test_get_upstream_200_server_lines_only(target, names):
    """GET /upstream/NAME: 200, `server ADDR` lines only (no weight or other parameters)."""
    name = names()
    created(target, name, "server 127.0.0.1:18101 weight=3 max_fails=2; server 127.0.0.1:18102 backup;")
    status, text, _unused = target.raw("GET", f"/upstream/{name}")
    assert status == 200
    assert sorted(text.splitlines()) == ["server 127.0.0.1:18101", "server 127.0.0.1:18102"]
    assert text.endswith("\n")


def test_get_upstream_404_empty_when_unknown(target, names):
    """GET /upstream/NAME: 404 with an empty body when unknown."""
    status, text, _unused = target.raw("GET", f"/upstream/{names()}")
    assert (status, text) == (404, "")


def test_post_200_success_without_newline(target, names):
    """POST /upstream/NAME: 200 `success`, no trailing newline."""
    status, text, _unused = post(target, names(), "server 127.0.0.1:18101;")
    assert status == 200
    assert text == "success"


def test_post_creates_or_replaces_the_whole_upstream(target, names):
    """POST replaces the whole upstream: servers of the previous POST are gone."""
    name = names()
    created(target, name, "server 127.0.0.1:18101; server 127.0.0.1:18102;")
    created(target, name, "server 127.0.0.1:18103 weight=5;")
    assert detail_block(target, name) == [
        "server 127.0.0.1:18103 weight=5 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0"]


def test_delete_200_success(target, names):
    """DELETE /upstream/NAME: 200 `success`; the upstream is gone."""
    name = names()
    created(target, name, "server 127.0.0.1:18101;")
    status, text, _unused = target.raw("DELETE", f"/upstream/{name}")
    assert (status, text) == (200, "success")
    assert target.raw("GET", f"/upstream/{name}")[0] == 404
    assert detail_block(target, name) is None


def test_delete_404_when_unknown(target, names):
    """DELETE /upstream/NAME: 404 when unknown."""
    status, _text, _unused = target.raw("DELETE", f"/upstream/{names()}")
    assert status == 404


@pytest.mark.parametrize("path", ["/upstream/NAME", "/list", "/detail"])
def test_put_anything_405(target, names, path):
    """PUT anything: 405."""
    name = names()
    created(target, name, "server 127.0.0.1:18101;")
    status, _text, _unused = target.raw("PUT", path.replace("NAME", name), "server 127.0.0.1:18102;")
    assert status == 405
    assert target.raw("GET", f"/upstream/{name}")[1] == "server 127.0.0.1:18101\n"


def test_delete_list_405(target):
    """DELETE /list: 405."""
    status, _text, _unused = target.raw("DELETE", "/list")
    assert status == 405


def test_slash_in_name_404_not_support_this_interface(target):
    """A slash in the name: 404. Tengine 3.2 answers GET /upstream/a/b with an empty body and
    POST /upstream/a/b with `not support this interface` (measured on a real build)."""
    status, text, _unused = target.raw("GET", "/upstream/a/b")
    assert status == 404
    assert text.strip() in ("", "not support this interface")
    status, text, _unused = target.raw("POST", "/upstream/a/b", "server 127.0.0.1:18101;")
    assert status == 404
    assert text.strip() == "not support this interface"


# -- /detail format ---------------------------------------------------------------------------------

def test_detail_server_line_exactly(target, names):
    """The /detail server line, exactly as the contract prints it."""
    name = names()
    created(target, name, "server 127.0.0.1:18101 weight=2;")
    assert detail_block(target, name) == [
        "server 127.0.0.1:18101 weight=2 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0"]


def test_detail_fail_timeout_in_seconds_without_unit(target, names):
    """fail_timeout is printed in seconds without a unit."""
    name = names()
    created(target, name, "server 127.0.0.1:18101 fail_timeout=2m; server 127.0.0.1:18102 fail_timeout=3s;")
    lines = sorted(detail_block(target, name))
    assert [re.search(r"fail_timeout=(\S+)", line).group(1) for line in lines] == ["120", "3"]


def test_order_of_upstreams_is_not_relied_on(target, names):
    """The order of /list and /detail is not stable: the client reads them as sets."""
    made = [names() for _unused in range(3)]
    for index, name in enumerate(made):
        created(target, name, f"server 127.0.0.1:{18101 + index};")
    client = target.client()
    assert set(made) <= set(client.list())
    detail = client.detail()
    assert {name: [server.port for server in detail[name]] for name in made} == {
        made[0]: [18101], made[1]: [18102], made[2]: [18103]}


# -- POST bodies that Tengine accepts ----------------------------------------------------------------

def test_accepts_servers_without_space(target, names):
    """`server 127.0.0.1:18102;server 127.0.0.1:18101 weight=2;` (no space needed)."""
    name = names()
    created(target, name, "server 127.0.0.1:18102;server 127.0.0.1:18101 weight=2;")
    assert sorted(detail_block(target, name)) == [
        "server 127.0.0.1:18101 weight=2 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0",
        "server 127.0.0.1:18102 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0"]


def test_accepts_newline_separated_servers(target, names):
    """Newline-separated servers."""
    name = names()
    created(target, name, "server 127.0.0.1:18101;\nserver 127.0.0.1:18102;\n")
    assert len(detail_block(target, name)) == 2


def test_accepts_parameters_backup_and_keepalive(target, names):
    """`server ... weight=3 max_fails=3 fail_timeout=2s; server ... backup; keepalive 20;`."""
    name = names()
    created(target, name, "server 127.0.0.1:18101 weight=3 max_fails=3 fail_timeout=2s; "
                          "server 127.0.0.1:18102 backup; keepalive 20;")
    assert sorted(detail_block(target, name)) == [
        "server 127.0.0.1:18101 weight=3 max_conns=0 max_fails=3 fail_timeout=2 backup=0 down=0",
        "server 127.0.0.1:18102 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=1 down=0"]


def test_accepts_down(target, names):
    """`server 127.0.0.1:18101 down;`."""
    name = names()
    created(target, name, "server 127.0.0.1:18101 down;")
    assert detail_block(target, name) == [
        "server 127.0.0.1:18101 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=1"]


@pytest.mark.parametrize("body, directive", [
    ("ip_hash; server 127.0.0.1:18101; server 127.0.0.1:18102;", "ip_hash"),
    ("check interval=3000 rise=2 fall=5 timeout=1000 type=http; server 127.0.0.1:18101;", "check"),
])
def test_balancing_method_and_check(target, names, body, directive):
    """`ip_hash; server ...;` and `check ...; server ...;`: Tengine 200.

    Legitimate difference: the Lua flavor answers 400 naming the directive, because its balancer
    cannot honour it (no ip_hash, no active checks in stock nginx); see docs/lua-flavor.md.
    """
    name = names()
    status, text, _unused = post(target, name, body)
    if target.tengine or (target.external and status == 200):
        assert (status, text) == (200, "success")
        assert len(detail_block(target, name)) == body.count("server ")
    else:
        assert_refused(target, status, text, [directive, "not supported"])
        assert target.raw("GET", f"/upstream/{name}")[0] == 404


def test_accepts_ipv6(target, names):
    """`server [::1]:18101;` (IPv6)."""
    name = names()
    created(target, name, "server [::1]:18101;")
    assert target.raw("GET", f"/upstream/{name}")[1] == "server [::1]:18101\n"
    assert detail_block(target, name) == [
        "server [::1]:18101 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0"]


def test_accepts_host_name_resolved_at_post(target, names):
    """`server localhost:18102;` (a host name is resolved once, at POST time): an address is shown."""
    name = names()
    created(target, name, "server localhost:18102;")
    status, text, _unused = target.raw("GET", f"/upstream/{name}")
    assert status == 200
    address = text.split()[1]
    host = address.rsplit(":", 1)[0].strip("[]")
    assert address.endswith(":18102")
    assert ipaddress.ip_address(host).is_loopback, text


# -- POST bodies that Tengine rejects: 500 `add server failed` (Lua: 400 with the reason) ----------------

REJECTED = {
    "empty": ("", ["empty"]),
    "garbage": ("garbage", ["garbage"]),
    "port 0": ("server 127.0.0.1:0;", ["port 0"]),
    "port 70000": ("server 127.0.0.1:70000;", ["70000"]),
    "unresolvable host": ("server no-such-host.invalid:18101;", ["no-such-host.invalid", "resolved"]),
    "unknown parameter": ("server 127.0.0.1:18101 foo=1;", ["foo=1"]),
    "weight 0": ("server 127.0.0.1:18101 weight=0;", ["weight=0"]),
    "closing the block": ("server 127.0.0.1:18101; } server { listen 9999;", ["}"]),
}


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_body(target, names, case):
    """Rejected bodies: Tengine 500 `add server failed`; the Lua flavor 400 with the reason.

    Legitimate difference: 400 is what a refused request is; Tengine's 500 also means "nginx may
    need a reload", which is not true of the Lua flavor. The client treats both as DyupsRejected.
    """
    body, words = REJECTED[case]
    name = names()
    status, text, _unused = post(target, name, body)
    assert_refused(target, status, text, words)
    assert target.raw("GET", f"/upstream/{name}")[0] == 404


def test_client_reports_a_refusal(target, names):
    """Through the client: a body that passes the client's rules but not the server (a host that does
    not resolve) raises DyupsRejected with the status, for 400 and for 500 alike."""
    upstream = build_upstream(names(), ["no-such-host.invalid:18101"])
    with pytest.raises(DyupsRejected) as caught:
        target.client().update(upstream)
    expected = {"external": (400, 500), "tengine": (500,), "lua": (400,)}[target.flavor]
    assert caught.value.status in expected


# -- Names Tengine accepts that would break nginx --------------------------------------------------------

@pytest.mark.parametrize("label, name", [("space", "bad name"), ("brace", "x{y"), ("300 characters", "x" * 300)])
def test_names_that_would_break_nginx(target, label, name):
    """Tengine stores `bad name`, `x{y`, a 300-character name (200).

    Legitimate difference: the Lua flavor refuses them with 400 and the name rule, as the client's
    own validation does. Against Tengine the upstream is deleted again at once.
    """
    status, text, _unused = post(target, name, "server 127.0.0.1:18101;")
    if target.tengine or (target.external and status == 200):
        assert (status, text) == (200, "success")
        assert target.raw("DELETE", f"/upstream/{quote(name)}")[0] == 200
    else:
        assert status == 400, (status, text)
        assert "upstream name" in text


# -- Lifetime --------------------------------------------------------------------------------------------

def test_reload_keeps_or_drops_interface_upstreams(target, names):
    """Tengine: a reload drops upstreams added through the interface (only the configuration's come back).

    Legitimate difference, by design: the Lua flavor keeps them (its state is a lua_shared_dict,
    which survives HUP). Needs control of the server process: the servers started here only.
    """
    if target.external:
        pytest.skip("needs control of the server process (reload); runs against the suite's own servers")
    name = names()
    created(target, name, "server 127.0.0.1:18101;")
    master = target.nginx.master_pid()
    target.nginx.reload()
    assert target.nginx.master_pid() == master
    if target.tengine:
        assert target.raw("GET", f"/upstream/{name}")[:2] == (404, "")
    else:
        assert target.raw("GET", f"/upstream/{name}")[1] == "server 127.0.0.1:18101\n"


@pytest.mark.parametrize("flavor", FLAVORS)
def test_configured_upstream_can_be_replaced_and_deleted(tmp_path, flavor):
    """An upstream defined in the configuration (the upstream file, included by Tengine, read at start
    by the Lua flavor) can be replaced and deleted through the interface like a dynamic one."""
    import os
    if os.environ.get("DYUPS_URL"):
        pytest.skip("needs control of the server's configuration; runs against the suite's own servers")
    upstream_file = tmp_path / "upstreams.conf"
    upstream_file.write_text(f"# from the configuration\nupstream {PREFIX}conf {{\n    server 127.0.0.1:18101;\n}}\n")
    with flavor_class(flavor)(workers=2, upstream_file=upstream_file) as nginx:
        assert nginx.api("GET", "/list")[1] == f"{PREFIX}conf\n"
        assert nginx.api("POST", f"/upstream/{PREFIX}conf", "server 127.0.0.1:18102;")[:2] == (200, "success")
        assert nginx.api("GET", f"/upstream/{PREFIX}conf")[1] == "server 127.0.0.1:18102\n"
        assert nginx.api("DELETE", f"/upstream/{PREFIX}conf")[:2] == (200, "success")
        assert nginx.api("GET", "/list")[0] == 204


# -- Propagation to workers --------------------------------------------------------------------------------

def test_change_seen_by_every_worker_at_once(target, names):
    """The worker that receives a POST applies it at once; the interface's GET on any worker shows it
    (Tengine reads the shared messages before answering a GET; the Lua flavor reads its shared dict)."""
    name = names()
    for round_number in range(5):
        port = 18101 + round_number
        created(target, name, f"server 127.0.0.1:{port};")
        for _unused in range(10):    # new connections: spread over the workers
            status, text, _unused = target.raw("GET", f"/upstream/{name}")
            assert (status, text) == (200, f"server 127.0.0.1:{port}\n")


def test_detail_lines_parse_with_the_client_rules(target, names):
    """Every /detail line the target prints is one the client's parser reads back to the same server."""
    name = names()
    created(target, name, "server 127.0.0.1:18101 weight=7 max_fails=0 fail_timeout=1h max_conns=9 backup; "
                          "server [2001:db8::1]:80 down;")
    parsed = sorted(parse_detail_line(line).spec() for line in detail_block(target, name))
    assert parsed == ["127.0.0.1:18101 weight=7 max_fails=0 fail_timeout=3600s max_conns=9 backup",
                      "[2001:db8::1]:80 down"]
