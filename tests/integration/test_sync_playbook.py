"""playbooks/sync.yml end to end: a real Consul agent -> consul_services -> dyups_upstream -> a dyups server.

The dyups server is the ``dyups_server`` fixture (tests/integration/conftest.py): the stock-nginx Lua
flavor, or the stand-in when nginx cannot start here. The playbook runs unmodified through
``ansible-playbook`` against localhost.
"""

from pathlib import Path

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream_file import read as read_upstream_file
from tests.support.ansible_run import AnsibleRunner
from tests.support.collection import ROOT
from tests.support.consul import consul_agent  # noqa: F401 (fixture)  # pylint: disable=unused-import  # pytest fixtures
from tests.support.consul import LOOPBACK_OPT_IN
from tests.support.http_stdlib import stdlib_transport
from tests.support.nginx_lua import NginxLua
from tests.support.tengine import tengine_binary

PLAYBOOK = (ROOT / "playbooks" / "sync.yml").read_text()
SECRET = "sync-playbook-secret-0123456789"

# The playbook's own logic (health, zero-instance policy, check mode, refusals) does not depend on the
# flavor: those tests run on one, Tengine (the default) when there is one. The tests that exercise the
# interface itself (first sync and no change, directives kept) run on both.
one_flavor = pytest.mark.parametrize("dyups_server", ["tengine" if tengine_binary() else "lua"], indirect=True)
PUSH = "Write the upstream file, then send what differs to dyups"
READ = "Read services and their health from Consul"


@pytest.fixture
def agent(consul_agent):  # noqa: F811
    yield consul_agent
    consul_agent.clear_services()


@pytest.fixture
def sync(agent, dyups_server, tmp_path):
    """A function running the playbook with extra vars on top of the test's Consul and dyups."""
    runner = AnsibleRunner(tmp_path / "ansible")
    conf = tmp_path / "dyups.upstream.conf"

    def run(check=False, diff=False, expect_rc=0, **extra):
        variables = {"dyups_sync_consul_url": agent.url, "dyups_sync_api_url": dyups_server.api_url,
                     "dyups_sync_upstream_conf": str(conf),
                     # never this machine's own watcher settings (a demo may have left them)
                     "dyups_sync_watcher_config": str(tmp_path / "no-watcher.yml"),
                     # the test's backends are on loopback, refused from Consul by default
                     "dyups_sync_allowed_networks": LOOPBACK_OPT_IN["allowed_networks"]}
        variables.update(extra)
        done = runner.playbook(PLAYBOOK, check=check, diff=diff, extra_vars=variables)
        assert done.rc == expect_rc, f"rc {done.rc}\n{done.stdout[-5000:]}\n{done.stderr[-3000:]}"
        return done

    run.conf = conf
    run.client = DyupsClient(dyups_server.api_url, stdlib_transport)
    return run


def detail(sync):
    return {name: sorted(server.spec() for server in servers) for name, servers in sync.client.detail().items()}


def in_file(path):
    return {name: sorted(server.spec() for server in upstream.servers)
            for name, upstream in read_upstream_file(str(path)).items()}


def register_fleet(agent):
    agent.register("Webapp", "w1", port=18101)
    agent.register("Webapp", "w2", port=18102, tags=["gray=default"])
    agent.register("Webapp", "w3", port=18103, tags=["gray=b"])
    agent.register("Webapp", "w4", port=18104, tags=["gray=b"], status="critical")
    agent.register("Api", "a1", port=18201, meta={"dyups_weight": "3", "dyups_max_fails": "2"})
    agent.register("Api", "a2", port=18202, meta={"dyups_backup": "true"})
    agent.register("Api", "bad", port=18203, meta={"dyups_weight": "abc"})
    agent.register("a b", "hostile", port=18301)


EXPECTED = {
    "Api": ["127.0.0.1:18201 weight=3 max_fails=2", "127.0.0.1:18202 backup"],
    "Webapp": ["127.0.0.1:18101", "127.0.0.1:18102"],
    "Webapp_b": ["127.0.0.1:18103"],
}


def test_sync_then_second_run_changes_nothing(agent, sync):
    register_fleet(agent)
    first = sync()
    assert first.task(PUSH)["changed"] is True
    assert detail(sync) == EXPECTED
    assert in_file(sync.conf) == EXPECTED
    skipped = {item["what"] for item in first.task(READ)["skipped_items"]}
    assert skipped == {"service 'a b'", "instance 'bad' of service 'Api' on node 'consul-test'"}
    assert "skipped instance 'bad' of service 'Api'" in first.stdout
    assert "skipped 2 item(s)" in first.stdout

    second = sync()
    assert not any(result.get("changed") for _name, result in second.tasks), second.stdout[-3000:]
    assert "changed=0" in second.stdout
    assert detail(sync) == EXPECTED


