"""A change whose body does not fit Tengine's ``dyups_shm_zone_size`` is never sent, nor one the messages
still unread would leave no room for (issue 25).

Tengine applies a POST on the worker that took it, then copies it into the zone for the others; when the
copy does not fit it answers 500 "update success but not sync to other process" and the upstream is
changed on that worker only: traffic splits between workers, and a retry does the same again. Here a
real Tengine (2 workers) runs with a deliberately small zone (28k: it takes bodies up to 12 KiB), and
Consul grows ``Web`` and adds ``Big`` to about 17 KB each while the watcher is stopped. The restarted
watcher (``dyups_shm_zone_size`` set) sends neither: both are skipped with the reason and counted
(``swallowkeeper_watcher_zone_refusals_total``), and every worker still serves ``Web`` from its one
backend and has no ``Big``. The end of the test sends ``Big``'s very body as a watcher without the
check did (940f60b): the 500 and the split traffic that the check prevents.

The second test registers 8 upstreams of 2 pages each before a watcher starts (32k: Tengine takes two
such messages unread, not three): a watcher without the Pacer sent them 2-10 ms apart and got 500 "not
sync" (3 runs of 3 on 2f33e87); this one waits before each until every worker read the one before.

The filler servers are ``down`` (Service.Meta ``dyups_down``), so they need no backend.
"""

from __future__ import annotations

from tests.support.backends import Backends
from tests.support.consul import ConsulAgent
from tests.support.nginx_lua import TEST_HOSTS
from tests.support.tengine import tengine_factory  # noqa: F401  (fixture)  # pylint: disable=unused-import
from tests.support.watcher import WatcherProcess

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import post_body
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import zone_fit

ZONE = "28k"      # 6 pages: Tengine (2 workers) took bodies up to 3 pages, the watcher's model sends up to 1
FILLER = 300      # down servers of ~57 bytes each: about 17 KB per upstream
META = {"dyups_down": "true", "dyups_max_fails": "10", "dyups_fail_timeout": "30s"}


def filler_servers(base):
    return [(f"127.0.{base}.{1 + index % 250}", 10000 + index) for index in range(FILLER)]


def register_filler(agent, service, base):
    for address, port in filler_servers(base):
        agent.register(service, f"{service}-down-{port}", port=port, address=address, meta=META, check=False,
                       wait=False)


def answers(nginx, name, tries=24):
    """{worker pid: set of (status, text)} of ``tries`` requests for ``name`` on new connections."""
    seen = {}
    for _unused in range(tries):
        status, text, headers = nginx.request(f"/u/{name}/")
        seen.setdefault(int(headers.get("x-dyups-worker", 0)), set()).add((status, text.strip()))
    return seen


def test_a_body_that_does_not_fit_the_zone_is_never_sent_and_every_worker_keeps_serving(
        tmp_path, tengine_factory):  # noqa: F811  (the imported fixture)
    with ConsulAgent() as agent, Backends(count=2) as backends:
        p1, p2 = backends.ports
        nginx = tengine_factory(workers=2, http_snippet=f"    dyups_shm_zone_size {ZONE};")
        hosts = tmp_path / "hosts"
        hosts.write_text(TEST_HOSTS)
        watcher = WatcherProcess(tmp_path, consul_url=agent.url, dyups_url=nginx.api_url,
                                 upstream_file=str(tmp_path / "upstreams.conf"), hosts_file=str(hosts),
                                 drift_interval=300, nginx_pid_file=str(nginx.prefix / "nginx.pid"),
                                 dyups_shm_zone_size=ZONE, removal_guard_share=1)
        agent.register("Web", "w1", port=p1)
        try:
            watcher.start()
            workers = set(nginx.worker_pids())
            watcher.wait_for(lambda: answers(nginx, "Web") == {pid: {(200, str(p1))} for pid in workers},
                             "Web served by every worker")
            watcher.stop()
            agent.register("Web", "w2", port=p2, check=False, wait=False)
            register_filler(agent, "Web", 1)
            agent.register("Big", "b1", port=p2, check=False, wait=False)
            register_filler(agent, "Big", 2)
            agent.wait_until(lambda: len(agent.call("GET", "/v1/health/service/Big")) == FILLER + 1,
                             "Big's instances registered")
            watcher.start()
            watcher.wait_for(lambda: watcher.metrics().get("swallowkeeper_watcher_zone_refusals_total", 0) >= 2,
                             "both changes refused", timeout=20)
            skipped = {item["what"]: item["why"] for item in watcher.status()["status"]["skipped"]}
            assert "dyups_shm_zone_size" in skipped["upstream Web"] and "upstream Big" in skipped, skipped
            assert "not sync" not in watcher.log_text()
            # every worker: Web as it was, no Big (nginx answers 502 for a name that is no upstream)
            assert answers(nginx, "Web") == {pid: {(200, str(p1))} for pid in workers}
            assert {pid: {status for status, _text in seen} for pid, seen in answers(nginx, "Big").items()} \
                == {pid: {502} for pid in workers}
        finally:
            watcher.stop()

        # what a watcher without the check sent: the same body, answered 500, applied on one worker only
        big = build_upstream("Big", [f"127.0.0.1:{p2}"] + [
            f"{address}:{port} max_fails=10 fail_timeout=30s down" for address, port in filler_servers(2)])
        body = post_body(big)
        assert not zone_fit.fits("Big", body, zone_fit.parse_size(ZONE)) and len(body) > 3 * zone_fit.PAGE
        status, text, _headers = nginx.api("POST", "/upstream/Big", body)
        assert status == 500 and "not sync" in text, (status, text)
        split = {pid: {status for status, _text in seen} for pid, seen in answers(nginx, "Big").items()}
        assert sorted(split.values(), key=sorted) == [{200}, {502}], split


