"""The Syncer (plugins/watcher/sync.py): desired state, file first, pushes, retries, repair, guards.

The interface here is tests/support/fake_dyups.py, a stand-in HTTP server on loopback that follows
the wire contract (not Tengine, not the project's Lua flavor): it is used because these are error
paths a real server does not produce on demand (409 on every request, a refused connection at a
chosen moment) and because it records every request, so a test can assert that none was sent.
The watcher's integration tests run the same code against real nginx.
"""

from __future__ import annotations

import os
import stat

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from ansible_collections.swallowkeeper.dyups.plugins.watcher.sync import Syncer
from ansible_collections.swallowkeeper.dyups.plugins.watcher.transport import KeepAliveTransport
from tests.support.fake_dyups import FakeDyups


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def fake():
    with FakeDyups() as server:
        yield server


@pytest.fixture
def make(tmp_path, fake):
    """make(**settings) -> (Syncer, clock); the upstream file is tmp_path/upstreams.conf."""
    made = []

    def factory(dyups_url=None, **values):
        values.setdefault("upstream_file", str(tmp_path / "upstreams.conf"))
        settings = watcher_settings.build(dict(values, dyups_url=dyups_url or fake.api_url, status_listen=""))
        transport = KeepAliveTransport()
        made.append(transport)
        clock = Clock()
        client = DyupsClient(settings.dyups_url, transport, timeout=2, busy_retries=1, busy_backoff=0.001)
        return Syncer(settings, client, Metrics(), clock=clock), clock

    yield factory
    for transport in made:
        transport.close()


def ups(name, *servers, directives=None):
    return build_upstream(name, list(servers), directives)


def posted(fake):
    return [request.path for request in fake.requests if request.method == "POST"]


def test_the_file_is_written_before_anything_is_posted_and_only_changes_are_posted(make, fake, tmp_path):
    seen = []
    fake.state.on_request = lambda request: seen.append(_upstream_file.read(str(tmp_path / "upstreams.conf")))
    syncer, _clock = make()
    report = syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.0.2:80")})
    assert report.ok and report.file_changed and sorted(report.posted) == ["A", "B"]
    assert all(set(state) == {"A", "B"} for state in seen)   # the file held both before the first POST
    fake.clear_requests()
    report = syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.0.3:80")})
    assert report.posted == ["B"] and posted(fake) == ["/upstream/B"]
    fake.clear_requests()
    assert syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.0.3:80")}).posted == []
    assert fake.requests == []


def test_the_directives_of_the_upstreams_are_written_and_posted(make, fake, tmp_path):
    """Directives are attached by the mapping (tests/unit/test_consul_mapping.py); the Syncer sends them."""
    syncer, _clock = make()
    report = syncer.sync({"A": ups("A", "10.0.0.1:80", directives=["keepalive 16"])})
    assert report.posted == ["A"]
    assert fake.upstreams["A"]["directives"] == ["keepalive 16"]
    assert _upstream_file.read(str(tmp_path / "upstreams.conf"))["A"].directive_lines() == ["keepalive 16;"]


def test_only_the_changed_names_are_examined_again(make, fake, tmp_path):
    """``changed`` names what differs since the last sync: an upstream outside it keeps the state it had,
    one inside it takes the new one, and the file is still written whole."""
    syncer, _clock = make(removal_guard_min=1000)
    mapping = {"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.1.1:80")}
    syncer.sync(dict(mapping))
    mapping = {"A": ups("A", "10.0.0.2:80"), "B": ups("B", "10.0.1.2:80")}
    report = syncer.sync(mapping, changed={"B"})
    assert report.posted == ["B"]
    on_file = _upstream_file.read(str(tmp_path / "upstreams.conf"))
    assert sorted(on_file) == ["A", "B"] and on_file["A"].servers == ups("A", "10.0.0.1:80").servers
    report = syncer.sync(mapping)   # None: every name examined
    assert report.posted == ["A"]


