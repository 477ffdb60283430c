"""The server spec: the shared vectors, dict input, /detail lines, and messages."""

import json
from pathlib import Path

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import detail_line, parse_detail_line
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import (
    Server, parse_address, parse_fail_timeout, parse_server, parse_servers, sort_servers)

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "servers.json").read_text())["cases"]


@pytest.mark.parametrize("case", VECTORS, ids=lambda case: case["input"][:40] or "empty")
def test_vector(case):
    if case["valid"]:
        server = parse_server(case["input"])
        assert server.spec() == case["spec"]
        assert detail_line(server) == case["detail"]
        assert parse_server(server.spec()) == server           # the spec parses back to the same server
        if server.kind != "hostname":
            assert parse_detail_line(case["detail"]) == server  # and so does its /detail line
    else:
        with pytest.raises(ValidationError) as caught:
            parse_server(case["input"])
        assert caught.value.value == case["input"]
        assert caught.value.rule_id == case["rule"]
        if "problem" in case:
            assert str(caught.value) == case["problem"]


@pytest.mark.parametrize("text", ["10.0.0.1:0", "10.0.0.1:70000", "10.0.0.1:80 weight=0", "10.0.0.1:80 foo=1"])
def test_what_tengine_answers_500_to_is_refused_here(text):
    with pytest.raises(ValidationError) as caught:
        parse_server(text)
    assert text in str(caught.value)


@pytest.mark.parametrize("data, spec", [
    ({"address": "10.0.0.1:8080"}, "10.0.0.1:8080"),
    ({"host": "10.0.0.1", "port": 8080, "weight": 2}, "10.0.0.1:8080 weight=2"),
    ({"host": "10.0.0.1", "port": "8080", "weight": "2"}, "10.0.0.1:8080 weight=2"),
    ({"host": "[::1]", "port": 8080}, "[::1]:8080"),
    ({"host": "::1", "port": 8080}, "[::1]:8080"),
    ({"host": "App.Example.internal"}, "app.example.internal:80"),
    ({"address": "10.0.0.1:80", "backup": True, "down": "yes"}, "10.0.0.1:80 backup down"),
    ({"address": "10.0.0.1:80", "backup": False, "fail_timeout": "2m", "max_fails": 0}, "10.0.0.1:80 max_fails=0 fail_timeout=120s"),
    ({"address": "10.0.0.1:80", "weight": None}, "10.0.0.1:80"),
    # address + port, the shape Consul uses (issue 10)
    ({"address": "10.0.0.1", "port": 8080}, "10.0.0.1:8080"),
    ({"address": "10.0.0.1", "port": "8080", "weight": 2}, "10.0.0.1:8080 weight=2"),
    ({"address": "10.0.0.1:8080", "port": 8080}, "10.0.0.1:8080"),
    ({"address": "10.0.0.1:8080", "port": "8080"}, "10.0.0.1:8080"),
    ({"address": "App.Example.internal", "port": 81}, "app.example.internal:81"),
    ({"address": "2001:DB8::1", "port": 8080}, "[2001:db8::1]:8080"),
    ({"address": "[2001:db8::1]", "port": 8080}, "[2001:db8::1]:8080"),
    ({"address": "[2001:db8::1]:8080", "port": 8080}, "[2001:db8::1]:8080"),
    ({"address": "::ffff:10.0.0.1", "port": 81}, "[::ffff:10.0.0.1]:81"),
    ({"address": "10.0.0.1", "port": None}, "10.0.0.1:80"),
    ({"address": "10.0.0.1", "host": "10.0.0.1", "port": 8080}, "10.0.0.1:8080"),
])
def test_dict_input(data, spec):
    assert parse_server(data).spec() == spec


