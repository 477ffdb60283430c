"""The health index: check states of any checks list (plugins/module_utils/_consul_instance.py)."""

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_instance import health_index


def check(node, check_id, status, service_id="", service=""):
    return {"Node": node, "CheckID": check_id, "Status": status, "ServiceID": service_id, "ServiceName": service,
            "Output": "out"}


def test_health_index_groups_by_instance_with_node_checks_under_an_empty_service_id():
    answer = [check("n1", "serfHealth", "critical"), check("n1", "service:a1", "warning", "a1", "a"),
              check("n1", "extra", "critical", "a1", "a"), check("n2", "service:c1", "passing", "c1", "c"),
              "not a check"]
    owners = {}
    assert health_index(answer, owners=owners) == {("n1", ""): (("serfHealth", "critical"),),
                                                   ("n1", "a1"): (("extra", "critical"), ("service:a1", "warning")),
                                                   ("n2", "c1"): (("service:c1", "passing"),)}
    assert owners == {("n1", ""): "", ("n1", "a1"): "a", ("n2", "c1"): "c"}


def test_health_index_ignores_output_and_order():
    old = [check("n1", "x", "critical", "a1", "a"), check("n1", "service:a1", "warning", "a1", "a")]
    same = [dict(old[1], Output="other"), old[0]]
    assert health_index(old) == health_index(same)
    assert health_index([]) == {} and health_index(None) == {}


def test_a_health_entry_s_checks_are_keyed_by_the_entry():
    """A /v1/health/service entry's Checks: those with a ServiceID are the instance's, the others its node's."""
    checks = [{"CheckID": "serfHealth", "Status": "passing", "ServiceID": ""},
              {"CheckID": "service:a1", "Status": "critical", "ServiceID": "a1"}]
    index = health_index(checks, ("n1", "a1"))
    assert index == {("n1", ""): (("serfHealth", "passing"),), ("n1", "a1"): (("service:a1", "critical"),)}
    health_index([{"CheckID": "disk", "Status": "warning"}], ("n1", "a2"), index)
    assert index[("n1", "")] == (("disk", "warning"), ("serfHealth", "passing"))
