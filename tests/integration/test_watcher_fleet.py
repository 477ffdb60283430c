"""The fleet share (plugins/watcher/fleet.py): several real watchers on one real Consul agent, each with its
own real interface (the stock-nginx Lua flavor, tests/support/nginx_lua.py), one publisher and followers.

What is checked: a follower applies what the publisher publishes (a flip, a registration, a
deregistration) without reading Consul's catalog or health itself; the publisher killed (SIGKILL): the
followers read Consul themselves within the bound the settings give (no lock holder, or no journal write
for fleet_stale_after), apply nothing wrong meanwhile, and one of them takes over once Consul ends the dead
session (its TTL, plus the lock delay); hostile KV values (a name the rule refuses, a server the policy
refuses, a value above fleet_value_max, a new value for a known upstream that points at the proxy's own
interface) never reach the interface; a watcher with other mapping settings does not follow.

Backends are registered at 127.0.0.2 (loopback lifted by the harness's LOOPBACK_OPT_IN) and 127.0.0.1 is in
denied_networks: a server on 127.0.0.1 (where each interface listens) is refused by the server policy, as a
registrant's would be.
"""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support import bursts
from tests.support.consul import LOOPBACK_OPT_IN, ConsulAgent, reader_policy_rules
from tests.support.nginx_lua import NginxLua, TEST_HOSTS
from tests.support.watcher import WatcherProcess
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.fleet import FleetSource
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics

PREFIX = "swk/default"
FLEET = {"fleet_share": True, "fleet_heartbeat": 0.5, "fleet_stale_after": 2.0, "fleet_session_ttl": 10,
         "fleet_lock_delay": 1, "denied_networks": ["127.0.0.1/32"], "consul_wait": 30, "drift_interval": 3600,
         "consul_resync_interval": 3600, "fleet_value_max": 4096}
BACKEND = "127.0.0.2"


def metric(watcher, name):
    return watcher.metrics().get(f"swallowkeeper_watcher_{name}", 0)


FLEET_POLICY = (Path(__file__).resolve().parents[1] / "support" / "consul_acl_fleet_policy.hcl").read_text()


class Fleet:
    """One agent; watchers, each with its own Lua-flavor interface and upstream file."""

    def __init__(self, tmp_path, agent):
        self.tmp_path = tmp_path
        self.agent = agent
        self.members = []   # (watcher, interface)
        self.hosts = tmp_path / "hosts"
        self.hosts.write_text(TEST_HOSTS)

    def add(self, **settings):
        number = len(self.members)
        upstream_file = self.tmp_path / f"upstreams-{number}.conf"
        interface = NginxLua(workers=1, upstream_file=str(upstream_file)).start()
        watcher = WatcherProcess(self.tmp_path / f"w{number}", consul_url=self.agent.url, dyups_url=interface.api_url,
                                 upstream_file=str(upstream_file), hosts_file=str(self.hosts),
                                 **dict(FLEET, **settings))
        self.members.append((watcher, interface))
        try:
            watcher.start()
        except Exception:
            interface.cleanup()
            raise
        return watcher, interface

    def stop(self):
        for watcher, interface in self.members:
            try:
                watcher.kill()
            finally:
                interface.cleanup()


@pytest.fixture
def fleet(tmp_path):
    with ConsulAgent() as agent:
        group = Fleet(tmp_path, agent)
        try:
            yield group
        finally:
            group.stop()


def detail(interface):
    """{upstream: {address, ...}} the interface serves."""
    return {name: set(servers) for name, servers in bursts.read_detail(interface).items()}


def role(watcher):
    for name in ("publisher", "follower", "fallback"):
        if metric(watcher, f"fleet_{name}") == 1:
            return name
    return None


def wait_role(watcher, wanted, timeout=15.0):
    watcher.wait_for(lambda: role(watcher) == wanted, f"role {wanted}", timeout=timeout)


def wait_detail(watcher, interface, expected, timeout=10.0):
    watcher.wait_for(lambda: detail(interface) == expected, f"the interface serves {expected}", timeout=timeout)


