"""The zero-instance policy and the mass-removal hold (plugins/watcher/safety.py)."""

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import safety


def ups(name, *servers):
    return build_upstream(name, list(servers))


APPLIED = {
    "A": ups("A", "10.0.0.1:80", "10.0.0.2:80"),
    "B": ups("B", "10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"),
}


def test_keep_policy_keeps_last_servers_of_an_empty_service():
    desired = {"B": APPLIED["B"]}
    result = safety.apply_zero_instance_policy(desired, {"A"}, APPLIED, "keep")
    assert result["A"] == APPLIED["A"]


def test_down_policy_marks_every_last_server_down():
    result = safety.apply_zero_instance_policy({}, {"A"}, APPLIED, "down")
    assert [s.down for s in result["A"].servers] == [True, True]
    assert [s.address for s in result["A"].servers] == [s.address for s in APPLIED["A"].servers]


def test_delete_policy_drops_the_upstream():
    assert "A" not in safety.apply_zero_instance_policy({}, {"A"}, APPLIED, "delete")


def test_empty_name_never_applied_before_creates_nothing():
    assert safety.apply_zero_instance_policy({}, {"New"}, APPLIED, "keep") == {}


def test_removals_count_addresses_not_parameter_changes():
    desired = {"A": ups("A", "10.0.0.1:80 weight=5", "10.0.0.2:80"), "B": ups("B", "10.0.1.1:80")}
    removal = safety.removals(APPLIED, desired)
    assert removal.by_upstream == {"B": ["10.0.1.2:80", "10.0.1.3:80"]}
    assert (removal.removed, removal.total) == (2, 5)


def test_an_empty_answer_is_a_full_removal_and_exceeds_the_guard():
    removal = safety.removals(APPLIED, {})
    assert removal.removed == 5 and removal.share == 1.0
    assert safety.exceeds_guard(removal, 0.5, 3)


def test_guard_needs_both_share_and_minimum():
    removal = safety.removals(APPLIED, {"A": APPLIED["A"], "B": ups("B", "10.0.1.1:80")})
    assert removal.removed == 2 and removal.share == 0.4
    assert not safety.exceeds_guard(removal, 0.5, 1)
    assert safety.exceeds_guard(removal, 0.3, 1)
    assert not safety.exceeds_guard(removal, 0.3, 3)


def test_hold_puts_removed_servers_back_but_lets_additions_through():
    desired = {"A": ups("A", "10.0.0.9:80"), "C": ups("C", "10.0.2.1:80")}
    removal = safety.removals(APPLIED, desired)
    held = safety.hold_removals(APPLIED, desired, removal)
    assert held["B"] == APPLIED["B"]
    assert {s.address for s in held["A"].servers} == {"10.0.0.1:80", "10.0.0.2:80", "10.0.0.9:80"}
    assert held["C"] == desired["C"]
