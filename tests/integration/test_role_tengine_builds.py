"""The role's versioned Tengine builds (tasks/install_tengine_source.yml, issue 21 deliver 4) without compiling:
builds are stand-ins (shell scripts answering `-V` as the build would), so what is tested is the role's own
bookkeeping on a real prefix on this machine: which build it wants, the link PREFIX/sbin/tengine, the move of a
binary of the layout before versioned builds to builds/unversioned, pruning, idempotence and check mode.
The builds themselves and the binary upgrade between two real ones: test_binary_upgrade_builds.py.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.ansible_run import AnsibleRunner

PLAY = """
- name: The role's source install tasks on a stand-in prefix
  hosts: tengine
  gather_facts: false
  vars:
    tengine_dyups_tengine_tarball: /nonexistent/tengine-3.2.0.tar.gz   # never read: the build is there
    tengine_dyups_tengine_tarball_on_host: true
    tengine_dyups_service_manager: supervisor
    tengine_dyups_watcher_enabled: false
  tasks:
    - name: Preflight
      ansible.builtin.include_role:
        name: swallowkeeper.dyups.tengine_dyups
        tasks_from: preflight
        public: true

    - name: Say the wanted build
      ansible.builtin.debug:
        msg: "{{ _tengine_dyups_tengine_build_binary }}|{{ _tengine_dyups_tengine_configure | join(' ') }}"

    - name: Install
      ansible.builtin.include_role:
        name: swallowkeeper.dyups.tengine_dyups
        tasks_from: install_tengine_source
"""


def stand_in(path, configure, mtime=None):
    """A build's binary as far as the role asks it: `-V` (on stderr, as Tengine) and `-t`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n"
                    f"[ \"$1\" = -V ] && printf 'Tengine version: Tengine/3.2.0\\nconfigure arguments: %s\\n' '{configure}' >&2\n"
                    "exit 0\n")
    path.chmod(0o755)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path


class Prefix:
    def __init__(self, tmp_path):
        self.root = tmp_path / "tengine"
        self.link = self.root / "sbin" / "tengine"
        self.builds = self.root / "builds"
        self.src = tmp_path / "src"
        self.runner = AnsibleRunner(tmp_path / "ansible")

    def run(self, check=False, **variables):
        extra = {"tengine_dyups_tengine_prefix": str(self.root), "tengine_dyups_tengine_build_dir": str(self.src),
                 "_tengine_dyups_nginx_fresh": True, **variables}
        done = self.runner.playbook(PLAY, check=check, extra_vars=extra)
        assert done.rc == 0, done.stdout[-4000:] + done.stderr[-2000:]
        return done

    def wanted(self, **variables):
        """(the wanted build's binary, its configure arguments), as the role computes them."""
        binary, configure = self.run(check=True, **variables).task("Say the wanted build")["msg"].split("|", 1)
        return Path(binary), configure

    def listing(self):
        return sorted(path.name for path in self.builds.iterdir())


def changed(done):
    return [name for name, result in done.tasks if result.get("changed")]


@pytest.fixture
def prefix(tmp_path):
    return Prefix(tmp_path)


def test_a_binary_of_the_old_layout_becomes_a_kept_build_and_the_path_a_link(prefix):
    wanted, configure = prefix.wanted()
    assert wanted.parent.parent.parent == prefix.builds
    assert wanted.parent.parent.name.startswith("3.2.0-")
    assert f"--sbin-path={wanted}" in configure.split()
    assert f"--prefix={prefix.root}" in configure.split()
    stand_in(wanted, configure)
    old = stand_in(prefix.link, "--prefix=/somewhere --sbin-path=/somewhere/sbin/tengine")
    old_text = old.read_text()

    done = prefix.run()
    assert "skip_reason" in done.task("Compile Tengine")               # no build: the build is there
    assert prefix.link.is_symlink() and os.readlink(prefix.link) == str(wanted)
    unversioned = prefix.builds / "unversioned" / "sbin" / "tengine"
    assert unversioned.read_text() == old_text                       # the running master's binary, kept
    assert prefix.listing() == sorted([wanted.parent.parent.name, "unversioned"])

    again = prefix.run()
    assert changed(again) == []                                      # idempotent
    assert os.readlink(prefix.link) == str(wanted)

    # check mode across a build change: says it would build and switch, changes nothing
    dry = prefix.run(check=True, tengine_dyups_tengine_configure_args=["--with-http_gzip_static_module"])
    would = changed(dry)
    assert "Tengine would be configured, compiled and installed (check mode)" in would
    assert "Point the binary path at the wanted build" in would
    assert os.readlink(prefix.link) == str(wanted)
    assert prefix.listing() == sorted([wanted.parent.parent.name, "unversioned"])
    assert not prefix.src.exists()                                   # nothing unpacked or built


def test_pruning_keeps_the_builds_in_use_and_the_newest_others(prefix, tmp_path):
    wanted, configure = prefix.wanted(tengine_dyups_tengine_keep_builds=1)
    stand_in(wanted, configure)
    now = time.time()
    names = {age: f"3.1.{age}-{age:012d}" for age in (1, 2, 3, 4, 5)}
    for age, name in names.items():
        stand_in(prefix.builds / name / "sbin" / "tengine", "--other", mtime=now - 100 * age)
    prefix.link.parent.mkdir(parents=True)
    prefix.link.symlink_to(prefix.builds / names[1] / "sbin" / "tengine")     # in service before the run
    # the running master runs the oldest build (a copy of sleep standing in for it), its PID in the pid file
    running = prefix.builds / names[5] / "sbin" / "tengine"
    running.unlink()
    running.write_bytes(Path("/bin/sleep").read_bytes())
    running.chmod(0o755)
    os.utime(running, (now - 500, now - 500))
    master = subprocess.Popen([str(running), "3600"])  # killed below
    try:
        (prefix.root / "logs").mkdir(parents=True)
        (prefix.root / "logs" / "tengine.pid").write_text(f"{master.pid}\n")
        # check mode: says what it would remove, removes nothing
        dry = prefix.run(check=True, tengine_dyups_tengine_keep_builds=1)
        assert "Remove builds beyond the ones kept" in changed(dry)
        assert len(prefix.listing()) == 6
        done = prefix.run(tengine_dyups_tengine_keep_builds=1)
    finally:
        master.kill()
        master.wait()
    assert os.readlink(prefix.link) == str(wanted)
    # kept: the wanted build, the one the link named (names[1]), the running master's (names[5]) and the newest
    # other (names[2]); removed: names[3], names[4]
    assert prefix.listing() == sorted([wanted.parent.parent.name, names[1], names[2], names[5]]), \
        done.task("List the builds and the one the running master runs")["stdout"]