def publisher_and_follower(fleet):
    fleet.agent.register("Web", "w1", port=8001, address=BACKEND)
    fleet.agent.register("Web", "w2", port=8002, address=BACKEND)
    first, first_nginx = fleet.add()
    wait_role(first, "publisher")
    second, second_nginx = fleet.add()
    wait_role(second, "follower")
    both = {"Web": {f"{BACKEND}:8001", f"{BACKEND}:8002"}}
    wait_detail(second, second_nginx, both)
    return first, first_nginx, second, second_nginx


def test_a_follower_applies_flips_registrations_and_deregistrations(fleet):
    first, first_nginx, second, second_nginx = publisher_and_follower(fleet)
    agent = fleet.agent
    agent.fail_check("w2")
    wait_detail(second, second_nginx, {"Web": {f"{BACKEND}:8001"}})
    agent.register("Api", "a1", port=8101, address=BACKEND)
    wait_detail(second, second_nginx, {"Web": {f"{BACKEND}:8001"}, "Api": {f"{BACKEND}:8101"}})
    agent.pass_check("w2")
    agent.deregister("a1")
    expected = {"Web": {f"{BACKEND}:8001", f"{BACKEND}:8002"}}
    wait_detail(second, second_nginx, expected)
    # the publisher publishes what Consul answered before its own sync posts it: a follower may be first
    wait_detail(first, first_nginx, expected)
    # the follower read none of it from Consul's catalog or health: it never started those long polls
    metrics = second.metrics()
    assert not any(name.startswith('swallowkeeper_watcher_consul_index{query="health"') for name in metrics)
    assert role(second) == "follower" and metric(second, "fleet_journal_seq") >= 3
    assert metric(second, "fleet_refused_values_total") == 0


def test_the_publisher_killed_followers_fall_back_then_one_takes_over(fleet):
    first, _first_nginx, second, second_nginx = publisher_and_follower(fleet)
    third, third_nginx = fleet.add()
    wait_role(third, "follower")
    both = {"Web": {f"{BACKEND}:8001", f"{BACKEND}:8002"}}
    wait_detail(third, third_nginx, both)
    first.process.kill()   # SIGKILL: no session destroyed, the lock stays held until Consul ends the session
    first.process.wait(timeout=10)
    killed = time.monotonic()
    fleet.agent.fail_check("w2")   # a flip while there is no publisher
    one = {"Web": {f"{BACKEND}:8001"}}
    seen = []
    fallback_at = {}
    while time.monotonic() - killed < 30:
        for name, (watcher, interface) in (("second", (second, second_nginx)), ("third", (third, third_nginx))):
            state = detail(interface)
            seen.append(state)
            if name not in fallback_at and role(watcher) in ("fallback", "publisher"):
                fallback_at[name] = time.monotonic() - killed
        if len(fallback_at) == 2 and detail(second_nginx) == one and detail(third_nginx) == one:
            break
        time.sleep(0.05)
    # nothing wrong applied meanwhile: the state before the flip or after it, nothing else
    assert all(state in (both, one) for state in seen), [state for state in seen if state not in (both, one)]
    # within fleet_stale_after (2 s) plus the tick and a full read of Consul
    assert len(fallback_at) == 2 and max(fallback_at.values()) < 2.0 + 2.0, fallback_at
    # Consul ends the dead session within 2 x TTL; after the lock delay one of the two takes the lock
    second.wait_for(lambda: sorted([role(second), role(third)]) == ["follower", "publisher"],
                    "one publisher and one follower again", timeout=30)
    took_over = time.monotonic() - killed
    follower, follower_nginx = (second, second_nginx) if role(second) == "follower" else (third, third_nginx)
    fleet.agent.pass_check("w2")
    wait_detail(follower, follower_nginx, both)
    assert took_over < 2 * 10 + 1 + 5, took_over
    print(f"fallback after {fallback_at}, a new publisher after {took_over:.1f}s")


