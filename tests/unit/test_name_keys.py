"""Names compared as the data plane compares them (``_names.name_key``), in every place that compares them.

Tengine (ngx_strncasecmp) and the Lua flavor (string.lower) hold ``Web`` and ``web`` as one upstream.
Issue 26 finding 5 (the module), issue 18 finding 5 (the watcher's case swap), issue 19 finding 3.
"""

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_mapping import map_services
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _names
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._plan import CREATE, UPDATE, plan
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import parse_server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from tests.unit.test_consul_mapping import entry


def test_the_key_folds_ascii_letters_only():
    assert _names.name_key("WebApp_1.x-Y") == "webapp_1.x-y"
    assert _names.name_key("\u212aelvin") == "\u212aelvin"          # str.lower() would give "kelvin"
    assert _names.name_key("\u00c9Web") == "\u00c9web"


def test_same_names_finds_the_interfaces_spelling_under_the_callers():
    held = {"Web": 1, "api": 2}
    assert _names.same_names(held, ["web"]) == {"web": 1, "api": 2}
    assert _names.same_names({"Web": 1, "web": 3}, ["web"]) == {"web": 3}   # the exact spelling wins
    assert _names.same_names(None, ["web"]) is None


def test_two_spellings_of_one_name_are_refused():
    with pytest.raises(ValidationError) as caught:
        _names.unique_names(["Web", "api", "web"], "upstreams")
    assert caught.value.rule_id == "name.case_clash" and "'Web' and 'web'" in str(caught.value)


def test_creating_web_where_the_interface_and_the_file_hold_web_is_an_update_of_it():
    """Issue 26 finding 5: the report said action=create, before=null, and the file got a second block."""
    theirs = build_upstream("Web", ["10.0.0.9:80"])
    mine = build_upstream("web", ["10.0.0.1:80"])
    result = plan({"web": mine}, {"Web": [parse_server("10.0.0.9:80")]}, {"Web": theirs})
    change = result.changes[0]
    assert (change.name, change.action, change.post) == ("web", UPDATE, True)
    assert change.to_result()["before"] == ["10.0.0.9:80"] and change.to_result()["removed"] == ["10.0.0.9:80"]
    assert list(result.file_after) == ["web"] and result.file_after["web"] is mine
    _upstream_file.render(result.file_after.values())          # one block: no case clash raised


def test_a_name_only_in_another_spelling_is_not_created_again_and_absent_deletes_it():
    result = plan({"web": build_upstream("web", ["10.0.0.1:80"])}, {"WEB": [parse_server("10.0.0.1:80")]})
    assert result.changes[0].action != CREATE and not result.changed
    gone = plan({"web": None}, {"WEB": [parse_server("10.0.0.1:80")]})
    assert gone.deletes == ["web"]


def test_exclusive_keeps_the_files_other_spelling_of_a_wanted_name():
    held = {"Web": build_upstream("Web", ["10.0.0.1:80"])}
    result = plan({"web": build_upstream("web", ["10.0.0.1:80"])}, {"Web": [parse_server("10.0.0.1:80")]},
                  held, exclusive=True)
    assert result.deletes == [] and result.posts == [] and list(result.file_after) == ["web"]


def test_the_file_parser_and_the_rendered_file_use_the_key():
    with pytest.raises(ValidationError) as caught:
        _upstream_file.parse("upstream Web { server 10.0.0.1:80; }\nupstream wEB { server 10.0.0.2:80; }\n")
    assert caught.value.rule_id == "file.defined_twice"
    rendered = _upstream_file.RenderedFile([build_upstream("Web", ["10.0.0.1:80"])])
    rendered.update({"Web": None, "web": build_upstream("web", ["10.0.0.2:80"])})   # a swap: allowed
    assert list(_upstream_file.parse(rendered.text())) == ["web"]


def test_the_mapping_keeps_one_of_two_spellings_by_a_stable_rule_and_says_why():
    health = {"web": [entry("web", "w1", 80)], "Web": [entry("Web", "W1", 81, address="10.0.0.2")]}
    result = map_services(health)
    assert list(result.upstreams) == ["Web"]                  # alphabetically first: "W" < "w"
    assert [(item["service"], item["id"]) for item in result.skipped] == [("web", "w1")]
    assert "already comes from service 'Web'" in result.skipped[0]["why"]
    del health["Web"]
    assert list(map_services(health).upstreams) == ["web"]
