"""The watcher under faults (issue 18, the sync side): reloads, restarts and outages in the middle of a change.

A real Consul agent, a real proxy (``[lua]`` and ``[tengine]`` in the test id: tests/support/tengine.py) and
the real watcher process, on loopback (the ``stack`` of test_watcher.py). Where a test needs Consul or the
dyups interface unreachable for a while, the watcher reaches it through tests/support/cut_proxy.py, a TCP
relay that the test cuts: the server behind it stays real.
"""

from __future__ import annotations

import time

import pytest

from tests.integration.test_watcher import running_stack, stack  # noqa: F401  # pylint: disable=unused-import  # fixture
from tests.support.cut_proxy import CutProxy
from tests.support.nginx_lua import nginx_lua_factory  # noqa: F401  (fixture)  # pylint: disable=unused-import
from tests.support.tengine import proxy_factory  # noqa: F401  (fixture)  # pylint: disable=unused-import
from tests.support.watcher import WatcherProcess


@pytest.fixture
def lua_stack(tmp_path, nginx_lua_factory):  # noqa: F811  (the imported fixture)
    """test_watcher.py's ``stack`` on the Lua flavor only, for faults that do not depend on the flavor."""
    with running_stack(tmp_path, nginx_lua_factory(workers=2, upstream_file=str(tmp_path / "upstreams.conf")),
                       tmp_path / "upstreams.conf") as started:
        yield started


def start_watcher(stack, **settings):
    """A watcher on ``stack`` whose settings may replace the stack's own (consul_url, dyups_url)."""
    values = dict(stack.common, drift_interval=1)
    values.update(settings)
    watcher = WatcherProcess(stack.tmp_path, **values)
    stack._watchers.append(watcher)  # pylint: disable=protected-access  # stopped with the stack's
    return watcher.start()


def interface_names(nginx):
    status, text = nginx.api("GET", "/list")[:2]
    return set(text.split()) if status == 200 else set()


def interface_servers(nginx, name):
    status, text = nginx.api("GET", f"/upstream/{name}")[:2]
    return sorted(line.split()[1].rstrip(";") for line in text.splitlines()
                  if line.strip().startswith("server ")) if status == 200 else []


def metric(watcher, name):
    return watcher.metrics().get(f"swallowkeeper_watcher_{name}")


def test_a_sighup_with_an_empty_token_file_keeps_the_watcher_on_its_settings(lua_stack, tmp_path):
    """Finding 7: token rotation left the token file empty for a moment; the SIGHUP then killed the watcher
    (exit 1, nothing applied after). Now the reload fails alone: logged, counted, the watcher goes on,
    and the next SIGHUP (with a good file) reloads."""
    stack = lua_stack
    agent = stack.agent
    p1, p2, p3, _p4 = stack.ports
    token = tmp_path / "consul.token"
    token.write_text("first-token\n")   # the dev agent has no ACLs: any token is let through
    agent.register("Web", "w1", port=p1)
    watcher = start_watcher(stack, consul_token_file=str(token))
    watcher.wait_for(lambda: stack.serves("Web", p1), "first sync")
    token.write_text("")
    watcher.hup()
    watcher.wait_for(lambda: "config NOT reloaded" in watcher.log_text(), "the failed reload logged")
    assert watcher.alive()
    assert metric(watcher, "config_reload_success") == 0
    assert metric(watcher, 'errors_total{kind="config_reload"}') == 1
    agent.register("Web", "w2", port=p2)
    watcher.wait_for(lambda: stack.serves("Web", p1, p2), "changes still apply after the failed reload")
    token.write_text("second-token\n")
    watcher.hup()
    watcher.wait_for(lambda: "config reloaded" in watcher.log_text(), "the next SIGHUP reloads")
    watcher.wait_for(lambda: metric(watcher, "config_reload_success") == 1, "the gauge back to 1")
    agent.register("Web", "w3", port=p3)
    watcher.wait_for(lambda: stack.serves("Web", p1, p2, p3), "changes apply after the reload")


@pytest.mark.parametrize("how", ["sighup", "restart"])
def test_a_pending_delete_survives_a_sighup_and_a_restart(stack, how):
    """Finding 6: a DELETE that could not reach the interface, then a SIGHUP (or a restart): the upstream
    file no longer names the upstream, and the new Syncer started without it, so it stayed in the
    interface for good. Now it is deleted once the interface answers again."""
    agent, nginx = stack.agent, stack.nginx
    p1, p2, _p3, _p4 = stack.ports
    agent.register("Web", "w1", port=p1)
    agent.register("Api", "a1", port=p2)
    with CutProxy(int(nginx.api_url.rsplit(":", 1)[1])) as relay:
        watcher = start_watcher(stack, dyups_url=relay.url, dyups_timeout=1, removal_guard_min=100)
        watcher.wait_for(lambda: {"Web", "Api"} <= interface_names(nginx), "first sync")
        relay.cut()
        agent.deregister("a1")
        watcher.wait_for(lambda: "Api" not in stack.upstream_file.read_text(), "the file written without Api")
        watcher.wait_for(lambda: metric(watcher, "pending_upstreams") >= 1, "the DELETE pending")
        if how == "sighup":
            watcher.hup()
            watcher.wait_for(lambda: "config reloaded" in watcher.log_text(), "SIGHUP handled")
        else:
            assert watcher.stop() == 0
            watcher = start_watcher(stack, dyups_url=relay.url, dyups_timeout=1, removal_guard_min=100)
        time.sleep(0.5)
        assert "Api" in interface_names(nginx), "the interface was cut: nothing reached it"
        relay.restore()
        watcher.wait_for(lambda: "Api" not in interface_names(nginx), "the pending DELETE sent", timeout=15)
        assert "Web" in interface_names(nginx)