def test_a_removal_held_stays_held_when_additions_beside_it_went_through(make, fake):
    """3 of 5 servers would go (60 % > 50 %): held. An upstream added beside it goes through; the next
    sync still measures the removal against the 5 servers of the hold's start, not the 6 applied now
    (3 of 6 is 50 %, not over the limit: the hold would release itself)."""
    syncer, clock = make(removal_guard_share=0.5, removal_guard_min=2, removal_hold_seconds=0)
    five = [f"10.0.0.{i}:80" for i in range(1, 6)]
    syncer.sync({"A": ups("A", *five)})
    wanted = {"A": ups("A", *five[:2])}
    assert syncer.sync(dict(wanted)).held is not None
    wanted["B"] = ups("B", "10.0.1.1:80")
    report = syncer.sync(dict(wanted))
    assert report.held is not None and report.posted == ["B"]
    clock.now += 10
    report = syncer.sync(dict(wanted))
    assert report.held is not None and len(fake.upstreams["A"]["servers"]) == 5
    syncer.release()
    assert syncer.sync(dict(wanted)).held is None and len(fake.upstreams["A"]["servers"]) == 2


def test_a_host_name_that_does_not_resolve_is_skipped_and_an_upstream_left_empty_is_kept(make, fake, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")   # the stand-in resolves localhost only, as this file does
    # what a name resolves to is checked like an address from Consul: loopback only with the opt-in
    syncer, _clock = make(hosts_file=str(hosts), allowed_networks=["127.0.0.0/8"], allow_host_names=True)
    syncer.sync({"A": ups("A", "localhost:80", "unknown.test:80")})
    assert [server["address"] for server in fake.upstreams["A"]["servers"]] == ["127.0.0.1:80"]
    assert any("unknown.test" in item["what"] for item in syncer.skipped)
    on_file = _upstream_file.read(str(tmp_path / "upstreams.conf"))
    assert [server.host for server in on_file["A"].servers] == ["localhost"]
    syncer.sync({"A": ups("A", "unknown.test:80")})   # nothing left that resolves: empty, so kept (keep)
    assert [server.host for server in _upstream_file.read(str(tmp_path / "upstreams.conf"))["A"].servers] == \
        ["localhost"]


@pytest.mark.parametrize("policy", ["keep", "down", "delete"])
def test_the_zero_instance_policy(make, fake, policy):
    syncer, _clock = make(zero_instances=policy, removal_guard_min=1000)
    syncer.sync({"A": ups("A", "10.0.0.1:80", "10.0.0.2:80"), "B": ups("B", "10.0.1.1:80")})
    report = syncer.sync({"B": ups("B", "10.0.1.1:80")}, empty=("A",))
    if policy == "delete":
        assert report.deleted == ["A"] and "A" not in fake.upstreams
    else:
        servers = fake.upstreams["A"]["servers"]
        assert len(servers) == 2
        assert all(bool(server.get("down")) == (policy == "down") for server in servers)


def test_a_mass_removal_is_held_until_released_and_additions_go_through(make, fake):
    syncer, clock = make(removal_guard_share=0.5, removal_guard_min=2, removal_hold_seconds=60)
    five = [f"10.0.0.{i}:80" for i in range(1, 6)]
    wanted = {"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.1.1:80", "10.0.1.2:80")}
    syncer.sync({"A": ups("A", *five), "B": ups("B", "10.0.1.1:80")})
    report = syncer.sync(wanted)
    assert report.held is not None                           # 4 of 6 servers would go: over half
    assert len(fake.upstreams["A"]["servers"]) == 5          # held: nothing removed
    assert len(fake.upstreams["B"]["servers"]) == 2          # the addition went through
    clock.now += 10
    assert syncer.sync(wanted).held is not None              # 4 of 7 now: still held
    assert "release requested" in syncer.release()
    report = syncer.sync(wanted)
    assert report.held is None and len(fake.upstreams["A"]["servers"]) == 1
    assert syncer.release() == "nothing is held"


def test_a_held_removal_is_applied_after_removal_hold_seconds(make, fake):
    syncer, clock = make(removal_guard_share=0.5, removal_guard_min=2, removal_hold_seconds=60)
    syncer.sync({"A": ups("A", "10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")})
    assert syncer.sync({"A": ups("A", "10.0.0.1:80")}).held is not None
    clock.now += 61
    assert syncer.sync({"A": ups("A", "10.0.0.1:80")}).held is None
    assert len(fake.upstreams["A"]["servers"]) == 1


