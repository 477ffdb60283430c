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


def test_state_any_asks_what_the_watcher_asks():
    from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import FAILING_FILTER

    health, catalog = bench.queries_of("state-any", [])
    url = urlsplit(health[0])
    assert url.path == "/v1/health/state/any"
    assert parse_qs(url.query, keep_blank_values=True) == {"filter": [FAILING_FILTER], "stale": [""]}
    assert catalog == ("/v1/catalog/services?stale", None)


def test_per_service_watches_the_routed_services_and_the_flips_toggle_passing_ones():
    routed = bench.routed_services(10)
    assert len(routed) == 10 and all(number % bench.FAILING_EVERY for number in routed)
    paths = [path for path, _service in bench.queries_of("per-service", routed)]
    assert paths[:2] == ["/v1/health/service/svc-00001?stale", "/v1/health/service/svc-00002?stale"]
    assert paths[-1] == "/v1/catalog/services?stale" and len(paths) == 11
