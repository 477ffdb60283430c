"""The mapping from Consul health entries to upstreams (plugins/module_utils/_consul_mapping.py).

Entries are built in the JSON shape of /v1/health/service/NAME as Consul 1.8.7 answers it (see
the integration tests for the same rules against a real agent).
"""

import json
import random

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_mapping import (
    MappingOptions, map_services, merge_results)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_problem
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import parse_server


def entry(service, sid, port, tags=(), meta=None, address="10.0.0.1", node="n1", node_address="10.9.0.1",
          status="passing", node_status="passing", checks=None):
    if checks is None:
        checks = [
            {"Node": node, "CheckID": "serfHealth", "Status": node_status, "ServiceID": "", "ServiceName": ""},
            {"Node": node, "CheckID": f"service:{sid}", "Status": status, "ServiceID": sid, "ServiceName": service},
        ]
    return {
        "Node": {"Node": node, "Address": node_address},
        "Service": {"ID": sid, "Service": service, "Address": address, "Port": port, "Tags": list(tags),
                    "Meta": dict(meta or {})},
        "Checks": checks,
    }


def servers(result, name):
    return result.upstream_specs()[name]["servers"]


def whys(result):
    return [item["why"] for item in result.skipped]


# -- names and tags ---------------------------------------------------------------------------------------
def test_untagged_instances_go_to_the_service_upstream():
    result = map_services({"web": [entry("web", "w1", 80), entry("web", "w2", 81, address="10.0.0.2")]})
    assert list(result.upstreams) == ["web"]
    assert servers(result, "web") == ["10.0.0.1:80", "10.0.0.2:81"]
    assert result.empty == () and result.skipped == []


def test_gray_tag_selects_the_suffixed_upstream_and_default_means_none():
    result = map_services({"Webapp": [
        entry("Webapp", "a", 80, tags=["gray=b", "other"]),
        entry("Webapp", "b", 81, tags=["gray=default"]),
        entry("Webapp", "c", 82, tags=["v1"]),
    ]})
    assert servers(result, "Webapp_b") == ["10.0.0.1:80"]
    assert servers(result, "Webapp") == ["10.0.0.1:81", "10.0.0.1:82"]
    upstream_of = {item["id"]: item["upstream"] for item in result.instances}
    assert upstream_of == {"a": "Webapp_b", "b": "Webapp", "c": "Webapp"}


def test_tag_key_is_configurable():
    options = MappingOptions(tag_key="canary")
    result = map_services({"api": [entry("api", "a", 80, tags=["canary=x", "gray=y"])]}, options)
    assert list(result.upstreams) == ["api_x"]


def test_the_same_tag_twice_is_one_tag():
    result = map_services({"api": [entry("api", "a", 80, tags=["gray=x", "gray=x"])]})
    assert list(result.upstreams) == ["api_x"]


@pytest.mark.parametrize("tags, reason", [
    (["gray=a", "gray=b"], "2 different gray= tags"),
    (["gray="], "has no value"),
    (["gray=x y"], "contains whitespace"),
    (["gray=x{y"], "contains '{'"),
    (["gray=../../etc"], "contains '/'"),
    (["gray=" + "x" * 200], "over the limit"),
    (["gray=a;b"], "contains ';'"),
])
def test_bad_tags_skip_the_instance_with_a_reason(tags, reason):
    result = map_services({"api": [entry("api", "bad", 80, tags=tags), entry("api", "good", 81)]})
    assert servers(result, "api") == ["10.0.0.1:81"]
    assert len(result.skipped) == 1
    assert reason in result.skipped[0]["why"]
    assert result.skipped[0]["id"] == "bad"
    assert "bad" not in [item["id"] for item in result.instances]


