"""The role's own main configuration for the stock nginx flavor (tengine_dyups_nginx_dropin false, or a
configuration directory of its own as the demo has; templates/nginx.conf.j2 with the role's own
defaults, vars/main.yml and vars/Debian.yml, rendered by Ansible's template module) keeps serving a site the
host served before the role: a site in sites-enabled, started with the real nginx on a free port. With
tengine_dyups_nginx_distribution_includes false it is not included.

The distribution's paths (/etc/nginx/conf.d, /etc/nginx/sites-enabled) are pointed at a temporary
directory through the OS-family value they come from (_tengine_dyups_os_nginx_http_includes), so the test
reads nothing of this machine's nginx configuration but its mime.types and modules."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.support.ansible_run import AnsibleRunner
from tests.support.nginx_lua import NGINX
from tests.support.ports import free_port, wait_port

ROLE = Path(__file__).resolve().parents[2] / "roles" / "tengine_dyups"


def render(tmp_path, **extra):
    """The role's nginx.conf for the nginx flavor on Debian, with every path of its own under tmp_path."""
    etc = tmp_path / "etc-nginx"
    (etc / "sites-enabled").mkdir(parents=True, exist_ok=True)
    (etc / "conf.d").mkdir(exist_ok=True)
    include_dir = tmp_path / "conf" / "swallowkeeper-dyups"
    include_dir.mkdir(parents=True, exist_ok=True)
    (include_dir / "dyups.conf").write_text("")
    (include_dir / "vhosts.conf").write_text("")
    dest = tmp_path / "nginx.conf"
    variables = {
        "tengine_dyups_flavor": "nginx", "tengine_dyups_conf_dir": str(tmp_path / "conf"),
        "tengine_dyups_pid_file": str(tmp_path / "nginx.pid"), "tengine_dyups_log_dir": str(tmp_path),
        "tengine_dyups_worker_user": "root",
        "_tengine_dyups_os_nginx_http_includes": [f"{etc}/conf.d/*.conf", f"{etc}/sites-enabled/*"],
        "_dest": str(dest),
    }
    variables.update(extra)
    play = yaml.safe_dump([{
        "name": "render the role's nginx.conf", "hosts": "tengine", "gather_facts": False,
        "vars_files": [str(ROLE / "defaults/main.yml"), str(ROLE / "vars/Debian.yml"), str(ROLE / "vars/main.yml")],
        "tasks": [{"name": "render", "ansible.builtin.template": {
            "src": str(ROLE / "templates/nginx.conf.j2"), "dest": "{{ _dest }}", "mode": "0644"}}]}])
    done = AnsibleRunner(tmp_path / "ansible").playbook(play, extra_vars=variables)
    assert done.rc == 0, done.stdout[-3000:]
    return dest, etc


@pytest.fixture
def site(tmp_path):
    """A site the host served before the role: sites-enabled/legacy on a free port."""
    port = free_port()
    return port, f"server {{\n    listen 127.0.0.1:{port};\n    location / {{ return 200 'legacy site\\n'; }}\n}}\n"


def test_a_site_in_sites_enabled_is_still_served(tmp_path, site):
    port, text = site
    conf, etc = render(tmp_path)
    (etc / "sites-enabled" / "legacy").write_text(text)
    rendered = conf.read_text()
    includes = [line.strip() for line in rendered.splitlines() if line.strip().startswith("include")]
    include_dir = tmp_path / "conf" / "swallowkeeper-dyups"
    assert includes[-5:] == [f"include {include_dir}/dyups.conf;", f"include {include_dir}/vhosts.conf;",
                             f"include {etc}/conf.d/*.conf;", f"include {etc}/sites-enabled/*;",
                             f"include {tmp_path / 'conf'}/conf.d/*.conf;"], includes
    test = subprocess.run([NGINX, "-t", "-c", str(conf)], capture_output=True, text=True, check=False)
    assert test.returncode == 0, test.stderr
    started = subprocess.run([NGINX, "-c", str(conf)], capture_output=True, text=True, check=False)
    assert started.returncode == 0, started.stderr
    try:
        wait_port(port)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as answer:  # noqa: S310 (loopback)
            assert answer.status == 200 and answer.read() == b"legacy site\n"
    finally:
        subprocess.run([NGINX, "-c", str(conf), "-s", "quit"], capture_output=True, check=False)
        pid_file = tmp_path / "nginx.pid"
        deadline = time.monotonic() + 5
        while pid_file.exists() and time.monotonic() < deadline:  # the master removes it when it has quit
            time.sleep(0.05)


