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
