"""An upstream: the validation gate, its statements and the bulk form."""

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream, upstream_from_spec


def test_statements_balancing_first_and_to_dict():
    upstream = build_upstream("Web", ["10.0.0.2:80 weight=2", "10.0.0.1:80", "10.0.0.3:80 backup"],
                              ["keepalive 16", "least_conn"])
    assert upstream.statements() == [
        "least_conn;", "server 10.0.0.1:80;", "server 10.0.0.2:80 weight=2;", "server 10.0.0.3:80 backup;",
        "keepalive 16;"]
    assert upstream.to_dict() == {"name": "Web", "servers": ["10.0.0.1:80", "10.0.0.2:80 weight=2", "10.0.0.3:80 backup"],
                                  "directives": ["least_conn", "keepalive 16"]}


def test_equal_whatever_the_input_order():
    assert build_upstream("a", ["10.0.0.2:80", "10.0.0.1:80"]) == build_upstream("a", ["10.0.0.1:80", "10.0.0.2:80"])


@pytest.mark.parametrize("name, servers, directives, problem", [
    ("bad name", ["10.0.0.1:80"], None, "invalid upstream name 'bad name'"),
    ("x{y", ["10.0.0.1:80"], None, "invalid upstream name 'x{y'"),
    ("a", [], None, "has no servers"),
    ("a", None, None, "has no servers"),
    ("a", ["10.0.0.1:70000"], None, "the port 70000 is outside 1-65535"),
    ("a", ["10.0.0.1:80", "10.0.0.2:80 backup"], ["ip_hash"], "ip_hash balancing does not support backup servers"),
    ("a", ["10.0.0.1:80 backup"], None, "every server is a backup server"),
    ("a", ["10.0.0.1:80 backup", "10.0.0.2:80 backup down"], None, "every server is a backup server"),
    ("a", ["10.0.0.1:80"], ["hash $remote_addr"], "unknown upstream directive 'hash'"),
    ("a", ["10.0.0.1:80"], ["listen 80"], "unknown upstream directive 'listen'"),
])
def test_gate(name, servers, directives, problem):
    with pytest.raises(ValidationError) as caught:
        build_upstream(name, servers, directives)
    assert problem in str(caught.value)


def test_bulk_forms():
    as_list = upstream_from_spec("a", ["10.0.0.1:80"])
    as_dict = upstream_from_spec("a", {"servers": ["10.0.0.1:80"], "directives": ["keepalive 4"]})
    assert as_list.servers == as_dict.servers and as_dict.directive_lines() == ["keepalive 4;"]
    with pytest.raises(ValidationError) as caught:
        upstream_from_spec("a", {"servers": ["10.0.0.1:80"], "weights": []})
    assert "unknown key(s) weights" in str(caught.value)
