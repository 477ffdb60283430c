"""The watcher under faults of Consul's reads, against a real Consul agent and a real interface.

Each case reproduces a finding of issue 18 on a real Consul 1.8.7 agent, the real watcher process
and the Lua flavor's real interface, and checks the upstream file the watcher writes:

* one service's read answers 500 in the middle of a change (a stand-in proxy in front of the real
  agent makes that one read fail, tests/support/consul_fault_proxy.py: Consul does not fail a chosen
  read on request); the other services' changes are applied meanwhile, and nothing the watcher
  learnt is kept without being applied;
* names Consul accepts that no URL path can read (``x//y``, ``a/../b``, ``..``, node ``n//1``: Go
  cleans the path and answers 301) never block the other services;
* a node re-registered with a new address is applied without waiting for the full resync.
"""

from __future__ import annotations

import http.client
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import path_segment_safe

from tests.support import bursts
from tests.support.consul import ConsulAgent
from tests.support.consul_fault_proxy import FaultProxy
from tests.support.tengine import flavor_class
from tests.support.waiting import wait_for
from tests.support.watcher import WatcherProcess

SETTINGS = {"zero_instances": "delete", "removal_guard_min": 100000, "drift_interval": 3600,
            "consul_resync_interval": 3600, "retry_initial": 0.2, "retry_max": 1.0}


@pytest.fixture(scope="module")
def agent():
    with ConsulAgent() as running:
        yield running


