"""The plan: what to POST, what to DELETE, what the file holds; idempotence rules."""

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._plan import (
    CREATE, DELETE, NONE, UPDATE, desired_upstream, expand_servers, interface_text, plan, servers_equal)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server, parse_server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream


def servers(*specs):
    return [parse_server(spec) for spec in specs]


def resolver(table):
    asked = []

    def resolve(host):
        asked.append(host)
        return table.get(host, [])

    resolve.asked = asked
    return resolve


WEB = build_upstream("Web", ["10.0.0.1:80", "10.0.0.2:80 weight=2"])


def by_name(result):
    return {change.name: change for change in result.changes}


# -- servers_equal ---------------------------------------------------------------------------------------------
def test_equal_in_any_order():
    assert servers_equal(WEB, servers("10.0.0.2:80 weight=2", "10.0.0.1:80"))
    assert servers_equal(WEB.servers, servers("10.0.0.1:80", "10.0.0.2:80 weight=2"))


@pytest.mark.parametrize("current", [
    None,                                                                   # the interface does not hold it
    [],
    servers("10.0.0.1:80"),                                                 # one missing
    servers("10.0.0.1:80", "10.0.0.2:80"),                                  # weight differs
    servers("10.0.0.1:80", "10.0.0.2:80 weight=2", "10.0.0.3:80"),          # one more
    servers("10.0.0.1:80", "10.0.0.2:80 weight=2 down"),                    # down
    servers("10.0.0.1:80", "10.0.0.1:80", "10.0.0.2:80 weight=2"),          # the same server twice
])
def test_not_equal(current):
    assert not servers_equal(WEB, current)


def test_host_names_compare_by_their_addresses():
    up = build_upstream("Web", ["app.example.internal:8080 weight=2", "10.0.0.9:80"])
    detail = servers("10.0.0.1:8080 weight=2", "10.0.0.9:80")           # Tengine prints the first address
    resolve = resolver({"app.example.internal": ["10.0.0.1", "2001:db8::1"]})
    assert servers_equal(up, detail, resolve)
    assert not servers_equal(up, detail)                                    # without resolution: not equal
    assert not servers_equal(up, detail[1:], resolve)                       # the name's server missing
    assert not servers_equal(up, servers("[2001:db8::1]:8080 weight=2", "10.0.0.9:80"), resolve)  # not the first
    assert servers_equal(up, servers("app.example.internal:8080 weight=2", "10.0.0.9:80"), resolve)  # shown as a name


def test_unresolvable_name_is_never_equal():
    up = build_upstream("Web", ["nowhere.example.internal:80"])
    assert not servers_equal(up, [], resolver({}))
    assert expand_servers(up.servers, resolver({})) == []


def test_expand_resolves_only_names():
    resolve = resolver({"a.example": ["10.0.0.1"]})
    assert expand_servers(servers("a.example:80 backup", "10.0.0.2:80", "[::1]:80"), resolve) == \
        servers("10.0.0.1:80 backup", "10.0.0.2:80", "[::1]:80")
    assert resolve.asked == ["a.example"]


# -- desired_upstream ----------------------------------------------------------------------------------------
def test_directives_not_given_keep_the_files():
    in_file = {"Web": build_upstream("Web", ["10.0.0.1:80"], ["keepalive 8", "check interval=3000 type=tcp"])}
    kept = desired_upstream("Web", ["10.0.0.5:80"], None, in_file)
    assert kept.directive_lines() == ["keepalive 8;", "check interval=3000 type=tcp;"]
    assert desired_upstream("Web", ["10.0.0.5:80"], [], in_file).directives == ()
    assert desired_upstream("Web", ["10.0.0.5:80"], ["least_conn"], in_file).directive_lines() == ["least_conn;"]
    assert desired_upstream("Other", ["10.0.0.5:80"], None, in_file).directives == ()
    assert desired_upstream("Web", ["10.0.0.5:80"], None, None).directives == ()


