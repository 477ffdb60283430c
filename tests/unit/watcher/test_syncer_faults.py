"""The Syncer under faults (issue 18): releases, restarts, outages and failed writes during a hold, pending
deletes, the upstream file removed behind its back.

The interface is tests/support/fake_dyups.py, a stand-in (see its docstring and test_syncer.py's): it answers
409 on demand, which a real server does not, and records every request. A "restart" here is a new Syncer on
the same upstream file, as the daemon makes at a start or a SIGHUP; the real process is restarted against a
real Consul and nginx in tests/integration/test_watcher_restarts.py.
"""

from __future__ import annotations

import json
import os

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from tests.unit.watcher.test_syncer import fake, make, ups  # noqa: F401  # pylint: disable=unused-import  # fixtures

GUARD = {"removal_guard_share": 0.5, "removal_guard_min": 3}
TEN = [f"10.0.3.{i}:80" for i in range(1, 11)]


def servers(fake_server, name):
    return sorted(server["address"] for server in fake_server.upstreams.get(name, {"servers": []})["servers"])


def test_a_release_with_nothing_held_does_not_let_the_next_hold_through(make, fake):
    """Finding 4: POST /release answered "nothing is held" but armed the next hold's release."""
    syncer, clock = make(removal_hold_seconds=0, **GUARD)
    syncer.sync({"A": ups("A", *TEN)})
    assert syncer.release() == "nothing is held"
    clock.now += 1
    report = syncer.sync({"A": ups("A", *TEN[:2])})
    assert report.held is not None and len(servers(fake, "A")) == 10
    clock.now += 1
    assert syncer.sync({"A": ups("A", *TEN[:2])}).held is not None, "still held: nobody released it"


def test_a_pending_delete_survives_a_restart(make, fake, tmp_path):
    """Finding 6: DELETE refused, then the watcher restarts (SIGHUP builds a new Syncer too): the file no
    longer names the upstream, yet the new Syncer still owns it and deletes it."""
    syncer, _clock = make()
    syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.0.2:80")})
    fake.busy(always=True)
    report = syncer.sync({"A": ups("A", "10.0.0.1:80")})
    assert [name for name, _exc in report.failed] == ["B"] and "B" in fake.upstreams
    assert "B" not in _upstream_file.read(str(tmp_path / "upstreams.conf"))
    fake.busy(0)
    restarted, _clock = make()
    assert restarted.has_pending
    assert restarted.repair().deleted == ["B"] and set(fake.upstreams) == {"A"}
    assert not restarted.has_pending
    again, _clock = make()   # the confirmed DELETE is no longer pending
    assert not again.has_pending


def test_a_name_deleted_once_and_added_again_by_someone_else_is_never_touched(make, fake):
    """Read in the code (issue 18): every name the watcher ever deleted stayed in ``deleted_here`` and was
    deleted at every drift repair, also after someone else added an upstream under that name."""
    syncer, _clock = make()
    syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.0.2:80")})
    assert syncer.sync({"A": ups("A", "10.0.0.1:80")}).deleted == ["B"]
    foreign = fake.state.parse_body("server 10.9.9.9:80;")
    with fake.state.lock:
        fake.state.upstreams["B"] = foreign
    fake.clear_requests()
    for _repair in range(2):
        assert syncer.repair().deleted == []
    assert "B" in fake.upstreams and all("/B" not in request.path for request in fake.requests)


def test_a_held_removal_keeps_its_confirmed_time_across_a_restart(make, fake):
    """Item 4: a hold confirmed for 40 s, then a restart: 21 s later (61 in all) it runs out; a restarted
    watcher that started the hold again would hold it for another 60 s."""
    syncer, clock = make(removal_hold_seconds=60, **GUARD)
    syncer.sync({"A": ups("A", *TEN)})
    for _step in range(5):
        assert syncer.sync({"A": ups("A", *TEN[:2])}).held is not None
        clock.now += 10
    syncer.save_state(force=True)   # what the daemon does before a SIGHUP's rebuild and at a stop
    restarted, clock = make(removal_hold_seconds=60, **GUARD)
    assert restarted.sync({"A": ups("A", *TEN[:2])}).held is not None
    clock.now += 10
    assert restarted.sync({"A": ups("A", *TEN[:2])}).held is not None
    clock.now += 11
    assert restarted.sync({"A": ups("A", *TEN[:2])}).held is None
    assert servers(fake, "A") == sorted(TEN[:2])


