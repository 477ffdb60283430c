"""The watcher's cache converges to Consul's state whatever the order its events are folded in (hypothesis).

The watcher learns of changes from four long polls (critical checks; warning checks; service names
and tags; nodes and their addresses) and reads services again when an answer calls for it. Answers reach the event loop late, in batches, and
interleaved with those reads, so an answer can be older than what the cache already holds. The
property: after ANY sequence of Consul operations, answers taken at any moments and folded in any
batches, once the last answer of each poll has been folded, the cache maps exactly what a fresh full
read of the same Consul maps (what ``--once`` on an empty host would apply). And at every moment
between: a check that Consul never had passing is never passing in the cache. The two health polls
answer separately (a step may take one state's answer and not the other's), so a check moving
between warning and critical can be in neither answer for a while; an instance has a second check
(``check2``), so that such a check could be taken for passing in place beside one that is listed.

Faults are operations too (issue 18): a service whose ``/v1/health/service`` read answers 500 for a
while (``fail``/``heal``; a node's by-node read: ``failnode``), names Consul accepts that no URL path can read (service ``x//y``, node
``n//3``: the model answers 301 as Go's path cleaning does), a node re-registered with a new address
(``readdress``: only the nodes index moves), and a service name that differs from another only in
letter case (``web`` beside ``Web``: ``/v1/health/service/NAME`` matches ignoring case, as Consul 1.8
does; which of the two names an upstream is the mapping's rule, the same in both reads). Once every
fault has healed and the retry timer's ``reread`` event is folded, the property must hold again.

``ModelConsul`` is a stand-in, not Consul: a small in-memory model of the state the watcher reads
(instances, service and node checks, the three X-Consul-Index counters) answering the endpoints
the watcher uses in their real shape. It exists so that hypothesis can try thousands of
interleavings in seconds and shrink a failure to a few steps; the same property runs against a
real Consul agent and a real nginx in tests/integration/test_watcher_bursts.py.
"""

from __future__ import annotations

import json
import posixpath
from urllib.parse import unquote, urlsplit

from hypothesis import example, given, settings
from hypothesis import strategies as st

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import ConsulClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ConsulError
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import HEALTH_POLLS, ConsulSource
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from tests.unit.property.strategies import count

NODES = {"n1": "10.1.0.1", "n2": "10.1.0.2", "n//3": "10.1.0.3"}   # "n//3": no path reads it by name
# "consul" is excluded by default: the watcher must skip it; "x//y": no path reads it; "web": "Web" in another case
SERVICES = ("Web", "Api", "Db", "Mq", "Kv", "consul", "x//y", "web")
POLLS = tuple(kind for kind, _state in HEALTH_POLLS) + ("catalog", "nodes")
ADDRESSES = ("10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.9")


def go_redirects(path):
    """True when Go's HTTP server would answer 301 for this (decoded) path: cleaning it changes it."""
    cleaned = posixpath.normpath(path)
    if path.endswith("/") and cleaned != "/":
        cleaned += "/"
    return cleaned != path


IDS = ("i1", "i2", "i3")


