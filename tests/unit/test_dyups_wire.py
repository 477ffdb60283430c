"""The wire format: /list, /detail, /upstream/NAME answers as Tengine prints them, the POST body, status meanings."""

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import (
    detail_line, parse_detail, parse_detail_line, parse_list, parse_upstream, post_body, refusal, unexpected,
    upstream_path)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server, parse_server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream

TENGINE_DETAIL = (
    "host2\n"
    "server 127.0.0.1:18102 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0\n"
    "\n"
    "host1\n"
    "server 127.0.0.1:18101 weight=2 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0\n"
    "server [::1]:18101 weight=3 max_conns=5 max_fails=3 fail_timeout=2 backup=1 down=0\n"
    "\n"
)


def test_detail():
    detail = parse_detail(TENGINE_DETAIL)
    assert detail == {
        "host2": [Server("127.0.0.1", 18102)],
        "host1": [Server("127.0.0.1", 18101, weight=2),
                  Server("::1", 18101, weight=3, max_conns=5, max_fails=3, fail_timeout=2, backup=True)],
    }


def test_detail_keeps_names_tengine_accepted():
    detail = parse_detail("bad name\nserver 127.0.0.1:1 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0\n\n")
    assert list(detail) == ["bad name"]


def test_detail_empty_and_crlf():
    assert parse_detail("") == {}
    assert parse_detail("a\r\nserver 10.0.0.1:80 weight=1\r\n\r\n") == {"a": [Server("10.0.0.1", 80)]}


def test_detail_server_before_name_is_an_error():
    with pytest.raises(ValidationError):
        parse_detail("server 10.0.0.1:80 weight=1\n")


def test_list_and_upstream():
    assert parse_list("host1\nhost2\n") == ["host1", "host2"]
    assert parse_list("") == []
    assert parse_upstream("server 127.0.0.1:18101\nserver [::1]:18102\n") == [("127.0.0.1", 18101), ("::1", 18102)]
    with pytest.raises(ValidationError):
        parse_upstream("garbage\n")


def test_upstream_path_validates_the_name():
    assert upstream_path("Web_b") == "/upstream/Web_b"
    for bad in ("a/b", "bad name", "x{y"):
        with pytest.raises(ValidationError):
            upstream_path(bad)


def test_detail_line_without_unit_is_seconds():
    server = parse_detail_line("server 127.0.0.1:18101 weight=2 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0")
    assert server == Server("127.0.0.1", 18101, weight=2, fail_timeout=10)
    assert server == parse_server("127.0.0.1:18101 weight=2 fail_timeout=10s")


def test_detail_line_ignores_unknown_keys_but_not_garbage():
    assert parse_detail_line("server 10.0.0.1:80 weight=1 extra=5 down=1") == Server("10.0.0.1", 80, down=True)
    for line in ("upstream x", "server", "server 10.0.0.1:80 weight", "server 10.0.0.1:80 weight=a"):
        with pytest.raises(ValidationError):
            parse_detail_line(line)


def test_post_body_holds_servers_and_directives_balancing_first():
    upstream = build_upstream("Web", ["10.0.0.2:80 weight=2", "10.0.0.1:80", "10.0.0.3:80 backup"],
                              ["keepalive 16", "least_conn"])
    assert post_body(upstream) == (
        "least_conn;\nserver 10.0.0.1:80;\nserver 10.0.0.2:80 weight=2;\nserver 10.0.0.3:80 backup;\nkeepalive 16;\n")
    assert detail_line(upstream.servers[0]) == \
        "server 10.0.0.1:80 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0"


def test_status_meanings():
    assert refusal("POST", "http://h/upstream/a", 400, "invalid server\n") == \
        "POST http://h/upstream/a was refused (400): invalid server"
    assert "needing a reload" in refusal("DELETE", "http://h/upstream/a", 500, "del failed")
    assert refusal("POST", "http://h/upstream/a", 502, "") is None
    assert unexpected("GET", "http://h/detail", 404, "nope").endswith("(is dyups_interface configured at this address?)")
    assert unexpected("POST", "http://h/upstream/a", 405, "").endswith("(the interface does not allow this method)")
    assert unexpected("GET", "http://h/detail", 418, "x" * 300) == f"GET http://h/detail answered 418 {'x' * 200!r}"