@pytest.mark.parametrize("name", ["a b", "x{y", "a/b", "-lead", "", "é", "a\nb", "n" * 129, "web;rm"])
def test_a_service_whose_name_breaks_the_rule_is_skipped_whole(name):
    result = map_services({name: [entry(name, "1", 80), entry(name, "2", 81)], "ok": [entry("ok", "3", 82)]})
    assert list(result.upstreams) == ["ok"]
    assert [item["service"] for item in result.skipped] == [name]
    assert "2 instance(s) skipped" in result.skipped[0]["why"]


def test_hostile_values_are_quoted_in_reasons_so_they_cannot_forge_log_lines():
    result = map_services({"api": [entry("api", "x\nFAKE LOG LINE", 80, tags=["gray=a\nb"])]})
    item = result.skipped[0]
    assert "\n" not in item["what"] and "\n" not in item["why"]


# -- addresses, ports, Meta ----------------------------------------------------------------------------------
def test_service_address_wins_else_node_address():
    result = map_services({"web": [
        entry("web", "own", 80, address="10.0.0.5", node_address="10.9.0.1"),
        entry("web", "node", 81, address="", node="n2", node_address="10.9.0.2"),
    ]})
    assert servers(result, "web") == ["10.0.0.5:80", "10.9.0.2:81"]


@pytest.mark.parametrize("address, node_address, port, reason", [
    ("", "", 80, "neither Service.Address nor Node.Address"),
    ("10.0.0.1", "x", 0, "port 0 is not 1-65535"),
    ("10.0.0.1", "x", 70000, "is not 1-65535"),
    ("10.0.0.1", "x", "80", "is not 1-65535"),
    ("10.0.0.1 weight=9", "x", 80, "server rules"),
    ("256.1.1.1", "x", 80, "server rules"),
    ("unix:/tmp/s", "x", 80, "server rules"),
    ("evil;host", "x", 80, "server rules"),
])
def test_unusable_addresses_and_ports_are_skipped(address, node_address, port, reason):
    result = map_services({"web": [entry("web", "w", port, address=address, node_address=node_address)]})
    assert result.upstreams == {} and result.empty == ()
    assert reason in result.skipped[0]["why"]


def test_ipv6_and_host_name_addresses():
    health = {"web": [entry("web", "a", 80, address="2001:DB8::1"), entry("web", "b", 81, address="App.Example")]}
    options = MappingOptions(policy={"allow_host_names": True})  # host names are refused by default (_server_policy)
    assert sorted(servers(map_services(health, options), "web")) == ["[2001:db8::1]:80", "app.example:81"]
    assert servers(map_services(health), "web") == ["[2001:db8::1]:80"]


def test_meta_parameters_become_server_parameters():
    meta = {"dyups_weight": "3", "dyups_max_fails": "5", "dyups_fail_timeout": "30s", "dyups_max_conns": "100",
            "dyups_backup": "true", "other": "ignored", "version": "1.2"}
    result = map_services({"web": [entry("web", "a", 80, meta=meta), entry("web", "b", 81, meta={"dyups_down": "1"})]})
    assert servers(result, "web") == ["10.0.0.1:81 down",
                                      "10.0.0.1:80 weight=3 max_fails=5 fail_timeout=30s max_conns=100 backup"]
    server = result.upstreams["web"].servers[-1]
    assert (server.weight, server.max_fails, server.fail_timeout, server.backup) == (3, 5, 30, True)
    assert result.instances[0]["meta"]["version"] == "1.2"


@pytest.mark.parametrize("meta, reason", [
    ({"dyups_weight": "abc"}, "weight='abc' is not a whole number"),
    ({"dyups_weight": "0"}, "weight=0 is outside"),
    ({"dyups_weight": ""}, "weight=''"),
    ({"dyups_weight": "2 backup"}, "weight"),
    ({"dyups_fail_timeout": "500ms"}, "milliseconds"),
    ({"dyups_backup": "maybe"}, "backup must be true or false"),
    ({"dyups_max_fails": "-1"}, "max_fails"),
    ({"dyups_bakup": "true"}, "unknown Meta key 'dyups_bakup'"),
    ({"dyups_weight": 3}, "is not a string"),
])
def test_bad_meta_skips_the_instance(meta, reason):
    result = map_services({"web": [entry("web", "bad", 80, meta=meta), entry("web", "good", 81)]})
    assert servers(result, "web") == ["10.0.0.1:81"]
    assert len(result.skipped) == 1 and reason in result.skipped[0]["why"], result.skipped