BURST_ZONE = "32k"   # 7 pages: one message with a 2-page body fits; two unread ones do not
BURST = 8            # upstreams of 1 backend and 100 down servers: about 5.8 KB (2 pages) each
BURST_FILLER = 100


def burst_filler(index):
    return [(f"127.1.{index}.{1 + number}", 10000 + number) for number in range(BURST_FILLER)]


def test_a_burst_never_fills_the_zone_with_unread_messages(tmp_path, tengine_factory):  # noqa: F811
    """Each body fits the zone alone, but Tengine keeps each POST in the zone until every other worker
    has read it (every dyups_read_msg_timeout): POSTs sent one after another within that interval found
    it full (500 "update success but not sync", applied on one worker only). The watcher paces them."""
    with ConsulAgent() as agent, Backends(count=1) as backends:
        port = backends.ports[0]
        nginx = tengine_factory(workers=2, http_snippet=f"    dyups_shm_zone_size {BURST_ZONE};")
        hosts = tmp_path / "hosts"
        hosts.write_text(TEST_HOSTS)
        names = [f"Burst{index}" for index in range(BURST)]
        for index, name in enumerate(names):
            agent.register(name, f"{name}-live", port=port, check=False, wait=False)
            for address, filler_port in burst_filler(index):
                agent.register(name, f"{name}-down-{filler_port}", port=filler_port, address=address, meta=META,
                               check=False, wait=False)
        agent.wait_until(lambda: all(len(agent.call("GET", f"/v1/health/service/{name}")) == BURST_FILLER + 1
                                     for name in names), "the burst's instances registered")
        watcher = WatcherProcess(tmp_path, consul_url=agent.url, dyups_url=nginx.api_url,
                                 upstream_file=str(tmp_path / "upstreams.conf"), hosts_file=str(hosts),
                                 drift_interval=300, nginx_pid_file=str(nginx.prefix / "nginx.pid"),
                                 dyups_shm_zone_size=BURST_ZONE, removal_guard_share=1)
        try:
            watcher.start()
            workers = set(nginx.worker_pids())
            watcher.wait_for(lambda: all(answers(nginx, name, tries=8) == {pid: {(200, str(port))} for pid in workers}
                                         for name in names), "every burst upstream served by every worker",
                             timeout=30)
            metrics = watcher.metrics()
            log_text = watcher.log_text()
        finally:
            watcher.stop()
        for index, name in enumerate(names):  # each alone fits (nothing was refused), two do not
            body = post_body(build_upstream(name, [f"127.0.0.1:{port}"] + [
                f"{address}:{filler_port} max_fails=10 fail_timeout=30s down"
                for address, filler_port in burst_filler(index)]))
            assert zone_fit.fits(name, body, zone_fit.parse_size(BURST_ZONE)) and len(body) > zone_fit.PAGE
        assert metrics.get("swallowkeeper_watcher_zone_refusals_total", 0) == 0
        assert "not sync" not in log_text, [line for line in log_text.splitlines() if "not sync" in line]
        # paced: each wait ended when every worker answered a GET with what was sent (not the 2 s fallback)
        waits = [line for line in log_text.splitlines() if "dyups_shm_zone_size:" in line and "waited" in line]
        assert metrics.get("swallowkeeper_watcher_zone_waits_total", 0) == len(waits) >= 1, (metrics, waits)
        assert all(line.endswith("every worker had read them") for line in waits), waits