@one_flavor
def test_health_changes_registrations_and_the_zero_instance_policy(agent, sync):
    register_fleet(agent)
    sync()
    agent.pass_check("w4")
    agent.fail_check("w1")
    agent.register("Api", "a3", port=18204)
    assert sync().task(PUSH)["changed"] is True
    assert detail(sync)["Webapp_b"] == ["127.0.0.1:18103", "127.0.0.1:18104"]
    assert detail(sync)["Webapp"] == ["127.0.0.1:18102"]
    assert "127.0.0.1:18204" in detail(sync)["Api"]

    agent.fail_check("w3")
    agent.fail_check("w4")   # every Webapp_b instance fails: kept as it was (policy keep)
    kept = sync()
    assert kept.task(READ)["empty"] == ["Webapp_b"]
    assert kept.task(PUSH)["changed"] is False
    assert detail(sync)["Webapp_b"] == ["127.0.0.1:18103", "127.0.0.1:18104"]

    sync(dyups_sync_zero_instances="delete")
    assert "Webapp_b" not in detail(sync) and "Webapp_b" not in in_file(sync.conf)

    agent.deregister("a1")
    agent.deregister("a2")
    agent.deregister("a3")
    agent.deregister("bad")
    sync()   # Api is gone from Consul: exclusive removes it
    assert set(detail(sync)) == {"Webapp"} and set(in_file(sync.conf)) == {"Webapp"}


def test_directives_in_the_file_are_kept(agent, sync, tmp_path):
    register_fleet(agent)
    sync()
    runner = AnsibleRunner(tmp_path / "adhoc")
    added = runner.adhoc("swallowkeeper.dyups.dyups_upstream",
                         f"name=Webapp servers=127.0.0.1:18101,127.0.0.1:18102 directives='keepalive 8' "
                         f"upstream_conf={sync.conf} api_url={sync.client.api_url}")
    assert added.rc == 0 and added.module["changed"] is True, added.stdout
    assert "keepalive 8;" in sync.conf.read_text()
    again = sync()
    assert again.task(PUSH)["changed"] is False
    assert "keepalive 8;" in sync.conf.read_text()
    agent.register("Webapp", "w5", port=18105)
    sync()
    text = sync.conf.read_text()
    assert "keepalive 8;" in text and "127.0.0.1:18105" in text


@one_flavor
def test_check_mode_changes_nothing(agent, sync):
    register_fleet(agent)
    checked = sync(check=True, diff=True)
    assert checked.task(PUSH)["changed"] is True
    assert detail(sync) == {} and not Path(sync.conf).exists()
    sync()
    assert detail(sync) == EXPECTED


@one_flavor
def test_upstreams_the_file_does_not_hold_are_left_alone(agent, sync):
    register_fleet(agent)
    sync.client.update(build_upstream("HandMade", ["127.0.0.1:18999"]))
    sync()
    assert detail(sync)["HandMade"] == ["127.0.0.1:18999"]
    assert "HandMade" not in in_file(sync.conf)


@one_flavor
def test_a_narrower_sync_removes_only_what_its_filters_select(agent, sync):
    """Issue 26 finding 8: with dyups_sync_prefix=Web and the default exclusive=true, Api (in the file, not
    selected) was deleted from file and interface. Now exclusive removes only what the filters can map to:
    Webapp_b once its instance is gone, never Api."""
    register_fleet(agent)
    sync()
    assert set(in_file(sync.conf)) == {"Api", "Webapp", "Webapp_b"}
    agent.deregister("w3")
    agent.deregister("w4")
    sync(dyups_sync_prefix="Web")
    assert set(in_file(sync.conf)) == {"Api", "Webapp"} and set(detail(sync)) == {"Api", "Webapp"}
    sync(dyups_sync_include=["Webapp"])
    assert set(in_file(sync.conf)) == {"Api", "Webapp"} and set(detail(sync)) == {"Api", "Webapp"}


@one_flavor
def test_refuses_to_empty_nginx_when_consul_maps_to_nothing(agent, sync):
    register_fleet(agent)
    sync()
    failed = sync(dyups_sync_prefix="NoSuchPrefix", expect_rc=2)
    assert "maps to no upstream at all" in failed.stdout
    assert detail(sync) == EXPECTED
    sync(dyups_sync_prefix="NoSuchPrefix", dyups_sync_allow_empty=True)
    assert detail(sync) == EXPECTED        # a prefix that selects nothing may remove nothing (issue 26)
    agent.clear_services()
    assert "maps to no upstream at all" in sync(expect_rc=2).stdout and detail(sync) == EXPECTED
    sync(dyups_sync_allow_empty=True)
    assert detail(sync) == {}


