"""The stand-in server answers as the wire contract says Tengine does (so tests that use it test something real)."""

from __future__ import annotations

import pytest

from tests.support.fake_dyups import ADD_FAILED, FakeDyups
from tests.support.nginx_lua import http_request


@pytest.fixture
def fake():
    with FakeDyups() as server:
        yield server


def call(server, method, path, body=None):
    status, text, _headers = http_request(server.port, method, path, body)
    return status, text


def test_endpoints(fake):
    assert call(fake, "GET", "/list") == (204, "")
    assert call(fake, "GET", "/detail") == (204, "")
    assert call(fake, "POST", "/upstream/host1", "server 127.0.0.1:18102;server 127.0.0.1:18101 weight=2;") == \
        (200, "success")
    assert call(fake, "POST", "/upstream/host2", "server 127.0.0.1:18103 weight=3 max_fails=3 fail_timeout=2s;\n"
                                                 "server localhost:18104 backup; keepalive 20;") == (200, "success")
    assert call(fake, "GET", "/list") == (200, "host2\nhost1\n")                   # the newest first
    assert call(fake, "GET", "/detail")[1] == (
        "host2\n"
        "server 127.0.0.1:18103 weight=3 max_conns=0 max_fails=3 fail_timeout=2 backup=0 down=0\n"
        "server 127.0.0.1:18104 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=1 down=0\n\n"
        "host1\n"
        "server 127.0.0.1:18102 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0\n"
        "server 127.0.0.1:18101 weight=2 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0\n\n")
    assert call(fake, "GET", "/upstream/host1") == (200, "server 127.0.0.1:18102\nserver 127.0.0.1:18101\n")
    assert call(fake, "GET", "/upstream/nope") == (404, "")
    assert call(fake, "GET", "/upstream/a/b") == (404, "not support this interface")
    assert call(fake, "PUT", "/upstream/host1", "x") == (405, "")
    assert call(fake, "DELETE", "/list") == (405, "")
    assert call(fake, "DELETE", "/upstream/host1") == (200, "success")
    assert call(fake, "DELETE", "/upstream/host1") == (404, "")
    assert call(fake, "POST", "/upstream/v6", "server [::1]:18101;") == (200, "success")


@pytest.mark.parametrize("body", ["", "garbage", "server 127.0.0.1:0;", "server 127.0.0.1:70000;",
                                  "server nowhere.example.internal:80;", "server 127.0.0.1:18101 foo=1;",
                                  "server 127.0.0.1:18101 weight=0;", "server 127.0.0.1:18101; } server { listen 9999;"])
def test_bad_bodies_get_tengines_500(fake, body):
    assert call(fake, "POST", "/upstream/x", body) == (500, ADD_FAILED.decode())
    assert fake.upstreams == {}


def test_bad_names_are_accepted_as_tengine_does(fake):
    assert call(fake, "POST", "/upstream/bad%20name", "server 127.0.0.1:1;") == (200, "success")
    assert call(fake, "POST", "/upstream/x%7By", "server 127.0.0.1:1;") == (200, "success")
    assert set(fake.upstreams) == {"bad name", "x{y"}


def test_busy_and_the_request_record(fake):
    fake.busy(2)
    assert [call(fake, "GET", "/list")[0] for _attempt in range(3)] == [409, 409, 204]
    assert [(r.method, r.path) for r in fake.requests] == [("GET", "/list")] * 3
