"""The shared memory the role sizes (roles/tengine_dyups/README.md, "Shared memory"): templates/dyups.conf.j2
and dyups-lua.conf.j2 rendered with the role's defaults and vars by Ansible's template module, and the
Tengine sizes tried on a real Tengine.

Tengine's upstream check module keeps its peers in ``check_shm_size`` (1m by default): past about 3 300
check peers a POST with ``check`` crashed a worker (signal 11, "ngx_slab_alloc() failed"), and every later
one another (issue 25). The role now writes a size computed from the expected upstreams and servers."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.support.ansible_run import AnsibleRunner
from tests.support.tengine import tengine_factory  # noqa: F401  (fixture)  # pylint: disable=unused-import

ROLE = Path(__file__).resolve().parents[2] / "roles" / "tengine_dyups"
SIZES = r"^\s*(dyups_shm_zone_size|check_shm_size|lua_shared_dict dyups_state) (\S+);"


def render_all(tmp_path, cases):
    """[text, ...]: each (template, {variable: value}) of ``cases`` rendered, in one playbook run."""
    tasks = [{"name": f"render {number}", "vars": variables, "ansible.builtin.template": {
        "src": str(ROLE / "templates" / template), "dest": str(tmp_path / f"rendered-{number}.conf"), "mode": "0644"}}
        for number, (template, variables) in enumerate(cases)]
    play = yaml.safe_dump([{
        "name": "render", "hosts": "tengine", "gather_facts": False,
        "vars_files": [str(ROLE / "defaults/main.yml"), str(ROLE / "vars/Debian.yml"), str(ROLE / "vars/main.yml")],
        "tasks": tasks}])
    done = AnsibleRunner(tmp_path / "ansible").playbook(
        play, extra_vars={"role_path": str(ROLE), "tengine_dyups_tengine_version": "3.2.0"})
    assert done.rc == 0, done.stdout[-3000:]
    return [(tmp_path / f"rendered-{number}.conf").read_text(encoding="utf-8") for number in range(len(cases))]


def sizes(text):
    return dict(re.findall(SIZES, text, re.M))


def test_the_sizes_follow_the_expected_upstreams_and_an_explicit_size_wins(tmp_path):
    tengine, lua = {"tengine_dyups_flavor": "tengine"}, {"tengine_dyups_flavor": "nginx"}
    big = {"tengine_dyups_expected_upstreams": 5000, "tengine_dyups_expected_servers_per_upstream": 8}
    huge = {"tengine_dyups_expected_upstreams": 20000, "tengine_dyups_expected_servers_per_upstream": 16}
    explicit = {"tengine_dyups_shm_zone_size": "5m", "tengine_dyups_check_shm_size": "3m"}
    texts = render_all(tmp_path, [("dyups.conf.j2", tengine), ("dyups.conf.j2", dict(tengine, **big)),
                                  ("dyups.conf.j2", dict(tengine, **explicit)), ("dyups-lua.conf.j2", lua),
                                  ("dyups-lua.conf.j2", dict(lua, **huge)), ("watcher.yml.j2", dict(tengine, **explicit)),
                                  ("watcher.yml.j2", tengine), ("watcher.yml.j2", lua)])
    # the watcher never sends a body that cannot fit the zone (plugins/watcher/zone_fit.py): it is told its size
    assert [yaml.safe_load(text).get("dyups_shm_zone_size") for text in texts[5:]] == ["5m", "2m", None]
    assert [sizes(text) for text in texts[:5]] == [
        # defaults, 1000 upstreams of 4 servers: 1000 x 512 x 2 B = 0.98 MiB (at least 2m); 8096 x 384 B = 2.97 MiB
        {"dyups_shm_zone_size": "2m", "check_shm_size": "3m"},
        # 5000 x (256 + 64 x 8) x 2 B = 7.3 MiB; (4096 + 40000) x 384 B = 16.1 MiB
        {"dyups_shm_zone_size": "8m", "check_shm_size": "17m"},
        {"dyups_shm_zone_size": "5m", "check_shm_size": "3m"},
        {"lua_shared_dict dyups_state": "16m"},                    # at least 16m
        # 20000 x (256 + 64 x 16) x 2 B + 1 MiB = 49.8 MiB
        {"lua_shared_dict dyups_state": "50m"},
    ]


def test_tengine_with_the_role_sizes_takes_4000_check_peers_without_a_crash(tmp_path, tengine_factory):  # noqa: F811
    expected = {"tengine_dyups_expected_upstreams": 100, "tengine_dyups_expected_servers_per_upstream": 40}
    text, = render_all(tmp_path, [("dyups.conf.j2", dict(expected, tengine_dyups_flavor="tengine"))])
    lines = "\n".join(f"{name} {size};" for name, size in sizes(text).items()
                      if name in ("check_shm_size", "dyups_shm_zone_size"))
    nginx = tengine_factory(workers=2, http_snippet=lines)
    workers = nginx.worker_pids()
    for number in range(100):
        body = "check interval=60000 rise=2 fall=5 timeout=1000 type=tcp;" + "".join(
            f"server 127.0.{number // 200 + 1}.{number % 200 + 1}:{10000 + i};" for i in range(40))
        status, answer, _headers = nginx.api("POST", f"/upstream/checked{number}", body, timeout=10)
        assert status == 200, (number * 40, status, answer, nginx.error_log_text()[-2000:])
    assert nginx.worker_pids() == workers, "a worker died"
    assert "signal" not in nginx.error_log_text()
