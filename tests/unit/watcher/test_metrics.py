"""The watcher's metrics (plugins/watcher/metrics.py): the histogram Consul answer -> change applied,
the process_* metrics, and the opt-in metrics listener with its allow list (settings checked too)."""

import os
import re
import socket
import time
import urllib.error
import urllib.request

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.watcher import metrics as m
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as s
from tests.support.monitoring import get_from
from tests.support.ports import free_port


def samples(text):
    """{name{labels}: float} of a Prometheus text exposition."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def test_histogram_renders_cumulative_buckets_sum_and_count():
    histogram = m.Histogram((0.001, 0.01, 1.0))
    for value in (0.0005, 0.001, 0.005, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.samples() == [
        ("_bucket", {"le": "0.001"}, 2), ("_bucket", {"le": "0.01"}, 3), ("_bucket", {"le": "1.0"}, 4),
        ("_bucket", {"le": "+Inf"}, 5), ("_sum", {}, 3.5065), ("_count", {}, 5)]


def test_latency_buckets_span_a_millisecond_to_thirty_seconds():
    assert m.LATENCY_BUCKETS[0] == 0.001 and m.LATENCY_BUCKETS[-1] == 30.0
    assert list(m.LATENCY_BUCKETS) == sorted(set(m.LATENCY_BUCKETS))


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_change_is_timed_from_the_consul_answer_to_its_post():
    metrics = m.Metrics()
    clock = Clock()
    metrics.latency.clock = clock
    metrics.latency.folded(100.0)       # the batch read at 100.0 changed the mapping
    metrics.latency.folded(100.5)       # a later answer in the same batch: the earliest counts
    clock.now = 100.2
    metrics.latency.taken({"Web", "Api"})
    metrics.latency.settle({"Web", "Api"})
    assert metrics.change_applied("Web") == pytest.approx(0.2)    # answered at 100.2
    clock.now = 102.0
    assert metrics.change_applied("Api") == pytest.approx(2.0)    # answered at 102.0 (a retry, say)
    assert metrics.change_applied("Other") is None                # a drift repair: counted, not timed
    found = samples(metrics.prometheus())
    name = "swallowkeeper_watcher_consul_to_applied_seconds"
    assert found[f"{name}_count"] == 2
    assert found[f"{name}_sum"] == pytest.approx(2.2)
    assert found[f'{name}_bucket{{le="0.25"}}'] == 1
    assert found[f'{name}_bucket{{le="2.5"}}'] == 2
    assert found[f'{name}_bucket{{le="+Inf"}}'] == 2
    assert found["swallowkeeper_watcher_changes_applied_total"] == 3


def test_names_left_with_nothing_to_send_are_forgotten():
    """A changed name whose sync sent nothing (same servers, or a held removal) must not be timed
    by an unrelated POST much later (a drift repair)."""
    latency = m.ChangeLatency(clock=Clock())
    latency.folded(50.0)
    latency.taken({"Web", "Held"})
    latency.settle({"Web"})
    assert latency.applied("Held") is None
    assert latency.applied("Web") == 50.0
    latency.folded(60.0)
    latency.taken(None)                 # a full read: not timed
    assert latency.waiting == {} and latency.folded_at is None
    latency.folded(70.0)
    latency.taken({"Web"})
    latency.settle(None)                # the file write failed: the whole sync is retried, kept
    assert latency.waiting == {"Web": 70.0}


def test_stamped_queue_claims_when_the_earliest_answer_was_read():
    clock = Clock()
    events = m.StampedQueue(clock=clock)
    events.put(("wake", None))
    clock.now = 101.0
    events.put(("health", [], 7))
    clock.now = 102.0
    events.put(("catalog", {}, 8))
    assert [events.get()[0] for _unused in range(3)] == ["wake", "health", "catalog"]
    assert events.claim() == 101.0       # the wake-up does not count
    assert events.claim() is None


def test_process_metrics_are_read_from_proc_and_sane():
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc here")
    found = samples(m.Metrics().prometheus())
    assert 0 < found["process_cpu_seconds_total"] < time.process_time() + 1
    assert found["process_resident_memory_bytes"] > 1 << 20
    assert found["process_virtual_memory_bytes"] >= found["process_resident_memory_bytes"]
    assert abs(found["process_open_fds"] - len(os.listdir("/proc/self/fd")) + 1) <= 1
    assert found["process_max_fds"] >= found["process_open_fds"]
    assert found["process_threads"] >= 1
    assert time.time() - 86400 * 365 < found["process_start_time_seconds"] <= time.time() + 1


def test_every_metric_has_help_and_type():
    text = m.Metrics().prometheus()
    typed = re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M)
    helped = re.findall(r"^# HELP (\S+) ", text, re.M)
    assert [name for name, _kind in typed] == helped
    assert ("swallowkeeper_watcher_consul_to_applied_seconds", "histogram") in typed
    assert ("process_cpu_seconds_total", "counter") in typed


def test_metrics_listener_answers_the_allow_list_only():
    port = free_port("127.0.0.2")
    metrics = m.Metrics()
    server = m.MetricsServer(f"127.0.0.2:{port}", ["127.0.0.3/32"], metrics).start()
    try:
        answer = get_from("127.0.0.2", port, source="127.0.0.3")
        assert answer.startswith("HTTP/1.0 200") and "swallowkeeper_watcher_syncs_total 0" in answer
        assert get_from("127.0.0.2", port, source="127.0.0.4") == ""   # closed unanswered
        assert get_from("127.0.0.2", port, "/status", source="127.0.0.3").startswith("HTTP/1.0 404")
        request = urllib.request.Request(f"http://127.0.0.2:{port}/release", method="POST")
        with pytest.raises(Exception) as refused:   # from 127.0.0.1: not allowed, no answer
            urllib.request.urlopen(request, timeout=5)
        assert "release" not in str(refused.value)
    finally:
        server.stop()


def test_metrics_listener_on_ipv6():
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
            port = probe.getsockname()[1]
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    for allow, answered in ((["::1/128"], True), (["127.0.0.0/8"], False)):
        server = m.MetricsServer(f"[::1]:{port}", allow, m.Metrics()).start()
        try:
            answer = get_from("::1", port, source=None)
            assert answer.startswith("HTTP/1.0 200") if answered else answer == "", (allow, answer[:100])
        finally:
            server.stop()


def test_allow_list_matches_ipv4_clients_of_an_ipv6_socket():
    networks = [m.ipaddress.ip_network("10.0.0.0/8"), m.ipaddress.ip_network("fd00::/8")]
    assert m.allowed("::ffff:10.1.2.3", networks)
    assert m.allowed("fd00::1", networks)
    assert not m.allowed("11.0.0.1", networks)
    assert not m.allowed("not an address", networks)


@pytest.mark.parametrize("values, fragment", [
    ({"metrics_listen": "0.0.0.0:9345"}, "metrics_listen: needs metrics_allow"),
    ({"metrics_listen": "metrics.example:9345", "metrics_allow": ["10.0.0.0/8"]}, "IP address and a port"),
    ({"metrics_listen": "0.0.0.0:99999", "metrics_allow": ["10.0.0.0/8"]}, "IP address and a port"),
    ({"metrics_listen": "0.0.0.0", "metrics_allow": ["10.0.0.0/8"]}, "IP address and a port"),
    ({"metrics_listen": "0.0.0.0:9345", "metrics_allow": ["10.0.0.1/8"]}, "'10.0.0.1/8' is not a CIDR"),
    ({"metrics_listen": "0.0.0.0:9345", "metrics_allow": ["everyone"]}, "'everyone' is not a CIDR"),
    ({"metrics_allow": ["10.0.0.0/8"]}, "metrics_listen is not"),
    ({"metrics_listen": "0.0.0.0:18883", "metrics_allow": ["10.0.0.0/8"]}, "takes the port of status_listen"),
    ({"metrics_listen": "127.0.0.1:18883", "metrics_allow": ["10.0.0.0/8"]}, "takes the port of status_listen"),
])
def test_bad_metrics_listener_settings_are_refused(values, fragment):
    with pytest.raises(s.SettingsError, match=re.escape(fragment)):
        s.build(values, environ={})


def test_metrics_listener_settings_accepted():
    settings = s.build({"metrics_listen": "[::]:9345", "metrics_allow": "10.0.0.0/8, fd00::/8"}, environ={})
    assert settings.metrics_allow == ["10.0.0.0/8", "fd00::/8"]
    assert s.build(environ={}).metrics_listen == ""


def test_a_listener_that_cannot_listen_is_named_and_the_others_stopped():
    """A port already taken: start_listeners says which setting and address, and leaves nothing running."""
    status_port, taken = free_port(), socket.socket()
    taken.bind(("127.0.0.2", 0))
    taken.listen()
    try:
        settings = s.build({"status_listen": f"127.0.0.1:{status_port}", "metrics_allow": ["127.0.0.0/8"],
                            "metrics_listen": f"127.0.0.2:{taken.getsockname()[1]}"}, environ={})
        with pytest.raises(OSError, match=re.escape(f"metrics_listen 127.0.0.2:{taken.getsockname()[1]}: ")):
            m.start_listeners(settings, m.Metrics(), lambda: "")
        with socket.socket() as probe:   # the status endpoint started first was closed again
            assert probe.connect_ex(("127.0.0.1", status_port)) != 0
    finally:
        taken.close()


def test_release_needs_the_interfaces_secret_when_the_watcher_has_one(tmp_path):
    """With ``dyups_secret_file`` (the role's default), POST /release without the X-Dyups-Secret header, or with
    another secret, is refused and releases nothing: a local user without the file cannot let a held removal
    through. The GETs (Prometheus' scrape) need nothing; without a secret file /release stays open to loopback."""
    secret_file = tmp_path / "dyups.secret"
    secret_file.write_text("0123456789abcdef0123456789abcdef\n")
    released = []

    def post(port, headers):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/release", data=b"", method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status
        except urllib.error.HTTPError as refused:
            return refused.code

    for secret_path, expected in ((str(secret_file), [403, 403, 200]), (None, [200, 200, 200])):
        port = free_port()
        settings = s.build({"status_listen": f"127.0.0.1:{port}", "dyups_secret_file": secret_path}, environ={})
        listeners = m.start_listeners(settings, m.Metrics(), lambda: released.append(1) or "released")
        try:
            before = len(released)
            assert [post(port, {}), post(port, {"X-Dyups-Secret": "0123456789abcdef0123456789abcdeX"}),
                    post(port, {"X-Dyups-Secret": "0123456789abcdef0123456789abcdef"})] == expected
            assert len(released) - before == expected.count(200)
            assert get_from("127.0.0.1", port, "/metrics").startswith("HTTP/1.0 200")
        finally:
            for listener in listeners:
                listener.stop()