def test_a_file_that_cannot_be_written_sends_nothing_and_is_retried(make, fake, tmp_path):
    directory = tmp_path / "ro"
    directory.mkdir()
    syncer, _clock = make(upstream_file=str(directory / "upstreams.conf"))
    if os.geteuid() == 0:   # root writes anywhere: make the target a directory instead, which rename refuses
        (directory / "upstreams.conf").mkdir()
    else:
        directory.chmod(stat.S_IRUSR | stat.S_IXUSR)
    report = syncer.sync({"A": ups("A", "10.0.0.1:80")})
    assert not report.ok and report.file_error and fake.requests == []
    assert syncer.has_pending and syncer.unwritten is not None
    if os.geteuid() == 0:
        (directory / "upstreams.conf").rmdir()
    else:
        directory.chmod(stat.S_IRWXU)
    report = syncer.retry()
    assert report.ok and report.posted == ["A"] and not syncer.has_pending


def test_a_refused_push_stays_pending_and_the_retry_sends_it(make, fake):
    syncer, _clock = make()
    fake.busy(always=True)
    report = syncer.sync({"A": ups("A", "10.0.0.1:80")})
    assert report.file_changed and [name for name, _exc in report.failed] == ["A"]
    assert syncer.has_pending and "A" not in fake.upstreams
    assert syncer.metrics.snapshot()["gauges"]["last_sync_success"] == 0
    fake.busy(0)
    report = syncer.retry()
    assert report.posted == ["A"] and not syncer.has_pending and "A" in fake.upstreams
    gauges = syncer.metrics.snapshot()["gauges"]
    assert gauges["last_sync_success"] == 1 and gauges["last_sync_timestamp_seconds"] > 0, "the retry completed the sync"


def test_a_drift_repair_that_sends_what_a_failed_sync_left_completes_that_sync(make, fake):
    """The daemon's drift repair may come before the retry (nginx up after the watcher, drift_interval
    shorter than the backoff): its push empties what was pending, and the sync counts as complete
    (found on the fleet: last_sync_success stayed 0 with nothing pending)."""
    syncer, _clock = make()
    fake.busy(always=True)
    assert not syncer.sync({"A": ups("A", "10.0.0.1:80")}).ok
    fake.busy(0)
    report = syncer.repair()
    assert report.posted == ["A"] and not syncer.has_pending and "A" in fake.upstreams
    gauges = syncer.metrics.snapshot()["gauges"]
    assert gauges["last_sync_success"] == 1 and gauges["last_sync_timestamp_seconds"] > 0
    before = gauges["last_sync_timestamp_seconds"]
    syncer.client.delete("A")   # drift with no failed sync behind it: the sync gauges stay as they are
    assert syncer.repair().posted == ["A"]
    assert syncer.metrics.snapshot()["gauges"]["last_sync_timestamp_seconds"] == before


def test_an_unreachable_interface_keeps_the_file_and_the_push_pending(make, tmp_path):
    syncer, _clock = make(dyups_url="http://127.0.0.1:9")   # discard port: nothing listens
    report = syncer.sync({"A": ups("A", "10.0.0.1:80")})
    assert report.failed and syncer.has_pending
    assert "A" in _upstream_file.read(str(tmp_path / "upstreams.conf"))


def test_repair_pushes_what_the_interface_lost_and_deletes_what_it_kept(make, fake):
    """A lost upstream is posted again; one whose DELETE was refused is deleted again. An upstream deleted
    with success is no longer the watcher's: whatever the interface holds under that name later is left
    alone (tests/unit/watcher/test_syncer_faults.py)."""
    syncer, _clock = make()
    syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.0.2:80")})
    fake.busy(always=True)
    syncer.sync({"A": ups("A", "10.0.0.1:80")})                 # B removed; its DELETE refused
    fake.busy(0)
    with fake.state.lock:
        del fake.state.upstreams["A"]                          # lost (a restart, say)
    repaired = syncer.repair()
    assert repaired.posted == ["A"] and repaired.deleted == ["B"]
    assert set(fake.upstreams) == {"A"}