def test_the_user_can_leave_the_distribution_includes_out(tmp_path, site):
    _port, text = site
    conf, etc = render(tmp_path, tengine_dyups_nginx_distribution_includes=False)
    (etc / "sites-enabled" / "legacy").write_text(text)
    rendered = conf.read_text()
    assert "sites-enabled" not in rendered
    assert f"include {tmp_path / 'conf'}/conf.d/*.conf;" in rendered


def test_user_includes_come_after_the_distribution_ones(tmp_path):
    conf, etc = render(tmp_path, tengine_dyups_http_includes=["/srv/extra/*.conf"])
    lines = [line.strip() for line in conf.read_text().splitlines() if line.strip().startswith("include")]
    assert lines.index(f"include {etc}/sites-enabled/*;") < lines.index("include /srv/extra/*.conf;")


def test_the_tengine_flavor_is_unchanged(tmp_path):
    conf, _etc = render(tmp_path, tengine_dyups_flavor="tengine")
    rendered = conf.read_text()
    assert "sites-enabled" not in rendered and f"include {tmp_path / 'conf'}/conf.d/*.conf;" in rendered


SHARED = Path(__file__).resolve().parents[2] / "extensions" / "molecule" / "shared"


def test_the_shared_prepare_and_verify_task_files(tmp_path):
    """extensions/molecule/shared/prepare_sites_enabled.yml and verify_sites_enabled.yml (for the container
    scenarios of the nginx flavor, a drop-in) run here against a temporary /etc/nginx whose nginx.conf includes
    sites-enabled as Debian's does: verify passes while the site answers and nginx.conf is the one prepare kept,
    and fails when nginx.conf changed by a single byte."""
    port = free_port()
    etc = tmp_path / "etc-nginx"
    (etc / "sites-available").mkdir(parents=True)
    (etc / "sites-enabled").mkdir()
    main = etc / "nginx.conf"
    main.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\n\taccess_log off;\n\tinclude {etc}/sites-enabled/*;\n}}\n")
    shared_vars = {"sites_enabled_dir": str(etc), "sites_enabled_port": port,
                   "sites_enabled_keep": str(tmp_path / "kept" / "nginx.conf.before")}

    def run_tasks(path):
        play = yaml.safe_dump([{"name": path.name, "hosts": "tengine", "gather_facts": False,
                                "tasks": [{"name": "the shared tasks", "ansible.builtin.include_tasks": str(path)}]}])
        return AnsibleRunner(tmp_path / "ansible-shared").playbook(play, extra_vars=shared_vars)

    prepared = run_tasks(SHARED / "prepare_sites_enabled.yml")
    assert prepared.rc == 0, prepared.stdout[-3000:]
    verify = SHARED / "verify_sites_enabled.yml"
    assert run_tasks(verify).rc != 0, "nothing serves the site yet"
    started = subprocess.run([NGINX, "-c", str(main)], capture_output=True, text=True, check=False)
    assert started.returncode == 0, started.stderr
    try:
        verified = run_tasks(verify)
        assert verified.rc == 0, verified.stdout[-3000:]
        main.write_text(main.read_text() + " ")
        changed = run_tasks(verify)
        assert changed.rc != 0 and "nginx.conf differs" in changed.stdout, changed.stdout[-3000:]
    finally:
        subprocess.run([NGINX, "-c", str(main), "-s", "quit"], capture_output=True, check=False)