def test_the_same_address_twice_keeps_one_and_prefers_a_serving_instance():
    result = map_services({"web": [
        entry("web", "a-sick", 80, node="n1", status="critical"),
        entry("web", "b-well", 80, node="n2"),
        entry("web", "c-dup", 80, node="n3"),
    ]})
    assert servers(result, "web") == ["10.0.0.1:80"]
    assert [item["id"] for item in result.instances] == ["b-well"]
    assert sorted(item["id"] for item in result.skipped) == ["a-sick", "c-dup"]


def test_a_second_entry_of_one_node_and_id_is_skipped_with_the_reason():
    """Consul keeps one registration per node and ID; an answer that repeats one (a broken proxy, a fuzzer)
    keeps the first: the health index has one entry per node and ID, so the second could have no checks of
    its own."""
    result = map_services({"web": [entry("web", "w1", 80), entry("web", "w1", 81, status="critical")]})
    assert servers(result, "web") == ["10.0.0.1:80"]
    assert [(item["id"], item["why"]) for item in result.skipped] == [
        ("w1", "another entry of the same answer has its node and ID (Consul keeps one registration per node and ID)")]


# -- health ----------------------------------------------------------------------------------------------
def test_only_passing_instances_serve_and_the_status_is_the_worst_check():
    result = map_services({"web": [
        entry("web", "ok", 80),
        entry("web", "warn", 81, status="warning"),
        entry("web", "crit", 82, status="critical"),
        entry("web", "nodecrit", 83, node="n2", node_status="critical"),
        entry("web", "nochecks", 84, checks=[]),
        entry("web", "odd", 85, status="maintenance-ish"),
    ]})
    assert servers(result, "web") == ["10.0.0.1:80", "10.0.0.1:84"]
    status = {item["id"]: (item["status"], item["serving"]) for item in result.instances}
    assert status == {"ok": ("passing", True), "warn": ("warning", False), "crit": ("critical", False),
                      "nodecrit": ("critical", False), "nochecks": ("passing", True), "odd": ("critical", False)}


def test_include_warning_counts_warning_as_passing():
    health = {"web": [entry("web", "ok", 80), entry("web", "warn", 81, status="warning"),
                      entry("web", "crit", 82, status="critical")]}
    for options in (MappingOptions(include_warning=True), MappingOptions(passing_states=("passing", "warning"))):
        assert servers(map_services(health, options), "web") == ["10.0.0.1:80", "10.0.0.1:81"]


def test_an_upstream_without_a_serving_instance_is_empty_not_absent_silently():
    result = map_services({"web": [entry("web", "a", 80, status="critical"), entry("web", "b", 81, tags=["gray=x"])]})
    assert list(result.upstreams) == ["web_x"]
    assert result.empty == ("web",)
    assert result.sources == {"web": "web", "web_x": "web"}


def test_a_service_with_no_entries_is_reported():
    result = map_services({"web": []})
    assert result.upstreams == {} and result.empty == ()
    assert "node:read" in result.skipped[0]["why"]


# -- filters -----------------------------------------------------------------------------------------------
def test_exclude_defaults_to_consul_and_include_and_prefix_filter():
    health = {name: [entry(name, name + "1", 80)] for name in ("consul", "webA", "webB", "api")}
    assert list(map_services(health).upstreams) == ["api", "webA", "webB"]
    assert list(map_services(health, MappingOptions(include=["api", "webA"])).upstreams) == ["api", "webA"]
    assert list(map_services(health, MappingOptions(prefix="web")).upstreams) == ["webA", "webB"]
    assert list(map_services(health, MappingOptions(exclude=["webB"])).upstreams) == ["api", "consul", "webA"]
    assert list(map_services(health, MappingOptions(prefix="web", exclude=["webA"])).upstreams) == ["webB"]