def test_repair_of_several_workers_pushes_what_any_of_them_lacks(make, fake):
    """nginx_processes.py reads every worker: an upstream right on one worker and lost on another is
    pushed. One a worker holds again after the watcher deleted it is not deleted by the repair (a name
    that came back may be someone else's now): nginx_processes.py deletes it on the worker that holds it,
    after new workers only (test_nginx_processes.py), and the Syncer remembers it in ``deleted_here``."""
    syncer, _clock = make()
    syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.0.2:80"), "C": ups("C", "10.0.0.3:80")})
    syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.0.2:80")})     # C deleted by the watcher
    right = syncer.client.detail()
    respawned = {"A": right["A"], "C": right["B"]}   # B lost, C back (as the master read it at start)
    repaired = syncer.repair([right, respawned])
    assert repaired.posted == ["B"] and repaired.deleted == []
    assert syncer.deleted_here == {"C"}
    assert syncer.repair([right, right]).posted == []


def test_push_all_posts_every_applied_upstream_again(make, fake):
    syncer, _clock = make()
    syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.0.2:80")})
    before = len(fake.requests)
    assert syncer.push_all().posted == ["A", "B"]
    assert [request.method for request in fake.requests[before:]] == ["POST", "POST"]


def test_an_upstream_the_file_does_not_own_is_never_touched(make, fake, tmp_path):
    other = fake.state.parse_body("server 10.9.9.9:80;")
    with fake.state.lock:
        fake.state.upstreams["Other"] = other
    syncer, _clock = make()
    syncer.sync({"A": ups("A", "10.0.0.1:80")})
    syncer.repair()
    assert "Other" in fake.upstreams
    assert all("Other" not in request.path for request in fake.requests)


def test_dry_run_writes_and_sends_nothing_but_plans(make, fake, tmp_path):
    syncer, _clock = make()
    syncer.dry_run = True
    report = syncer.sync({"A": ups("A", "10.0.0.1:80")})
    assert report.planned == ["POST A: +10.0.0.1:80"]
    assert fake.requests == [] and not (tmp_path / "upstreams.conf").exists()


# -- the removal guard's window (removal_guard_window) ---------------------------------------------------------
TEN = [f"10.0.3.{i}:80" for i in range(1, 11)]
GUARD = {"removal_guard_share": 0.5, "removal_guard_min": 3, "removal_hold_seconds": 600}


def shrink(syncer, clock, name, gaps, step=2):
    """Sync upstream ``name`` with the ten servers of TEN, then, after each of ``gaps`` seconds, with
    ``step`` fewer; returns whether each of those syncs held a change."""
    syncer.sync({name: ups(name, *TEN)})
    held, left = [], len(TEN)
    for gap in gaps:
        clock.now += gap
        left -= step
        held.append(syncer.sync({name: ups(name, *TEN[:left])}).held is not None)
    return held


def test_removals_spread_over_syncs_within_the_window_add_up_and_are_held(make, fake):
    """Three syncs of 20 % each, 10 s apart: the third takes the window's sum to 60 % (> 50 %): held,
    its two servers kept; the guard says the four before it counted."""
    syncer, clock = make(removal_guard_window=60, **GUARD)
    assert shrink(syncer, clock, "A", [10, 10, 10]) == [False, False, True]
    assert len(fake.upstreams["A"]["servers"]) == 6
    held = syncer.metrics.status["held"]
    assert (held["removed"], held["removed_earlier"], held["total"]) == (2, 4, 10)


def test_the_same_removals_spread_beyond_the_window_are_not_held_and_the_window_slides(make, fake):
    """20 % every 61 s with a 60 s window: none held, each is measured with nothing before it. Then two
    single removals 7 s and 12 s after the last step: with that step's two they make 3 of 6 (the count
    at the window's start), then 4 of 6: the second is held."""
    syncer, clock = make(removal_guard_window=60, **GUARD)
    assert shrink(syncer, clock, "A", [61, 61, 61]) == [False, False, False]
    assert len(fake.upstreams["A"]["servers"]) == 4
    clock.now += 7
    assert syncer.sync({"A": ups("A", *TEN[:3])}).held is None
    clock.now += 5
    assert syncer.sync({"A": ups("A", *TEN[:2])}).held is not None
    assert len(fake.upstreams["A"]["servers"]) == 3