@pytest.mark.parametrize("data, problem", [
    ({"address": "10.0.0.1:80", "foo": 1}, "unknown key(s) foo"),
    ({"port": 80}, "a server needs address ('host:port') or host"),
    ({"address": "10.0.0.1:80", "port": 81}, "the port is given twice with different values"),
    ({"address": "10.0.0.1:8080", "port": "80"}, "the port is given twice with different values"),
    ({"address": "[2001:db8::1]:80", "port": 81}, "the port is given twice with different values"),
    ({"address": "10.0.0.1", "port": 0}, "the port 0 is outside 1-65535"),
    ({"address": "10.0.0.1", "port": 70000}, "the port 70000 is outside 1-65535"),
    ({"address": "10.0.0.1", "port": "http"}, "is not a number 1-65535"),
    ({"address": "2001:db8::1"}, "an IPv6 address must be written in brackets"),
    ({"address": "fe80::1%eth0", "port": 80}, "IPv6 zone indexes"),
    ({"address": "10.0.0.1:80", "port": 80, "host": "10.0.0.2"}, "host and address disagree"),
    ({"address": "10.0.0.1:80", "host": "10.0.0.2"}, "host and address disagree"),
    ({"address": "10.0.0.1:80", "weight": 0}, "weight=0 is outside 1-10000"),
    ({"address": "10.0.0.1:80", "weight": True}, "weight must be a whole number"),
    ({"address": "10.0.0.1:80", "backup": "maybe"}, "backup must be true or false"),
    ({"host": 10}, "host must be a string"),
    ({"host": "10.0.0.1", "port": 0}, "the port 0 is outside 1-65535"),
    ({"host": "10.0.0.1", "port": True}, "the port must be a number"),
])
def test_dict_errors(data, problem):
    with pytest.raises(ValidationError) as caught:
        parse_server(data)
    assert problem in str(caught.value)


def test_address_and_port_round_trip_through_to_dict():
    """to_dict() gives address (with port), host and port: it parses back to the same server."""
    server = parse_server({"address": "2001:db8::1", "port": 8080, "weight": 2})
    assert parse_server(server.to_dict()) == server


@pytest.mark.parametrize("server", [
    Server("10.0.0.1", 8080),
    Server("10.0.0.1", 8080, weight=3, max_fails=0, fail_timeout=0, max_conns=7, backup=True, down=True),
    Server("2001:db8::1", 443, weight=2),
    Server("app.example.internal", 80),
])
def test_to_dict_parses_back(server):
    # dyups_upstream_info returns to_dict(); dyups_upstream must take it back unchanged.
    assert parse_server(server.to_dict()) == server


def test_fail_timeout_units():
    assert [parse_fail_timeout(v) for v in (10, "10", "10s", "2m", "1h", "1d", "3000ms")] == [10, 10, 10, 120, 3600, 86400, 3]
    for bad in ("500ms", "1m30s", "x", True, 1.5, -1, "86401"):
        with pytest.raises(ValidationError):
            parse_fail_timeout(bad)


def test_same_address_twice_is_refused():
    with pytest.raises(ValidationError) as caught:
        parse_servers(["10.0.0.1:80", "10.0.0.1:80 weight=2"])
    assert "the same address is listed twice" in str(caught.value)


def test_single_string_or_dict_is_one_server():
    assert parse_servers("10.0.0.1:80") == [Server("10.0.0.1", 80)]
    assert parse_servers({"address": "10.0.0.1:80"}) == [Server("10.0.0.1", 80)]


def test_other_types_are_refused():
    for value in (None, 5, ["10.0.0.1:80"]):
        with pytest.raises(ValidationError) as caught:
            parse_server(value)
        assert "a server is a string" in str(caught.value)


def test_sort_backup_last_then_by_address():
    servers = [parse_server(s) for s in ("10.0.0.2:80 backup", "10.0.0.9:80", "10.0.0.1:80", "[::1]:80")]
    assert [s.spec() for s in sort_servers(servers)] == ["10.0.0.1:80", "10.0.0.9:80", "[::1]:80", "10.0.0.2:80 backup"]


def test_parse_address_forms():
    assert parse_address("[2001:DB8::1]:80") == ("2001:db8::1", 80)
    assert parse_address("host.example") == ("host.example", 80)
    assert parse_address("Host.Example.:81") == ("host.example", 81)