class Bench:
    """The agent behind a fault proxy, an interface and a watcher; everything stopped after the test."""

    def __init__(self, tmp_path: Path, agent):
        self.agent = agent
        self.upstream_file = tmp_path / "upstreams.conf"
        self.proxy = FaultProxy(agent.url).start()
        self.interface = None
        self.watcher = None
        self.tmp_path = tmp_path

    def start(self, **settings):
        self.interface = flavor_class("lua")(workers=1, upstream_file=str(self.upstream_file)).start()
        self.watcher = WatcherProcess(self.tmp_path / "watcher", consul_url=self.proxy.url,
                                      dyups_url=self.interface.api_url, upstream_file=str(self.upstream_file),
                                      **{**SETTINGS, **settings}).start()
        return self

    def stop(self):
        for stop in (lambda: self.watcher and self.watcher.stop(), lambda: self.interface and self.interface.cleanup(),
                     self.proxy.stop, self.agent.clear_services):
            try:
                stop()
            except Exception:  # keep stopping the others
                pass

    def servers(self):
        return {name: set(servers) for name, servers in bursts.read_file(self.upstream_file).items()}

    def matches(self, expected):
        got = self.servers()
        return all(got.get(name, set()) == want for name, want in expected.items())

    def wait_servers(self, expected, what, timeout=10.0):
        wait_for(lambda: self.matches(expected), f"{what}: {expected} in the file", timeout=timeout,
                 tail=lambda: f"file: {self.servers()}\n{self.watcher.log_text()}")

    def holds(self, expected, what, seconds=1.5):
        """The file keeps ``expected`` for ``seconds`` (a state that must last, not only be reached)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.matches(expected), f"{what}: {self.servers()}"
            time.sleep(0.05)


@pytest.fixture
def bench(tmp_path, agent):
    made = Bench(tmp_path, agent)
    yield made
    made.stop()


def test_a_failed_read_of_one_service_neither_blocks_nor_keeps_a_critical_instance(bench):
    """Finding 1: beta's read answers 500 while beta/b2 recovers; alpha/a1 then fails. The worsened
    check of a1 is applied at once (on 940f60b it was written into the cache, the remap waited for
    beta's read, and a1 stayed in the file even after the 500s stopped); beta keeps its last good
    state while its read fails, and is applied once it answers again."""
    agent = bench.agent
    agent.register("alpha", "a1", port=9101)
    agent.register("alpha", "a2", port=9102)
    agent.register("beta", "b1", port=9201)
    agent.register("beta", "b2", port=9202, status="critical")
    bench.start()
    bench.wait_servers({"alpha": {"127.0.0.1:9101", "127.0.0.1:9102"}, "beta": {"127.0.0.1:9201"}}, "start")
    bench.proxy.fail("/v1/health/service/beta")
    agent.pass_check("b2")
    time.sleep(0.3)   # the health answer that makes beta be read (and fail) is folded first
    agent.fail_check("a1")
    bench.wait_servers({"alpha": {"127.0.0.1:9102"}}, "a1 critical while beta's read fails")
    bench.holds({"alpha": {"127.0.0.1:9102"}, "beta": {"127.0.0.1:9201"}}, "beta keeps its last good state")
    metrics = bench.watcher.metrics()
    assert metrics.get('swallowkeeper_watcher_errors_total{kind="consul_service_read"}', 0) >= 1, metrics
    assert metrics.get("swallowkeeper_watcher_unread_services") == 1, metrics
    bench.proxy.heal()
    bench.wait_servers({"alpha": {"127.0.0.1:9102"}, "beta": {"127.0.0.1:9201", "127.0.0.1:9202"}},
                       "beta read again once it answers")
    bench.watcher.wait_for(lambda: bench.watcher.metrics().get("swallowkeeper_watcher_unread_services") == 0,
                           "no service left unread")


def test_names_no_path_can_read_never_block_the_other_services(bench):
    """Finding 2: service names ``x//y``, ``a/../b``, ``..`` and a node ``n//1`` (Consul 1.8.7 accepts
    them; a read that names them in the path answers 301) are skipped with a reason or read another
    way, while a failing instance and a new one of another service are applied at once. On 940f60b
    every read of a batch failed with such a name registered."""
    agent = bench.agent
    agent.register("web", "w1", port=9301)
    agent.register("web", "w2", port=9302)
    for number in range(5):   # more services than nodes: the full read first tries to go by node
        agent.register(f"svc{number}", f"s{number}", port=9400 + number)
    agent.catalog_register("n//1", "127.0.0.2", "web", "w-odd-node", port=9303)
    bench.start()
    bench.wait_servers({"web": {"127.0.0.1:9301", "127.0.0.1:9302", "127.0.0.2:9303"}}, "start, node n//1 read")
    for name in ("x//y", "a/../b", ".."):
        agent.catalog_register("cat-odd", "127.0.0.3", name, f"odd-{len(name)}", port=9500, wait=False)
    agent.wait_until(lambda: {"x//y", "a/../b", ".."} <= set(agent.get("/v1/catalog/services")), "odd names")
    agent.fail_check("w1")
    agent.register("web", "w3", port=9304)
    bench.wait_servers({"web": {"127.0.0.1:9302", "127.0.0.1:9304", "127.0.0.2:9303"}},
                       "changes applied with the odd names registered")

    def skipped():
        return {item["what"]: item["why"] for item in bench.watcher.status()["status"].get("skipped", [])}

    bench.watcher.wait_for(lambda: all("clean URL path" in skipped().get(f"service {name!r}", "")
                                       for name in ("x//y", "a/../b", "..")), "the odd names skipped with the reason")
    agent.call("PUT", "/v1/catalog/register", {"Node": "n//1", "Address": "127.0.0.4"})
    bench.wait_servers({"web": {"127.0.0.1:9302", "127.0.0.1:9304", "127.0.0.4:9303"}}, "node n//1 moved")


def test_a_node_re_registered_with_a_new_address_is_applied_without_a_resync(bench):
    """Finding 3: re-registering a node with a new address moves only /v1/catalog/nodes' index
    (measured: neither /v1/catalog/services' nor /v1/health/state/any's); instances without a
    Service.Address take the node's. On 940f60b the old address stayed until the full resync."""
    agent = bench.agent
    agent.catalog_register("cat-a", "127.0.0.2", "web", "w-a", port=9601)
    agent.catalog_register("cat-a", "127.0.0.2", "web", "w-own", port=9602, address="127.0.0.5")
    agent.register("web", "w-agent", port=9603)
    bench.start()
    bench.wait_servers({"web": {"127.0.0.2:9601", "127.0.0.5:9602", "127.0.0.1:9603"}}, "start")
    services_index = agent.index("/v1/catalog/services")
    agent.call("PUT", "/v1/catalog/register", {"Node": "cat-a", "Address": "127.0.0.3"})
    bench.wait_servers({"web": {"127.0.0.3:9601", "127.0.0.5:9602", "127.0.0.1:9603"}}, "node address applied")
    assert agent.index("/v1/catalog/services") == services_index   # only the nodes poll could have told


def test_which_names_consul_answers_with_a_redirect(agent):
    """path_segment_safe predicts Consul's own answer: for each name Consul accepts, a plain GET of
    ``/v1/health/service/<quoted name>`` (redirects not followed) answers 301 exactly when the rule
    says no path reads it. Measured on the real agent, not assumed."""
    names = ("x//y", "a/../b", "..", ".", "a/.", "./a", "/a", "a/", "a/b", "%2F", "a?b", "a#b", "a%b", " a", "a\\b",
             "...", "a..b")
    try:
        for number, name in enumerate(names):
            agent.catalog_register("cat-names", "127.0.0.3", name, f"name-{number}", port=9700 + number, wait=False)
        agent.wait_until(lambda: set(names) <= set(agent.get("/v1/catalog/services")), "every name registered")
        host, port = urlsplit(agent.url).hostname, urlsplit(agent.url).port
        for name in names:
            connection = http.client.HTTPConnection(host, port, timeout=10)
            try:
                connection.request("GET", "/v1/health/service/" + quote(name, safe=""))
                status = connection.getresponse().status
            finally:
                connection.close()
            assert (status == 301) == (not path_segment_safe(name)), (name, status)
            assert status in (200, 301), (name, status)
    finally:
        agent.catalog_deregister("cat-names")
