"""The role's vhosts.conf (templates/vhosts.conf.j2, rendered by Ansible's template module): every form
of ``listen`` the argument spec documents (a string, a bare port number, a list of either) gives one
``listen`` line each. A bare port (``listen: 80`` in YAML, an integer) failed with "'int' object is not
iterable" until the fleet scenario (extensions/molecule/fleet_host) met it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.support.ansible_run import AnsibleRunner

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
