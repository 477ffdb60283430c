"""A catalog change costs the nodes that changed: unchanged ``/v1/catalog/node-services`` answers are not parsed.

After every new catalog index the watcher compares every selected service with the cache, read node by
node (consul_source.py, ``_fold_catalog``). A node whose answer is byte for byte the one of the last
read by node keeps its cached instances without parsing (``ConsulSource.node_digests``); the digest
of a node is dropped whenever its cached instances change or differ from what Consul said, so an
unchanged answer never hides a change the cache took from another read.

The Consul here is the property test's ``ModelConsul`` (an in-memory stand-in answering the endpoints
the watcher reads, documented there): the cases need exact control of which answer the watcher sees
when. The same reads against a real agent run in tests/integration/test_watcher_full_read.py and the
burst tests.
"""

from __future__ import annotations

from ansible_collections.swallowkeeper.dyups.plugins.watcher import consul_source
from tests.unit.property.test_property_watcher_events import ModelConsul, health_events, source_on

SERVICES = ("Web", "Api", "Db", "Mq", "Kv")   # more services than nodes + 1: the compare reads by node


def fleet():
    model = ModelConsul()
    for number, name in enumerate(SERVICES):
        model.register("n1", f"{name.lower()}-1", name, 8080 + number, (), {}, "passing")
        model.register("n2", f"{name.lower()}-2", name, 8080 + number, (), {}, "passing")
    return model


def catalog_event(model):
    data, index = model.catalog_answer()
    return ("catalog", data, index, None)


def servers(source, upstream):
    return sorted(server.address for server in source.mapping().upstreams[upstream].servers)


def parsed_nodes(monkeypatch):
    """The nodes whose node-services answer the watcher parses from now on."""
    seen = []
    real = consul_source._parse_node

    def counting(node, *args, **kwargs):
        seen.append(node)
        return real(node, *args, **kwargs)

    monkeypatch.setattr(consul_source, "_parse_node", counting)
    return seen


def test_a_registration_on_one_node_parses_that_node_only(monkeypatch):
    model = fleet()
    source = source_on(model)
    source.refresh_all()
    assert sorted(source.node_digests) == ["n1", "n2"]
    parsed = parsed_nodes(monkeypatch)

    model.register("n2", "web-3", "Web", 9090, (), {}, "passing")
    assert source.apply_events([catalog_event(model)])
    assert parsed == ["n2"]
    assert "10.1.0.2:9090" in servers(source, "Web")

    parsed.clear()
    model.deregister("n2", "web-3")
    source.apply_events([catalog_event(model)])
    assert parsed == ["n2"]   # n2's answer changed: parsed again, n1 still not
    assert servers(source, "Web") == ["10.1.0.1:8080", "10.1.0.2:8080"]


def test_the_node_of_the_last_registration_is_not_parsed_again_at_the_next(monkeypatch):
    """Web is read again after the registration on n2 and the cache then holds what n2's answer said: n2
    keeps its digest, and a registration on n1 next parses n1 only (on 3881fa2 the read again dropped
    n2's digest for good: every registration parsed its own node and the node of the one before, at
    5 000 services on 3 nodes half of its compare, tests/benchmarks/bench_catalog_compare.py --nodes 3)."""
    model = fleet()
    source = source_on(model)
    source.refresh_all()
    parsed = parsed_nodes(monkeypatch)
    model.register("n2", "web-3", "Web", 9090, (), {}, "passing")
    assert source.apply_events([catalog_event(model)])
    assert parsed == ["n2"] and sorted(source.node_digests) == ["n1", "n2"]

    parsed.clear()
    model.register("n1", "api-3", "Api", 9091, (), {}, "passing")
    assert source.apply_events([catalog_event(model)])
    assert parsed == ["n1"]
    assert "10.1.0.1:9091" in servers(source, "Api") and "10.1.0.2:9090" in servers(source, "Web")