def test_an_upstream_file_removed_behind_the_watchers_back_is_written_again(lua_stack):
    """Finding 9: the file was written only on a change; removed, it stayed missing (an nginx reload or
    restart then loads no upstream, or fails). The drift check writes it again."""
    stack = lua_stack
    agent = stack.agent
    p1 = stack.ports[0]
    agent.register("Web", "w1", port=p1)
    watcher = start_watcher(stack)
    watcher.wait_for(lambda: stack.serves("Web", p1), "first sync")
    written = stack.upstream_file.read_text()
    stack.upstream_file.unlink()
    watcher.wait_for(lambda: stack.upstream_file.exists() and stack.upstream_file.read_text() == written,
                     "the file written again by the drift check", timeout=10)


def test_a_hold_does_not_run_out_while_consul_is_unreachable(lua_stack):
    """Finding 8: removal_hold_seconds passed while Consul did not answer, and the held removal was applied
    with nothing confirming it. Now only time in which Consul answers counts, and the hold runs out on a
    fresh read only: held through an outage twice as long as removal_hold_seconds, applied after."""
    stack = lua_stack
    agent, nginx = stack.agent, stack.nginx
    ports = stack.ports
    for i, port in enumerate(ports):
        agent.register("Web", f"w{i}", port=port)
    hold = 2
    with CutProxy(agent.http_port) as relay:
        watcher = start_watcher(stack, consul_url=relay.url, removal_guard_share=0.5, removal_guard_min=2,
                                removal_hold_seconds=hold, quiescence_min=0.5, quiescence_max=1)
        everyone = [f"127.0.0.1:{port}" for port in ports]
        watcher.wait_for(lambda: interface_servers(nginx, "Web") == sorted(everyone), "first sync")
        for i in range(3):
            agent.deregister(f"w{i}")
        watcher.wait_for(lambda: metric(watcher, "held_changes") == 1, "the removal held")
        relay.cut()
        watcher.wait_for(lambda: metric(watcher, "consul_up") == 0, "Consul unreachable", timeout=15)
        time.sleep(2 * hold)
        assert metric(watcher, "held_changes") == 1 and interface_servers(nginx, "Web") == sorted(everyone), \
            "the hold ran out while Consul did not answer"
        relay.restore()
        watcher.wait_for(lambda: metric(watcher, "consul_up") == 1, "Consul answers again", timeout=15)
        watcher.wait_for(lambda: interface_servers(nginx, "Web") == [f"127.0.0.1:{ports[3]}"],
                         "the hold runs out once Consul confirmed it long enough", timeout=20)
        assert "Consul confirmed it for removal_hold_seconds" in watcher.log_text()


def test_additions_beside_a_held_removal_do_not_release_it(stack):
    """Finding 10: 10 servers; 4 go (applied); 4 of the 6 left go (held); 4 servers of another upstream are
    added: the next sync released the hold. The servers are never sent traffic: only the interface's
    upstreams are compared."""
    additions_beside_a_held_removal(stack, window=60)


def test_additions_beside_a_held_removal_without_a_window(lua_stack):
    """The same with removal_guard_window 0 (held on 940f60b too, as docs/watcher.md says; the Lua flavor
    only: the window is the watcher's, not the interface's)."""
    additions_beside_a_held_removal(lua_stack, window=0)


def additions_beside_a_held_removal(stack, window):
    agent, nginx = stack.agent, stack.nginx
    ten = [f"127.0.1.{i}:8080" for i in range(1, 11)]
    for i in range(10):
        agent.register("Web", f"w{i}", port=8080, address=f"127.0.1.{i + 1}")
    watcher = start_watcher(stack, removal_guard_share=0.5, removal_guard_min=3, removal_hold_seconds=0,
                            removal_guard_window=window, quiescence_min=0.5, quiescence_max=1)
    watcher.wait_for(lambda: interface_servers(nginx, "Web") == sorted(ten), "first sync")
    for i in range(4):
        agent.deregister(f"w{i}")
    watcher.wait_for(lambda: interface_servers(nginx, "Web") == sorted(ten[4:]), "4 of 10 applied")
    for i in range(4, 8):
        agent.deregister(f"w{i}")
    watcher.wait_for(lambda: metric(watcher, "held_changes") == 1, "4 of the 6 left held")
    # the first deregistration after a quiet spell may be applied at once (the leading edge: one server of
    # six, within the guard) and the rest held; whatever the interface holds now must stay
    held_state = interface_servers(nginx, "Web")
    assert held_state in (sorted(ten[4:]), sorted(ten[5:])), held_state
    for i in range(4):
        agent.register("Api", f"a{i}", port=8080, address=f"127.0.2.{i + 1}")
    watcher.wait_for(lambda: len(interface_servers(nginx, "Api")) == 4, "the additions applied")
    time.sleep(1.5)   # a sync runs every second while a change is held
    assert metric(watcher, "held_changes") == 1 and interface_servers(nginx, "Web") == held_state
    assert "release requested" in watcher.release()
    watcher.wait_for(lambda: interface_servers(nginx, "Web") == sorted(ten[8:]), "released")
