"""Push bookkeeping alone (plugins/watcher/pushes.py), against tests/support/fake_dyups.py (a stand-in that
answers 409 on demand and records every request; see its docstring)."""

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from ansible_collections.swallowkeeper.dyups.plugins.watcher.pushes import Pushes, SyncReport
from ansible_collections.swallowkeeper.dyups.plugins.watcher.transport import KeepAliveTransport
from tests.support.fake_dyups import FakeDyups


def test_what_fails_stays_pending_and_what_succeeds_leaves_posts_before_deletes():
    applied = {"A": build_upstream("A", ["10.0.0.1:80"])}
    with FakeDyups() as fake:
        transport = KeepAliveTransport()
        try:
            client = DyupsClient(fake.api_url, transport, timeout=2, busy_retries=1, busy_backoff=0.001)
            pushes = Pushes(client, Metrics(), {}, gone=["Old"])
            pushes.changed(["A"], [])
            fake.busy(always=True)
            report = SyncReport()
            pushes.send(applied, report)
            assert sorted(name for name, _exc in report.failed) == ["A", "Old"] and len(pushes) == 2
            fake.busy(0)
            fake.clear_requests()
            report = SyncReport()
            pushes.send(applied, report)
            assert (report.posted, report.deleted, len(pushes)) == (["A"], ["Old"], 0)
            assert [request.method for request in fake.requests] == ["POST", "DELETE"]
            pushes.changed([], ["A"])
            assert pushes.gone == {"A"} and not pushes.pending
        finally:
            transport.close()


def test_a_change_caused_by_a_consul_answer_logs_how_long_after_it_the_interface_answered(caplog):
    """The change's log line ends with the latency histogram's sample (the fleet timeline reads it:
    extensions/molecule/fleet_host/fleet_check.py); a change no answer caused (a repair) says nothing."""
    applied = {"A": build_upstream("A", ["10.0.0.1:80"]), "B": build_upstream("B", ["10.0.0.2:80"])}
    metrics = Metrics()
    metrics.latency.folded(metrics.latency.clock() - 0.25)   # the answer was read 250 ms ago
    metrics.latency.taken(["A"])
    with FakeDyups() as fake:
        transport = KeepAliveTransport()
        try:
            pushes = Pushes(DyupsClient(fake.api_url, transport, timeout=2), metrics, {}, gone=["Old"])
            pushes.changed(["A", "B"], [])
            caplog.set_level("INFO")
            pushes.send(applied, SyncReport())
        finally:
            transport.close()
    lines = {record.getMessage().split(":", 1)[0]: record.getMessage() for record in caplog.records}
    after = float(lines["upstream A"].rsplit(", ", 1)[1].split(" ms after Consul's answer")[0])
    assert 250 <= after < 10000, lines["upstream A"]
    assert "Consul's answer" not in lines["upstream B"] and "Consul's answer" not in lines["upstream Old"]
