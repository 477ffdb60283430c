"""The watcher's cache converges to Consul's state whatever the order its events are folded in (hypothesis).

The watcher learns of changes from two long polls (failing checks; service names and tags) and reads
services again when an answer calls for it. Answers reach the event loop late, in batches, and
interleaved with those reads, so an answer can be older than what the cache already holds. The
property: after ANY sequence of Consul operations, answers taken at any moments and folded in any
batches, once the last answer of each poll has been folded, the cache maps exactly what a fresh full
read of the same Consul maps (what ``--once`` on an empty host would apply).

``ModelConsul`` is a stand-in, not Consul: a small in-memory model of the state the watcher reads
(instances, service and node checks, the two X-Consul-Index counters) answering the five endpoints
the watcher uses in their real shape. It exists so that hypothesis can try thousands of
interleavings in seconds and shrink a failure to a few steps; the same property runs against a
real Consul agent and a real nginx in tests/integration/test_watcher_bursts.py.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, unquote, urlsplit

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import ConsulClient
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import ConsulSource
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from tests.unit.property.strategies import count

NODES = {"n1": "10.1.0.1", "n2": "10.1.0.2"}
SERVICES = ("Web", "Api", "Db", "Mq", "Kv", "consul")   # "consul" is excluded by default: the watcher must skip it
IDS = ("i1", "i2", "i3")


class ModelConsul:
    """An in-memory model of Consul's catalog and health state (see the module docstring)."""

    def __init__(self):
        # (node, id) -> {"Service", "Port", "Tags", "Meta"}
        self.instances = {("n1", "consul"): {"Service": "consul", "Port": 8300, "Tags": [], "Meta": {}}}  # the agent
        self.checks = {}      # (node, check id) -> {"ServiceID", "ServiceName", "Status"}
        self.services_index = 10
        self.checks_index = 10

    # -- operations ------------------------------------------------------------------------------------
    def register(self, node, instance_id, service, port, tags, meta, status):
        key = (node, instance_id)
        old = self.instances.get(key)
        new = {"Service": service, "Port": port, "Tags": list(tags), "Meta": dict(meta)}
        if old != new:
            self.instances[key] = new
            self.services_index += 1
        check = {"ServiceID": instance_id, "ServiceName": service, "Status": status}
        if old is not None and old["Service"] != service:  # the same ID under another name: its check moves
            self.checks.pop((node, f"service:{instance_id}"), None)
        if self.checks.get((node, f"service:{instance_id}")) != check:
            self.checks[(node, f"service:{instance_id}")] = check
            self.checks_index += 1

    def deregister(self, node, instance_id):
        if self.instances.pop((node, instance_id), None) is not None:
            self.services_index += 1
        if self.checks.pop((node, f"service:{instance_id}"), None) is not None:
            self.checks_index += 1

    def set_status(self, node, instance_id, status):
        check = self.checks.get((node, f"service:{instance_id}"))
        if check is not None and check["Status"] != status:
            check["Status"] = status
            self.checks_index += 1

    def node_status(self, node, status):
        check = {"ServiceID": "", "ServiceName": "", "Status": status}
        if self.checks.get((node, "serfHealth")) != check:
            self.checks[(node, "serfHealth")] = check
            self.checks_index += 1

    # -- answers ---------------------------------------------------------------------------------------
    def _check_list(self, keys=None):
        return [{"Node": node, "CheckID": check_id, **dict(check)} for (node, check_id), check in sorted(self.checks.items())
                if keys is None or (node, check_id) in keys]

    def catalog_answer(self):
        names = {}
        for instance in self.instances.values():
            names.setdefault(instance["Service"], set()).update(instance["Tags"])
        return {name: sorted(tags) for name, tags in names.items()}, self.services_index

    def failing_answer(self):
        return [check for check in self._check_list() if check["Status"] != "passing"], self.checks_index

    def _service_entry(self, node, instance_id, instance):
        return {"ID": instance_id, "Service": instance["Service"], "Address": "", "Port": instance["Port"],
                "Tags": list(instance["Tags"]), "Meta": dict(instance["Meta"])}

    def route(self, url):
        parts = urlsplit(url)
        path = unquote(parts.path)
        if path == "/v1/catalog/services":
            data, index = self.catalog_answer()
            data.setdefault("consul", [])  # as in every datacenter: the servers' service (the client checks it)
        elif path == "/v1/health/state/any":
            data, index = self._check_list(), self.checks_index
            if "filter" in parse_qs(parts.query):
                data, index = self.failing_answer()
        elif path.startswith("/v1/health/service/"):
            name = path[len("/v1/health/service/"):]
            data = []
            for (node, instance_id), instance in sorted(self.instances.items()):
                if instance["Service"] != name:
                    continue
                checks = [check for check in self._check_list()
                          if check["Node"] == node and check["ServiceID"] in ("", instance_id)]
                data.append({"Node": {"Node": node, "Address": NODES[node]},
                             "Service": self._service_entry(node, instance_id, instance), "Checks": checks})
            index = max(self.services_index, self.checks_index)
            if name == "consul" and not data:  # the servers' instance, which the client reads to tell ACL filtering
                data = [{"Node": {"Node": "server", "Address": "127.0.0.9"},
                         "Service": {"ID": "consul", "Service": "consul", "Port": 8300}, "Checks": []}]
        elif path == "/v1/catalog/nodes":
            data, index = [{"Node": node, "Address": address} for node, address in NODES.items()], self.services_index
        elif path.startswith("/v1/catalog/node-services/"):
            node = path[len("/v1/catalog/node-services/"):]
            data = {"Node": {"Node": node, "Address": NODES[node]},
                    "Services": [self._service_entry(node, instance_id, instance)
                                 for (owner, instance_id), instance in sorted(self.instances.items()) if owner == node]}
            index = self.services_index
        else:
            return 404, b"unknown path", {}
        return 200, json.dumps(data).encode(), {"x-consul-index": str(index)}