class ModelConsul:
    """An in-memory model of Consul's catalog and health state (see the module docstring)."""

    def __init__(self):
        # (node, id) -> {"Service", "Port", "Tags", "Meta"}
        self.instances = {("n1", "consul"): {"Service": "consul", "Port": 8300, "Tags": [], "Meta": {}}}  # the agent
        self.checks = {}      # (node, check id) -> {"ServiceID", "ServiceName", "Status"}
        self.services_index = 10
        self.checks_index = 10
        self.nodes = dict(NODES)
        self.nodes_index = 10
        self.failing_reads = set()   # services whose /v1/health/service read answers 500
        self.failing_nodes = set()   # nodes whose /v1/catalog/node-services read answers 500
        self.ever_passed = set()     # (node, check id) of every check that was passing at some moment

    # -- operations ------------------------------------------------------------------------------------
    def register(self, node, instance_id, service, port, tags, meta, status):
        key = (node, instance_id)
        old = self.instances.get(key)
        new = {"Service": service, "Port": port, "Tags": list(tags), "Meta": dict(meta)}
        if old != new:
            self.instances[key] = new
            self.services_index += 1
        check = {"ServiceID": instance_id, "ServiceName": service, "Status": status}
        if old is not None and old["Service"] != service:  # the same ID under another name: its checks move
            self.checks.pop((node, f"service:{instance_id}"), None)
            if self.checks.pop((node, f"service:{instance_id}:2"), None) is not None:
                self.checks_index += 1
        self._put_check(node, f"service:{instance_id}", check)

    def _put_check(self, node, check_id, check):
        if check["Status"] == "passing":
            self.ever_passed.add((node, check_id))
        if self.checks.get((node, check_id)) != check:
            self.checks[(node, check_id)] = check
            self.checks_index += 1

    def second_check(self, node, instance_id, status):
        """The instance's second check (added, or set to ``status``)."""
        instance = self.instances.get((node, instance_id))
        if instance is not None:
            self._put_check(node, f"service:{instance_id}:2",
                            {"ServiceID": instance_id, "ServiceName": instance["Service"], "Status": status})

    def deregister(self, node, instance_id):
        if self.instances.pop((node, instance_id), None) is not None:
            self.services_index += 1
        for check_id in (f"service:{instance_id}", f"service:{instance_id}:2"):
            if self.checks.pop((node, check_id), None) is not None:
                self.checks_index += 1

    def set_status(self, node, instance_id, status):
        check = self.checks.get((node, f"service:{instance_id}"))
        if check is not None and check["Status"] != status:
            self._put_check(node, f"service:{instance_id}", dict(check, Status=status))

    def readdress(self, node, address):
        if self.nodes[node] != address:  # a node re-registered: only the nodes index moves (measured on 1.8.7)
            self.nodes[node] = address
            self.nodes_index += 1

    def node_status(self, node, status):
        self._put_check(node, "serfHealth", {"ServiceID": "", "ServiceName": "", "Status": status})

    # -- answers ---------------------------------------------------------------------------------------
    def _check_list(self, keys=None):
        return [{"Node": node, "CheckID": check_id, **dict(check)} for (node, check_id), check in sorted(self.checks.items())
                if keys is None or (node, check_id) in keys]

    def catalog_answer(self):
        names = {}
        for instance in self.instances.values():
            names.setdefault(instance["Service"], set()).update(instance["Tags"])
        return {name: sorted(tags) for name, tags in names.items()}, self.services_index

    def state_answer(self, state):
        """``/v1/health/state/STATE``: the checks in that state, at the checks' index."""
        return [check for check in self._check_list() if check["Status"] == state], self.checks_index

    def nodes_answer(self):
        present = {"n1"} | {node for node, _id in self.instances} | {node for node, _check in self.checks}
        return [{"Node": node, "Address": self.nodes[node]} for node in sorted(present)], self.nodes_index

    def _service_entry(self, node, instance_id, instance):
        return {"ID": instance_id, "Service": instance["Service"], "Address": "", "Port": instance["Port"],
                "Tags": list(instance["Tags"]), "Meta": dict(instance["Meta"])}

    def route(self, url):
        parts = urlsplit(url)
        path = unquote(parts.path)
        if go_redirects(path):
            return 301, b"<a href>Moved Permanently</a>", {"location": posixpath.normpath(path)}
        if path == "/v1/catalog/services":
            data, index = self.catalog_answer()
            data.setdefault("consul", [])  # as in every datacenter: the servers' service (the client checks it)
        elif path == "/v1/health/state/any":
            data, index = self._check_list(), self.checks_index
        elif path in ("/v1/health/state/critical", "/v1/health/state/warning"):
            data, index = self.state_answer(path.rsplit("/", 1)[1])
        elif path.startswith("/v1/health/service/"):
            name = path[len("/v1/health/service/"):]
            if name in self.failing_reads:
                return 500, b"rpc error: injected", {}
            data = []
            for (node, instance_id), instance in sorted(self.instances.items()):
                if instance["Service"].lower() != name.lower():   # Consul 1.8 matches the name ignoring case
                    continue
                checks = [check for check in self._check_list()
                          if check["Node"] == node and check["ServiceID"] in ("", instance_id)]
                data.append({"Node": {"Node": node, "Address": self.nodes[node]},
                             "Service": self._service_entry(node, instance_id, instance), "Checks": checks})
            index = max(self.services_index, self.checks_index)
            if name == "consul" and not data:  # the servers' instance, which the client reads to tell ACL filtering
                data = [{"Node": {"Node": "server", "Address": "127.0.0.9"},
                         "Service": {"ID": "consul", "Service": "consul", "Port": 8300}, "Checks": []}]
        elif path == "/v1/catalog/nodes":
            data, index = self.nodes_answer()
        elif path.startswith("/v1/catalog/node-services/"):
            node = path[len("/v1/catalog/node-services/"):]
            if node in self.failing_nodes:
                return 500, b"rpc error: injected", {}
            data = {"Node": {"Node": node, "Address": self.nodes[node]},
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
    source.watch_client = source.client   # its catch-up reads of a health state (the polls are the test's)
    return source


def health_events(model):
    """What the two health polls would answer now, as their events."""
    return [(kind, *model.state_answer(state), None) for kind, state in HEALTH_POLLS]


def mapped(source):
    result = source.mapping()
    return (dict(result.upstreams), sorted(result.empty),
            sorted((item["what"], item["why"]) for item in result.skipped))


def assert_never_passing_unless_it_was(source, model):
    """No check the cache holds as passing for an instance (or node) it holds was never passing in Consul."""
    for key, pairs in source.checks.items():
        if key[1] and not any(key in instances for instances in source.entries.values()):
            continue
        wrong = [check_id for check_id, status in pairs if status == "passing" and (key[0], check_id) not in model.ever_passed]
        assert not wrong, f"{key}: {wrong} held as passing, never passing in Consul"


def failing_checks(source):
    """The checks not passing the cache holds for the instances (and their nodes) it holds. (A passing
    check the cache never read, say a node check registered passing, is the same as none: no answer
    brings it, and when it fails the health answer lists a check the cache does not know.)"""
    keys = {key for instances in source.entries.values() for key in instances if key[0]}
    keys |= {(node, "") for node, _id in keys}
    found = {key: tuple(pair for pair in source.checks.get(key, ()) if pair[1] != "passing") for key in keys}
    return {key: pairs for key, pairs in sorted(found.items()) if pairs}


class Loop:
    """What the daemon's loop does with the source: a batch that raises a Consul error schedules a full
    read (after a backoff: the ``fullread`` step), which is retried until it succeeds."""

    def __init__(self, source, model):
        self.source = source
        self.model = model
        self.full_read_due = False

    def fold(self, batch):
        try:
            self.source.apply_events(batch)
        except ConsulError:
            self.full_read_due = True
        assert_never_passing_unless_it_was(self.source, self.model)

    def full_read(self, due_or_not=False):
        """The full read a failed batch scheduled (``due_or_not``: the periodic one, due or not)."""
        if self.full_read_due or due_or_not:
            try:
                self.source.refresh_all()
                self.full_read_due = False
            except ConsulError:
                self.full_read_due = True


statuses = st.sampled_from(["passing", "passing", "warning", "critical"])
operations = st.one_of(
    st.tuples(st.just("register"), st.sampled_from(sorted(NODES)), st.sampled_from(IDS), st.sampled_from(SERVICES),
              st.sampled_from([8080, 8081, 9090]), st.sampled_from([(), ("gray=b",), ("gray=c",), ("gray=x y",)]),
              st.sampled_from([(), (("dyups_weight", "2"),), (("dyups_weight", "abc"),), (("dyups_backup", "true"),)]),
              statuses),
    st.tuples(st.just("deregister"), st.sampled_from(sorted(NODES)), st.sampled_from(IDS)),
    st.tuples(st.just("status"), st.sampled_from(sorted(NODES)), st.sampled_from(IDS), statuses),
    st.tuples(st.just("check2"), st.sampled_from(sorted(NODES)), st.sampled_from(IDS), statuses),
    st.tuples(st.just("node"), st.sampled_from(sorted(NODES)), statuses),
    st.tuples(st.just("readdress"), st.sampled_from(sorted(NODES)), st.sampled_from(ADDRESSES)),
)
faults = st.one_of(
    st.tuples(st.just("fail"), st.sampled_from(SERVICES)),    # this service's reads answer 500 from now on
    st.tuples(st.just("heal"), st.sampled_from(SERVICES)),
    st.tuples(st.just("failnode"), st.sampled_from(sorted(NODES))),   # this node's by-node read answers 500
)
steps = st.lists(st.one_of(
    operations, operations, faults,
    st.tuples(st.just("answer"), st.sampled_from(POLLS)),   # a long poll answers now
    st.tuples(st.just("reread")),                                           # the retry timer fires
    st.tuples(st.just("fullread")),                             # the full read a failed batch scheduled runs
    st.tuples(st.just("resync")),     # the periodic full read (consul_resync_interval), answers still queued
    st.tuples(st.just("sighup")),     # a new source and its full read; the old polls' answers still queued
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
    elif kind == "check2":
        model.second_check(step[1], step[2], step[3])
    elif kind == "node":
        model.node_status(step[1], step[2])
    elif kind == "readdress":
        model.readdress(step[1], step[2])
    elif kind == "fail":
        model.failing_reads.add(step[1])
    elif kind == "heal":
        model.failing_reads.discard(step[1])
    elif kind == "failnode":
        model.failing_nodes.add(step[1])


ROLLING_DEPLOY = (  # a new instance joins, the old one fails, both answers folded in one batch
    [("register", "n1", "i1", "Web", 8080, (), (), "passing")],
    [("register", "n2", "i2", "Web", 8080, (), (), "passing"), ("status", "n1", "i1", "critical"),
     ("answer", "health_critical"), ("answer", "catalog"), ("fold", 2)])
STALE_HEALTH_ANSWER = (  # an old answer folded after a read that saw newer checks, then the same status again
    [("register", "n1", "i1", "Web", 8080, (), (), "passing"), ("register", "n1", "i2", "Web", 8081, (), (), "passing")],
    [("status", "n1", "i1", "critical"), ("answer", "health_critical"), ("fold", 1), ("status", "n1", "i1", "passing"),
     ("register", "n1", "i3", "Web", 9090, (), (), "passing"), ("answer", "catalog"), ("fold", 1),
     ("status", "n1", "i1", "critical"), ("answer", "health_critical"), ("fold", 1)])


FAILED_READ = (  # issue 18, finding 1: Db's read fails while Db/i2 recovers, then Api/i1 fails, then Db heals
    [("register", "n1", "i1", "Api", 8080, (), (), "passing"), ("register", "n1", "i2", "Api", 8081, (), (), "passing"),
     ("register", "n2", "i1", "Db", 8080, (), (), "passing"), ("register", "n2", "i2", "Db", 8081, (), (), "critical")],
    [("fail", "Db"), ("status", "n2", "i2", "passing"), ("answer", "health_critical"), ("fold", 1),
     ("status", "n1", "i1", "critical"), ("answer", "health_critical"), ("fold", 1), ("fullread",)])
NODE_READDRESS = (  # issue 18, finding 3: only the nodes index moves
    [("register", "n2", "i1", "Web", 8080, (), (), "passing")],
    [("readdress", "n2", "10.1.0.9"), ("answer", "nodes"), ("fold", 1)])
ID_MOVES_BEFORE = (  # issue 18: an instance ID moves to a service that sorts before its old one, checks and all
    # (940f60b dropped the moved instance's checks from the cache; the next health answer lists the
    # critical check the cache no longer knows and Api is read again, so this converged there too:
    # tests/integration/test_watcher_full_read.py shows the dropped checks on a real agent)
    [("register", "n1", "i1", "Web", 8080, (), (), "critical"), ("register", "n1", "i2", "Web", 8081, (), (), "passing")],
    [("register", "n1", "i1", "Api", 8080, (), (), "critical"), ("answer", "catalog"), ("fold", 1),
     ("answer", "health_critical"), ("fold", 1), ("status", "n1", "i1", "passing"), ("answer", "health_critical"), ("fold", 1)])
OLD_CATALOG_AFTER_SIGHUP = (  # the restart-burst long profile, 2026-12-07: an old poll's catalog answer
    # (before Api's registration) still queued when a SIGHUP's full read saw Api; the new poll's first
    # answer, on the cache's own index, came in the same batch and was skipped as "no news", so the old
    # answer was folded: Api dropped, and no later answer came to bring it back
    [("register", "n1", "i1", "Web", 8080, (), (), "passing")],
    [("answer", "catalog"), ("register", "n2", "i1", "Api", 8080, (), (), "passing"), ("sighup",),
     ("answer", "catalog"), ("fold", 2)])
TWO_STATE_RACE = (  # two checks on one instance, one moves warning -> critical: the warning poll's answer
    # (without it) comes first, the critical poll's last answer is older (without it too): in neither,
    # the instance was updated in place with the other check listed and the moving one taken for passing
    [("register", "n1", "i1", "Web", 8080, (), (), "warning"), ("check2", "n1", "i1", "critical")],
    [("status", "n1", "i1", "critical"), ("answer", "health_warning"), ("fold", 1),
     ("status", "n1", "i1", "warning"), ("answer", "health_critical"), ("fold", 1)])
MOVED_BACK_BEFORE_THE_CATCH_UP = (  # the critical answer (i1's first check warning then) is taken, the check goes
    # critical again, then the fold's catch-up read of the warning state: each view lacks the check (the
    # critical one is older than the move back), so the views of different indexes cannot say it passes
    [("register", "n1", "i1", "Web", 8080, (), (), "critical"), ("check2", "n1", "i1", "critical")],
    [("status", "n1", "i1", "warning"), ("answer", "health_critical"), ("status", "n1", "i1", "critical"),
     ("fold", 1)])
ONE_STATE_AFTER_A_FULL_READ = (  # after a full read (by node: more services than nodes), the critical poll's
    # first answer, on the full read's index, comes alone: the warning part is the full read's until the
    # warning poll answers, not empty (i1's warning check absent from a union of one index, beside its
    # critical one listed, was taken for passing in place)
    [("register", "n1", "i1", "Web", 8080, (), (), "warning"), ("check2", "n1", "i1", "critical"),
     ("register", "n2", "i2", "Api", 8080, (), (), "passing"), ("register", "n2", "i3", "Db", 8080, (), (), "passing"),
     ("register", "n2", "i4", "Mq", 8080, (), (), "passing"), ("register", "n2", "i5", "Kv", 8080, (), (), "passing")],
    [("answer", "health_critical"), ("fold", 1)])
OLD_CATALOG_AFTER_RESYNC = (  # the same with the periodic full read: an answer read just before it and the
    # poll's next one (on the full read's index) folded together after it
    [("register", "n1", "i1", "Web", 8080, (), (), "passing")],
    [("answer", "catalog"), ("register", "n2", "i1", "Api", 8080, (), (), "passing"), ("resync",),
     ("answer", "catalog"), ("fold", 2)])


@settings(deadline=None)
@given(st.lists(operations, max_size=6), steps)
@example(*ROLLING_DEPLOY)
@example(*STALE_HEALTH_ANSWER)
@example(*FAILED_READ)
@example(*NODE_READDRESS)
@example(*ID_MOVES_BEFORE)
@example(*OLD_CATALOG_AFTER_SIGHUP)
@example(*OLD_CATALOG_AFTER_RESYNC)
@example(*TWO_STATE_RACE)
@example(*ONE_STATE_AFTER_A_FULL_READ)
@example(*MOVED_BACK_BEFORE_THE_CATCH_UP)
def test_any_interleaving_of_answers_and_reads_converges_to_a_fresh_read(setup, sequence):
    count("watcher events: any interleaving")
    count("watcher events: operations in those (setup and steps)", len(setup) + len(sequence))
    model = ModelConsul()
    for step in setup:
        apply(model, step)
    source = source_on(model)
    source.refresh_all()
    loop = Loop(source, model)
    queue, delivered = [], dict.fromkeys(POLLS)
    answers = {"health_critical": lambda: model.state_answer("critical"),
               "health_warning": lambda: model.state_answer("warning"),
               "catalog": model.catalog_answer, "nodes": model.nodes_answer}

    def answer(kind):  # what a long poll puts on the queue: only an answer with a new index
        data, index = answers[kind]()
        if index != delivered[kind]:
            delivered[kind] = index
            queue.append((kind, data, index, None))

    for step in sequence:
        if step[0] == "answer":
            answer(step[1])
        elif step[0] == "reread":
            queue.append(("reread", None, None))
        elif step[0] == "fullread":
            loop.full_read()
            assert_never_passing_unless_it_was(loop.source, model)
        elif step[0] == "resync":
            loop.full_read(due_or_not=True)
            assert_never_passing_unless_it_was(loop.source, model)
        elif step[0] == "sighup":   # the daemon's reload: a new source on the same queue, its own full read,
            loop.source = source_on(model)   # then its polls, whose first answers always come
            loop.full_read(due_or_not=True)
            delivered = dict.fromkeys(delivered)
        elif step[0] == "fold":
            batch, queue[:] = queue[:step[1]], queue[step[1]:]
            if batch:
                loop.fold(batch)
        else:
            apply(model, step)
    model.failing_reads.clear()   # every fault heals; the retry timer then fires once
    model.failing_nodes.clear()
    for kind in POLLS:
        answer(kind)
    queue.append(("reread", None, None))
    while queue:
        batch, queue[:] = queue[:2], queue[2:]
        loop.fold(batch)
    loop.full_read()
    fresh = source_on(model)
    fresh.refresh_all()
    source = loop.source
    assert mapped(source) == mapped(fresh)
    assert failing_checks(source) == failing_checks(fresh)
    assert not source.unread
