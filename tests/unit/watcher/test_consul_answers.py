"""How the watcher keeps Consul's answers small (plugins/watcher/consul_answers.py)."""

from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_answers import index_checks


def check(node, check_id, status, service_id="", service=""):
    return {"Node": node, "CheckID": check_id, "Status": status, "ServiceID": service_id, "ServiceName": service,
            "Output": "out"}


def test_index_checks_groups_by_instance_with_node_checks_under_an_empty_service_id():
    answer = [check("n1", "serfHealth", "critical"), check("n1", "service:a1", "warning", "a1", "a"),
              check("n1", "extra", "critical", "a1", "a"), check("n2", "service:c1", "passing", "c1", "c"),
              "not a check"]
    states = index_checks(answer).states
    assert states == {("n1", ""): ("", (("serfHealth", "critical"),)),
                      ("n1", "a1"): ("a", (("extra", "critical"), ("service:a1", "warning"))),
                      ("n2", "c1"): ("c", (("service:c1", "passing"),))}


def test_index_checks_ignores_output_and_order():
    old = [check("n1", "x", "critical", "a1", "a"), check("n1", "service:a1", "warning", "a1", "a")]
    same = [dict(old[1], Output="other"), old[0]]
    assert index_checks(old).states == index_checks(same).states
    assert index_checks([]).states == {} and index_checks(None).states == {}
