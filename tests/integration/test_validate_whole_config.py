"""The candidate upstream file checked against the whole configuration (issue 19 finding 3, issue 26 finding 7),
on a real Tengine and on the nginx + Lua flavor, both including the upstream file as the role does.

With ``validate_config`` and no reserved-name learning (``nginx -T`` left out on purpose, as on a host
where it cannot run), an upstream named like one nginx.conf defines, and the Lua flavor's
``DYUPS_BALANCER``, never reach the file or the interface; ``nginx -t`` passes after every sync.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file, _validate_config
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from ansible_collections.swallowkeeper.dyups.plugins.watcher.sync import Syncer
from tests.integration.test_modules_dyups_upstream import detail
from tests.support.collection import LINK
from tests.support.http_stdlib import stdlib_transport
from tests.support.nginx_lua import NGINX, NginxLua
from tests.support.tengine import Tengine, require_tengine

STATIC = "    upstream Static_One { server 127.0.0.1:9; }\n"
# run from an ansible_collections/swallowkeeper/dyups tree, as the role installs it
SCRIPT = LINK / "plugins" / "watcher" / "validate_upstreams.py"


@pytest.fixture(params=["tengine", "lua"])
def configured(request, tmp_path):
    """(server, binary, upstream file): a started data plane whose configuration defines Static_One and
    includes the upstream file (nginx's include, as the role's dyups.conf does on both flavors)."""
    conf = tmp_path / "state" / "upstreams.conf"
    conf.parent.mkdir()
    include = f"    include {str(conf)[:-1]}[{str(conf)[-1]}];\n"
    if request.param == "tengine":
        require_tengine()
        server, binary = Tengine(workers=1, upstream_file=conf, http_snippet=STATIC), require_tengine()
    else:
        server, binary = NginxLua(workers=1, http_snippet=STATIC + include), NGINX
    with server:
        yield server, binary, conf


def nginx_t(server, binary):
    return subprocess.run([binary, "-t", "-q", "-p", f"{server.prefix}/", "-c", str(server.conf_path),
                           "-e", str(server.error_log)], capture_output=True, text=True, timeout=60, check=False)


def test_a_static_name_and_the_balancer_never_reach_the_file_or_the_interface(configured):
    server, binary, conf = configured
    settings = watcher_settings.build({"dyups_url": server.api_url, "status_listen": "", "upstream_file": str(conf),
                                       "validate_config": True, "nginx_conf": str(server.conf_path),
                                       "nginx_binary": binary, "reserved_names": []}, environ={})
    syncer = Syncer(settings, DyupsClient(server.api_url, stdlib_transport), Metrics())
    web = build_upstream("web", ["10.0.0.1:80"])
    assert syncer.sync({"web": web}).ok
    # Tengine 3.2.0's -t compares upstream names with their case (its dyups interface ignores it: the
    # reserved names, compared by name_key, cover the other spellings); stock nginx ignores case
    names = ["Static_One"] if server.flavor == "tengine" else ["static_one", "DYUPS_BALANCER"]
    for name in names:
        report = syncer.sync({"web": web, name: build_upstream(name, ["10.0.0.2:80"])})
        assert report.file_error and "duplicate upstream" in report.file_error, report
        assert report.posted == [] and list(_upstream_file.read(str(conf))) == ["web"]
        assert nginx_t(server, binary).returncode == 0
    held = {name.lower(): servers for name, servers in detail(server).items()}
    assert held.get("web") == ["10.0.0.1:80"] and held.get("static_one", ["127.0.0.1:9"]) == ["127.0.0.1:9"]
    assert "dyups_balancer" not in held


def test_the_script_checks_the_whole_configuration(configured, tmp_path):
    server, binary, conf = configured
    candidate = tmp_path / "candidate.conf"
    command = [sys.executable, str(SCRIPT), "--nginx", binary, "--conf", str(server.conf_path),
               "--upstream-file", str(conf), str(candidate)]
    candidate.write_text(_upstream_file.render([build_upstream("Static_One", ["10.0.0.2:80"])]))
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "duplicate upstream" in refused.stderr, refused
    candidate.write_text(_upstream_file.render([build_upstream("web", ["10.0.0.2:80"])]))
    assert subprocess.run(command, capture_output=True, text=True, timeout=60, check=False).returncode == 0
    assert not conf.exists()                          # the real path never held the candidate


def test_a_configuration_that_does_not_include_the_file_is_said_so(tmp_path):
    main = tmp_path / "nginx.conf"
    main.write_text("events {}\nhttp { }\n")
    with pytest.raises(_validate_config.ConfigCheckFailed) as caught:
        _validate_config.check_config("nginx", str(main), str(tmp_path / "upstreams.conf"), str(tmp_path / "c"))
    assert "does not include" in str(caught.value)
