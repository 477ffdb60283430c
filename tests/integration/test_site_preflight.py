"""playbooks/site.yml's preflight on this machine: on defaults it stops with one message naming what to set,
and an interpreter older than the watcher needs is refused, naming tengine_dyups_watcher_python. Both stop
before the role changes anything (the play's tasks that ran are listed and checked)."""

import os
import stat

import pytest

from tests.support.ansible_run import AnsibleRunner
from tests.support.collection import ROOT

SITE = (ROOT / "playbooks" / "site.yml").read_text()
CHECK_TASK = "Check the settings"


def failed_tasks(done):
    return [(name, result) for name, result in done.tasks if result.get("failed")]


def changed_tasks(done):
    return [name for name, result in done.tasks if result.get("changed")]


@pytest.fixture
def runner(tmp_path):
    return AnsibleRunner(tmp_path / "ansible", group="dyups_proxies")


@pytest.mark.skipif(os.geteuid() != 0, reason="site.yml uses become; run as root")
def test_defaults_stop_with_one_message_naming_the_sha256(runner):
    done = runner.playbook(SITE, timeout=180)
    assert done.rc != 0
    failed = failed_tasks(done)
    assert [name for name, _result in failed] == [CHECK_TASK], done.stdout[-3000:]
    messages = [item["msg"] for item in failed[0][1]["results"] if item.get("failed")]
    assert len(messages) == 1, messages
    assert "tengine_dyups_tengine_sha256" in messages[0] and "tengine_dyups_tengine_tarball" in messages[0]
    assert "tengine-3.2.0.tar.gz" in messages[0]
    assert changed_tasks(done) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="site.yml uses become; run as root")
def test_an_old_watcher_python_is_refused_naming_the_variable(runner, tmp_path):
    old = tmp_path / "python3.6"
    old.write_text("#!/bin/sh\necho 3.6.8\n")
    old.chmod(old.stat().st_mode | stat.S_IXUSR)
    done = runner.playbook(SITE, extra_vars={"tengine_dyups_flavor": "nginx", "tengine_dyups_watcher_python": str(old)},
                           timeout=180)
    assert done.rc != 0
    failed = failed_tasks(done)
    assert [name for name, _result in failed] == ["The watcher's interpreter is recent enough"], done.stdout[-3000:]
    message = failed[0][1]["msg"]
    assert "Python 3.7 or later" in message and "tengine_dyups_watcher_python" in message and "3.6.8" in message
    assert changed_tasks(done) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="site.yml uses become; run as root")
def test_a_current_watcher_python_passes_the_check(runner):
    # Only the preflight (tagged always): the rest of the role in check mode is the molecule scenarios' job and
    # took minutes here on a loaded machine.
    done = runner.playbook(SITE, extra_vars={"tengine_dyups_flavor": "nginx", "tengine_dyups_watcher_python": "/usr/bin/python3"},
                           check=True, timeout=180, tags="always")
    checked = [result for name, result in done.tasks if name == "The watcher's interpreter is recent enough"]
    assert checked and not checked[0].get("failed"), done.stdout[-3000:]


@pytest.mark.skipif(os.geteuid() != 0, reason="site.yml uses become; run as root")
def test_https_vhosts_without_a_key_or_an_ssl_listen_are_refused(runner):
    vhosts = [{"listen": "443 ssl", "ssl_certificate": "/etc/ssl/a.crt", "locations": [{"upstream": "web"}]},
              {"listen": ["443", 80], "ssl_certificate": "/etc/ssl/b.crt", "ssl_certificate_key": "/etc/ssl/b.key",
               "locations": [{"upstream": "web"}]}]
    done = runner.playbook(SITE, extra_vars={"tengine_dyups_flavor": "nginx", "tengine_dyups_vhosts": vhosts},
                           check=True, timeout=180, tags="always")
    assert done.rc != 0
    failed = failed_tasks(done)
    assert [name for name, _result in failed] == [CHECK_TASK], done.stdout[-3000:]
    messages = [item["msg"] for item in failed[0][1]["results"] if item.get("failed")]
    assert len(messages) == 2, messages
    assert "ssl_certificate needs ssl_certificate_key" in messages[0]
    assert "needs a listen with the ssl parameter" in messages[1]
    assert changed_tasks(done) == []
    ok = [{"listen": ["443 ssl http2", 80], "ssl_certificate": "/etc/ssl/b.crt", "ssl_certificate_key": "/etc/ssl/b.key",
           "locations": [{"upstream": "web"}]}]
    done = runner.playbook(SITE, extra_vars={"tengine_dyups_flavor": "nginx", "tengine_dyups_vhosts": ok},
                           check=True, timeout=180, tags="always")
    assert not failed_tasks(done), done.stdout[-3000:]
