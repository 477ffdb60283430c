"""The binary upgrade under supervisor (issue 21, deliver 4): a real supervisord (its own configuration, socket and
pid file in a temporary directory) runs the role's nginx program (templates/supervisor-nginx.conf.j2 rendered by
Ansible: files/nginx_supervise.py starting a real Tengine from PREFIX/sbin/tengine, a link to one build), and the
handler's roles/tengine_dyups/files/binary_upgrade.sh replaces the master by another build, as under systemd.

The builds are test_binary_upgrade_builds.py's: $TENGINE_BIN and a second build with other configure arguments
($TENGINE_BIN_2), copied into the test's PREFIX/builds/. The only change to the rendered program: `-p PREFIX/`
(the builds' compiled-in prefix is the test cache's, which the test must not write to).

Checked: a request loop and websockets held open through the role's vhost across an upgrade to the second build
and back (0 failed); supervisor shows the program RUNNING with the same process all along, and the new master
becomes its child once the old one left (supervisor still tracks it: HUP through supervisorctl reaches it, and a
second upgrade works from it); `supervisorctl stop` while an old master still drains leaves no nginx process; a
new build that cannot run as a master is rolled back with the old master serving under supervisor.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import yaml
from websockets.sync.client import connect

from tests.integration.test_binary_upgrade import RequestLoop, backend  # noqa: F401 (fixture)  # pylint: disable=unused-import
from tests.integration.test_binary_upgrade_builds import (  # noqa: F401 (fixture)  # pylint: disable=unused-import
    LinkedMaster, builds, upgrade_holding, upgrade_under_requests, wait_gone)
from tests.support.ansible_run import AnsibleRunner
from tests.support.ports import wait_port
from tests.support.tengine import require_tengine, tengine_binary

ROOT = Path(__file__).resolve().parents[2]
ROLE = ROOT / "roles" / "tengine_dyups"
SUPERVISE = ROLE / "files" / "nginx_supervise.py"
SUPERVISORD = "/usr/bin/supervisord"
PROGRAM = "tengine"


@pytest.fixture(scope="module")
def program_text(tmp_path_factory):
    """The role's supervisor program for nginx, rendered once with @PREFIX@ and @LOGS@ for the test's paths."""
    work = tmp_path_factory.mktemp("render")
    dest = work / "program.conf"
    play = yaml.safe_dump([{
        "name": "render the role's supervisor program", "hosts": "tengine", "gather_facts": False,
        "tasks": [{"name": "render", "ansible.builtin.template": {
            "src": str(ROLE / "templates/supervisor-nginx.conf.j2"), "dest": str(dest), "mode": "0644"}}]}])
    done = AnsibleRunner(work / "ansible").playbook(play, extra_vars={
        "tengine_dyups_flavor": "tengine", "_tengine_dyups_service_name": PROGRAM,
        "_tengine_dyups_binary": "@PREFIX@/sbin/tengine", "_tengine_dyups_main_config": "@PREFIX@/conf/tengine.conf",
        "_tengine_dyups_pid_file": "@PREFIX@/logs/tengine.pid", "tengine_dyups_supervisor_log_dir": "@LOGS@",
        "tengine_dyups_watcher_python": sys.executable, "_tengine_dyups_supervise_script": str(SUPERVISE)})
    assert done.rc == 0, done.stdout[-3000:]
    text = dest.read_text(encoding="utf-8")
    assert "/sbin/tengine -c " in text
    return text.replace("/sbin/tengine -c ", "/sbin/tengine -p @PREFIX@/ -c ")


def nginx_processes(root):
    """The PIDs of processes running a binary under ROOT (the test's build copies)."""
    found = []
    for name in os.listdir("/proc"):
        try:
            if name.isdigit() and os.readlink(f"/proc/{name}/exe").startswith(f"{root}/"):
                found.append(int(name))
        except OSError:
            pass
    return found


def parent_of(pid):
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
        return int(stat.read().rsplit(")", 1)[1].split()[1])


def workers_of(pid):
    return sorted(int(name) for name in os.listdir("/proc") if name.isdigit() and _parent_or_none(name) == pid)


def _parent_or_none(pid):
    try:
        return parent_of(pid)
    except (OSError, IndexError, ValueError):
        return None


class Supervisor:
    """supervisord in the foreground with its own configuration, socket and pid file, running PROGRAM."""

    def __init__(self, work, program):
        self.short = Path(tempfile.mkdtemp(prefix="skdy-sv-"))   # a unix socket's path must stay short
        self.config = work / "supervisord.conf"
        self.config.write_text(f"""[unix_http_server]
file={self.short}/supervisor.sock
[supervisord]
logfile={work}/supervisord.log
pidfile={self.short}/supervisord.pid
childlogdir={work}
nodaemon=true
[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface
[supervisorctl]
serverurl=unix://{self.short}/supervisor.sock

{program}""")
        self.log = work / f"{PROGRAM}.log"
        self.process = None

    def start(self):
        self.process = subprocess.Popen([SUPERVISORD, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while "RUNNING" not in self.status() and time.monotonic() < deadline:
            assert self.process.poll() is None, "supervisord exited"
            time.sleep(0.2)
        assert "RUNNING" in self.status(), self.status() + self.program_log()

    def ctl(self, *args, timeout=90):
        return subprocess.run(["supervisorctl", "-c", str(self.config), *args], capture_output=True, text=True,
                              timeout=timeout, check=False)

    def status(self):
        return self.ctl("status", PROGRAM).stdout

    def pid(self):
        return int(self.ctl("pid", PROGRAM).stdout.strip())

    def program_log(self):
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.ctl("shutdown", timeout=60)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        shutil.rmtree(self.short, ignore_errors=True)


@pytest.fixture
def supervised(tmp_path, backend, builds, program_text):  # noqa: F811 (the imported fixtures)
    """(supervisor, master): the role's program under a real supervisord, nginx from the link to the first build."""
    if not os.access(SUPERVISORD, os.X_OK):  # tests/tools/install-system-deps.sh installs it
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but no {SUPERVISORD}")
        pytest.skip(f"no {SUPERVISORD} (Debian package supervisor)")
    master = LinkedMaster(tmp_path / "tengine", backend, builds[0])
    logs = tmp_path / "supervisor"
    logs.mkdir()
    supervisor = Supervisor(logs, program_text.replace("@PREFIX@", str(master.prefix)).replace("@LOGS@", str(logs)))
    try:
        supervisor.start()
        wait_port(master.vhost_port)
        wait_port(master.api_port)
        yield supervisor, master
    finally:
        supervisor.stop()
        left = nginx_processes(tmp_path)
        master.stop()                   # whatever a failed test left: its pid files' masters
        for pid in left:
            try:
                os.kill(pid, 9)
            except OSError:
                pass


def test_upgrade_under_supervisor_drops_nothing(supervised, builds, backend, tmp_path):  # noqa: F811
    supervisor, master = supervised
    first, second = builds
    program = supervisor.pid()
    assert master.running_build() == first
    assert parent_of(master.pid()) == program                   # the master daemonized under the program
    loop = RequestLoop(master.vhost_port)
    loop.start()
    draining = contextlib.ExitStack()                             # a websocket left open on the last old master
    try:
        with connect(f"ws://127.0.0.1:{master.vhost_port}/chat", open_timeout=5) as held, \
                connect(f"ws://127.0.0.1:{master.vhost_port}/chat", open_timeout=5) as other:
            old_pid = upgrade_holding(master, held, backend, second, first, "to the second build")
            other.send("second")
            assert other.recv(timeout=5) == f"{backend}:second"
            assert parent_of(master.pid()) == old_pid            # the new master, a child of the old one
        assert wait_gone(old_pid)
        new_pid = master.pid()
        assert parent_of(new_pid) == program                     # adopted by the program once the old one left
        assert "RUNNING" in supervisor.status() and supervisor.pid() == program, supervisor.status()
        assert master.running_build() == second
        # supervisor still reaches the master: a reload through it gives the new master new workers
        workers = workers_of(new_pid)
        assert supervisor.ctl("signal", "HUP", PROGRAM).returncode == 0
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and set(workers) & set(workers_of(new_pid)):
            time.sleep(0.1)
        assert not set(workers) & set(workers_of(new_pid)) and master.pid() == new_pid
        # the next upgrade works from the adopted master (its parent changed: nginx takes USR2)
        held = draining.enter_context(connect(f"ws://127.0.0.1:{master.vhost_port}/chat", open_timeout=5))
        second_pid = upgrade_holding(master, held, backend, first, second, "back to the first build")
    finally:
        loop.stop()
    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 20
    assert master.upstreams() == ["other", "web"]
    assert master.running_build() == first
    assert "RUNNING" in supervisor.status() and supervisor.pid() == program, supervisor.status()
    # stop while the old master still drains (the websocket): both masters stop, nothing of nginx is left
    assert Path(f"/proc/{second_pid}").exists()
    stopping = threading.Thread(target=lambda: supervisor.ctl("stop", PROGRAM))
    stopping.start()
    time.sleep(1)
    draining.close()
    stopping.join(timeout=60)
    assert "STOPPED" in supervisor.status(), supervisor.status()
    assert nginx_processes(tmp_path) == []
    assert not Path(f"/proc/{program}").exists()
    assert "no nginx process left; exit 0" in supervisor.program_log()


def test_a_broken_build_rolls_back_under_supervisor(supervised, builds, tmp_path):
    supervisor, master = supervised
    first = builds[0]
    program = supervisor.pid()
    old_pid = master.pid()
    ran = tmp_path / "broken-ran"
    broken = tmp_path / "tengine" / "builds" / "broken" / "sbin" / "tengine"
    broken.parent.mkdir(parents=True)
    # -t passes (the real build checks); started as a master (by the old master's USR2) it says so and exits
    broken.write_text(f'#!/bin/sh\ncase " $* " in *" -t "*) exec {first} "$@";; esac\ntouch {ran}\nexit 1\n')
    broken.chmod(0o755)
    done, loop = upgrade_under_requests(master, broken, first)
    assert done.returncode == 1, done.stdout + done.stderr
    assert ran.exists()                                          # the old master took USR2 and ran the new build
    assert "rolled back" in done.stderr
    assert os.readlink(master.binary) == first
    assert master.pid() == old_pid and master.running_build() == first
    assert parent_of(old_pid) == program
    assert "RUNNING" in supervisor.status() and supervisor.pid() == program, supervisor.status()
    assert not (master.prefix / "logs" / "tengine.pid.oldbin").exists()
    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 5
    assert master.upstreams() == ["other", "web"]


def test_the_program_exits_with_nginx_when_it_cannot_start(tmp_path):
    """nginx refusing to start (here: no configuration) ends the program at once with nginx's status."""
    require_tengine()
    done = subprocess.run([sys.executable, str(SUPERVISE), "--pid-file", str(tmp_path / "none.pid"), "--",
                           tengine_binary(), "-p", f"{tmp_path}/", "-c", str(tmp_path / "missing.conf")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 1, done.stderr
    assert "no nginx process left; exit 1" in done.stderr


def test_a_stop_that_does_not_end_in_time_kills_every_nginx_process(tmp_path, backend):  # noqa: F811
    """A stop (QUIT) while a websocket keeps a worker busy: after --kill-after, KILL to the master and its workers
    (nginx daemonized into a session of its own, out of reach of supervisor's killasgroup); nothing is left."""
    require_tengine()
    build = tmp_path / "tengine" / "builds" / "one" / "sbin" / "tengine"
    build.parent.mkdir(parents=True)
    shutil.copy2(tengine_binary(), build)
    master = LinkedMaster(tmp_path / "tengine", backend, build)
    program = subprocess.Popen([sys.executable, str(SUPERVISE), "--pid-file", str(master.pid_file), "--kill-after",
                                "1", "--", str(master.binary), "-p", f"{master.prefix}/", "-c", str(master.config)],
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_port(master.vhost_port)
        with connect(f"ws://127.0.0.1:{master.vhost_port}/chat", open_timeout=5) as held:
            held.send("busy")
            assert held.recv(timeout=5) == f"{backend}:busy"
            assert len(nginx_processes(tmp_path)) == 3               # the master and its 2 workers
            program.send_signal(3)                                   # QUIT, the program's stopsignal
            assert program.wait(timeout=15) == 128 + 9, program.stderr.read()
            assert nginx_processes(tmp_path) == []
        assert "still running 1.0s after SIGQUIT: KILL" in program.stderr.read()
    finally:
        if program.poll() is None:
            program.kill()
            program.wait()
        master.stop()
