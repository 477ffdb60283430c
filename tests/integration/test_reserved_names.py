"""Reserved names on a real Tengine and on the nginx + Lua flavor (issue 19 finding 3, issue 26 finding 7).

A name the running configuration defines outside the upstream file (``Static_One`` here, asked for as
``static_one``), and ``DYUPS_BALANCER`` (the Lua flavor's own upstream), are refused by dyups_upstream
before anything is sent or written; ``nginx -t`` of the running configuration passes after every run, and
``validate_config`` checks a good change in the whole configuration.
"""

from __future__ import annotations

import subprocess

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from tests.integration import test_modules_dyups_upstream as modules_tests
from tests.integration.test_modules_dyups_upstream import detail, ok, play, task
from tests.support.nginx_lua import NGINX, NginxLua
from tests.support.tengine import Tengine, require_tengine

ansible = modules_tests.ansible   # the fixture

STATIC = "    upstream Static_One { server 127.0.0.1:9; }\n"


@pytest.fixture(params=["tengine", "lua"])
def configured(request, tmp_path):
    """(server, binary): a started data plane whose configuration defines Static_One and includes the
    upstream file tmp_path/upstreams.conf."""
    conf = tmp_path / "upstreams.conf"
    if request.param == "tengine":
        require_tengine()
        server = Tengine(workers=1, upstream_file=conf, http_snippet=STATIC)
        binary = server.binary
    else:
        include = f"    include {str(conf)[:-1]}[{str(conf)[-1]}];\n"    # as the role's dyups.conf does
        server = NginxLua(workers=1, upstream_file=conf, http_snippet=STATIC + include)
        binary = NGINX
    with server:
        yield server, binary


def nginx_t(server, binary):
    return subprocess.run([binary, "-t", "-q", "-p", f"{server.prefix}/", "-c", str(server.conf_path),
                           "-e", str(server.error_log)], capture_output=True, text=True, timeout=60, check=False)


def test_the_module_refuses_a_static_name_and_the_balancer(configured, ansible, tmp_path):
    server, binary = configured
    conf = tmp_path / "upstreams.conf"
    base = dict(api_url=server.api_url, upstream_conf=str(conf), nginx_conf=str(server.conf_path),
                nginx_binary=binary)
    done = ansible.playbook(play(
        dict(task("static", name="static_one", servers=["10.0.0.1:80"], **base), ignore_errors=True),
        dict(task("balancer", name="DYUPS_BALANCER", servers=["10.0.0.1:80"], api_url=server.api_url,
                  upstream_conf=str(conf)), ignore_errors=True),
        dict(task("bulk", upstreams={"web": ["10.0.0.2:80"], "STATIC_ONE": ["10.0.0.3:80"]}, **base),
             ignore_errors=True),
        task("web", name="web", servers=["10.0.0.2:80"], validate_config=True, **base)))
    for name, why in (("static", "Static_One is defined in nginx -T of"), ("balancer", "balancer upstream"),
                      ("bulk", "Static_One is defined in")):
        result = done.task(name)
        assert result.get("failed") and why in result["msg"] and result["requests"] == [], (name, result)
        assert "Nothing was sent or written" in result["msg"]
    assert ok(done, "web")["requests"] == ["POST /upstream/web"]
    assert list(_upstream_file.read(str(conf))) == ["web"]
    held = {name.lower(): servers for name, servers in detail(server).items()}
    assert held.get("web") == ["10.0.0.2:80"] and held.get("static_one", ["127.0.0.1:9"]) == ["127.0.0.1:9"]
    assert held.get("dyups_balancer") is None
    checked = nginx_t(server, binary)
    assert checked.returncode == 0, checked.stderr