def test_a_window_of_0_measures_each_change_alone(make, fake, tmp_path):
    """The same three steps: with removal_guard_window 0 none is held (each is 2 of 8 or 2 of 6, as
    before the window existed); with the default window the third is held."""
    alone, alone_clock = make(removal_guard_window=0, upstream_file=str(tmp_path / "alone.conf"), **GUARD)
    assert shrink(alone, alone_clock, "Alone", [10, 10, 10]) == [False, False, False]
    assert len(fake.upstreams["Alone"]["servers"]) == 4
    default, default_clock = make(upstream_file=str(tmp_path / "default.conf"), **GUARD)
    assert default.settings.removal_guard_window == 60
    assert shrink(default, default_clock, "Default", [10, 10, 10]) == [False, False, True]


def test_a_release_lets_the_held_change_through_and_starts_the_window_afresh(make, fake):
    syncer, clock = make(removal_guard_window=60, **GUARD)
    assert shrink(syncer, clock, "A", [10, 10, 10]) == [False, False, True]
    assert "release requested" in syncer.release()
    clock.now += 1
    assert syncer.sync({"A": ups("A", *TEN[:4])}).held is None
    assert len(fake.upstreams["A"]["servers"]) == 4
    assert syncer.metrics.status["held"] is None
    # the six removals before the release no longer count: one more (1 of 4) goes through at once,
    # and so does a second (2 of 4 is not over half)
    clock.now += 1
    assert syncer.sync({"A": ups("A", *TEN[:3])}).held is None
    clock.now += 1
    assert syncer.sync({"A": ups("A", *TEN[:2])}).held is None
    assert len(fake.upstreams["A"]["servers"]) == 2


def test_servers_that_come_back_within_the_window_stop_counting(make, fake):
    """Two servers go and come back; then 2, 2 and 2 go, 10 s apart. The returned pair does not count:
    the first two steps make 2 and 4 of 10 (not held; they would make 6 of 10 if it did), the third
    makes 6 of 10: held."""
    syncer, clock = make(removal_guard_window=60, **GUARD)
    syncer.sync({"A": ups("A", *TEN)})
    clock.now += 10
    assert syncer.sync({"A": ups("A", *TEN[2:])}).held is None
    clock.now += 10
    assert syncer.sync({"A": ups("A", *TEN)}).held is None
    held = []
    for left in (8, 6, 4):
        clock.now += 10
        held.append(syncer.sync({"A": ups("A", *TEN[:left])}).held is not None)
    assert held == [False, False, True]
    assert len(fake.upstreams["A"]["servers"]) == 6


def test_a_rolling_replacement_within_the_window_is_never_held(make, fake):
    """Eight of ten servers replaced by new ones, two at a time, 5 s apart: the count never drops, so
    nothing is lost in the window and each change is 2 of 10 (counting removed addresses instead
    would hold the third step: 6 of 10)."""
    syncer, clock = make(removal_guard_window=60, **GUARD)
    servers = list(TEN)
    syncer.sync({"A": ups("A", *servers)})
    for step in range(4):
        clock.now += 5
        servers = servers[2:] + [f"10.0.4.{2 * step + 1}:80", f"10.0.4.{2 * step + 2}:80"]
        assert syncer.sync({"A": ups("A", *servers)}).held is None
    assert {server["address"] for server in fake.upstreams["A"]["servers"]} == set(servers)


# -- the check-peer budget (check_budget.py) --------------------------------------------------------------------
CHECK = ["check interval=3000 rise=2 fall=5 timeout=1000 type=tcp"]


def checked(name, count, first=1):
    return ups(name, *[f"10.0.5.{i}:80" for i in range(first, first + count)], directives=CHECK)