def lock_session(agent):
    status, text, _headers = agent.request("GET", f"/v1/kv/{PREFIX}/leader")
    assert status == 200, text
    return (text if isinstance(text, list) else json.loads(text))[0].get("Session")


def test_a_reload_of_the_publisher_keeps_its_lock_and_no_follower_falls_back(fleet):
    first, first_nginx, second, second_nginx = publisher_and_follower(fleet)
    session = lock_session(fleet.agent)
    assert session
    first.hup()
    first.wait_for(lambda: "SIGHUP: config reloaded" in first.log_text(), "the reload", timeout=10)
    roles = set()
    until = time.monotonic() + 3 * FLEET["fleet_heartbeat"] + 2
    while time.monotonic() < until:
        roles.add(role(second))
        time.sleep(0.05)
    assert roles == {"follower"}, roles
    assert metric(second, "fleet_fallbacks_total") == 0
    assert lock_session(fleet.agent) == session and role(first) == "publisher"
    fleet.agent.fail_check("w2")   # the reloaded publisher still publishes
    one = {"Web": {f"{BACKEND}:8001"}}
    wait_detail(second, second_nginx, one)
    wait_detail(first, first_nginx, one)


def test_a_competing_session_consul_ended_is_replaced(fleet):
    """A watcher that found the lock free keeps trying with the session it made; nothing renews that session
    while it holds nothing, so Consul ends it after twice its TTL, before a longer lock delay is over (the
    molecule fleet: TTL 10 s, lock delay 15 s, and under load no watcher ever took the lock again). Here
    the sessions made in the lock delay are ended by hand (as their TTL would): the watcher must make a new
    one and take the lock once the delay is over."""
    fleet.agent.register("Web", "w1", port=8001, address=BACKEND)
    first, _first_nginx = fleet.add(fleet_lock_delay=5)
    wait_role(first, "publisher")
    second, _second_nginx = fleet.add(fleet_lock_delay=5)
    wait_role(second, "follower")
    first.process.kill()
    first.process.wait(timeout=10)
    status, _text, _headers = fleet.agent.request("PUT", f"/v1/session/destroy/{lock_session(fleet.agent)}")
    assert status == 200   # the lock is free now, and taken by no one for the 5 s lock delay
    released = time.monotonic()
    ended = 0
    while time.monotonic() - released < 3.0:
        status, sessions, _headers = fleet.agent.request("GET", "/v1/session/list")
        for session in sessions or []:
            fleet.agent.request("PUT", f"/v1/session/destroy/{session['ID']}")
            ended += 1
        time.sleep(0.1)
    assert ended >= 1, "the follower made no session to compete for the free lock"
    wait_role(second, "publisher", timeout=15)
    assert lock_session(fleet.agent)


def _kv_put(agent, key, value):
    status, text, _headers = agent.request("PUT", f"/v1/kv/{quote(key)}", value)
    assert status == 200, text


def test_hostile_kv_values_never_reach_the_interface(fleet):
    first, first_nginx, second, second_nginx = publisher_and_follower(fleet)
    agent = fleet.agent
    good = detail(second_nginx)
    control = f"127.0.0.1:{second_nginx.api_port}"
    big = {"servers": [f"{BACKEND}:{9000 + number} weight=2" for number in range(300)]}
    hostile_keys = {"Evil": {"servers": [control]}, "Web": {"servers": [control]}}
    for name, value in hostile_keys.items():
        _kv_put(agent, f"{PREFIX}/upstreams/{name}", json.dumps(value).encode())
    _kv_put(agent, f"{PREFIX}/upstreams/Big", json.dumps(big).encode())
    entry = agent.get(f"/v1/kv/{PREFIX}/journal")[0]
    journal = json.loads(base64.b64decode(entry["Value"]))
    seq = journal["seq"] + 1
    journal["seq"] = seq
    journal["entries"] = [{"seq": seq, "names": ["Evil", "Web", "Big", "bad{name", "Linklocal"]}]
    journal["inline"] = {"seq": seq, "values": {"bad{name": {"servers": [f"{BACKEND}:8001"]},
                                                "Linklocal": {"servers": ["169.254.169.254:80"]}}}
    _kv_put(agent, f"{PREFIX}/journal", json.dumps(journal).encode())
    second.wait_for(lambda: metric(second, "fleet_refused_values_total") >= 5, "five values refused")
    assert detail(second_nginx) == good
    log = second.log_text()
    assert "in KV is refused" in log and "denied_networks" in log and "fleet_value_max" in log
    # the publisher's own next write is refused once (the journal changed under it), then it publishes
    # everything again with a new entry: the follower reads every key (the hostile ones still refused)
    agent.register("Api", "a1", port=8101, address=BACKEND)
    wait_detail(second, second_nginx, dict(good, Api={f"{BACKEND}:8101"}))
    assert detail(first_nginx) == dict(good, Api={f"{BACKEND}:8101"})
    assert "Evil" not in bursts.read_file(second.settings["upstream_file"])
    assert role(second) == "follower"