@pytest.mark.parametrize("kwargs", [{"tag_key": ""}, {"tag_key": "a=b"}, {"tag_key": " gray"},
                                    {"passing_states": ()}, {"passing_states": ("ok",)}, {"include": [1]}])
def test_bad_options_are_refused(kwargs):
    with pytest.raises(ValueError):
        MappingOptions(**kwargs)


# -- collisions, merging, determinism -------------------------------------------------------------------------
def test_two_services_claiming_one_upstream_the_one_named_like_it_wins():
    health = {"a_b": [entry("a_b", "plain", 80)], "a": [entry("a", "tagged", 81, tags=["gray=b"])]}
    result = map_services(health)
    assert servers(result, "a_b") == ["10.0.0.1:80"]
    assert [item["id"] for item in result.skipped] == ["tagged"]
    assert "already comes from service 'a_b'" in result.skipped[0]["why"]


def test_two_tagged_services_claiming_one_upstream_the_first_name_wins():
    health = {"x_y": [entry("x_y", "one", 80, tags=["gray=z"])], "x": [entry("x", "two", 81, tags=["gray=y_z"])]}
    result = map_services(health)
    assert result.sources == {"x_y_z": "x"}
    assert servers(result, "x_y_z") == ["10.0.0.1:81"]


def test_per_service_results_merge_to_the_same_answer():
    health = {
        "a_b": [entry("a_b", "p", 80, status="critical")],
        "a": [entry("a", "t", 81, tags=["gray=b"]), entry("a", "u", 82)],
        "c": [entry("c", "x", 83, meta={"dyups_weight": "nope"})],
    }
    whole = map_services(health)
    parts = merge_results(map_services({name: entries}) for name, entries in health.items())
    assert parts.to_dict() == whole.to_dict()
    assert whole.empty == ("a_b",) and list(whole.upstreams) == ["a"]


def test_output_is_deterministic_whatever_the_input_order():
    entries = [entry("web", f"w{i}", 8000 + i, tags=[f"gray={'b' if i % 3 else 'default'}"], node=f"n{i % 4}",
                     status="critical" if i % 5 == 0 else "passing") for i in range(40)]
    first = json.dumps(map_services({"web": entries}).to_dict(), sort_keys=False)
    for seed in range(5):
        shuffled = list(entries)
        random.Random(seed).shuffle(shuffled)
        assert json.dumps(map_services({"web": shuffled}).to_dict(), sort_keys=False) == first


def test_hostile_entries_never_raise_and_never_pass_invalid_data():
    rng = random.Random(7)
    junk = [None, 1, "x", [], {}, {"a": 1}, "gray=x y", "", "\x00", "10.0.0.1", -1, True, 3.5, {"Node": None}]
    health = {}
    for round_ in range(300):
        service = rng.choice(["web", "a b", "ok", "x{y"])
        item = entry(service, rng.choice(["i1", "i2", junk[rng.randrange(len(junk))]]), rng.choice([80, 0, "80", None]),
                     tags=rng.choice([["gray=b"], ["gray=x y"], [None], "gray=b", ["gray="]]),
                     meta=rng.choice([None, {"dyups_weight": rng.choice(["2", "abc", "", None])}, {"dyups_x": "1"}]),
                     address=rng.choice(["10.0.0.1", "", None, "a b", "::1", 5]))
        if round_ % 7 == 0:
            item = rng.choice(junk)
        if round_ % 11 == 0 and isinstance(item, dict):
            item["Checks"] = rng.choice([None, "x", [None], [{"Status": None}]])
        health.setdefault(service, []).append(item)
    result = map_services(health)
    assert result.upstreams and len(result.skipped) > 50  # both paths were exercised
    for name, upstream in result.upstreams.items():
        assert name_problem(name) is None
        for server in upstream.servers:
            assert parse_server(server.spec()) == server
    json.dumps(result.to_dict())