# -- plan ------------------------------------------------------------------------------------------------------
def test_create_update_none():
    other = build_upstream("Other", ["10.0.0.7:80"])
    same = build_upstream("Same", ["10.0.0.8:80"])
    detail = {"Other": servers("10.0.0.6:80"), "Same": servers("10.0.0.8:80"), "Foreign": servers("10.0.0.9:80")}
    result = plan({"Web": WEB, "Other": other, "Same": same}, detail)
    changes = by_name(result)
    assert (changes["Web"].action, changes["Other"].action, changes["Same"].action) == (CREATE, UPDATE, NONE)
    assert result.posts == [other, WEB]                 # sorted by name
    assert result.deletes == []
    assert changes["Other"].added == tuple(servers("10.0.0.7:80"))
    assert changes["Other"].removed == tuple(servers("10.0.0.6:80"))
    assert changes["Web"].before is None and changes["Web"].removed == ()
    assert result.file_after is None and not result.file_changed
    assert "Foreign" not in changes                     # never touched


def test_equal_is_not_changed_force_is():
    detail = {"Web": servers("10.0.0.2:80 weight=2", "10.0.0.1:80")}
    assert not plan({"Web": WEB}, detail).changed
    forced = plan({"Web": WEB}, detail, force=True)
    assert forced.posts == [WEB] and forced.changes[0].action == UPDATE


def test_absent():
    detail = {"Web": servers("10.0.0.1:80")}
    result = plan({"Web": None, "Gone": None}, detail)
    changes = by_name(result)
    assert result.deletes == ["Web"]
    assert changes["Web"].action == DELETE and changes["Web"].removed == tuple(servers("10.0.0.1:80"))
    assert changes["Gone"].action == NONE and not changes["Gone"].delete
    assert not plan({"Gone": None}, detail).changed


def test_file_is_compared_and_updated():
    in_file = {"Web": WEB, "Keep": build_upstream("Keep", ["10.0.0.3:80"])}
    detail = {"Web": list(WEB.servers), "Keep": servers("10.0.0.3:80")}
    assert not plan({"Web": WEB}, detail, in_file).changed
    # the interface lost it (a reload): POST again, the file is already right
    lost = plan({"Web": WEB}, {"Keep": servers("10.0.0.3:80")}, in_file)
    assert lost.posts == [WEB] and not lost.file_changed
    # the interface is right but the file is not: the file changes, nothing is sent
    stale_file = plan({"Web": WEB}, detail, {"Keep": in_file["Keep"]})
    assert stale_file.posts == [] and stale_file.file_changed
    assert stale_file.file_after == in_file and stale_file.changes[0].action == UPDATE


def test_directives_changed_in_the_file_are_posted_even_with_equal_servers():
    with_keepalive = build_upstream("Web", ["10.0.0.1:80", "10.0.0.2:80 weight=2"], ["keepalive 8"])
    detail = {"Web": list(WEB.servers)}
    result = plan({"Web": with_keepalive}, detail, {"Web": WEB})
    assert result.posts == [with_keepalive] and result.file_changed
    # the same directives in another order: equal
    two = build_upstream("Web", ["10.0.0.1:80"], ["keepalive 8", "keepalive_timeout 30s"])
    swapped = build_upstream("Web", ["10.0.0.1:80"], ["keepalive_timeout 30s", "keepalive 8"])
    assert plan({"Web": two}, {"Web": servers("10.0.0.1:80")}, {"Web": swapped}).posts == []
    # without a file, directives cannot be compared (/detail does not show them): not sent unless forced
    assert plan({"Web": with_keepalive}, detail).posts == []


def test_exclusive_removes_only_what_the_file_holds():
    in_file = {"Web": WEB, "Old": build_upstream("Old", ["10.0.0.4:80"]), "OldGone": build_upstream("OldGone", ["10.0.0.5:80"])}
    detail = {"Web": list(WEB.servers), "Old": servers("10.0.0.4:80"), "Foreign": servers("10.0.0.9:80")}
    result = plan({"Web": WEB}, detail, in_file, exclusive=True)
    changes = by_name(result)
    assert result.deletes == ["Old"]                        # OldGone is only in the file: no request
    assert changes["OldGone"].action == DELETE and not changes["OldGone"].delete
    assert "Foreign" not in changes
    assert result.file_after == {"Web": WEB}
    # without exclusive nothing is removed
    assert plan({"Web": WEB}, detail, in_file).deletes == []