def test_a_watcher_with_other_mapping_settings_does_not_follow(fleet):
    _first, _first_nginx, _second, _second_nginx = publisher_and_follower(fleet)
    other, other_nginx = fleet.add(tag_key="color")
    wait_role(other, "fallback")
    other.wait_for(lambda: "mapping settings differ" in other.log_text(), "the reason logged")
    wait_detail(other, other_nginx, {"Web": {f"{BACKEND}:8001", f"{BACKEND}:8002"}})
    fleet.agent.fail_check("w1")
    wait_detail(other, other_nginx, {"Web": {f"{BACKEND}:8002"}})   # read from Consul itself
    time.sleep(1.5)
    assert role(other) == "fallback" and metric(other, "fleet_journal_seq") == 0


def test_with_acls_the_fleet_policy_is_what_the_publisher_needs(tmp_path):
    """default deny: the readers' policy plus tests/support/consul_acl_fleet_policy.hcl is enough for a
    publisher and a follower; with the readers' policy alone the lock and the journal cannot be read (403, the log names the
    rules) and that watcher reads Consul itself, serving what Consul says."""
    with ConsulAgent(acl=True) as agent:
        group = Fleet(tmp_path, agent)
        try:
            agent.call("PUT", "/v1/agent/service/register", {
                "Name": "Web", "ID": "w1", "Address": BACKEND, "Port": 8001, "Check": {"TTL": "600s", "Status": "passing"}},
                token=agent.master_token)
            both_rules = agent.create_token(reader_policy_rules() + "\n" + FLEET_POLICY, name="fleet")
            reader_only = agent.create_token(reader_policy_rules(), name="reader")
            files = {}
            for name, token in (("fleet", both_rules), ("reader", reader_only)):
                files[name] = tmp_path / f"{name}.token"
                files[name].write_text(token)
                files[name].chmod(0o600)
            first, _nginx = group.add(consul_token_file=str(files["fleet"]))
            wait_role(first, "publisher")
            second, second_nginx = group.add(consul_token_file=str(files["fleet"]))
            wait_role(second, "follower")
            wait_detail(second, second_nginx, {"Web": {f"{BACKEND}:8001"}})
            first.stop()   # SIGTERM ends its session: the follower takes the lock after the lock delay
            wait_role(second, "publisher", timeout=10)
            third, third_nginx = group.add(consul_token_file=str(files["reader"]))
            third.wait_for(lambda: "consul_forbidden" in third.log_text() and "session_prefix" in third.log_text(),
                           "the 403 naming the rules")
            wait_detail(third, third_nginx, {"Web": {f"{BACKEND}:8001"}})   # read from Consul itself
            assert role(third) == "fallback"
        finally:
            group.stop()


