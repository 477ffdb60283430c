"""Properties of the parse at the edge (plugins/module_utils/_consul_instance.py), whatever Consul answers.

Any ``/v1/health/service/NAME`` answer and any ``/v1/catalog/node-services/NODE`` answer, of the real
shape with any field replaced by any JSON value, or any JSON value at all, becomes the two stores:
registrations (Instances, each either mappable: a valid upstream name, a server that passed the
server rules; or carrying the reason it is skipped) and a health index of string check pairs, and
never raises. The two endpoints describe the same registration the same way (the watcher compares
what one gives with what the other gave), and the mapping of any parsed answer raises nothing.
"""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_instance import (
    Instance, health_index, parse_health_answer, parse_node_services)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_mapping import MappingOptions, map_instances
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_problem
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server, parse_server
from tests.unit.property.strategies import count, json_values
from tests.unit.property.test_property_consul import assert_valid_mapping, health_entries

tag_keys = st.sampled_from(["gray", "canary"])


def assert_instance(instance, service):
    assert isinstance(instance, Instance) and instance.service == service
    assert isinstance(instance.node, str) and isinstance(instance.id, str)
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
@example("Web", [{"Node": {}, "Service": {"ID": "i", "Address": "10.0.0.1", "Port": 80}, "Checks": []}], "gray")
@example("Web", [{"Node": {"Node": "n1"}, "Service": {"Address": "10.0.0.1", "Port": 80},
                  "Checks": [{"Node": "n1", "ServiceID": "", "Status": "critical"}]}], "gray")
def test_any_health_answer_becomes_instances_or_skips_and_maps_without_raising(service, answer, tag_key):
    count("instance parse: any health answer")
    stores = parse_health_answer(service, answer, tag_key)
    registrations, health = stores or (None, {})
    assert_health_index(health)
    if not isinstance(answer, list):
        assert stores is None
    else:
        instances = list(registrations.values())
        # an entry of another service (Consul matches the name ignoring case) is left out, any other kept
        own = [entry for entry in answer if not (isinstance(entry, dict) and isinstance(entry.get("Service"), dict)
                                                 and isinstance(entry["Service"].get("Service"), str)
                                                 and entry["Service"]["Service"] != service)]
        assert len(instances) == len(own)
        for key, instance in registrations.items():
            assert_instance(instance, service)
            assert key == (instance.node, instance.id) or (not key[0] and (instance.skip or instance.malformed))
            if key[0]:  # the answer says what checks it has, none included
                assert key in health and (key[0], "") in health
    result = map_instances(service, registrations, health, MappingOptions(tag_key=tag_key))
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
    for name, instance in parse_node_services(answer, tag_key):
        assert isinstance(name, str)
        assert_instance(instance, name)


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
    registrations, _health = parse_health_answer(name, [entry], tag_key, keep_meta=False)
    from_node = [instance for _name, instance in
                 parse_node_services({"Node": node_data, "Services": [service_data]}, tag_key, keep_meta=False)]
    from_health = list(registrations.values())
    if from_health[0].skip == "its Checks are not a list of objects":  # the one rule only a health entry can break
        return
    assert from_node == from_health


def assert_health_index(health):
    for key, pairs in health.items():
        assert isinstance(key, tuple) and len(key) == 2 and all(isinstance(part, str) for part in key)
        assert all(isinstance(check_id, str) and isinstance(status, str) for check_id, status in pairs)
        assert list(pairs) == sorted(set(pairs))


checks_lists = st.one_of(json_values, st.lists(st.one_of(json_values, st.fixed_dictionaries(
    {"Node": st.one_of(st.sampled_from(["n1", "n2"]), json_values), "CheckID": st.sampled_from(["a", "b", ""]),
     "Status": st.one_of(st.sampled_from(["passing", "warning", "critical"]), json_values),
     "ServiceID": st.one_of(st.sampled_from(["i1", ""]), json_values)})), max_size=6))


@given(checks_lists, st.one_of(st.none(), st.just(("n1", "i1"))))
def test_any_checks_list_gives_one_health_index(checks, instance):
    """health_index, the one builder of check states: any list (or anything else) gives string keys and
    sorted pairs without repeats; the order of the checks does not matter; adding to an index gives
    the union."""
    count("instance parse: health index of any checks")
    index = health_index(checks, instance)
    assert_health_index(index)
    if isinstance(checks, list):
        assert health_index(list(reversed(checks)), instance) == index
        twice = health_index(checks, instance, health_index(checks, instance))
        assert twice == index
    if instance is not None:
        assert set(index) <= {instance, ("n1", "")}
