"""Properties of the name, server and directive rules (hypothesis; sizes in conftest.py).

* a name is accepted exactly when the documented rule says so, and an accepted name holds nothing
  that could break ``upstream NAME {`` or ``/upstream/NAME``;
* every valid server survives its three written forms (spec, dict, ``/detail`` line) unchanged;
* any input either raises ValidationError (never another exception) or gives a value that
  validates again to itself and holds no ``; { }``, quote or control character outside quotes.
"""

from __future__ import annotations

import re
from urllib.parse import quote

from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._directives import parse_directive
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import detail_line, parse_detail_line, post_body, upstream_path
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import (
    MAX_NAME_LENGTH, name_problem, validate_name)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import parse_server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from tests.unit.property.strategies import (
    count, directives, has_forbidden, json_values, name_candidates, server_texts, servers, upstreams,
    valid_names)

RULE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,%d}" % (MAX_NAME_LENGTH - 1))


@given(name_candidates)
def test_a_name_is_accepted_exactly_when_the_rule_says_so(name):
    count("names: accepted iff the rule")
    expected = RULE.fullmatch(name) is not None
    assert (name_problem(name) is None) is expected
    if expected:
        assert validate_name(name) == name
        assert not has_forbidden(name) and not any(char.isspace() for char in name)
        assert upstream_path(name) == "/upstream/" + quote(name, safe="")
    else:
        try:
            validate_name(name)
        except ValidationError as exc:
            assert exc.rule and "upstream name" in str(exc)
        else:
            raise AssertionError(f"{name!r} was accepted")


@given(st.one_of(json_values, st.binary(max_size=20)))
def test_a_name_that_is_not_a_string_is_refused(value):
    count("names: non-strings refused")
    if isinstance(value, str):
        return
    assert name_problem(value) is not None


@given(servers)
def test_a_valid_server_reads_back_from_each_written_form(server):
    count("servers: spec / dict / detail round trip")
    assert parse_server(server.spec()) == server
    assert parse_server(server.to_dict()) == server
    assert parse_server(f"  {server.spec()}\t") == server
    assert parse_detail_line(detail_line(server)) == server
    assert server.directive() == f"server {server.spec()};"
    assert not has_forbidden(server.spec())


@given(server_texts)
def test_any_server_text_is_refused_or_gives_a_server_that_validates_again(text):
    count("servers: any text")
    try:
        server = parse_server(text)
    except ValidationError:
        return
    assert parse_server(server.spec()) == server
    assert not has_forbidden(server.spec())
    assert server.directive().count(";") == 1


@given(st.dictionaries(st.sampled_from(["address", "host", "port", "weight", "max_fails", "fail_timeout",
                                        "max_conns", "backup", "down", "other"]),
                       st.one_of(json_values, server_texts, st.integers(-10, 70000)), max_size=6))
def test_any_server_dict_is_refused_or_gives_a_server_that_validates_again(data):
    count("servers: any dict")
    try:
        server = parse_server(data)
    except ValidationError:
        return
    assert parse_server(server.spec()) == server
    assert not has_forbidden(server.spec())


@given(directives)
def test_a_valid_directive_reads_back_from_its_line(text):
    count("directives: valid round trip")
    directive = parse_directive(text)
    assert parse_directive(directive.line()) == directive
    assert parse_directive(directive.text) == directive


@given(st.one_of(st.text(max_size=80), directives.map(lambda text: text + " ;}{"),
                 st.lists(st.sampled_from(["keepalive", "check", "hash", "ip_hash", " ", "1", "0", "=", ";", "{",
                                           "}", '"', "\\", "interval=1", "type=http", "\n", "#", "'", "x"]),
                          max_size=10).map("".join)))
def test_any_directive_text_is_refused_or_safe(text):
    count("directives: any text")
    try:
        directive = parse_directive(text)
    except ValidationError:
        return
    outside_quotes = re.sub(r'"(?:[^"\\]|\\.)*"', '""', directive.line())
    assert not any(char in outside_quotes[:-1] for char in ";{}#'\\")
    assert not any(ord(char) < 32 and char != "\t" or ord(char) == 127 for char in directive.line())
    assert parse_directive(directive.line()) == directive


@given(upstreams())
def test_an_upstream_body_holds_exactly_its_statements(upstream):
    count("upstreams: body")
    body = post_body(upstream)
    assert body.splitlines() == list(upstream.statements())
    assert sum(1 for line in body.splitlines() if line.startswith("server ")) == len(upstream.servers)
    again = build_upstream(upstream.name, [server.spec() for server in upstream.servers],
                           [directive.text for directive in upstream.directives])
    assert again == upstream


@given(valid_names, st.lists(server_texts, max_size=4), st.lists(st.text(max_size=20), max_size=2))
def test_build_upstream_refuses_or_builds_something_that_validates_again(name, server_list, directive_list):
    count("upstreams: any parts")
    try:
        upstream = build_upstream(name, server_list, directive_list)
    except ValidationError:
        return
    assert build_upstream(upstream.name, [s.spec() for s in upstream.servers],
                          [d.text for d in upstream.directives]) == upstream
