"""Reading the interface's answers: /list, /detail, /upstream/NAME as Tengine prints them."""

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import (
    parse_detail, parse_list, parse_upstream, upstream_path)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server

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
