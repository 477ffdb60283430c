"""A change whose entry would not fit the Lua flavor's shared dict is never sent (issue 25).

The Lua flavor refuses such a POST whole (500 "the shared dict ... is full", the stored upstream kept),
but the watcher had written it to the upstream file already and sent it again at every retry. Here a
real nginx with the Lua flavor (2 workers) runs with a 64k dict; the watcher serves ``Web``, the dict is
then filled through the interface (another writer) and ``Big`` (1 backend and 60 down servers: about
2.8 KB stored, so a page of its own, and the full dict has none) appears in Consul after a drift check told the watcher the free space. The watcher skips
it with the reason and counts it (``swallowkeeper_watcher_dict_refusals_total``); no POST is refused,
``Big`` is in neither the dict nor the file, and every worker still serves ``Web``. The watcher of
2f33e87 sent it and logged the 500 "is full" at every retry.
"""

from __future__ import annotations

from tests.support.backends import Backends
from tests.support.consul import ConsulAgent
from tests.support.nginx_lua import TEST_HOSTS, nginx_lua_factory  # noqa: F401  # pylint: disable=unused-import
from tests.support.watcher import WatcherProcess

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import dict_fit

FILLER = 60
META = {"dyups_down": "true"}


def fill(nginx):
    """POST upstreams (not the watcher's) until the dict refuses even the smallest one."""
    big = "".join(f"server 127.0.0.{i // 250 + 1}:{1000 + i % 250};" for i in range(60))
    for number in range(400):
        status = nginx.api("POST", f"/upstream/fill{number}", big)[0]
        assert status in (200, 500), status
        if status == 500:
            if big == "server 127.0.0.1:1;":
                return
            big = "server 127.0.0.1:1;"
    raise AssertionError("the dict never filled")


def served(nginx, name, tries=16):
    return {(nginx.request(f"/u/{name}/")[0]) for _unused in range(tries)}


def test_a_change_that_does_not_fit_the_shared_dict_is_never_sent(tmp_path, nginx_lua_factory):  # noqa: F811
    with ConsulAgent() as agent, Backends(count=1) as backends:
        port = backends.ports[0]
        nginx = nginx_lua_factory(workers=2, dict_size="64k")
        hosts = tmp_path / "hosts"
        hosts.write_text(TEST_HOSTS)
        upstream_file = tmp_path / "upstreams.conf"
        watcher = WatcherProcess(tmp_path, consul_url=agent.url, dyups_url=nginx.api_url,
                                 upstream_file=str(upstream_file), hosts_file=str(hosts), drift_interval=0.5,
                                 nginx_pid_file=str(nginx.prefix / "nginx.pid"), removal_guard_share=1)
        agent.register("Web", "w1", port=port)
        try:
            watcher.start()
            watcher.wait_for(lambda: served(nginx, "Web") == {200}, "Web served")
            fill(nginx)
            free = int(nginx.api("GET", "/list")[2]["x-dyups-free-space"])
            assert free < 4096, free
            # a drift check tells the watcher what is free now
            watcher.wait_for(lambda: watcher.metrics().get("swallowkeeper_watcher_dyups_free_bytes") == free,
                             "the free space read")
            agent.register("Big", "b1", port=port, check=False, wait=False)
            for number in range(FILLER):
                agent.register("Big", f"Big-down-{number}", port=10000 + number, address=f"127.3.0.{1 + number}",
                               meta=META, check=False, wait=False)
            watcher.wait_for(lambda: watcher.metrics().get("swallowkeeper_watcher_dict_refusals_total", 0) >= 1,
                             "Big refused", timeout=20)
            skipped = {item["what"]: item["why"] for item in watcher.status()["status"]["skipped"]}
            assert "shared dict" in skipped["upstream Big"], skipped
            assert "is full" not in watcher.log_text()
            assert nginx.api("GET", "/upstream/Big")[0] == 404
            assert "Big" not in upstream_file.read_text()
            assert served(nginx, "Web") == {200}
        finally:
            watcher.stop()
        big = build_upstream("Big", [f"127.0.0.1:{port}"] + [f"127.3.0.{1 + number}:{10000 + number} down"
                                                             for number in range(FILLER)])
        assert dict_fit.entry_pages(big) == 1 and dict_fit.encoded_length(big) > 2048