def test_a_new_service_read_again_keeps_no_digest_for_its_node(monkeypatch):
    """A service the cache did not hold is read by service only (the node answers were compared for the
    cached ones): the cache cannot be checked against its node's answer, so that node is parsed next time."""
    model = fleet()
    source = source_on(model)
    source.refresh_all()
    model.register("n1", "new-1", "New", 7000, (), {}, "passing")
    assert source.apply_events([catalog_event(model)])
    assert servers(source, "New") == ["10.1.0.1:7000"] and "n1" not in source.node_digests
    parsed = parsed_nodes(monkeypatch)
    model.register("n2", "new-2", "New", 7000, (), {}, "passing")
    assert source.apply_events([catalog_event(model)])
    assert sorted(parsed) == ["n1", "n2"]
    assert servers(source, "New") == ["10.1.0.1:7000", "10.1.0.2:7000"]


def test_an_unchanged_answer_never_hides_what_another_read_cached(monkeypatch):
    """Web/web-1 changes port and back; between the two, a health answer makes the watcher read Web by
    service (the cache takes port 9999) and no catalog answer is folded. The node answer after the
    change back is byte for byte the one of the last read by node: were the digest kept, the cache
    would keep 9999, which Consul no longer holds."""
    model = fleet()
    model.set_status("n1", "web-1", "critical")
    source = source_on(model)
    source.refresh_all()
    assert servers(source, "Web") == ["10.1.0.2:8080"]   # web-1 is critical

    model.register("n1", "web-1", "Web", 9999, (), {}, "passing")
    source.apply_events(health_events(model))  # the critical check is gone: Web is read again
    assert servers(source, "Web") == ["10.1.0.1:9999", "10.1.0.2:8080"]

    model.register("n1", "web-1", "Web", 8080, (), {}, "passing")
    parsed = parsed_nodes(monkeypatch)
    source.apply_events([catalog_event(model)])
    assert "n1" in parsed
    assert servers(source, "Web") == ["10.1.0.1:8080", "10.1.0.2:8080"]


def test_a_full_read_parses_every_node_and_keeps_their_digests(monkeypatch):
    model = fleet()
    source = source_on(model)
    source.refresh_all()
    digests = dict(source.node_digests)
    parsed = parsed_nodes(monkeypatch)
    source.refresh_all()   # the resync heals whatever drifted: it never trusts a digest
    assert sorted(parsed) == ["n1", "n2"]
    assert source.node_digests == digests


class FlipsBackAfterNodeRead(ModelConsul):
    """After its next ``node-services/n1`` answer, web-1 goes back to port 8080 (before the read by
    service that the answer causes)."""

    armed = False

    def route(self, url):
        answer = super().route(url)
        if self.armed and "/v1/catalog/node-services/n1" in url:
            self.armed = False
            self.register("n1", "web-1", "Web", 8080, (), {}, "passing")
        return answer


def test_a_node_answer_that_differed_from_the_cache_is_parsed_next_time():
    """The read by node sees web-1 on 9999, the read by service that follows sees 8080 again (the cache
    already holds it: nothing changes); then web-1 goes to 9999 once more. That node answer is byte
    for byte the one that differed: were its digest kept, 9999 would never reach the cache."""
    model = FlipsBackAfterNodeRead()
    for number, name in enumerate(SERVICES):
        model.register("n1", f"{name.lower()}-1", name, 8080 + number, (), {}, "passing")
        model.register("n2", f"{name.lower()}-2", name, 8080 + number, (), {}, "passing")
    source = source_on(model)
    source.refresh_all()
    model.register("n1", "web-1", "Web", 9999, (), {}, "passing")
    model.armed = True
    source.apply_events([catalog_event(model)])
    assert servers(source, "Web") == ["10.1.0.1:8080", "10.1.0.2:8080"]

    model.register("n1", "web-1", "Web", 9999, (), {}, "passing")
    source.apply_events([catalog_event(model)])
    assert servers(source, "Web") == ["10.1.0.1:9999", "10.1.0.2:8080"]