def test_exclusive_without_a_file_removes_nothing():
    assert plan({"Web": WEB}, {"Foreign": servers("10.0.0.9:80")}, None, exclusive=True).deletes == []
    assert plan({"Web": WEB}, {"Foreign": servers("10.0.0.9:80")}, {}, exclusive=True).deletes == []


def test_unknown_interface_state_sends_everything():
    result = plan({"Web": WEB, "Gone": None}, None, {"Gone": build_upstream("Gone", ["10.0.0.4:80"])})
    assert result.posts == [WEB] and result.deletes == ["Gone"]
    assert result.file_after == {"Web": WEB}


def test_resolution_in_the_plan():
    up = build_upstream("Web", ["app.example.internal:8080"])
    resolve = resolver({"app.example.internal": ["10.0.0.1"]})
    assert not plan({"Web": up}, {"Web": servers("10.0.0.1:8080")}, resolve=resolve).changed
    changed = plan({"Web": up}, {"Web": servers("10.0.0.2:8080")}, resolve=resolve).changes[0]
    assert changed.added == tuple(servers("10.0.0.1:8080")) and changed.removed == tuple(servers("10.0.0.2:8080"))


def test_results_and_diff_text():
    detail = {"Web": servers("10.0.0.1:80"), "Gone": servers("10.0.0.3:80 backup")}
    result = plan({"Web": WEB, "Gone": None, "Same": None}, detail)
    changes = by_name(result)
    assert changes["Web"].to_result() == {
        "action": UPDATE, "request": "POST", "before": ["10.0.0.1:80"], "after": ["10.0.0.1:80", "10.0.0.2:80 weight=2"],
        "directives": [], "added": ["10.0.0.2:80 weight=2"], "removed": []}
    assert changes["Gone"].to_result()["request"] == "DELETE" and changes["Gone"].to_result()["after"] is None
    before = interface_text(result.changes, "before")
    after = interface_text(result.changes, "after")
    assert before == ("upstream Gone\n    server 10.0.0.3:80 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=1 down=0\n"
                      "upstream Web\n    server 10.0.0.1:80 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0\n")
    assert after == ("upstream Web\n    server 10.0.0.1:80 weight=1 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0\n"
                     "    server 10.0.0.2:80 weight=2 max_conns=0 max_fails=1 fail_timeout=10 backup=0 down=0\n")


def test_server_equality_is_by_value():
    assert Server("10.0.0.1", 80) == parse_server("10.0.0.1:80 weight=1 fail_timeout=10s")


# -- unsent names and the exclusive scope (issue 26) ---------------------------------------------------------
def test_an_unsent_name_is_posted_whatever_detail_shows():
    """A run that wrote the file and stopped before its POST: /detail shows the servers, not the directives."""
    keep = build_upstream("Web", ["10.0.0.1:80", "10.0.0.2:80 weight=2"], ["keepalive 16"])
    detail = {"Web": list(keep.servers), "Gone": servers("10.0.0.9:80")}
    result = by_name(plan({}, detail, {"Web": keep}, unsent={"Web", "Gone", "Never"}))
    assert result["Web"].post and result["Web"].after == keep                 # the file's block, sent again
    assert result["Gone"].delete                                              # the file no longer holds it
    assert result["Never"].action == NONE and not result["Never"].delete      # neither file nor interface: done
    assert not by_name(plan({}, detail, {"Web": keep}))                        # nothing recorded: nothing to do


def test_exclusive_removes_only_what_owns_accepts():
    files = {"web": WEB, "web_b": WEB, "api": WEB}
    detail = {name: list(WEB.servers) for name in files}
    result = plan({"web": WEB}, detail, files, exclusive=True, owns=lambda name: "web" in name)
    assert set(by_name(result)) == {"web", "web_b"} and result.deletes == ["web_b"] and "api" in result.file_after
