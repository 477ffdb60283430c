"""The role's default interface is guarded (issue 19, deliver 3, as the default): with no
``tengine_dyups_api_secret`` the role generates a secret on the host, once, and nginx refuses every request to
the interface without it; the watcher, sync.yml's modules and the modules work with it. On a real Tengine and a
real nginx with the Lua flavor.

The role's own tasks/api_access.yml runs as the role runs it (Ansible, on this machine, as root) with the
role's defaults and vars; only the paths are moved into a temporary directory and the watcher's group is
``daemon`` (an existing group, so no user is created). Its dyups.conf.j2 (or dyups-lua.conf.j2) and
watcher.yml.j2 are rendered with the same variables; nginx runs the rendered file as the role's main
configuration includes it, and the watcher runs with the rendered settings. Then:

* the secret file is 64 hexadecimal digits, root's and the group's, 0640; the guard 0600; a second run keeps
  the secret and changes nothing, and so does a run in check mode; the secret never shows in Ansible's output;
* a POST without the header is refused (403) and changes nothing, also from a local user (``nobody``) who
  cannot read the secret file;
* the watcher (the role's settings: ``dyups_secret_file``) syncs a Consul service and its drift check reads
  every worker; ``POST /release`` on its endpoint needs the header;
* dyups_upstream / dyups_upstream_info with ``api_secret_file`` change and read upstreams.
"""

from __future__ import annotations

import os
import stat
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.ansible_run import AnsibleRunner
from tests.support.backends import Backends
from tests.support.consul import ConsulAgent
from tests.support.nginx_lua import MODULES, NGINX, http_request
from tests.support.ports import free_port, wait_port
from tests.support.tengine import FLAVORS, require_tengine, tengine_binary
from tests.support.watcher import WatcherProcess

ROLE = Path(__file__).resolve().parents[2] / "roles" / "tengine_dyups"
GROUP = "daemon"


def role_play(tmp_path, flavor, api_port):
    """(extra vars, a play) that runs the role's api_access.yml and renders its interface include and watcher
    settings; the variables go as extra vars, above the role's files."""
    include = "dyups.conf.j2" if flavor == "tengine" else "dyups-lua.conf.j2"
    variables = {
        "role_path": str(ROLE), "tengine_dyups_flavor": "tengine" if flavor == "tengine" else "nginx",
        "tengine_dyups_tengine_version": "3.2.0",
        "tengine_dyups_watcher_user": GROUP,
        "tengine_dyups_watcher_config_dir": str(tmp_path / "etc"),
        "tengine_dyups_conf_dir": str(tmp_path / "conf"),
        "tengine_dyups_upstream_file": str(tmp_path / "lib" / "upstreams.conf"),
        "tengine_dyups_lua_dir": str(ROLE / "files" / "lua"),
        "tengine_dyups_pid_file": str(tmp_path / "nginx" / "nginx.pid"),
        "tengine_dyups_api_listen": f"127.0.0.1:{api_port}",
        "tengine_dyups_nginx_dropin": False,   # the stock flavor with a configuration directory of its own
        "tengine_dyups_watcher_allowed_networks": ["127.0.0.0/8"],
    }
    return variables, yaml.safe_dump([{
        "name": "the role's interface guard, as the role runs it", "hosts": "tengine", "gather_facts": False,
        "vars_files": [str(ROLE / "defaults/main.yml"), str(ROLE / "vars/Debian.yml"), str(ROLE / "vars/main.yml")],
        "handlers": [{"name": "stand-in handler", "ansible.builtin.debug": {"msg": "notified"},
                      "listen": ["tengine_dyups reload nginx", "tengine_dyups restart watcher"]}],
        "tasks": [
            {"name": "only the test's directory", "ansible.builtin.assert": {"that": [
                f"_tengine_dyups_include_dir == '{tmp_path}/conf/swallowkeeper-dyups'",
                f"_tengine_dyups_api_secret_file == '{tmp_path}/etc/dyups.secret'"]}},
            {"name": "directories", "ansible.builtin.file": {"path": "{{ item }}", "state": "directory", "mode": "0755"},
             "loop": [str(tmp_path / "conf" / "swallowkeeper-dyups"), str(tmp_path / "lib")]},
            {"name": "the role's api_access.yml", "ansible.builtin.include_tasks": str(ROLE / "tasks/api_access.yml")},
            {"name": "the interface include", "ansible.builtin.template": {
                "src": str(ROLE / "templates" / include), "dest": str(tmp_path / "dyups.conf"), "mode": "0644"}},
            {"name": "the watcher settings", "ansible.builtin.template": {
                "src": str(ROLE / "templates/watcher.yml.j2"), "dest": str(tmp_path / "watcher.yml"), "mode": "0644"}},
            {"name": "where the guard is", "ansible.builtin.debug": {"msg": "GUARD={{ _tengine_dyups_api_guard }}"}},
        ]}])