def test_a_window_hold_survives_a_restart(make, fake):
    """4 of 10 go (applied), then 2 of the 6 left: 6 of 10 in the window, held. After a restart the same
    change is still held (measured alone it is 2 of 6, which would go through)."""
    syncer, clock = make(removal_hold_seconds=600, removal_guard_window=60, **GUARD)
    syncer.sync({"A": ups("A", *TEN)})
    clock.now += 5
    assert syncer.sync({"A": ups("A", *TEN[:6])}).held is None
    clock.now += 5
    assert syncer.sync({"A": ups("A", *TEN[:4])}).held is not None
    restarted, clock = make(removal_hold_seconds=600, removal_guard_window=60, **GUARD)
    clock.now += 10
    report = restarted.sync({"A": ups("A", *TEN[:4])})
    assert report.held is not None and len(servers(fake, "A")) == 6
    held = restarted.metrics.status["held"]
    assert (held["removed"], held["removed_earlier"], held["total"]) == (2, 4, 10)


def test_a_hold_does_not_run_out_while_consul_does_not_answer(make, fake):
    """Finding 8: only time in which Consul answered counts; the hold cannot run out at a sync made
    while Consul does not answer, however long ago it began."""
    syncer, clock = make(removal_hold_seconds=60, **GUARD)
    syncer.sync({"A": ups("A", *TEN)})
    assert syncer.sync({"A": ups("A", *TEN[:2])}).held is not None
    clock.now += 10                                             # 10 s confirmed
    assert syncer.sync({"A": ups("A", *TEN[:2])}).held is not None
    for _step in range(20):                                     # 200 s of outage
        clock.now += 10
        assert syncer.sync({"A": ups("A", *TEN[:2])}, consul_confirmed=False).held is not None
    clock.now += 10                                             # back: the interval before it does not count
    assert syncer.sync({"A": ups("A", *TEN[:2])}).held is not None
    for _step in range(4):                                      # 10 + 40 s confirmed
        clock.now += 10
        assert syncer.sync({"A": ups("A", *TEN[:2])}).held is not None
    assert not syncer.hold.due and len(servers(fake, "A")) == 10
    clock.now += 10                                             # 60 s confirmed
    assert syncer.sync({"A": ups("A", *TEN[:2])}).held is None
    assert servers(fake, "A") == sorted(TEN[:2])


def test_a_hold_that_would_run_out_waits_for_consul(make, fake):
    """The daemon asks ``runs_out_at`` before a sync and reads Consul again first when it says yes (the
    release needs a fresh answer): if that read fails, the sync is made unconfirmed and holds on."""
    syncer, clock = make(removal_hold_seconds=60, **GUARD)
    syncer.sync({"A": ups("A", *TEN)})
    syncer.sync({"A": ups("A", *TEN[:2])})
    clock.now += 59
    assert not syncer.hold.runs_out_at(clock.now)
    syncer.sync({"A": ups("A", *TEN[:2])})
    clock.now += 2
    assert syncer.hold.runs_out_at(clock.now)
    assert syncer.sync({"A": ups("A", *TEN[:2])}, consul_confirmed=False).held is not None
    clock.now += 1
    assert not syncer.hold.runs_out_at(clock.now), "the interval that ended unconfirmed did not count"
    syncer.sync({"A": ups("A", *TEN[:2])})
    clock.now += 1
    assert syncer.hold.runs_out_at(clock.now)
    assert syncer.sync({"A": ups("A", *TEN[:2])}).held is None


def additions_beside_a_window_hold(make, fake, window):
    """Finding 10: 10 servers; 4 go (applied); 4 of the 6 left go (held); 4 unrelated servers added."""
    syncer, clock = make(removal_hold_seconds=600, removal_guard_window=window, **GUARD)
    syncer.sync({"A": ups("A", *TEN)})
    clock.now += 5
    assert syncer.sync({"A": ups("A", *TEN[:6])}).held is None
    clock.now += 5
    assert syncer.sync({"A": ups("A", *TEN[:2])}).held is not None
    added = {"A": ups("A", *TEN[:2]), "B": ups("B", *[f"10.0.5.{i}:80" for i in range(1, 5)])}
    clock.now += 1
    report = syncer.sync(dict(added))
    assert report.posted == ["B"]
    clock.now += 1
    return syncer.sync(dict(added))


