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


def test_earlier_removals_of_the_window_count_with_the_change():
    removal = safety.removals(APPLIED, {"A": APPLIED["A"], "B": ups("B", "10.0.1.1:80", "10.0.1.2:80")})
    assert removal.removed == 1 and not safety.exceeds_guard(removal, 0.5, 3)
    widened = safety.Removal(removal.by_upstream, removal.removed, total=6, earlier=3)
    assert widened.counted == 4 and safety.exceeds_guard(widened, 0.5, 3)
    assert not safety.exceeds_guard(safety.Removal({}, 0, total=6, earlier=5), 0.5, 3), "nothing to hold"


def test_the_window_counts_what_the_count_lost_since_its_largest_and_forgets_what_left_it():
    window = safety.RemovalWindow(60, total=10)
    window.applied(8, now=0)
    window.applied(7, now=30)
    change = safety.Removal({"A": ["x"]}, 1, total=7)
    assert (window.widen(change, now=31).earlier, window.widen(change, now=31).total) == (3, 10)
    window.applied(9, now=40)   # two servers came back (or two new ones replaced them)
    change = safety.Removal({"A": ["x"]}, 1, total=9)
    assert (window.widen(change, now=41).earlier, window.widen(change, now=41).total) == (1, 10)
    # at 61 the window starts after 0: the count at its start is 8, and 9 is the largest since
    assert (window.widen(change, now=61).earlier, window.widen(change, now=61).total) == (0, 9)
    window.restart(9)
    assert window.widen(change, now=62).earlier == 0
    assert safety.RemovalWindow(0, total=10).widen(change, now=0) is change
