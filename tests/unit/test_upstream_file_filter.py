"""The upstream_file filter (the role's initial upstream file): the collection's rules and renderer."""

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.swallowkeeper.dyups.plugins.filter.upstream_file import FilterModule, upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file


def test_registered_under_its_name():
    assert FilterModule().filters()["upstream_file"] is upstream_file


def test_renders_what_the_parser_reads_back():
    text = upstream_file({"web": ["10.0.0.2:8080 weight=2", "10.0.0.1:8080"],
                          "api": {"servers": [{"host": "10.0.0.3", "port": 9000, "backup": True}, "10.0.0.4:9000"],
                                  "directives": ["keepalive 16"]}})
    parsed = _upstream_file.parse(text)
    assert sorted(parsed) == ["api", "web"]
    assert sorted(server.spec() for server in parsed["web"].servers) == ["10.0.0.1:8080", "10.0.0.2:8080 weight=2"]
    assert parsed["api"].directive_lines() == ["keepalive 16;"]
    assert text.index("upstream api {") < text.index("upstream web {")


def test_header_lines_become_comments_and_an_empty_mapping_is_a_valid_file():
    text = upstream_file({}, header="written once\nthen owned by the watcher")
    assert text.startswith("# written once\n# then owned by the watcher\n")
    assert _upstream_file.parse(text) == {}


def test_default_header_is_the_collections():
    assert upstream_file({}).startswith(_upstream_file.HEADER)


@pytest.mark.parametrize("upstreams, words", [
    ({"x{y": ["10.0.0.1:80"]}, ["x{y", "'{'"]),
    ({"bad name": ["10.0.0.1:80"]}, ["bad name", "whitespace"]),
    ({"web": ["10.0.0.1:0"]}, ["10.0.0.1:0", "port"]),
    ({"web": ["10.0.0.1:70000"]}, ["70000"]),
    ({"web": ["10.0.0.1:80 weight=0"]}, ["weight"]),
    ({"web": ["10.0.0.1:80 foo=1"]}, ["foo"]),
    ({"web": {"servers": ["10.0.0.1:80"], "nonsense": 1}}, ["nonsense"]),
])
def test_refuses_what_nginx_would_refuse(upstreams, words):
    with pytest.raises(AnsibleFilterError) as info:
        upstream_file(upstreams)
    for word in words:
        assert word in str(info.value)


def test_refuses_a_non_mapping():
    with pytest.raises(AnsibleFilterError, match="mapping"):
        upstream_file(["web"])


def test_role_variables_take_address_and_port_dicts():
    """tengine_dyups_initial_upstreams with Consul's server shape (address + port); a port given twice
    with different values is refused."""
    text = upstream_file({"web": [{"address": "10.0.0.1", "port": 8080, "weight": 2},
                                  {"address": "2001:db8::1", "port": 8080}]})
    parsed = _upstream_file.parse(text)
    assert sorted(server.spec() for server in parsed["web"].servers) == [
        "10.0.0.1:8080 weight=2", "[2001:db8::1]:8080"]
    with pytest.raises(AnsibleFilterError, match="the port is given twice with different values"):
        upstream_file({"web": [{"address": "10.0.0.1:80", "port": 8080}]})