def test_additions_do_not_release_a_window_hold(make, fake):
    assert additions_beside_a_window_hold(make, fake, 60).held is not None
    assert len(servers(fake, "A")) == 6


def test_additions_do_not_release_a_hold_without_a_window(make, fake):
    assert additions_beside_a_window_hold(make, fake, 0).held is not None
    assert len(servers(fake, "A")) == 6


def refusing_validator(tmp_path):
    """(flag, validate_command): the command refuses every file while the flag file exists (a full disk)."""
    flag = tmp_path / "refuse"
    validator = tmp_path / "validate.sh"
    validator.write_text(f"[ ! -e {flag} ]\n")
    # run by /bin/sh, not exec'd: a script just written can be "Text file busy" to exec while another
    # thread's fork still holds it open
    return flag, f"/bin/sh {validator} %s"


def test_a_release_whose_file_write_failed_is_applied_by_the_retry(make, fake, tmp_path):
    """Read in the code (issue 18): a failed write at the release left no hold, so the retry began a new one
    with a fresh timer. Now the released change is what the retry applies."""
    flag, validate = refusing_validator(tmp_path)
    syncer, clock = make(removal_hold_seconds=60, validate_command=validate, **GUARD)
    first = syncer.sync({"A": ups("A", *TEN)})
    assert first.ok and servers(fake, "A") == sorted(TEN), first
    assert syncer.sync({"A": ups("A", *TEN[:2])}).held is not None
    flag.write_text("")
    clock.now += 61
    report = syncer.sync({"A": ups("A", *TEN[:2])})
    assert report.file_error and len(servers(fake, "A")) == 10
    flag.unlink()
    clock.now += 1
    report = syncer.retry()
    assert report.ok and report.held is None and servers(fake, "A") == sorted(TEN[:2])


def test_an_operator_release_whose_file_write_failed_is_applied_by_the_retry(make, fake, tmp_path):
    flag, validate = refusing_validator(tmp_path)
    syncer, clock = make(removal_hold_seconds=0, validate_command=validate, **GUARD)
    syncer.sync({"A": ups("A", *TEN)})
    assert syncer.sync({"A": ups("A", *TEN[:2])}).held is not None
    syncer.release()
    flag.write_text("")
    assert syncer.sync({"A": ups("A", *TEN[:2])}).file_error
    flag.unlink()
    clock.now += 1
    report = syncer.retry()
    assert report.ok and report.held is None and servers(fake, "A") == sorted(TEN[:2])


def test_a_removed_or_edited_upstream_file_is_written_again_at_the_drift_check(make, fake, tmp_path):
    """Finding 9: the file was written only on a change; removed, it stayed missing."""
    path = tmp_path / "upstreams.conf"
    syncer, _clock = make()
    syncer.sync({"A": ups("A", "10.0.0.1:80")})
    written = path.read_text()
    path.unlink()
    syncer.repair()
    assert path.read_text() == written
    path.write_text("upstream A { server 10.0.0.9:80; }\n")
    syncer.repair()
    assert path.read_text() == written
    before = os.stat(path).st_mtime_ns
    syncer.repair()
    assert os.stat(path).st_mtime_ns == before, "a file that is right is not written again"


def test_an_unreadable_state_file_is_ignored_and_changes_nothing(make, fake, tmp_path):
    """A state file this watcher did not write (or a broken one) is logged and ignored; a name it lists
    that the upstream file holds is never deleted."""
    syncer, _clock = make()
    syncer.sync({"A": ups("A", "10.0.0.1:80")})
    state = tmp_path / ".upstreams.conf.state.json"
    state.write_text("{not json")
    restarted, _clock = make()
    assert not restarted.has_pending
    state.write_text(json.dumps({"version": 1, "pending_deletes": ["A"]}))
    restarted, _clock = make()
    assert not restarted.has_pending
    restarted.repair()
    assert "A" in fake.upstreams
