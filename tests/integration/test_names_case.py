"""Names compared as the data plane compares them, on a real Tengine and on the nginx + Lua flavor.

Both hold ``Web`` and ``web`` as one upstream. Issue 26 finding 5 (the module reported ``create`` over
another tool's ``Web``, and a file holding ``Web`` with a task naming ``web`` raised an uncaught error),
issue 18 finding 5 (the watcher's case swap emptied the upstream).
"""

from __future__ import annotations

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from ansible_collections.swallowkeeper.dyups.plugins.watcher.sync import Syncer
from tests.integration import test_modules_dyups_upstream as modules_tests
from tests.integration.test_modules_dyups_upstream import detail, ok, play, task
from tests.support.fake_dyups import FakeDyups
from tests.support.http_stdlib import stdlib_transport

ansible = modules_tests.ansible   # the fixture


def real(server):
    if isinstance(server, FakeDyups):
        pytest.skip("the stand-in compares names exactly; this needs a real data plane")
    return server


def test_the_module_updates_the_upstream_another_spelling_holds(dyups_server, ansible, tmp_path):
    server = real(dyups_server)
    conf = tmp_path / "upstreams.conf"
    theirs = build_upstream("Web", ["10.0.0.9:80"])
    conf.write_text(_upstream_file.render([theirs]))
    DyupsClient(server.api_url, stdlib_transport).update(theirs)          # another tool's Web
    args = dict(api_url=server.api_url, name="web", servers=["10.0.0.1:80"], upstream_conf=str(conf))
    both = dict(api_url=server.api_url, upstreams={"Web": ["10.0.0.2:80"], "web": ["10.0.0.3:80"]},
                upstream_conf=str(conf))
    done = ansible.playbook(play(task("web", **args), task("again", **args),
                                 dict(task("both", **both), ignore_errors=True)))
    first = ok(done, "web")
    assert first["upstreams"]["web"]["action"] == "update", first
    assert first["upstreams"]["web"]["before"] == ["10.0.0.9:80"] and first["requests"] == ["POST /upstream/web"]
    again = ok(done, "again")
    assert again["changed"] is False and again["requests"] == [], again
    refused = done.task("both")
    assert refused.get("failed") and "differ only in letter case" in refused["msg"] and refused["requests"] == []
    assert list(_upstream_file.read(str(conf))) == ["web"]
    held = {name.lower(): servers for name, servers in detail(server).items()}
    assert held == {"web": ["10.0.0.1:80"]}


def test_a_case_swap_of_the_watcher_keeps_the_upstream(dyups_server, tmp_path):
    """Services Web then web: the sync POSTs web and sends no DELETE of Web (which the data plane would
    apply to the web just posted)."""
    server = real(dyups_server)
    settings = watcher_settings.build({"dyups_url": server.api_url, "status_listen": "",
                                       "upstream_file": str(tmp_path / "upstreams.conf")})
    syncer = Syncer(settings, DyupsClient(server.api_url, stdlib_transport), Metrics())
    assert syncer.sync({"Web": build_upstream("Web", ["10.0.0.1:80"])}).ok
    report = syncer.sync({"web": build_upstream("web", ["10.0.0.2:80"])})
    assert report.ok and report.deleted == []
    held = {name.lower(): servers for name, servers in detail(server).items()}
    assert held == {"web": ["10.0.0.2:80"]}
    assert syncer.repair().posted == []
