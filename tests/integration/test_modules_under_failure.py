"""dyups_upstream under failure and concurrency (issue 26; the lock of issue 21): what a run reports is what
the interface and the upstream file hold afterwards.

Each case runs the module file the way Ansible runs it on a managed node (a Python process given its
arguments as JSON), against a real Tengine and the Lua flavor (``dyups_server``), and a real Consul agent
and watcher process where the watcher takes part.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from tests.support.collection import COLLECTIONS
from tests.support.consul import consul_agent  # noqa: F401 (fixture)  # pylint: disable=unused-import  # pytest fixture
from tests.support.ports import free_port
from tests.support.watcher import WatcherProcess

MODULE = "ansible_collections.swallowkeeper.dyups.plugins.modules.dyups_upstream"


def start_module(workdir, _file, **args):
    """A module run as a process (not waited for); ``_file`` names its argument file."""
    path = workdir / f"{_file}.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    env = {"PYTHONPATH": str(COLLECTIONS), "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS), "PATH": "/usr/bin:/bin"}
    return subprocess.Popen([sys.executable, "-m", MODULE, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=workdir)


def finish(process):
    """(rc, result) of a module run started by start_module."""
    stdout, stderr = process.communicate(timeout=120)
    try:
        return process.returncode, json.loads(stdout)
    except ValueError:
        raise AssertionError(f"module printed no JSON (rc {process.returncode}):\n{stdout}\n{stderr}") from None


def run(workdir, **args):
    return finish(start_module(workdir, "args", **args))


def ok(workdir, **args):
    rc, result = run(workdir, **args)
    assert rc == 0 and not result.get("failed"), result
    return result


def failed(workdir, **args):
    rc, result = run(workdir, **args)
    assert rc != 0 and result.get("failed"), result
    return result


def interface(server):
    """{name: sorted server specs} as the interface holds it now."""
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import sort_servers
    from tests.support.http_stdlib import stdlib_transport

    found = DyupsClient(server.api_url, stdlib_transport).detail()
    return {name: [s.spec() for s in sort_servers(servers)] for name, servers in found.items()}


# -- one writer at a time ---------------------------------------------------------------------------------
# The lock is the file's, whatever the flavor: the 40 module runs (about a second each) run on Tengine only.
@pytest.mark.parametrize("dyups_server", ["tengine"], indirect=True)
def test_twenty_concurrent_pairs_on_one_file_lose_nothing(dyups_server, tmp_path):
    """Two runs at once on one file, 20 times: before the lock, 3 to 7 pairs lost an upstream from the file
    (each run read the file, then wrote its own view of it), every run returning rc 0."""
    conf = tmp_path / "upstreams.conf"
    for pair in range(20):
        runs = [start_module(tmp_path, f"run{pair}{side}", api_url=dyups_server.api_url, upstream_conf=str(conf),
                             name=f"u{pair:02d}{side}", servers=[f"127.0.0.1:{18000 + pair}"])
                for side in "ab"]
        for process in runs:
            rc, result = finish(process)
            assert rc == 0 and result["changed"], result
    names = {f"u{pair:02d}{side}" for pair in range(20) for side in "ab"}
    assert set(_upstream_file.read(str(conf))) == names
    assert set(interface(dyups_server)) == names


@pytest.mark.parametrize("dyups_server", ["tengine"], indirect=True)
def test_exclusive_beside_single_runs_leaves_nothing_only_in_the_interface(dyups_server, tmp_path):
    """An exclusive bulk run and a single run at once: what the file does not hold, the interface does not
    either (before the lock, the exclusive run's write dropped the other's upstream from the file only)."""
    conf = tmp_path / "upstreams.conf"
    base = {"base": ["127.0.0.1:18100"]}
    ok(tmp_path, api_url=dyups_server.api_url, upstream_conf=str(conf), upstreams=base)
    for pair in range(6):
        runs = [start_module(tmp_path, f"x{pair}", api_url=dyups_server.api_url, upstream_conf=str(conf),
                             upstreams=base, exclusive=True),
                start_module(tmp_path, f"s{pair}", api_url=dyups_server.api_url, upstream_conf=str(conf),
                             name=f"single{pair}", servers=["127.0.0.1:18101"])]
        for process in runs:
            rc, result = finish(process)
            assert rc == 0, result
        assert set(_upstream_file.read(str(conf))) == set(interface(dyups_server)), pair


@pytest.fixture
def agent(consul_agent):  # noqa: F811
    yield consul_agent
    consul_agent.clear_services()


def test_a_running_watcher_owns_its_file(agent, dyups_server, tmp_path):
    """A module run on the file of a running watcher refuses, naming it, and changes nothing (before: the
    README's exclusive example deleted the watcher's upstreams from file and interface); the watcher reads
    again a file changed under it (before: it read the file at start only, and its next write dropped the
    change without looking at it)."""
    conf = tmp_path / "upstreams.conf"
    agent.register("Web", "web1", port=18201)
    with WatcherProcess(tmp_path, consul_url=agent.url, dyups_url=dyups_server.api_url, upstream_file=str(conf),
                        drift_interval=1) as watcher:
        watcher.wait_for(lambda: "Web" in interface(dyups_server), "Web in the interface")
        held = conf.read_text()
        for args in (dict(upstreams={"Other": ["127.0.0.1:18202"]}, exclusive=True),
                     dict(name="Other", servers=["127.0.0.1:18202"])):
            result = failed(tmp_path, api_url=dyups_server.api_url, upstream_conf=str(conf), **args)
            assert f"pid {watcher.pid}" in result["msg"] and "running watcher" in result["msg"], result["msg"]
            assert result["changed"] is False and result["requests"] == []
        checked = failed(tmp_path, api_url=dyups_server.api_url, upstream_conf=str(conf), name="Other",
                         servers=["127.0.0.1:18202"], _ansible_check_mode=True)
        assert "running watcher" in checked["msg"]
        assert conf.read_text() == held and set(interface(dyups_server)) == {"Web"}

        # changed under it (by hand): read again before its next write, which keeps what Consul says
        conf.write_text(held + "\nupstream ByHand {\n    server 127.0.0.1:18203;\n}\n")
        agent.register("Api", "api1", port=18204)
        watcher.wait_for(lambda: "Api" in interface(dyups_server), "Api in the interface")
        assert "changed under the watcher" in watcher.log_text()
        assert set(_upstream_file.read(str(conf))) == {"Web", "Api"}    # ByHand was read, owned, and removed
        watcher.stop()
    # a stopped watcher owns nothing: the module may write the file again
    ok(tmp_path, api_url=dyups_server.api_url, upstream_conf=str(conf), name="Other", servers=["127.0.0.1:18202"])
    assert "Other" in _upstream_file.read(str(conf))


# -- a rerun after a failure converges --------------------------------------------------------------------
def test_a_directives_change_reaches_the_interface_after_it_was_unreachable(dyups_server, tmp_path):
    """Finding 1: the file is written first; a rerun once the interface answers again used to compare the
    directives with the file only, see nothing to send, and report ok while nginx ran the old upstream."""
    conf = tmp_path / "upstreams.conf"
    args = dict(upstream_conf=str(conf), name="web", servers=["127.0.0.1:18301"])
    ok(tmp_path, api_url=dyups_server.api_url, **args)
    down = f"http://127.0.0.1:{free_port()}"
    result = failed(tmp_path, api_url=down, directives=["keepalive 16"], **args)
    assert "keepalive 16" in conf.read_text()
    checked = ok(tmp_path, api_url=dyups_server.api_url, directives=["keepalive 16"], _ansible_check_mode=True, **args)
    assert checked["changed"] is True and checked["upstreams"]["web"]["request"] == "POST"
    again = ok(tmp_path, api_url=dyups_server.api_url, directives=["keepalive 16"], **args)
    assert again["changed"] is True and again["requests"] == ["POST /upstream/web"]
    assert result.get("unsent") == ["web"] and result["upstreams"]["web"]["request"] is None    # and it said so
    # sent: a task that does not name it sends nothing more
    assert ok(tmp_path, api_url=dyups_server.api_url, **args)["changed"] is False
    assert not (tmp_path / ".upstreams.conf.unsent").exists()


def test_a_bulk_run_stopped_by_a_refusal_reports_what_was_sent_and_converges(dyups_server, tmp_path):
    """Findings 1, 2 and 9: a refusal (Tengine's 500: a host name it cannot resolve) stops a bulk run at the
    5th of 10 upstreams. Before: each upstream's ``request`` said POST, the refused block stayed in the file
    (which then failed ``nginx -t``), and the rerun sent nothing for the 5 never sent (their directives
    equal to the file's) and said changed=false."""
    conf = tmp_path / "upstreams.conf"
    names = [f"u{index:02d}" for index in range(10)]
    plain = {name: [f"127.0.0.1:{18400 + index}"] for index, name in enumerate(names)}
    ok(tmp_path, api_url=dyups_server.api_url, upstream_conf=str(conf), upstreams=plain)
    wanted = {name: {"servers": servers, "directives": ["keepalive 8"]} for name, servers in plain.items()}
    refused = dict(wanted, u04={"servers": ["no-such-host.invalid:80"], "directives": ["keepalive 8"]})
    result = failed(tmp_path, api_url=dyups_server.api_url, upstream_conf=str(conf), upstreams=refused,
                    resolve_check=False)
    assert result["requests"] == [f"POST /upstream/{name}" for name in names[:4]], result
    assert [result["upstreams"][name]["request"] for name in names] == ["POST"] * 4 + [None] * 6
    assert result["unsent"] == names[4:]
    held = _upstream_file.read(str(conf))
    assert "no-such-host" not in conf.read_text() and held["u04"] == _upstream_file.parse(
        "upstream u04 { server 127.0.0.1:18404; }")["u04"]                      # the refused block put back
    assert all(held[name].directive_lines() == ["keepalive 8;"] for name in names if name != "u04")

    again = ok(tmp_path, api_url=dyups_server.api_url, upstream_conf=str(conf), upstreams=wanted)
    assert again["changed"] is True and again["requests"] == [f"POST /upstream/{name}" for name in names[4:]]
    assert ok(tmp_path, api_url=dyups_server.api_url, upstream_conf=str(conf), upstreams=wanted)["changed"] is False
    assert interface(dyups_server) == plain