def run_role(tmp_path, flavor, api_port, check=False):
    variables, play = role_play(tmp_path, flavor, api_port)
    templates = tmp_path / "ansible" / "templates"   # the role's templates, where an included task file finds them
    if not templates.exists():
        templates.parent.mkdir(parents=True, exist_ok=True)
        templates.symlink_to(ROLE / "templates")
    done = AnsibleRunner(tmp_path / "ansible").playbook(play, extra_vars=variables, check=check)
    assert done.rc == 0, done.stdout[-5000:] + done.stderr[-2000:]
    return done


def start_nginx(tmp_path, flavor, workers=2):
    """nginx (Tengine, or stock nginx with the Lua modules) with the rendered include in http {}: its PID file."""
    prefix = tmp_path / "nginx"
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    (tmp_path / "lib" / "upstreams.conf").touch()
    loads = "" if flavor == "tengine" else "".join(f"load_module {module};\n" for module in MODULES)
    temp = " ".join(f"{kind}_temp_path {prefix}/tmp/{kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                          "uwsgi", "scgi"))
    (prefix / "nginx.conf").write_text(
        f"{loads}worker_processes {workers};\npid {prefix}/nginx.pid;\nerror_log {prefix}/error.log warn;\n"
        f"events {{ worker_connections 256; }}\nhttp {{ access_log off; {temp}\ninclude {tmp_path}/dyups.conf;\n"
        # as Debian's nginx.conf includes conf.d/*.conf (the stock flavor's drop-in directory): the guard, which
        # holds an "if", must not be one of them (nginx -t failed on nginx_host when it was api-guard.conf)
        f"include {tmp_path}/conf/swallowkeeper-dyups/*.conf;\n}}\n")
    binary = tengine_binary() if flavor == "tengine" else NGINX
    command = [binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-e", str(prefix / "error.log")]
    checked = subprocess.run(command + ["-t"], capture_output=True, text=True, timeout=60, check=False)
    assert checked.returncode == 0, checked.stderr
    subprocess.run(command, check=True, timeout=60)
    return prefix / "nginx.pid"


def stop_nginx(pid_file):
    try:
        master = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    os.kill(master, 15)
    for _attempt in range(100):
        if not os.path.exists(f"/proc/{master}"):
            return
        time.sleep(0.1)


def as_nobody(code):
    """Run ``code`` (the system's Python) as the user nobody, outside the secret file's group: (returncode, output)."""
    done = subprocess.run(["/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=30, cwd="/",
                          user="nobody", group="nogroup", extra_groups=[], check=False)
    return done.returncode, done.stdout + done.stderr


def detail(port, secret):
    status, text, _headers = http_request(port, "GET", "/detail", headers={"X-Dyups-Secret": secret})
    assert status in (200, 204), text   # 204: no upstream yet
    return text


@pytest.fixture(params=FLAVORS)
def flavor(request):
    if request.param == "tengine":
        require_tengine()
    if os.geteuid() != 0:
        pytest.skip("runs the role's tasks as root (chgrp to the watcher's group) and a client as nobody")
    return request.param


def test_the_role_default_interface_requires_the_generated_secret(flavor, tmp_path):
    tmp_path.chmod(0o755)   # nobody and the workers walk through it
    api_port = free_port()
    first = run_role(tmp_path, flavor, api_port)
    secret_file = tmp_path / "etc" / "dyups.secret"
    secret = secret_file.read_text()
    assert len(secret) == 65 and secret.endswith("\n") and all(c in "0123456789abcdef" for c in secret[:-1])
    secret = secret.strip()
    mode = secret_file.stat()
    assert (stat.S_IMODE(mode.st_mode), mode.st_uid, mode.st_gid) == (0o640, 0, 1), "root, the watcher's group, 0640"
    guard = Path(next(line.split("GUARD=", 1)[1].split('"')[0] for line in first.stdout.splitlines() if "GUARD=" in line))
    assert stat.S_IMODE(guard.stat().st_mode) == 0o600 and secret in guard.read_text()
    assert secret not in first.stdout + first.stderr

    again = run_role(tmp_path, flavor, api_port)
    assert secret_file.read_text().strip() == secret, "kept across runs"
    assert "changed=0" in again.stdout, again.stdout[-3000:]
    assert secret not in again.stdout + again.stderr
    checked = run_role(tmp_path, flavor, api_port, check=True)
    assert "changed=0" in checked.stdout, "check mode reads the secret and finds the guard unchanged"

    settings = yaml.safe_load((tmp_path / "watcher.yml").read_text())
    assert settings["dyups_secret_file"] == str(secret_file)
    assert settings["dyups_url"] == f"http://127.0.0.1:{api_port}"

    pid_file = start_nginx(tmp_path, flavor)
    try:
        wait_port(api_port, timeout=15)
        # a local user without the file changes nothing: refused, and cannot read the file
        status, text, _headers = http_request(api_port, "POST", "/upstream/evil", body="server 10.6.6.6:80;",
                                              headers={"Content-Type": "text/plain", "Origin": "null"})
        assert status == 403, text
        code, output = as_nobody(
            "import http.client, sys\n"
            f"c = http.client.HTTPConnection('127.0.0.1', {api_port}, timeout=5)\n"
            "c.request('POST', '/upstream/evil', body=b'server 10.6.6.6:80;')\n"
            "print('STATUS', c.getresponse().status)\n"
            f"try:\n    open({str(secret_file)!r}).read()\n    print('READ')\n"
            "except PermissionError:\n    print('DENIED')\n")
        assert code == 0 and "STATUS 403" in output and "DENIED" in output, output
        assert "evil" not in detail(api_port, secret)

        # the modules, with the role's file
        runner = AnsibleRunner(tmp_path / "modules")
        done = runner.adhoc("swallowkeeper.dyups.dyups_upstream",
                            f"name=static_one servers=10.1.1.1:80 api_url=http://127.0.0.1:{api_port} "
                            f"api_secret_file={secret_file}")
        assert done.rc == 0 and done.module["changed"] is True, done.stdout[-3000:]
        read = runner.adhoc("swallowkeeper.dyups.dyups_upstream_info",
                            f"api_url=http://127.0.0.1:{api_port} api_secret_file={secret_file}")
        assert read.rc == 0 and "static_one" in read.module["upstreams"], read.stdout[-3000:]
        refused = runner.adhoc("swallowkeeper.dyups.dyups_upstream_info", f"api_url=http://127.0.0.1:{api_port}")
        assert refused.rc != 0 and "403" in refused.stdout, refused.stdout[-3000:]
        assert secret not in done.stdout + read.stdout + refused.stdout

        # the watcher with the role's settings
        with ConsulAgent() as agent, Backends(1) as backends:
            agent.register("shop", instance_id="shop-1", port=backends.ports[0])
            watcher_settings = dict(settings, consul_url=agent.url, drift_interval=1)
            watcher_settings.pop("status_listen", None)
            with WatcherProcess(tmp_path / "watcher", **watcher_settings) as watcher:
                watcher.wait_for(lambda: "127.0.0.1:%d" % backends.ports[0] in detail(api_port, secret),
                                 "the watcher applied shop through the guarded interface")
                watcher.wait_for(lambda: watcher.metrics().get("swallowkeeper_watcher_dyups_up") == 1.0, "dyups up")
                request = urllib.request.Request(f"http://127.0.0.1:{watcher.port}/release", data=b"", method="POST")
                with pytest.raises(urllib.error.HTTPError) as refused_release:
                    urllib.request.urlopen(request, timeout=5)  # pylint: disable=consider-using-with
                assert refused_release.value.code == 403
                request.add_header("X-Dyups-Secret", secret)
                with urllib.request.urlopen(request, timeout=5) as answer:
                    assert answer.status == 200
                assert secret not in watcher.log_text()
    finally:
        stop_nginx(pid_file)
