"""The watcher's full read of Consul (plugins/watcher/consul_source.py) against a real agent.

Two ways to read every service: one ``/v1/health/service/NAME`` per service, or (when there are
fewer nodes than services) ``/v1/catalog/node-services/NODE`` per node plus one
``/v1/health/state/any``. Both must give the watcher the same cache and the same upstreams.
"""

from __future__ import annotations

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import ConsulSource
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from tests.support.consul import consul_agent  # noqa: F401 (fixture)  # pylint: disable=unused-import  # pytest fixtures
from tests.support.consul import LOOPBACK_OPT_IN


@pytest.fixture
def agent(consul_agent):  # noqa: F811
    yield consul_agent
    consul_agent.clear_services()


def source_for(agent):
    settings = watcher_settings.build({"consul_url": agent.url, "status_listen": "",
                                       "upstream_file": "/nonexistent/upstreams.conf", **LOOPBACK_OPT_IN})
    return ConsulSource(settings, Metrics())


def populate(agent):
    """Services over the agent's own node and two catalog nodes: tags (gray=b), dyups_* Meta, an
    empty service address (the node's applies), a critical and a warning instance, a node whose
    node-level check is critical, and a service ("Name") named like a field the reader drops."""
    agent.register("Web", "web-1", port=8001, tags=["gray=b"])
    agent.register("Web", "web-2", port=8002, status="critical")
    agent.register("Api", "api-1", port=8101, meta={"dyups_weight": "3", "owner": "team"})
    agent.register("Name", "name-1", port=8201, address=None)
    for node, address in (("cat-n1", "127.0.0.2"), ("cat-n2", "127.0.0.3")):
        agent.catalog_register(node, address, "Web", f"web-{node}", port=8003)
        agent.catalog_register(node, address, "Api", f"api-{node}", port=8102, status="warning")
        agent.catalog_register(node, address, "Chat", f"chat-{node}", port=8301, tags=["gray=canary"])
        for number in range(4):   # more services than nodes: reading by node is the cheaper way
            agent.catalog_register(node, address, f"Svc{number}", f"svc{number}-{node}", port=8401 + number)
    agent.call("PUT", "/v1/catalog/register", {
        "Node": "cat-n2", "Address": "127.0.0.3",
        "Check": {"Node": "cat-n2", "CheckID": "node-down", "Name": "node check", "Status": "critical"}})


def test_reading_by_node_gives_what_reading_by_service_gives(agent):
    populate(agent)
    by_node, by_service = source_for(agent), source_for(agent)
    requests = []
    original = by_node.client.read

    def counting(path, *args, **kwargs):
        requests.append(path)
        return original(path, *args, **kwargs)

    by_node.client.read = counting
    by_service._fetch_by_node = lambda names, nodes=None: None   # pylint: disable=protected-access  # the other way
    try:
        by_node.refresh_all()
        by_service.refresh_all()
        assert by_node.entries == by_service.entries
        assert by_node.checks == by_service.checks
        assert by_node.mapping() == by_service.mapping()
        upstreams = by_node.mapping().upstreams
        assert {"Web", "Web_b", "Api", "Name", "Chat_canary"} <= set(upstreams)
        # cat-n2's node check is critical: none of its instances serve
        assert all(server.host != "127.0.0.3" for upstream in upstreams.values() for server in upstream.servers)
        nodes = sum(path.startswith("/v1/catalog/node-services/") for path in requests)
        assert nodes == 3 and len(requests) == 3 + nodes, requests   # services, nodes, node-services x3, checks (not 9 services)
    finally:
        by_node.stop()
        by_service.stop()


def test_an_instance_id_that_moves_to_a_service_sorted_before_keeps_its_checks(agent):
    """Issue 18: instance ``i1`` (critical) moves from service ``Web`` to ``Api`` (same node, same ID;
    Api sorts first, so its read is stored first). 940f60b then dropped i1's checks while storing Web
    (which no longer lists i1): the cache held Api's i1 without its critical check. The cache must
    hold what a fresh full read holds."""
    agent.register("Web", "i1", port=8501, status="critical")
    agent.register("Web", "i2", port=8502)
    source = source_for(agent)
    fresh = source_for(agent)
    try:
        source.refresh_all()
        agent.deregister("i1")
        agent.register("Api", "i1", port=8501, status="critical")
        source.refresh_all()
        fresh.refresh_all()
        key = next(key for key in fresh.entries["Api"])
        assert source.checks.get(key) == fresh.checks[key] == (("service:i1", "critical"),)
        assert source.failing == fresh.failing
        assert source.mapping() == fresh.mapping()
    finally:
        source.stop()
        fresh.stop()


def test_a_service_named_like_another_but_for_case_gets_only_its_own_instances(agent):
    """Issue 18: Consul 1.8.7 answers ``/v1/health/service/web`` with the instances of ``Web`` too
    (it matches the name ignoring case), ``/v1/catalog/node-services`` keeps them apart. 940f60b put
    Web's instance under web (and web's under Web) when reading by service: the two reads built
    different caches. Which of the two names an upstream is the mapping's rule, not the read's."""
    agent.register("Web", "upper-1", port=8601)
    agent.register("web", "lower-1", port=8602)
    for number in range(4):   # more services than nodes: the by-node read applies
        agent.register(f"Svc{number}", f"svc{number}", port=8611 + number)
    by_node, by_service = source_for(agent), source_for(agent)
    by_service._fetch_by_node = lambda names, nodes=None: None   # pylint: disable=protected-access  # the other way
    try:
        by_node.refresh_all()
        by_service.refresh_all()
        for source in (by_service, by_node):
            assert [key[1] for key in source.entries["Web"]] == ["upper-1"]
            assert [key[1] for key in source.entries["web"]] == ["lower-1"]
        assert by_node.mapping() == by_service.mapping()
    finally:
        by_node.stop()
        by_service.stop()


def test_an_answer_read_before_a_full_read_does_not_take_the_cache_back(agent):
    """The restart-burst long profile (2026-12-07): a catalog answer read before Api registered, still
    queued when a full read (a SIGHUP's, or the periodic one) saw Api, and the next answer, on the full
    read's own index, folded in one batch: the newer was skipped as no news and the older folded, so Api
    was dropped and no later answer brought it back. Answers older than what the cache holds from their
    endpoint are not applied; the newest of a batch is the last."""
    agent.register("Web", "web-1", port=8001)
    source = source_for(agent)
    try:
        source.refresh_all()
        old = source.client.catalog_services()
        nodes_before = source.client.catalog_nodes()
        agent.register("Api", "api-1", port=8101)
        source.refresh_all()
        assert "Api" in source.mapping().upstreams
        new = source.client.catalog_services()
        assert old.index < new.index   # new: the index the full read saw (nothing changed since)
        source.apply_events([("catalog", old.data, old.index, None), ("catalog", new.data, new.index, None)])
        assert "Api" in source.mapping().upstreams   # 2f33e87: dropped
        source.apply_events([("catalog", old.data, old.index, None)])
        source.apply_events([("nodes", nodes_before.data, nodes_before.index, None)])
        assert "Api" in source.mapping().upstreams
        assert source.metrics.counters.get("consul_outdated_answers", 0) >= 1
        # an answer whose index went back (a restored snapshot) is applied all the same
        source.apply_events([("catalog", old.data, old.index, "backwards")])
        assert "Api" not in source.mapping().upstreams
    finally:
        source.stop()
