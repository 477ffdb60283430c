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


class CountingTransport(KeepAliveTransport):
    """The real transport, counting the requests that went pipelined (``many``) and one at a time."""

    def __init__(self):
        super().__init__()
        self.pipelined = 0
        self.single = 0

    def many(self, requests, timeout, window=64):
        self.pipelined += len(requests)
        return super().many(requests, timeout, window)

    def __call__(self, *args, **kwargs):
        self.single += 1
        return super().__call__(*args, **kwargs)


def test_many_changes_go_pipelined_a_busy_answer_alone_and_a_few_one_at_a_time():
    applied = {f"U{n}": build_upstream(f"U{n}", [f"10.0.0.{n + 1}:80"]) for n in range(30)}
    with FakeDyups() as fake:
        transport = CountingTransport()
        try:
            pushes = Pushes(DyupsClient(fake.api_url, transport, timeout=2, busy_backoff=0.001), Metrics(), {},
                            gone=[f"Old{n}" for n in range(10)])
            pushes.changed(list(applied), [])
            fake.busy(2)   # the first two answers: 409
            report = SyncReport()
            pushes.send(applied, report)
            assert (len(report.posted), len(report.deleted), report.failed, len(pushes)) == (30, 10, [], 0)
            assert [request.method for request in fake.requests] == ["POST"] * 30 + ["DELETE"] * 10 + ["POST"] * 2
            assert (transport.pipelined, transport.single) == (40, 2)   # the two busy ones again, alone
            assert sorted(fake.upstreams) == sorted(applied)
            pushes.changed(["U1"], [])
            pushes.send(applied, SyncReport())
            assert (transport.pipelined, transport.single) == (40, 3)   # a flip's one POST: not pipelined
        finally:
            transport.close()