def test_consul_down_leaves_the_followers_last_good_state_serving(fleet):
    """Fail-static: the agent stopped, the follower can read neither the journal nor Consul; past
    fleet_stale_after its fallback's full read fails, and it keeps serving what it applied."""
    _first, _first_nginx, second, second_nginx = publisher_and_follower(fleet)
    good = detail(second_nginx)
    fleet.agent.stop()
    second.wait_for(lambda: "fleet: the lock or journal could not be read" in second.log_text(), "the failure logged")
    time.sleep(FLEET["fleet_stale_after"] + 2)
    assert detail(second_nginx) == good
    assert bursts.read_file(second.settings["upstream_file"]) == bursts.read_detail(second_nginx)
    assert metric(second, "consul_up") == 0 and second.alive()


def _journal(agent):
    entry = agent.get(f"/v1/kv/{PREFIX}/journal")[0]
    return json.loads(base64.b64decode(entry["Value"]))


def test_a_deposed_publisher_cannot_write(fleet):
    """The publisher's session ended under it (destroyed through the API, as Consul does when its TTL
    runs out) and a flip comes at once: the journal never moves under its session again (here the
    watcher learns it lost the lock before it publishes; the transactions' own guard is
    test_the_transactions_refuse_a_session_without_the_lock), and a publisher with a new session takes over."""
    first, _first_nginx, second, second_nginx = publisher_and_follower(fleet)
    agent = fleet.agent
    old = agent.get(f"/v1/kv/{PREFIX}/leader")[0]["Session"]
    before = _journal(agent)
    assert before["session"] == old
    agent.call("PUT", f"/v1/session/destroy/{old}")
    agent.fail_check("w2")   # the deposed publisher reads it from Consul and tries to publish it
    first.wait_for(lambda: "fleet: publisher -> fallback" in first.log_text()
                   or "a publish was refused" in first.log_text(), "the deposed publisher noticed")
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        journal = _journal(agent)
        assert journal["session"] != old or journal["seq"] == before["seq"], journal
        time.sleep(0.05)
    second.wait_for(lambda: sorted([role(first), role(second)]) == ["follower", "publisher"],
                    "one publisher and one follower again", timeout=15)
    assert _journal(agent)["session"] != old
    wait_detail(second, second_nginx, {"Web": {f"{BACKEND}:8001"}})


def test_the_transactions_refuse_a_session_without_the_lock(tmp_path):
    """The guard itself, on a real agent: a FleetSource that believes it publishes, with a session that
    does not hold the lock (another does), writes nothing, neither key nor journal (check-session on the
    lock key); one that holds the lock but names an old journal ModifyIndex (the journal was written by
    another since) writes nothing either (the CAS), then re-reads the journal and publishes after it."""
    with ConsulAgent() as agent:
        settings = watcher_settings.build({"consul_url": agent.url, "status_listen": "", "fleet_share": True,
                                           "upstream_file": str(tmp_path / "u.conf"), **LOOPBACK_OPT_IN})
        source = FleetSource(settings, Metrics())
        try:
            holder = source.kv.create_session()
            assert source.kv.acquire(holder)
            source.session, source.role = source.kv.create_session(), "publisher"   # not the holder's
            web = build_upstream("Web", ["127.0.0.2:8001"])
            source._publish({"Web": web}, set(), None)   # pylint: disable=protected-access
            assert source.kv.get(f"{PREFIX}/upstreams/Web") is None and source.kv.get(f"{PREFIX}/journal") is None
            assert source.metrics.counters["fleet_publish_failures"] == 1
            source.session = holder   # now the holder, but another wrote the journal meanwhile
            _kv_put(agent, f"{PREFIX}/journal", json.dumps({"format": 1, "seq": 40}).encode())
            source._publish({"Web": web}, set(), None)   # pylint: disable=protected-access
            assert source.kv.get(f"{PREFIX}/upstreams/Web") is None
            assert source.metrics.counters["fleet_publish_failures"] == 2
            source._publish({"Web": web}, set(), None)   # pylint: disable=protected-access
            assert source.kv.get(f"{PREFIX}/upstreams/Web") is not None
            journal = _journal(agent)
            assert journal["seq"] == 41 and journal["session"] == holder and journal["entries"][-1]["all"] is True
        finally:
            source.stop()
