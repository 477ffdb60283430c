"""The binary upgrade between two real Tengine builds, each in a directory of its own, as the role lays them out
(issue 21, deliver 4): PREFIX/sbin/tengine is a symbolic link to the build in service, the master is started from
the link (its argv[0], which USR2 executes), and a change of build points the link at the other build and runs
roles/tengine_dyups/files/binary_upgrade.sh (the handler "tengine_dyups upgrade nginx").

The two builds are the role's own source builds of the shared 3.2.0 tarball (tests/tools/get-tengine.sh runs
tasks/install_tengine_source.yml; each lands in CACHE/KEY/builds/3.2.0-HASH/sbin/tengine): $TENGINE_BIN, and a
second build with other configure arguments (--with-http_gzip_static_module added) standing in for a new
version ($TENGINE_BIN_2 from tests/run.sh's setup, else get-tengine.sh with TENGINE_EXTRA_CONFIGURE; cached after
its first build, which takes minutes). Each is
copied into the test's own PREFIX/builds/VERSION-HASH/sbin/tengine (the cache is never touched).

Across the upgrade to the second build and the rollback to the first (a binary upgrade back to it) a request loop
(a new connection each) and a websocket held open through the role's vhost see no error; the master runs the
other build each time (/proc/PID/exe), with the upstreams of the file. A new build that fails `-t`, or passes it
but cannot run as a master, is rolled back: the link names the previous build again, the old master serves. An
upgrade while the previous upgrade's old master still drains a connection is refused (exit 4), the link put back.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.integration.test_binary_upgrade import Master, RequestLoop, backend  # noqa: F401 (fixture)  # pylint: disable=unused-import
from tests.support.tengine import require_tengine, tengine_binary

ROOT = Path(__file__).resolve().parents[2]
SECOND_BUILD_ARGS = "--with-http_gzip_static_module"


def second_build():
    """The role's build of the same source with SECOND_BUILD_ARGS added: $TENGINE_BIN_2 (tests/run.sh's setup builds
    it), else get-tengine.sh's (built once, then cached)."""
    if os.environ.get("TENGINE_BIN_2"):
        return os.environ["TENGINE_BIN_2"]
    done = subprocess.run([str(ROOT / "tests/tools/get-tengine.sh")], capture_output=True, text=True, check=False,
                          env={**os.environ, "TENGINE_EXTRA_CONFIGURE": SECOND_BUILD_ARGS}, timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def version_of(binary):
    return subprocess.run([binary, "-V"], capture_output=True, text=True, check=True).stderr


class LinkedMaster(Master):
    """A master started from PREFIX/sbin/tengine, a symbolic link to one build, as the role installs it."""

    def __init__(self, prefix, backend_port, build):
        super().__init__(prefix, backend_port)
        self.binary.unlink()
        self.binary.symlink_to(build)

    def switch(self, build):
        """Point the link at another build, atomically (a new link renamed over the old one), as the role does."""
        fresh = self.binary.with_name("tengine.switch")
        fresh.symlink_to(build)
        os.replace(fresh, self.binary)

    def upgrade_from(self, previous, timeout=20):
        """binary_upgrade.sh with OLD_BINARY = the build the link named before."""
        self.old_binary = Path(previous)
        return self.upgrade(timeout)

    def running_build(self):
        return os.readlink(f"/proc/{self.pid()}/exe")


@pytest.fixture
def builds(tmp_path):
    """The two builds, each copied into a directory of its own under PREFIX/builds/ as the role lays them out (the
    build directory's name kept): what the test does to them never reaches the cache."""
    require_tengine()
    copies = []
    for built in (os.path.realpath(tengine_binary()), os.path.realpath(second_build())):
        copy = tmp_path / "tengine" / "builds" / Path(built).parent.parent.name / "sbin" / "tengine"
        copy.parent.mkdir(parents=True)
        shutil.copy2(built, copy)
        copies.append(str(copy))
    first, second = copies
    assert Path(first).parent.parent != Path(second).parent.parent          # two build directories
    assert SECOND_BUILD_ARGS not in version_of(first)
    assert SECOND_BUILD_ARGS in version_of(second)
    return first, second


@pytest.fixture
def linked(tmp_path, backend, builds):  # noqa: F811 (the imported fixture)
    instance = LinkedMaster(tmp_path / "tengine", backend, builds[0])
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()


def wait_gone(pid, seconds=15):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
        time.sleep(0.1)
    return not Path(f"/proc/{pid}").exists()


def upgrade_holding(linked, held, backend, build, previous, word):
    """Switch the link to BUILD and upgrade from PREVIOUS while HELD (a websocket on the old master) stays open:
    it still echoes after, the master is a new one running BUILD. Returns the old master's PID."""
    held.send(word)
    assert held.recv(timeout=5) == f"{backend}:{word}"
    old_pid = linked.pid()
    linked.switch(build)
    done = linked.upgrade_from(previous)
    assert done.returncode == 0, done.stdout + done.stderr
    time.sleep(0.5)
    held.send(word + " after")
    assert held.recv(timeout=5) == f"{backend}:{word} after"             # its worker of the old build carries it
    assert linked.running_build() == build
    assert linked.pid() != old_pid
    return old_pid


def upgrade_under_requests(linked, build, previous, timeout=5):
    """Switch the link to BUILD and upgrade from PREVIOUS while a request loop runs: (the script's result, the
    stopped loop)."""
    loop = RequestLoop(linked.vhost_port)
    loop.start()
    try:
        linked.switch(build)
        done = linked.upgrade_from(previous, timeout=timeout)
        time.sleep(0.5)
    finally:
        loop.stop()
    return done, loop


def test_upgrade_to_another_build_and_back(linked, builds, backend):  # noqa: F811
    first, second = builds
    assert linked.running_build() == first
    before = linked.upstreams()
    loop = RequestLoop(linked.vhost_port)
    loop.start()
    try:
        with connect(f"ws://127.0.0.1:{linked.vhost_port}/chat", open_timeout=5) as held:
            old_pid = upgrade_holding(linked, held, backend, second, first, "to the second build")
            # a second upgrade while the first one's old master drains (this websocket) is refused, nothing signalled
            linked.switch(first)
            refused = linked.upgrade_from(second)
            assert refused.returncode == 4, refused.stdout + refused.stderr
            assert "still serves its last connections" in refused.stderr
            assert os.readlink(linked.binary) == second                   # the link names what runs again
            assert linked.running_build() == second
            assert Path(f"/proc/{old_pid}").exists()
        assert wait_gone(old_pid)                                         # the old master left with its websocket
        assert linked.upstreams() == before == ["other", "web"]
        # the rollback: a binary upgrade back to the first build, a websocket on the second held across it
        with connect(f"ws://127.0.0.1:{linked.vhost_port}/chat", open_timeout=5) as fresh:
            second_pid = upgrade_holding(linked, fresh, backend, first, second, "back to the first build")
        assert wait_gone(second_pid)
    finally:
        loop.stop()
    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 20
    assert linked.upstreams() == ["other", "web"]
    assert os.readlink(linked.binary) == first
    assert not (linked.prefix / "logs" / "tengine.pid.oldbin").exists()


@pytest.mark.parametrize("kind", ["fails -t", "cannot run as a master"])
def test_a_failed_build_points_the_link_back(linked, builds, tmp_path, kind):
    first = builds[0]
    broken = tmp_path / "tengine" / "builds" / "broken" / "sbin" / "tengine"
    broken.parent.mkdir(parents=True)
    if kind == "fails -t":
        broken.write_text("#!/bin/sh\necho 'broken build' >&2\nexit 1\n")
    else:  # -t passes (the real build checks), a start as master exits at once
        broken.write_text(f'#!/bin/sh\ncase " $* " in *" -t "*) exec {first} "$@";; esac\nexit 1\n')
    broken.chmod(0o755)
    old_pid = linked.pid()
    done, loop = upgrade_under_requests(linked, broken, first)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "rolled back" in done.stderr
    assert f"pointed {linked.binary} back at {first}" in done.stdout + done.stderr
    assert os.readlink(linked.binary) == first                            # the link names the previous build
    assert Path(first).exists()                                           # which is not moved or removed
    assert linked.pid() == old_pid
    assert linked.running_build() == first
    assert not (linked.prefix / "logs" / "tengine.pid.oldbin").exists()
    assert loop.failures == [], loop.failures[:5]
    assert loop.ok > 5
    assert linked.upstreams() == ["other", "web"]
