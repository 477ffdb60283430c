"""StaleReads (plugins/watcher/stale_reads.py) and the staleness metrics: the counter, the rate-limited
warning, and the gauge of each poll's last LastContact. The re-read itself: tests/unit/test_consul_client.py
and, against a real follower cut off from its leader, tests/integration/test_consul_stale_bound.py."""

import logging

from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from ansible_collections.swallowkeeper.dyups.plugins.watcher.stale_reads import StaleReads


def test_each_reread_counts_and_the_warning_says_how_stale_at_most_once_a_minute(caplog):
    now = [100.0]
    metrics = Metrics()
    stale = StaleReads(metrics, 2.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="swallowkeeper.watcher")
    stale("http://c/v1/health/state/any?stale=", 7.25)
    now[0] += 30
    stale("http://c/v1/catalog/services?stale=", float("inf"))
    now[0] += 31
    stale("http://c/v1/catalog/nodes?stale=", 3.0)
    lines = [record.getMessage() for record in caplog.records]
    assert lines == [
        "GET http://c/v1/health/state/any?stale= was answered by a server that last heard from the Consul leader "
        "7.2s before, above consul_max_stale 2s: read again from the leader",
        "GET http://c/v1/catalog/nodes?stale= was answered by a server that last heard from the Consul leader "
        "3.0s before, above consul_max_stale 2s: read again from the leader (2 such answers since the last line)"]
    text = metrics.prometheus()
    assert "swallowkeeper_watcher_consul_stale_rereads_total 3" in text
    assert "swallowkeeper_watcher_consul_stale_reread_last_contact_seconds 3.0" in text


def test_the_last_contact_gauge_per_poll():
    metrics = Metrics()
    metrics.set_index("health", 12, 0.25)
    metrics.set_index("catalog", 9, float("inf"))
    metrics.set_index("nodes", 4)  # no header: no sample
    text = metrics.prometheus()
    assert 'swallowkeeper_watcher_consul_last_contact_seconds{query="health"} 0.25' in text
    assert 'swallowkeeper_watcher_consul_last_contact_seconds{query="catalog"} +Inf' in text
    assert 'consul_last_contact_seconds{query="nodes"}' not in text
