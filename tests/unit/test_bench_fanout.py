# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/benchmarks/bench_fanout.py: the load model reads answers as HTTP/1.1 sends them
(tests/resilience/loadgen.py's reader), counts their bytes, and asks what the watcher asks (no Consul
here: the benchmark itself runs against a real cluster)."""

from __future__ import annotations

import asyncio
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.benchmarks import bench_fanout as bench

CHUNKED = (b"HTTP/1.1 200 OK\r\nX-Consul-Index: 42\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"5\r\n[1,2,\r\n3;ext=1\r\n3]\n\r\n0\r\n\r\n")
SIZED = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 9\r\n\r\nno leader"


def read(*answers):
    async def run():
        reader = asyncio.StreamReader()
        for answer in answers:
            reader.feed_data(answer)
        reader.feed_eof()
        return [await bench.read_response_counted(reader) for _answer in answers]
    return asyncio.run(run())


def test_answers_are_read_whole_and_counted_as_sent():
    (status, headers, size, body), (status2, _headers2, size2, body2) = read(CHUNKED, SIZED)
    assert (status, headers["x-consul-index"], size, body) == (200, "42", len(CHUNKED), b"[1,2,3]\n")
    assert (status2, size2, body2) == (500, len(SIZED), b"no leader")


def test_a_cut_answer_is_an_error():
    with pytest.raises(asyncio.IncompleteReadError):
        read(CHUNKED[:-7])


def test_state_critical_asks_what_the_watcher_asks_and_state_any_what_it_asked_before():
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import HEALTH_POLLS

    health, catalog = bench.queries_of("state-any", [])
    url = urlsplit(health[0])
    assert url.path == "/v1/health/state/any"
    assert parse_qs(url.query, keep_blank_values=True) == {"filter": ['Status != "passing"'], "stale": [""]}
    assert catalog == ("/v1/catalog/services?stale", None)
    *states, catalog = bench.queries_of("state-critical", [])
    assert [path for path, _service in states] == [f"/v1/health/state/{state}?stale" for _kind, state in HEALTH_POLLS]
    assert catalog == ("/v1/catalog/services?stale", None)


def test_per_service_watches_the_routed_services_and_the_flips_toggle_passing_ones():
    routed = bench.routed_services(10)
    assert len(routed) == 10 and all(number % bench.FAILING_EVERY for number in routed)
    paths = [path for path, _service in bench.queries_of("per-service", routed)]
    assert paths[:2] == ["/v1/health/service/svc-00001?stale", "/v1/health/service/svc-00002?stale"]
    assert paths[-1] == "/v1/catalog/services?stale" and len(paths) == 11


def test_per_service_include_holds_no_catalog_and_the_publisher_follower_one_journal_key():
    routed = bench.routed_services(3)
    assert [path for path, _service in bench.queries_of("per-service-include", routed)] == [
        "/v1/health/service/svc-00001?stale", "/v1/health/service/svc-00002?stale", "/v1/health/service/svc-00003?stale"]
    assert bench.queries_of("publisher", routed) == [("/v1/kv/swk/journal?stale", None)]
    roles = [bench.role_of(path) for path, _service in bench.queries_of("state-critical", routed)]
    assert roles == ["failing", "warning", "catalog"]
    assert [bench.triggers(strategy, event) for strategy, event in (
        ("state-any", "flip"), ("state-any", "register"), ("per-service", "register"), ("publisher", "flip"))] == [
        "failing", "catalog", "service", "journal"]


def test_registration_events_add_then_remove_a_second_instance_on_the_node_of_the_first():
    register, deregister = bench.instance_ops(41, True), bench.instance_ops(41, False)
    service = register[0]["Service"]
    assert (service["Node"], service["Service"]["ID"], service["Service"]["Service"]) == (
        "node-0002", "svc-00041-2", "svc-00041")
    assert register[1]["Check"]["Check"]["Status"] == "passing"
    assert [op.get("Check", op.get("Service"))["Verb"] for op in deregister] == ["delete", "delete"]
    plan = bench.event_plan(["flip", "register", "deregister"], 2, [1, 2, 3], {1: "passing", 2: "critical", 3: "passing"})
    assert [(event, number, status) for event, number, _ops, status in plan] == [
        ("flip", 1, "critical"), ("flip", 2, "passing"), ("register", 1, None), ("register", 2, None),
        ("deregister", 1, None), ("deregister", 2, None)]


def test_the_publisher_keeps_the_passing_servers_only():
    body = ('[{"Node": {"Address": "10.0.0.1"}, "Service": {"Address": "", "Port": 80}, "Checks": [{"Status": "passing"}]},'
            ' {"Node": {"Address": "10.0.0.2"}, "Service": {"Address": "10.9.9.9", "Port": 81},'
            ' "Checks": [{"Status": "critical"}]}]')
    assert bench.compact_upstream(body.encode()) == '{"servers":["10.0.0.1:80"]}'