class ModelTransport:
    def __init__(self, model):
        self.model = model

    def __call__(self, method, url, body, timeout, extra_headers=None):
        return self.model.route(url)


def source_on(model, **values):
    settings_ = watcher_settings.build({"consul_url": "http://127.0.0.1:1", "status_listen": "",
                                        "upstream_file": "/nonexistent/upstreams.conf", **values})
    source = ConsulSource(settings_, Metrics())
    source.client = ConsulClient(settings_.consul_url, ModelTransport(model))
    return source


def mapped(source):
    result = source.mapping()
    return (dict(result.upstreams), sorted(result.empty),
            sorted((item["what"], item["why"]) for item in result.skipped))


statuses = st.sampled_from(["passing", "passing", "warning", "critical"])
operations = st.one_of(
    st.tuples(st.just("register"), st.sampled_from(sorted(NODES)), st.sampled_from(IDS), st.sampled_from(SERVICES),
              st.sampled_from([8080, 8081, 9090]), st.sampled_from([(), ("gray=b",), ("gray=c",), ("gray=x y",)]),
              st.sampled_from([(), (("dyups_weight", "2"),), (("dyups_weight", "abc"),), (("dyups_backup", "true"),)]),
              statuses),
    st.tuples(st.just("deregister"), st.sampled_from(sorted(NODES)), st.sampled_from(IDS)),
    st.tuples(st.just("status"), st.sampled_from(sorted(NODES)), st.sampled_from(IDS), statuses),
    st.tuples(st.just("node"), st.sampled_from(sorted(NODES)), statuses),
)
steps = st.lists(st.one_of(
    operations, operations,
    st.tuples(st.just("answer"), st.sampled_from(["health", "catalog"])),   # a long poll answers now
    st.tuples(st.just("fold"), st.integers(1, 4)),                          # the loop folds the oldest answers
), max_size=40)


def apply(model, step):
    kind = step[0]
    if kind == "register":
        _kind, node, instance_id, service, port, tags, meta, status = step
        model.register(node, instance_id, service, port, tags, dict(meta), status)
    elif kind == "deregister":
        model.deregister(step[1], step[2])
    elif kind == "status":
        model.set_status(step[1], step[2], step[3])
    elif kind == "node":
        model.node_status(step[1], step[2])


ROLLING_DEPLOY = (  # a new instance joins, the old one fails, both answers folded in one batch
    [("register", "n1", "i1", "Web", 8080, (), (), "passing")],
    [("register", "n2", "i2", "Web", 8080, (), (), "passing"), ("status", "n1", "i1", "critical"),
     ("answer", "health"), ("answer", "catalog"), ("fold", 2)])
STALE_HEALTH_ANSWER = (  # an old answer folded after a read that saw newer checks, then the same status again
    [("register", "n1", "i1", "Web", 8080, (), (), "passing"), ("register", "n1", "i2", "Web", 8081, (), (), "passing")],
    [("status", "n1", "i1", "critical"), ("answer", "health"), ("fold", 1), ("status", "n1", "i1", "passing"),
     ("register", "n1", "i3", "Web", 9090, (), (), "passing"), ("answer", "catalog"), ("fold", 1),
     ("status", "n1", "i1", "critical"), ("answer", "health"), ("fold", 1)])


@settings(deadline=None)
@given(st.lists(operations, max_size=6), steps)
@example(*ROLLING_DEPLOY)
@example(*STALE_HEALTH_ANSWER)
def test_any_interleaving_of_answers_and_reads_converges_to_a_fresh_read(setup, sequence):
    count("watcher events: any interleaving")
    model = ModelConsul()
    for step in setup:
        apply(model, step)
    source = source_on(model)
    source.refresh_all()
    queue, delivered = [], {"health": None, "catalog": None}

    def answer(kind):  # what a long poll puts on the queue: only an answer with a new index
        data, index = model.failing_answer() if kind == "health" else model.catalog_answer()
        if index != delivered[kind]:
            delivered[kind] = index
            queue.append((kind, data, index))

    for step in sequence:
        if step[0] == "answer":
            answer(step[1])
        elif step[0] == "fold":
            batch, queue[:] = queue[:step[1]], queue[step[1]:]
            if batch:
                source.apply_events(batch)
        else:
            apply(model, step)
    answer("health")
    answer("catalog")
    while queue:
        batch, queue[:] = queue[:2], queue[2:]
        source.apply_events(batch)
    fresh = source_on(model)
    fresh.refresh_all()
    assert mapped(source) == mapped(fresh)