def test_a_change_over_the_check_peer_budget_is_skipped_and_goes_through_once_there_is_room(make, fake):
    """Tengine's check module crashed workers past ~3 300 check peers with its default zone, and gives no
    check to peers past its table (issue 25): the watcher never sends a change that would go above
    check_peer_budget; it keeps what is applied, says why, and applies the change once there is room."""
    syncer, _clock = make(check_peer_budget=5, removal_guard_share=1)   # the removal guard is not under test
    syncer.sync({"A": checked("A", 3), "Plain": ups("Plain", "10.0.6.1:80", "10.0.6.2:80", "10.0.6.3:80")})
    report = syncer.sync({"A": checked("A", 3), "B": checked("B", 3, first=10), "Plain": ups("Plain", "10.0.6.1:80")},
                         changed=["B", "Plain"])
    assert "B" not in fake.upstreams and "B" not in syncer.applied and report.posted == ["Plain"]
    assert [item["what"] for item in syncer.skipped] == ["upstream B"]
    assert "check_peer_budget 5" in syncer.skipped[0]["why"]
    assert syncer.metrics.snapshot()["counters"]["check_budget_refusals"] == 1
    grown = checked("A", 5)                                    # a refused growth keeps the upstream as it is
    syncer.sync({"A": grown, "B": checked("B", 3, first=10), "Plain": ups("Plain", "10.0.6.1:80")}, changed=["A"])
    assert len(syncer.applied["A"].servers) == 3 and "B" not in syncer.applied
    report = syncer.sync({"A": checked("A", 1), "B": checked("B", 3, first=10), "Plain": ups("Plain", "10.0.6.1:80")},
                         changed=["A"])                        # A shrinks: B fits now, without a change of its own
    assert sorted(report.posted) == ["A", "B"] and syncer.skipped == []
    assert len(fake.upstreams["B"]["servers"]) == 3


def test_the_budget_counts_only_upstreams_with_check_and_zero_is_no_limit(make, tmp_path):
    syncer, _clock = make(check_peer_budget=2)
    assert syncer.sync({"Plain": ups("Plain", *[f"10.0.7.{i}:80" for i in range(1, 10)])}).posted == ["Plain"]
    unlimited, _clock = make(check_peer_budget=0, upstream_file=str(tmp_path / "other.conf"))
    assert unlimited.sync({"Big": checked("Big", 9)}).posted == ["Big"]


def test_a_file_changed_under_the_syncer_is_read_again_before_its_next_write(make, fake, tmp_path):
    """Issue 21 item 1: the Syncer read its file at start only, so a change under it was overwritten unseen
    (or, for a name outside ``changed``, kept in the file and never compared). Now it is read again, and
    every name is compared with the desired state."""
    path = tmp_path / "upstreams.conf"
    syncer, _clock = make(removal_guard_min=1000)
    syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.1.1:80")})
    path.write_text(_upstream_file.render([ups("A", "10.0.0.9:80"), ups("B", "10.0.1.1:80"), ups("H", "10.0.2.1:80")]))
    fake.clear_requests()
    report = syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.1.2:80")}, changed={"B"})
    assert report.ok and sorted(report.posted) == ["A", "B"] and report.deleted == ["H"]
    assert _upstream_file.read(str(path)) == {"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.1.2:80")}


def test_a_flip_costs_one_fsync_of_the_file_and_none_of_its_directory(make, fake, tmp_path, monkeypatch):
    """Issue 22 item 2: the directory's fsync was about half of a flip's write (docs/benchmarks.md); the
    data is still synced before the rename and nothing is posted before the file is in place."""
    syncer, _clock = make()
    syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.0.2:80")})
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(stat.S_ISDIR(os.fstat(fd).st_mode))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    seen = []
    fake.state.on_request = lambda request: seen.append((len(synced), _upstream_file.read(str(tmp_path / "upstreams.conf"))))
    report = syncer.sync({"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.0.3:80")})
    assert report.ok and report.posted == ["B"]
    assert synced == [False], f"fsyncs of a flip (True: a directory): {synced}"
    assert seen == [(1, {"A": ups("A", "10.0.0.1:80"), "B": ups("B", "10.0.0.3:80")})]   # synced, renamed, then posted
