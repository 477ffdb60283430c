"""plugins/watcher/nginx_processes.py: new nginx processes noticed through the pid file and /proc.

Real processes stand in for nginx here (a Python parent with sleeping children, ``/proc`` as it is);
the title filter is checked on a /proc tree written by the test, since real nginx titles need nginx
(the integration test tests/integration/test_watcher_data_plane.py runs the whole path on real nginx).
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.watcher import nginx_processes
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.nginx_processes import Generation

PARENT = """
import subprocess, sys, time
kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
print(" ".join(str(k.pid) for k in kids), flush=True)
for line in sys.stdin:                       # "respawn": one child replaced by a new one
    kids[0].kill(); kids[0].wait()
    kids[0] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    print(" ".join(str(k.pid) for k in kids), flush=True)
"""


@pytest.fixture
def master(tmp_path):
    """A parent process with two children (like a master and its workers) and its pid file."""
    process = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               text=True)
    pid_file = tmp_path / "nginx.pid"
    pid_file.write_text(f"{process.pid}\n")
    try:
        yield process, pid_file, {int(pid) for pid in process.stdout.readline().split()}
    finally:
        process.stdin.close()
        process.kill()
        process.wait(timeout=10)
        for child in nginx_processes.children(process.pid):
            subprocess.run(["kill", "-9", str(child)], check=False)


def test_a_new_master_or_a_new_child_is_a_new_generation_and_a_child_that_went_away_is_not():
    before = Generation(10, frozenset({11, 12}))
    assert Generation(10, frozenset({11, 13})).is_new_after(before)        # a worker respawned
    assert Generation(20, frozenset({21, 22})).is_new_after(before)        # nginx restarted
    assert not Generation(10, frozenset({11})).is_new_after(before)        # an old worker ended
    assert not Generation(10, frozenset({11, 12})).is_new_after(before)
    assert not Generation(None, frozenset()).is_new_after(before)          # nginx is down: nothing to push


def test_the_pid_file_and_proc_give_the_children_and_a_respawn_is_noticed(master):
    process, pid_file, kids = master
    assert nginx_processes.read_pid_file(str(pid_file)) == process.pid
    assert nginx_processes.generation(str(pid_file)) == Generation(process.pid, frozenset(kids))
    noticed = []
    watcher = nginx_processes.ProcessWatcher(str(pid_file), 0.05, noticed.append)
    assert not watcher.poll()
    process.stdin.write("respawn\n")
    process.stdin.flush()
    new_kids = {int(pid) for pid in process.stdout.readline().split()}
    assert watcher.poll()
    assert noticed == [Generation(process.pid, frozenset(new_kids))]
    assert not watcher.poll()


def test_the_daemon_takes_a_new_master_from_the_process_watcher(tmp_path, master):
    """A master other than the last one seen, the one running at the watcher's start included, is a new
    master: the daemon forgets its deletes (the new master read the upstream file). 6b64ee2's daemon kept a
    master of its own, known only from the first new generation: the first restart after its start was
    not a new master to it."""
    from ansible_collections.swallowkeeper.dyups.plugins.watcher import daemon as watcher_daemon

    first, pid_file, _kids = master
    daemon = watcher_daemon.Daemon(watcher_settings.build(
        {"upstream_file": str(tmp_path / "upstreams.conf"), "status_listen": "", "nginx_pid_file": str(pid_file)},
        environ={}))
    second = subprocess.Popen([sys.executable, "-c", PARENT], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        kids = {int(pid) for pid in second.stdout.readline().split()}
        pid_file.write_text(f"{second.pid}\n")
        assert daemon.nginx.watcher.poll()
        assert daemon.nginx_new_master.is_set() and daemon.nginx_changed.is_set()
        daemon.nginx_new_master.clear()
        second.stdin.write("respawn\n")   # a worker respawned by the same master: not a new master
        second.stdin.flush()
        kids |= {int(pid) for pid in second.stdout.readline().split()}
        assert daemon.nginx.watcher.poll() and not daemon.nginx_new_master.is_set()
        pid_file.write_text(f"{first.pid}\n")   # the first one again: another master than the last seen
        assert daemon.nginx.watcher.poll() and daemon.nginx_new_master.is_set()
    finally:
        daemon.dyups_transport.close()
        second.stdin.close()
        second.kill()
        second.wait(timeout=10)
        for child in kids:
            subprocess.run(["kill", "-9", str(child)], check=False)


def test_the_thread_calls_back_within_its_interval(master):
    process, pid_file, _kids = master
    noticed = []
    watcher = nginx_processes.ProcessWatcher(str(pid_file), 0.05, noticed.append).start()
    try:
        process.stdin.write("respawn\n")
        process.stdin.flush()
        process.stdout.readline()
        started = time.monotonic()
        while not noticed and time.monotonic() - started < 5:
            time.sleep(0.01)
        assert noticed and time.monotonic() - started < 1.0
    finally:
        watcher.stop()


@pytest.mark.parametrize("text", ["", "abc", "999999999", "12 34"])
def test_a_pid_file_without_a_live_pid_means_no_master(tmp_path, text):
    path = tmp_path / "nginx.pid"
    path.write_text(text)
    assert nginx_processes.read_pid_file(str(path)) is None
    assert nginx_processes.read_pid_file(str(tmp_path / "missing.pid")) is None


def test_only_workers_that_take_connections_are_waited_for(tmp_path):
    titles = {1: "nginx: worker process", 2: "nginx: worker process is shutting down",
              3: "nginx: cache manager process", 4: "nginx: worker process"}
    for pid, title in titles.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(title.encode() + b"\0")
    assert nginx_processes.accepting_workers(frozenset({1, 2, 3, 4, 5}), proc=str(tmp_path)) == {1, 4}


def test_a_worker_that_answered_a_push_and_stopped_taking_connections_is_a_stray_once(tmp_path):
    """The transport below stands in for the interface's answers (the header only); /proc is written here."""
    titles = {1: "nginx: worker process", 2: "nginx: worker process", 3: "nginx: worker process"}
    for pid, title in titles.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "cmdline").write_bytes(title.encode() + b"\0")
    answers = iter([(200, b"", {"x-dyups-worker": "1"}), (200, b"", {"x-dyups-worker": "2"}),
                    (200, b"", {"x-dyups-worker": "3"}), (200, b"", {}), (404, b"", {"x-dyups-worker": "2"})])
    answered = nginx_processes.AnsweringWorkers(lambda *_args: next(answers))
    answered("POST", "http://i/upstream/a", b"", 1.0)
    answered("DELETE", "http://i/upstream/b", None, 1.0)
    answered("GET", "http://i/detail", None, 1.0)       # reads are not pushes
    answered("POST", "http://i/upstream/c", b"", 1.0)    # no header: nothing to keep
    now = Generation(100, frozenset({1, 2, 3}))
    assert answered.strays(now, proc=str(tmp_path)) == frozenset()
    (tmp_path / "2" / "cmdline").write_bytes(b"nginx: worker process is shutting down\0")   # a reload's old worker
    assert answered.strays(now, proc=str(tmp_path)) == {2}
    assert answered.strays(now, proc=str(tmp_path)) == frozenset()        # once
    assert answered.strays(Generation(100, frozenset({3})), proc=str(tmp_path)) == {1}   # gone
    answered("DELETE", "http://i/upstream/b", None, 1.0)                  # answered by 2 again (a 404)
    assert answered.strays(now, proc=str(tmp_path)) == {2}


def test_a_stray_is_reported_by_the_poll(master):
    process, pid_file, _kids = master
    strays = []
    answered = nginx_processes.AnsweringWorkers(lambda *_args: (200, b"", {"x-dyups-worker": str(process.pid)}))
    answered("POST", "http://i/upstream/a", b"", 1.0)    # the master is no worker of its own: a stray
    watcher = nginx_processes.ProcessWatcher(str(pid_file), 0.05, lambda _generation: None, answered, strays.append)
    assert watcher.poll() and strays == [{process.pid}]
    assert not watcher.poll()


@pytest.mark.parametrize("value", [0, -1, 11])
def test_the_poll_interval_is_checked(value):
    with pytest.raises(watcher_settings.SettingsError, match="nginx_poll_interval"):
        watcher_settings.build({"nginx_poll_interval": value}, environ={})
