"""Properties of what the project does with Consul's answers, whatever they hold (hypothesis).

Consul's answers are input like any other: a broken agent, a proxy in between or a hostile service
registration can put anything in them. The HTTP call is replaced by ``FuzzTransport``, a stand-in
that answers what hypothesis generates (status, body, X-Consul-Index); everything above it is the
real code: the Consul client, the blocking-query rules, the mapping, and the watcher's cache.

* the client returns an answer of the documented shape or raises a ConsulError, nothing else;
* a blocking query never keeps an index that went backwards or to 0, and never misses a change;
* the mapping of any health entries gives only upstreams that validate again and render to a file
  that parses back to them; it raises nothing;
* the watcher's cache (ConsulSource) takes any answer: a ConsulError or a consistent state, and its
  mapping is valid. The same inputs reach the real watcher process in tests/resilience (fuzz).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from hypothesis import example, given
from hypothesis import strategies as st

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _consul_mapping as mapping
from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import (
    BlockingQuery, ConsulAnswer, ConsulClient)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_instance import health_index
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ConsulError, ConsulUnavailable, \
    TransportError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_problem
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import ConsulSource
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from tests.unit.property.strategies import HOSTILE_CHARS, count, has_forbidden, json_values, valid_names


class FuzzTransport:
    """A stand-in for the HTTP call: answers from ``route(url)`` -> (status, body, headers) or raises."""

    def __init__(self, route):
        self.route = route
        self.calls = 0

    def __call__(self, method, url, body, timeout, extra_headers=None):
        self.calls += 1
        answer = self.route(url)
        if isinstance(answer, Exception):
            raise answer
        return answer


def encoded(value):
    return json.dumps(value).encode()


statuses = st.one_of(st.just(200), st.sampled_from([200, 200, 204, 301, 400, 403, 404, 429, 500, 502, 503]))
indexes = st.one_of(st.none(), st.integers(-5, 2 ** 64).map(str), st.text(" 0123456789-+xabc.\u0661", max_size=6))
bodies = st.one_of(json_values.map(encoded), st.binary(max_size=40),
                   st.text(max_size=40).map(lambda text: text.encode("utf-8", "surrogatepass")))

addresses = st.one_of(st.sampled_from(["127.0.0.1", "10.0.0.7", "::1", "app.internal", "", "999.1.1.1", "a b",
                                       "1.2.3.4;", "x{y", "127.0.0.1:80", "[::1]"]), json_values)
ports = st.one_of(st.integers(-1, 70000), st.sampled_from([80, 8080, 0, True]), json_values)
tags = st.one_of(st.lists(st.sampled_from(["gray=b", "gray=default", "gray=", "gray=a b", "gray=x;y", "other",
                                           "gray=c", "gray=" + "z" * 130]), max_size=3), json_values)
metas = st.one_of(st.dictionaries(st.sampled_from(["dyups_weight", "dyups_backup", "dyups_down", "dyups_bakup",
                                                   "version", "dyups_fail_timeout"]),
                                  st.one_of(st.sampled_from(["2", "0", "true", "10s", "x", ""]), json_values),
                                  max_size=3), json_values)
check_statuses = st.one_of(st.sampled_from(["passing", "warning", "critical", "maintenance", ""]), json_values)
service_names = st.one_of(valid_names, st.sampled_from(["Web", "Web_b", "a b", "x{y", ""]),
                          st.text(HOSTILE_CHARS + "ab", max_size=6))


@st.composite
def health_entries(draw, service="Web"):
    """One /v1/health/service/NAME entry: mostly the real shape, with any field possibly wrong."""
    node_name = draw(st.one_of(st.sampled_from(["n1", "n2", "n3"]), json_values))
    instance_id = draw(st.one_of(st.sampled_from(["i1", "i2", "i3", "i4"]), json_values))
    node = {"Node": node_name, "Address": draw(addresses)}
    svc = {"ID": instance_id, "Service": service, "Address": draw(addresses), "Port": draw(ports),
           "Tags": draw(tags), "Meta": draw(metas)}
    checks = draw(st.lists(st.fixed_dictionaries({
        "Node": st.just(node_name), "CheckID": st.sampled_from(["serfHealth", "service:i1", "c"]),
        "Status": check_statuses, "ServiceID": st.one_of(st.just(instance_id), st.just(""), json_values),
        "ServiceName": st.one_of(st.just(service), json_values)}), max_size=3))
    entry = {"Node": node, "Service": svc, "Checks": checks}
    for key in draw(st.lists(st.sampled_from(["Node", "Service", "Checks"]), max_size=2, unique=True)):
        if draw(st.booleans()):
            del entry[key]
        else:
            entry[key] = draw(json_values)
    return entry


def assert_valid_mapping(result):
    for name, upstream in result.upstreams.items():
        assert name_problem(name) is None and upstream.name == name
        assert build_upstream(name, [s.spec() for s in upstream.servers],
                              [d.text for d in upstream.directives]) == upstream
        assert not any(has_forbidden(server.spec()) for server in upstream.servers)
    assert not set(result.upstreams) & set(result.empty)
    assert _upstream_file.parse(_upstream_file.render(result.upstreams.values())) == result.upstreams


# -- the client -----------------------------------------------------------------------------------------
@given(statuses, bodies, indexes, st.sampled_from(["catalog", "state", "service"]))
def test_a_consul_answer_is_an_answer_of_the_right_shape_or_a_consul_error(status, body, index, endpoint):
    count("consul client: any answer")
    headers = {} if index is None else {"x-consul-index": index}
    client = ConsulClient("http://127.0.0.1:8500", FuzzTransport(lambda url: (status, body, headers)))
    call = {"catalog": client.catalog_services, "state": client.health_state_any,
            "service": lambda: client.health_service("Web")}[endpoint]
    try:
        answer = call()
    except ConsulError:
        return
    assert isinstance(answer, ConsulAnswer) and status == 200
    assert answer.index is None or (isinstance(answer.index, int) and answer.index >= 0)
    if endpoint == "catalog":
        assert isinstance(answer.data, dict) and answer.data
        assert all(tags is None or all(isinstance(t, str) for t in tags) for tags in answer.data.values())
    else:
        assert isinstance(answer.data, list) and all(isinstance(item, dict) for item in answer.data)


@given(st.lists(st.one_of(st.integers(0, 40), st.none()), min_size=1, max_size=30))
def test_a_blocking_query_never_keeps_a_stale_index_and_sees_every_change(sequence):
    count("blocking query: index sequences")
    answers = iter(sequence)
    sent = []

    def route(url):
        sent.append(url)
        value = next(answers)
        if value is None:
            return TransportError("connection refused")
        return 200, b"[]", {"x-consul-index": str(value)}

    client = ConsulClient("http://127.0.0.1:8500", FuzzTransport(route))
    query = BlockingQuery(client, "/v1/health/state/any", wait=5, sleep=lambda seconds: None)
    last = None
    for value in sequence:
        try:
            result = query.poll()
        except ConsulUnavailable:
            assert value is None and query.index == 0    # after no answer: a plain read next
            continue
        if value == 0 or (last is not None and value < last):
            assert query.index == 0 and result.changed and result.reset
        else:
            assert query.index == value
            assert result.changed == (value != last)
        last = value
    for url in sent:
        assert "index=" not in url or "wait=" in url     # a blocking query always says how long it may wait


# -- the mapping ----------------------------------------------------------------------------------------
def consul_route(answers, checks):
    """route(url) for FuzzTransport: ``answers`` by path (a key ending in "/" is a prefix) at index 5;
    any other path (/v1/health/state/any) answers ``checks`` at index 6."""
    def route(url):
        path = urlsplit(url).path
        for key, value in answers.items():
            if path == key or (key.endswith("/") and path.startswith(key)):
                return 200, encoded(value), {"x-consul-index": "5"}
        return 200, encoded(checks), {"x-consul-index": "6"}
    return route


def refreshed_validly(source):
    """refresh_all(): False on a ConsulError (an answer refused is fine), else the mapping must be valid."""
    try:
        source.refresh_all()
    except ConsulError:
        return False
    assert_valid_mapping(source.mapping())
    return True


@given(st.dictionaries(service_names, st.one_of(st.lists(health_entries(), max_size=5), json_values), max_size=4))
@example({"Web": [{"Node": {"Node": "n1", "Address": "127.0.0.1"},
                   "Service": {"ID": "i1", "Service": "Web", "Port": 80},
                   "Checks": [{"Status": [], "ServiceID": "i1"}]}]})
def test_the_mapping_of_any_health_entries_raises_nothing_and_gives_valid_upstreams(health):
    count("mapping: any health entries")
    assert_valid_mapping(mapping.map_services(health))


@given(st.lists(st.one_of(st.fixed_dictionaries({"Node": st.sampled_from(["n1", "n2"]),
                                                 "CheckID": st.sampled_from(["a", "b"]),
                                                 "Status": check_statuses, "ServiceID": json_values,
                                                 "ServiceName": json_values}), json_values), max_size=8),
       st.lists(json_values, max_size=4))
def test_check_snapshots_of_any_checks_raise_nothing(checks, other):
    count("mapping: check snapshots")
    for answer in (checks, other):
        owners = {}
        index = health_index(answer, owners=owners)
        assert set(owners) == set(index) and all(isinstance(name, str) for name in owners.values())
        assert all(isinstance(part, str) for pairs in index.values() for pair in pairs for part in pair)


# -- the watcher's cache --------------------------------------------------------------------------------
def make_source(route):
    settings = watcher_settings.build({"consul_url": "http://127.0.0.1:1", "status_listen": "",
                                       "upstream_file": "/nonexistent/upstreams.conf"})
    source = ConsulSource(settings, Metrics())
    source.client = ConsulClient(settings.consul_url, FuzzTransport(route))
    return source


@given(st.dictionaries(service_names, st.one_of(st.lists(st.text("ab=", max_size=4), max_size=2), json_values),
                       min_size=1, max_size=3),
       st.lists(health_entries(), max_size=4),
       st.lists(st.one_of(st.fixed_dictionaries({"Node": st.sampled_from(["n1", "n2", "n3"]),
                                                 "CheckID": st.sampled_from(["service:i1", "c"]),
                                                 "Status": check_statuses, "ServiceID": json_values,
                                                 "ServiceName": st.sampled_from(["Web", "Other"])}),
                          json_values), max_size=6))
@example({"Web": []}, [{"Node": "n1", "Service": {"ID": "i1", "Service": "Web", "Address": "127.0.0.1", "Port": 80},
                        "Checks": []}], [])
def test_the_watcher_cache_takes_any_answer_and_maps_it_validly(catalog, entries, checks):
    count("watcher cache: any answers")

    source = make_source(consul_route({"/v1/catalog/services": catalog, "/v1/health/service/": entries}, checks))
    if not refreshed_validly(source):
        return
    try:
        source.apply_events([("health_critical", checks, 7), ("health_warning", checks, 7)])
    except ConsulError:
        return
    assert_valid_mapping(source.mapping())


@st.composite
def node_services_answers(draw):
    """One /v1/catalog/node-services/NODE answer: mostly the real shape, any field possibly wrong."""
    entries = draw(st.lists(health_entries(service=draw(st.sampled_from(["Web", "Api", "Other"]))), max_size=3))
    node = next((entry["Node"] for entry in entries if isinstance(entry.get("Node"), dict)), {"Node": "n1"})
    services = [entry["Service"] for entry in entries if "Service" in entry]
    for service in services:
        if isinstance(service, dict) and draw(st.booleans()):
            service[draw(st.sampled_from(["Service", "ID"]))] = draw(json_values)
    return draw(st.one_of(st.just({"Node": node, "Services": services}), st.just({"Node": None, "Services": None}),
                          json_values))


@given(st.lists(st.one_of(st.fixed_dictionaries({"Node": st.sampled_from(["n1", "n2"])}), json_values), max_size=3),
       node_services_answers(),
       st.lists(st.one_of(st.fixed_dictionaries({"Node": st.one_of(st.sampled_from(["n1", "n2"]), json_values),
                                                 "CheckID": st.sampled_from(["service:i1", "serfHealth"]),
                                                 "Status": check_statuses,
                                                 "ServiceID": st.one_of(st.sampled_from(["i1", "i2", ""]), json_values),
                                                 "ServiceName": st.sampled_from(["Web", "Api"])}),
                          json_values), max_size=6))
def test_the_full_read_by_node_takes_any_answer_and_maps_it_validly(nodes, node_answer, checks):
    count("watcher full read by node: any answers")
    catalog = {name: [] for name in ("consul", "Web", "Api", "Other", "Svc4", "Svc5", "Svc6", "Svc7")}

    source = make_source(consul_route({"/v1/catalog/services": catalog, "/v1/catalog/nodes": nodes,
                                       "/v1/catalog/node-services/": node_answer, "/v1/health/service/": []}, checks))
    refreshed_validly(source)