def test_directives_are_attached_by_the_mapping_and_an_upstream_that_breaks_a_rule_with_them_is_skipped():
    options = MappingOptions(directives=["keepalive 16"], upstream_directives={"web_h": ["ip_hash"]})
    result = map_services({"web": [entry("web", "a", 80), entry("web", "b", 81, tags=["gray=h"]),
                                   entry("web", "c", 82, tags=["gray=h"], meta={"dyups_backup": "true"})]},
                          options)
    assert result.upstream_specs() == {"web": {"servers": ["10.0.0.1:80"], "directives": ["keepalive 16"]}}
    assert [(item["what"], item["why"]) for item in result.skipped] == [
        ("upstream 'web_h'", "it breaks a rule: invalid upstream 'web_h': nginx's ip_hash balancing does not support "
                             "backup servers")]
    assert [item["upstream"] for item in result.instances] == ["web"]


def test_directives_that_break_the_directive_rules_are_refused_with_the_options():
    with pytest.raises(ValueError, match="unknown upstream directive"):
        MappingOptions(directives=["proxy_pass x"])


def test_what_an_exclusive_sync_with_filters_may_remove():
    """Issue 26 finding 8: the names a service the filters select can map to (SERVICE or SERVICE_TAG)."""
    web = MappingOptions(prefix="web")
    assert [name for name in ("web", "web_b", "webapp_gray", "api", "api_web", "consul") if web.may_map_to(name)] \
        == ["web", "web_b", "webapp_gray"]
    only = MappingOptions(include=["Webapp"])
    assert only.may_map_to("Webapp") and only.may_map_to("Webapp_b") and not only.may_map_to("Web")
    assert not MappingOptions().may_map_to("consul") and MappingOptions().may_map_to("anything")


def test_a_merged_mapping_keeps_a_one_upstream_service_in_a_few_bytes_and_answers_the_same():
    """A watcher keeps one mapping per service (MergedMapping.results): with its one-name ``upstreams`` and
    ``sources`` as dicts that was 440 bytes a service by getsizeof (issue 22); kept compact it
    is under 200, and the merged answers are those of plain dicts (a two-upstream service too)."""
    import sys  # pylint: disable=import-outside-toplevel
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _consul_mapping as mapping  # pylint: disable=import-outside-toplevel
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_instance import parse_health_answer  # pylint: disable=import-outside-toplevel
    options = MappingOptions()
    health = {f"svc{i}": [entry(f"svc{i}", f"svc{i}-a", 8000 + i)] for i in range(50)}
    health["gray"] = [entry("gray", "g1", 9001), entry("gray", "g2", 9002, tags=["gray=b"])]
    merged = mapping.MergedMapping()
    for name, entries in health.items():
        registrations, checks = parse_health_answer(name, entries, options.tag_key)
        merged.put(name, mapping.map_instances(name, registrations, checks, options, report=False))
    kept = merged.results["svc7"]
    assert dict(kept.sources) == {"svc7": "svc7"} and list(kept.upstreams) == ["svc7"]
    assert sys.getsizeof(kept) + sys.getsizeof(kept.sources) + sys.getsizeof(kept.upstreams) < 200
    assert dict(merged.results["gray"].sources) == {"gray": "gray", "gray_b": "gray"}
    whole = map_services(health, options)
    assert merged.result().upstream_specs() == whole.upstream_specs() and sorted(merged.upstreams) == sorted(whole.upstreams)
    merged.put("svc7", None)
    assert "svc7" not in merged.upstreams and "svc7" not in merged.results
