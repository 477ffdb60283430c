"""Properties of the parse at the edge (plugins/module_utils/_consul_instance.py), whatever Consul answers.

Any ``/v1/health/service/NAME`` answer and any ``/v1/catalog/node-services/NODE`` answer, of the real
shape with any field replaced by any JSON value, or any JSON value at all, becomes Instances (each
either mappable: a valid upstream name, a server that passed the server rules, string check pairs; or
carrying the reason it is skipped) and never raises. The two endpoints describe the same
registration the same way (the watcher compares what one gives with what the other gave), an
Instance kept from an earlier parse is what the registration parses to, and the mapping of any parsed
answer raises nothing.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_instance import (
    Instance, parse_health_entries, parse_node_services, parse_registration)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_mapping import MappingOptions, map_instances
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_problem
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server, parse_server
from tests.unit.property.strategies import count, json_values
from tests.unit.property.test_property_consul import assert_valid_mapping, health_entries

tag_keys = st.sampled_from(["gray", "canary"])


def assert_instance(instance, service):
    assert isinstance(instance, Instance) and instance.service == service
    assert isinstance(instance.node, str) and isinstance(instance.id, str)
    for pairs in (instance.checks, instance.node_checks):
        assert all(isinstance(check_id, str) and isinstance(status, str) for check_id, status in pairs)
        assert list(pairs) == sorted(set(pairs))
    assert instance.status in ("passing", "warning", "critical")
    assert all(isinstance(tag, str) for tag in instance.tags)
    if instance.skip is None:
        assert not instance.malformed
        assert name_problem(instance.upstream) is None
        assert instance.upstream == service or instance.upstream.startswith(service + "_")
        assert isinstance(instance.server, Server) and 1 <= instance.server.port <= 65535
        assert parse_server(instance.server.spec()) == instance.server   # it passed the server rules
    else:
        assert isinstance(instance.skip, str) and instance.skip and instance.server is None
        assert "\n" not in instance.skip   # hostile values are shown quoted (repr), not as they are


health_answers = st.one_of(st.lists(st.one_of(health_entries(), json_values), max_size=5), json_values)


@given(st.sampled_from(["Web", "a b", ""]), health_answers, tag_keys)
@example("Web", [{"Node": {"Node": "n1"}, "Service": {"ID": "i", "Port": 80, "Meta": {"dyups_weight": []}},
                  "Checks": None}], "gray")
@example("Web", [{"Node": {"Node": 5, "Address": "10.0.0.1"}, "Service": {"ID": None, "Port": 80, "Meta": {1: "x"}},
                  "Checks": [{"Status": {}, "ServiceID": []}]}], "gray")
def test_any_health_answer_becomes_instances_or_skips_and_maps_without_raising(service, answer, tag_key):
    count("instance parse: any health answer")
    instances = parse_health_entries(service, answer, tag_key)
    if not isinstance(answer, list):
        assert instances is None
    else:
        assert len(instances) == len(answer)
        for instance in instances:
            assert_instance(instance, service)
    result = map_instances(service, instances, MappingOptions(tag_key=tag_key))
    assert_valid_mapping(result)
    assert all(isinstance(item["why"], str) and item["why"] for item in result.skipped)


@st.composite
def node_answers(draw):
    """A /v1/catalog/node-services/NODE answer: the entries' Node and Services, any part possibly wrong."""
    entries = draw(st.lists(health_entries(), max_size=4))
    node = draw(st.one_of(st.just({"Node": "n1", "Address": "10.0.0.9"}), json_values))
    services = [dict(entry["Service"], Service=draw(st.sampled_from(["Web", "Api"])))
                if isinstance(entry.get("Service"), dict) else entry.get("Service") for entry in entries]
    answer = {"Node": node, "Services": services}
    if draw(st.booleans()):
        answer[draw(st.sampled_from(["Node", "Services"]))] = draw(json_values)
    return draw(st.one_of(st.just(answer), json_values))


@given(node_answers(), tag_keys)
def test_any_node_services_answer_becomes_instances_or_skips(answer, tag_key):
    count("instance parse: any node-services answer")
    for name, _raw_id, instance in parse_node_services(answer, tag_key):
        assert isinstance(name, str)
        assert_instance(instance, name)
        assert not instance.checks and not instance.node_checks


@given(health_entries(), tag_keys)
def test_both_endpoints_describe_one_registration_alike(entry, tag_key):
    """What the watcher compares: the Instance from a health entry, its checks set aside, equals the
    Instance from the node-services answer that lists the same Node and Service."""
    count("instance parse: both endpoints alike")
    node_data, service_data = entry.get("Node"), entry.get("Service")
    if not isinstance(node_data, dict) or not isinstance(service_data, dict) or "Service" not in service_data:
        return
    name = service_data["Service"]
    if not isinstance(name, str):
        return
    from_health, = parse_health_entries(name, [dict(entry, Checks=[])], tag_key, keep_meta=False)
    from_node = [instance for _name, _id, instance in
                 parse_node_services({"Node": node_data, "Services": [service_data]}, tag_key, keep_meta=False)]
    assert from_node == [from_health]


@given(health_entries(), health_entries(), st.booleans(), tag_keys)
@example({"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": {"ID": "i", "Service": "web", "Port": 80}},
         {"Node": {"Node": "n1", "Address": "10.0.0.1"},
          "Service": {"ID": "i", "Service": "web", "Port": 80, "Meta": {"dyups_weight": "2"}}}, False, "gray")
@example({"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": {"ID": "i", "Service": "web", "Port": 80}},
         {"Node": {"Node": "n1", "Address": "10.0.0.1"}, "Service": {"ID": "i", "Service": "web", "Port": True}},
         False, "gray")
@example({"Node": {"Node": "n1", "Address": "h.example"}, "Service": {"ID": "i", "Service": "web", "Port": 80}},
         {"Node": {"Node": "n1", "Address": "H.example"}, "Service": {"ID": "i", "Service": "web", "Port": 80}},
         False, "gray")
def test_a_kept_instance_is_what_the_registration_parses_to(first, second, same_registration, tag_key):
    """The watcher's read by node passes the Instance it holds for a registration (``reuse``), and
    gets it back when nothing the mapping reads changed: with or without it, the parse is the same."""
    count("instance parse: a kept Instance")
    if same_registration:
        second = first
    node_data, service_data = second.get("Node"), second.get("Service")
    name = service_data.get("Service") if isinstance(service_data, dict) else None
    if not isinstance(name, str):
        return
    kept = parse_registration(name, first.get("Node"), first.get("Service"), None, tag_key, keep_meta=False)
    if isinstance(node_data, dict) and isinstance(service_data, dict):  # the node and ID the watcher looks it up by
        kept = kept._replace(node=str(node_data.get("Node", "")), id=str(service_data.get("ID", "")))
    parsed = parse_registration(name, node_data, service_data, None, tag_key, keep_meta=False, reuse=kept)
    assert parsed == parse_registration(name, node_data, service_data, None, tag_key, keep_meta=False)
