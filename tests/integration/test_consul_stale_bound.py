"""Stale answers bounded (``max_stale`` / the watcher's ``consul_max_stale``) against a real Consul cluster.

Three Consul 1.8.7 servers on loopback (tests/support/consul_cluster.py). To make a follower stale for
real, the test stops the other two servers (SIGSTOP: the leader and the other follower): the follower
keeps answering ``stale`` reads from what it has, and its ``X-Consul-LastContact`` grows with the time
since it last heard from the leader. Then:

* the watcher's own long poll (ConsulSource, ``consul_max_stale: 1``) reads that follower: its
  answer is read again without ``stale``, which the follower cannot serve (no leader: it holds the
  request, no answer within ``consul_timeout``); the poll reports a Consul error that says how stale the answer
  was, the re-read is counted and logged, a gauge shows its LastContact; the stale answer's data is
  never handed on;
* a ConsulClient's re-read that does reach a leader: the test resumes the two servers between the
  stale answer and its re-read (a transport that passes every request to the real follower and does
  the resume in between), so the re-read is answered by the leader, through the follower.

The servers are resumed (SIGCONT) whatever happens, and the cluster is stopped at the end.
"""

import logging
import os
import queue
import signal
import time
import urllib.request

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import ConsulClient
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import ConsulSource
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from tests.support.consul_cluster import ConsulCluster
from tests.support.http_stdlib import stdlib_transport

BOUND = 1.0


def last_contact(agent):
    """X-Consul-LastContact (seconds) of a stale read from ``agent``."""
    with urllib.request.urlopen(agent.url + "/v1/health/state/any?stale", timeout=10) as answer:
        return int(answer.headers["X-Consul-LastContact"]) / 1000


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not after {timeout}s")
        time.sleep(0.1)


def has_leader(agent):
    try:
        with urllib.request.urlopen(agent.url + "/v1/health/state/any", timeout=10) as answer:
            return answer.status == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster():
    with ConsulCluster(servers=3, clients=0) as running:
        yield running


def test_a_follower_cut_off_from_its_leader_is_not_trusted(cluster, caplog):
    leader = cluster.leader()
    follower, other = [server for server in cluster.servers if server is not leader][:2]
    healthy = [last_contact(follower) for _n in range(5)]
    print(f"LastContact of a healthy follower, 5 reads: {healthy}")  # noqa: T201 (docs/watcher.md quotes it)
    assert max(healthy) < BOUND

    settings = watcher_settings.build({"consul_url": follower.url, "consul_wait": 2, "consul_stale": True,
                                       "consul_max_stale": BOUND,
                                       "consul_timeout": 3, "retry_initial": 0.2, "retry_max": 0.5}, environ={})
    metrics = Metrics()
    source = ConsulSource(settings, metrics)
    events: queue.Queue = queue.Queue()
    caplog.set_level(logging.WARNING, logger="swallowkeeper.watcher")
    stopped = [leader, other]
    try:
        source.start_watching(events)
        for server in stopped:
            os.kill(server.process.pid, signal.SIGSTOP)
        wait_for(lambda: last_contact(follower) > BOUND + 0.5, 30, "the follower's LastContact above the bound")

        # the watcher's poll: the stale answer is not used, the leader read fails, the error says how stale
        deadline = time.monotonic() + 60
        error = None
        while error is None and time.monotonic() < deadline:
            event = events.get(timeout=max(0.1, deadline - time.monotonic()))
            if event[0] == "consul_error" and "max_stale" in str(event[2]):
                error = event
        assert error is not None, "no Consul error naming max_stale from the watcher's polls"
        # Consul 1.8.7's follower holds the leader read while it has no leader: no answer within
        # consul_timeout (a 500 "No cluster leader" would do as well)
        assert error[1] in ("consul_unavailable", "consul_server_error"), error
        assert "above max_stale 1s" in str(error[2]) and "last heard from the leader" in str(error[2])
        assert metrics.snapshot()["counters"]["consul_stale_rereads"] >= 1
        assert any("above consul_max_stale 1s: read again from the leader" in record.getMessage()
                   for record in caplog.records)
        source.stop()

        # a re-read that reaches a leader: resume the two servers between the stale answer and its re-read
        calls = []

        def resume_then_pass(method, url, body, timeout, extra_headers=None):
            if calls:
                for server in stopped:
                    os.kill(server.process.pid, signal.SIGCONT)
                wait_for(lambda: has_leader(follower), 60, "a leader after the resume")
            calls.append(url)
            return stdlib_transport(method, url, body, timeout, extra_headers)

        seen = []
        client = ConsulClient(follower.url, resume_then_pass, stale=True, max_stale=BOUND,
                              on_too_stale=lambda url, seconds: seen.append(seconds))
        answer = client.catalog_services()
        assert [("stale" in url) for url in calls] == [True, False]
        assert len(seen) == 1 and seen[0] > BOUND
        assert answer.reread_after == seen[0] and answer.last_contact == 0.0  # the leader's own answer
        assert "consul" in answer.data
    finally:
        source.stop()
        for server in stopped:
            os.kill(server.process.pid, signal.SIGCONT)
    assert metrics.snapshot()["gauges"]["consul_stale_reread_last_contact_seconds"] > BOUND
