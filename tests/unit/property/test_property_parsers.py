"""Properties of the ``/detail`` parser and the upstream-file parser (hypothesis; sizes in conftest.py).

* ``/detail`` text written as Tengine writes it (any upstream order, any server order) parses back
  to the same servers; any other text raises ValidationError or parses, never anything else;
* the upstream file: render -> parse is the identity; every rendered file parses and has only the
  shapes nginx reads (comment, ``upstream NAME {``, ``    statement;``, ``}``, blank); any text
  either raises ValidationError or parses to upstreams that validate again and render to a file
  that parses to the same upstreams.
"""

from __future__ import annotations

import re

from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import (
    detail_line, parse_detail, parse_detail_line, parse_list, parse_upstream)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_problem
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from tests.unit.property.strategies import (
    count, detail_texts, file_texts, has_forbidden, servers, upstream_sets, valid_names)

LINE_SHAPES = re.compile(r"(#[^\n]*|upstream [A-Za-z0-9_][A-Za-z0-9_.-]* \{|    [^\n{}#;'\\]*;|\}|)\Z")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


@st.composite
def detail_answers(draw):
    """({name: [Server]}, the /detail text Tengine would print for it, upstreams and servers shuffled)."""
    names = draw(st.lists(valid_names, max_size=6, unique=True))
    state = {name: draw(st.lists(servers, max_size=5, unique_by=lambda s: s.address)) for name in names}
    order = draw(st.permutations(names))
    blocks = []
    for name in order:
        lines = [name] + [detail_line(server) for server in draw(st.permutations(state[name]))]
        blocks.append("\n".join(lines) + "\n")
    return state, "\n".join(blocks) + ("\n" if blocks else "")


@given(detail_answers())
def test_detail_text_parses_back_to_the_same_servers(answer):
    count("/detail: parse(render) == state")
    state, text = answer
    parsed = parse_detail(text)
    assert set(parsed) == set(state)
    for name, expected in state.items():
        assert sorted(parsed[name], key=str) == sorted(expected, key=str)
    assert parse_list("\n".join(state) + "\n") == list(state)


@given(detail_texts)
def test_any_detail_text_parses_or_raises_validation_error(text):
    count("/detail: any text")
    try:
        parsed = parse_detail(text)
    except ValidationError:
        return
    for name, found in parsed.items():
        assert name == name.strip() and name and not name.startswith("server ")
        for server in found:
            assert parse_detail_line(detail_line(server)) == server


@given(st.lists(servers, max_size=5))
def test_get_upstream_answer_parses_to_its_addresses(found):
    count("/upstream/NAME: addresses")
    text = "".join(f"server {server.address}\n" for server in found)
    assert parse_upstream(text) == [(server.host, server.port) for server in found]


@given(upstream_sets)
def test_render_then_parse_is_the_identity(upstream_list):
    count("file: parse(render) identity")
    text = _upstream_file.render(upstream_list)
    assert _upstream_file.parse(text) == {upstream.name: upstream for upstream in upstream_list}
    assert _upstream_file.render(_upstream_file.parse(text).values()) == text


@given(upstream_sets)
def test_a_rendered_file_has_only_the_shapes_nginx_reads(upstream_list):
    count("file: rendered shapes")
    text = _upstream_file.render(upstream_list)
    for line in text.split("\n"):
        assert LINE_SHAPES.match(QUOTED.sub('""', line)), line   # braces and ; only outside quoted strings
        assert not any(ord(char) < 32 and char != "\t" or ord(char) == 127 for char in line)


@given(file_texts)
def test_any_file_text_raises_validation_error_or_parses_to_valid_upstreams(text):
    count("file: any text")
    try:
        parsed = _upstream_file.parse(text)
    except ValidationError as exc:
        assert "line " in str(exc)
        return
    for name, upstream in parsed.items():
        assert name_problem(name) is None and upstream.name == name
        assert build_upstream(name, [s.spec() for s in upstream.servers], [d.text for d in upstream.directives]) \
            == upstream
        for server in upstream.servers:
            assert not has_forbidden(server.spec())
    assert _upstream_file.parse(_upstream_file.render(parsed.values())) == parsed


@given(upstream_sets, st.integers(0, 10 ** 6), st.sampled_from(["", "}", "{", ";", "#", '"', "upstream x {", "\x00"]))
def test_a_damaged_rendered_file_is_refused_or_still_valid(upstream_list, where, junk):
    count("file: damaged render")
    text = _upstream_file.render(upstream_list)
    at = where % (len(text) + 1)
    damaged = text[:at] + junk + text[at:]
    try:
        parsed = _upstream_file.parse(damaged)
    except ValidationError:
        return
    assert _upstream_file.parse(_upstream_file.render(parsed.values())) == parsed
