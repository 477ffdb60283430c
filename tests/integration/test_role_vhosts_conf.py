"""The role's vhosts.conf (templates/vhosts.conf.j2, rendered by Ansible's template module): every form
of ``listen`` the argument spec documents (a string, a bare port number, a list of either) gives one
``listen`` line each. A bare port (``listen: 80`` in YAML, an integer) failed with "'int' object is not
iterable" until the fleet scenario (extensions/molecule/fleet_host) met it."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

import pytest
import yaml

from tests.support.ansible_run import AnsibleRunner
from tests.support.backends import Backends
from tests.support.dns_server import LoopbackDns
from tests.support.nginx_lua import http_request
from tests.support.ports import free_port
from tests.support.tengine import tengine_factory  # noqa: F401  (fixture)  # pylint: disable=unused-import

ROLE = Path(__file__).resolve().parents[2] / "roles" / "tengine_dyups"


def render(tmp_path, vhosts, flavor="tengine"):
    dest = tmp_path / "vhosts.conf"
    play = yaml.safe_dump([{
        "name": "render the role's vhosts.conf", "hosts": "tengine", "gather_facts": False,
        "tasks": [{"name": "render", "ansible.builtin.template": {
            "src": str(ROLE / "templates/vhosts.conf.j2"), "dest": str(dest), "mode": "0644"}}]}])
    done = AnsibleRunner(tmp_path / "ansible").playbook(
        play, extra_vars={"tengine_dyups_vhosts": vhosts, "tengine_dyups_flavor": flavor})
    assert done.rc == 0, done.stdout[-3000:]
    return dest.read_text(encoding="utf-8")


@pytest.mark.parametrize("flavor", ["tengine", "nginx"])
def test_every_listen_form(tmp_path, flavor):
    vhosts = [{"listen": listen, "locations": [{"upstream": "web"}]}
              for listen in (27880, "127.0.0.1:8080", [80, "[::1]:8080"])]
    text = render(tmp_path, vhosts, flavor)
    assert re.findall(r"^\s*listen (\S+);$", text, re.M) == ["27880", "127.0.0.1:8080", "80", "[::1]:8080"]


def test_a_name_that_is_no_upstream_is_answered_by_nginx_never_by_dns(tmp_path, tengine_factory):  # noqa: F811
    """Tengine resolves a ``proxy_pass http://$ups`` name it holds no upstream for through its resolver
    (/etc/resolv.conf by default), and a worker the master started again after ``kill -9`` holds none of
    the upstreams posted since (issue 25): traffic went wherever DNS said. The role's locations have no
    resolver: such a name gets 502 from nginx at once. Here a resolver that would answer is configured at
    the http level (a loopback DNS server), and no query may reach it, from the respawned worker either."""
    port = free_port()
    vhosts = [{"listen": f"127.0.0.1:{port} reuseport", "extra": ["add_header X-Dyups-Worker $pid always;"],
               "locations": [{"path": "/dyn", "upstream": "Dyn"}, {"path": "/nope", "upstream": "Nope"}]}]
    text = render(tmp_path, vhosts, "tengine")
    with Backends(count=1) as backends, LoopbackDns(answer="127.0.0.1") as dns:
        nginx = tengine_factory(workers=2, http_snippet=f"resolver 127.0.0.1:{dns.port};\n{text}")
        assert nginx.api("POST", "/upstream/Dyn", f"server {backends.address(backends.ports[0])};")[0] == 200
        before = set(nginx.worker_pids())
        os.kill(min(before), signal.SIGKILL)
        nginx.wait_for(lambda: len(set(nginx.worker_pids()) - before) == 1, "a new worker")
        respawned = (set(nginx.worker_pids()) - before).pop()
        answers = {"/dyn": {}, "/nope": {}}
        for path, seen in answers.items():
            for _unused in range(40):
                status, _text, headers = http_request(port, "GET", path, timeout=5)
                seen.setdefault(int(headers.get("x-dyups-worker", 0)), set()).add(status)
    assert dns.queries == [], f"names sent to DNS: {dns.queries}"
    assert answers["/nope"] and all(statuses == {502} for statuses in answers["/nope"].values()), answers
    assert answers["/dyn"].get(respawned) == {502}, answers   # the respawned worker lacks Dyn, says so
