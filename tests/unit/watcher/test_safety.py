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


def test_a_held_server_that_the_new_directives_refuse_keeps_the_upstream_as_applied():
    """A backup server held while the upstream turns to ip_hash (which refuses backup servers): putting it
    back beside the new directives would make an upstream build_upstream refuses (Tengine answers 500);
    the whole upstream stays as applied until the hold ends."""
    applied = {"A": ups("A", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80 backup")}
    desired = {"A": build_upstream("A", ["10.0.0.1:80"], ["ip_hash"])}
    held = safety.hold_removals(applied, desired, safety.removals(applied, desired))
    assert held["A"] == applied["A"]


# -- the hold's state machine alone (RemovalHold; the Syncer drives it in tests/unit/watcher/test_syncer*.py)
TEN = [f"10.0.3.{i}:80" for i in range(1, 11)]


def hold(seconds=60, window=0):
    return safety.RemovalHold(safety.GuardSettings(share=0.5, minimum=3, hold_seconds=seconds, window=window), 10)


def test_the_hold_counts_only_time_between_two_evaluations_with_consul_answering():
    machine, applied, desired = hold(), {"A": ups("A", *TEN)}, {"A": ups("A", *TEN[:2])}
    assert machine.evaluate(applied, desired, 10, now=0)["A"] == applied["A"] and machine.active
    machine.evaluate(applied, desired, 10, now=30)
    machine.evaluate(applied, desired, 10, now=100, confirmed=False)
    machine.evaluate(applied, desired, 10, now=200)
    assert machine.confirmed == 30 and not machine.runs_out_at(229) and machine.runs_out_at(230)
    assert machine.evaluate(applied, desired, 10, now=230, confirmed=False)["A"] == applied["A"]
    machine.evaluate(applied, desired, 10, now=231)
    assert machine.evaluate(applied, desired, 10, now=261)["A"] == desired["A"] and not machine.active
    assert machine.releasing


def test_a_resumed_hold_goes_on_from_its_confirmed_seconds_and_base():
    machine, applied, desired = hold(), {"A": ups("A", *TEN)}, {"A": ups("A", *TEN[:2])}
    machine.resume(confirmed=50, base=10, totals=(), now=0)
    machine.evaluate(applied, desired, 14, now=0)      # 4 servers added elsewhere: measured against 10
    assert machine.active and machine.removal.total == 10
    assert machine.evaluate(applied, desired, 14, now=10)["A"] == desired["A"]


def test_a_release_with_nothing_held_is_refused_and_a_snapshot_brings_a_release_back():
    machine, applied, desired = hold(seconds=0), {"A": ups("A", *TEN)}, {"A": ups("A", *TEN[:2])}
    assert not machine.release() and not machine.release_requested
    machine.evaluate(applied, desired, 10, now=0)
    assert machine.release()
    before = machine.snapshot()
    assert machine.evaluate(applied, desired, 10, now=1)["A"] == desired["A"] and not machine.active
    machine.restore(before)   # the release could not be applied (the file write failed)
    assert machine.active and machine.evaluate(applied, desired, 10, now=2)["A"] == desired["A"]
