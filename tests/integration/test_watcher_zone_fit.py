"""A change whose body does not fit Tengine's ``dyups_shm_zone_size`` is never sent (issue 25).

Tengine applies a POST on the worker that took it, then copies it into the zone for the others; when the
copy does not fit it answers 500 "update success but not sync to other process" and the upstream is
changed on that worker only: traffic splits between workers, and a retry does the same again. Here a
real Tengine (2 workers) runs with a deliberately small zone (28k: it takes bodies up to 12 KiB), and
Consul grows ``Web`` and adds ``Big`` to about 17 KB each while the watcher is stopped. The restarted
watcher (``dyups_shm_zone_size`` set) sends neither: both are skipped with the reason and counted
(``swallowkeeper_watcher_zone_refusals_total``), and every worker still serves ``Web`` from its one
backend and has no ``Big``. The end of the test sends ``Big``'s very body as a watcher without the
check did (940f60b): the 500 and the split traffic that the check prevents.

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