@one_flavor
def test_a_bad_policy_value_fails_before_anything(agent, sync):
    register_fleet(agent)
    failed = sync(dyups_sync_zero_instances="down", expect_rc=2)
    assert "must be keep or delete" in failed.stdout
    assert detail(sync) == {}


@one_flavor
def test_consul_down_fails_and_changes_nothing(agent, sync):
    register_fleet(agent)
    sync()
    failed = sync(dyups_sync_consul_url="http://127.0.0.1:1", expect_rc=2)
    assert "did not answer" in failed.stdout
    assert detail(sync) == EXPECTED


# -- which upstream file: the one nginx includes ------------------------------------------------------------

def test_the_file_and_interface_come_from_the_watcher_settings_and_survive_a_reload(agent, tmp_path):
    """As on a host the role set up with its defaults: nginx includes the upstream file named in the watcher
    settings, and its interface requires the shared secret whose file the settings name (dyups_secret_file);
    sync.yml, given no file, no interface and no secret, reads all three from those settings; a reload then
    keeps the upstreams. The secret never shows in the output."""
    register_fleet(agent)
    upstream_file = tmp_path / "lib" / "upstreams.conf"
    upstream_file.parent.mkdir()
    upstream_file.write_text("")
    secret_file = tmp_path / "dyups.secret"
    secret_file.write_text(SECRET + "\n")
    with NginxLua(workers=1, upstream_file=upstream_file, api_secret=SECRET) as nginx:
        assert nginx.api("POST", "/upstream/web", "server 10.9.9.9:80;")[0] == 403   # guarded as the role's
        settings = tmp_path / "watcher.yml"
        # allowed_networks as the role writes it (the fleet's backends are on loopback): read from here too
        settings.write_text(f"consul_url: {agent.url}\ndyups_url: {nginx.api_url}\nupstream_file: {upstream_file}\n"
                            f"dyups_secret_file: {secret_file}\nallowed_networks: [127.0.0.0/8]\n")
        runner = AnsibleRunner(tmp_path / "ansible")
        done = runner.playbook(PLAYBOOK, extra_vars={"dyups_sync_watcher_config": str(settings)})
        assert done.rc == 0, done.stdout[-5000:]
        assert (f"upstream file {upstream_file}, dyups {nginx.api_url}, secret from {secret_file} (from {settings})"
                in done.stdout)
        assert SECRET not in done.stdout + done.stderr
        assert in_file(upstream_file) == EXPECTED
        master = nginx.master_pid()
        nginx.reload()
        client = nginx.client()
        after = {name: sorted(server.spec() for server in servers) for name, servers in client.detail().items()}
        assert after == EXPECTED, "the upstreams sync.yml wrote are still there after nginx -s reload"
        assert nginx.master_pid() == master


@one_flavor
def test_without_settings_the_role_default_file_is_used(agent, dyups_server, tmp_path):
    register_fleet(agent)
    runner = AnsibleRunner(tmp_path / "ansible")
    done = runner.playbook(PLAYBOOK, check=True, extra_vars={
        "dyups_sync_watcher_config": str(tmp_path / "absent.yml"), "dyups_sync_consul_url": agent.url,
        "dyups_sync_api_url": dyups_server.api_url, "dyups_sync_allowed_networks": LOOPBACK_OPT_IN["allowed_networks"]})
    assert done.rc == 0, done.stdout[-5000:]
    assert "upstream file /var/lib/swallowkeeper-dyups/upstreams.conf" in done.stdout


@one_flavor
def test_bad_watcher_settings_fail_before_anything(agent, dyups_server, tmp_path):
    settings = tmp_path / "watcher.yml"
    settings.write_text("upstream_file: relative/path.conf\n")
    done = AnsibleRunner(tmp_path / "ansible").playbook(PLAYBOOK, extra_vars={
        "dyups_sync_watcher_config": str(settings), "dyups_sync_consul_url": agent.url,
        "dyups_sync_api_url": dyups_server.api_url})
    assert done.rc != 0
    assert "dyups_sync_upstream_conf" in done.task("Check the watcher settings")["msg"]
    assert dyups_server_is_empty(dyups_server)


def dyups_server_is_empty(server):
    return DyupsClient(server.api_url, stdlib_transport).detail() == {}
