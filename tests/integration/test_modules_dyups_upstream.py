"""dyups_upstream and dyups_upstream_info through real ``ansible`` / ``ansible-playbook`` runs.

Against ``dyups_server`` (each test once on a real Tengine and once on the stock-nginx Lua flavor;
tests/integration/conftest.py) for the life cycle, and against the stand-in ``fake_dyups`` for what only it does: a record of every
request (to prove none was sent), 409 on demand, Tengine's 500.
"""

from __future__ import annotations

import os

import pytest
import yaml

from tests.support.ansible_run import AnsibleRunner
from tests.support.fake_dyups import FakeDyups
from tests.support.netns import run_isolated
from tests.support.ports import free_port

MODULE = "swallowkeeper.dyups.dyups_upstream"
INFO = "swallowkeeper.dyups.dyups_upstream_info"


@pytest.fixture
def ansible(tmp_path):
    return AnsibleRunner(tmp_path / "ansible")


def play(*tasks, module_defaults=None, check_mode=None):
    """A playbook (YAML text) of one play on the test group running ``tasks``."""
    body = {"name": "test", "hosts": "tengine", "gather_facts": False, "tasks": list(tasks)}
    if module_defaults:
        body["module_defaults"] = module_defaults
    return yaml.safe_dump([body], sort_keys=False)


def task(_title, _module=MODULE, **args):
    return {"name": _title, _module: args}


def ok(done, name=None):
    result = done.task(name) if name else done.module
    assert done.rc == 0 and not result.get("failed"), (result, done.stdout[-3000:], done.stderr[-3000:])
    return result


def failed(done, name=None):
    result = done.task(name) if name else done.module
    assert done.rc != 0 and result.get("failed"), (result, done.stdout[-3000:])
    return result


def detail(server):
    """{name: sorted server specs} as the interface holds it now, through dyups_upstream_info's own client."""
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
    from tests.support.http_stdlib import stdlib_transport
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import sort_servers

    found = DyupsClient(server.api_url, stdlib_transport).detail()
    return {name: [s.spec() for s in sort_servers(servers)] for name, servers in found.items()}


# -- the life cycle: check mode -> run -> idempotent re-run -> diff -> absent -----------------------------------
def test_single_upstream_life_cycle(dyups_server, ansible, tmp_path):
    conf = tmp_path / "upstreams.conf"
    args = dict(api_url=dyups_server.api_url, name="WebappReadonly_b",
                servers=["10.117.17.21:8180", {"address": "10.117.17.22:8180", "weight": 2}],
                upstream_conf=str(conf))

    checked = ok(ansible.playbook(play(task("create", **args)), check=True))
    assert checked["changed"] is True and checked["file_changed"] is True and checked["requests"] == []
    assert checked["upstreams"]["WebappReadonly_b"]["action"] == "create"
    assert detail(dyups_server) == {} and not conf.exists()                      # check mode changed nothing

    created = ok(ansible.playbook(play(task("create", **args))))
    assert created["changed"] is True and created["requests"] == ["POST /upstream/WebappReadonly_b"]
    assert created["upstreams"]["WebappReadonly_b"]["added"] == ["10.117.17.21:8180", "10.117.17.22:8180 weight=2"]
    assert detail(dyups_server) == {"WebappReadonly_b": ["10.117.17.21:8180", "10.117.17.22:8180 weight=2"]}
    assert "upstream WebappReadonly_b {\n    server 10.117.17.21:8180;\n    server 10.117.17.22:8180 weight=2;\n}" \
        in conf.read_text()

    again = ok(ansible.playbook(play(task("create", **args))))
    assert again["changed"] is False and again["requests"] == [] and again["file_changed"] is False
    assert again["upstreams"]["WebappReadonly_b"]["action"] == "none"
    rechecked = ok(ansible.playbook(play(task("create", **args)), check=True))
    assert rechecked["changed"] is False
    # the same upstream written by hand in another layout: nothing changes, the file is left as it is
    written = conf.read_text()
    conf.write_text("# by hand\nupstream WebappReadonly_b { server 10.117.17.22:8180 weight=2; server 10.117.17.21:8180; }\n")
    by_hand = conf.read_text()
    assert ok(ansible.playbook(play(task("create", **args))))["changed"] is False and conf.read_text() == by_hand
    conf.write_text(written)

    # a weight changes: the diff shows the /detail lines and the file, before and after
    args["servers"] = ["10.117.17.21:8180 weight=3", "10.117.17.22:8180 weight=2"]
    diffed = ansible.playbook(play(task("create", **args)), diff=True)
    result = ok(diffed)
    assert result["changed"] is True and result["upstreams"]["WebappReadonly_b"]["removed"] == ["10.117.17.21:8180"]
    assert "-    server 10.117.17.21:8180 weight=1 max_conns=0" in diffed.stdout
    assert "+    server 10.117.17.21:8180 weight=3 max_conns=0" in diffed.stdout
    assert "-    server 10.117.17.21:8180;" in diffed.stdout and "+    server 10.117.17.21:8180 weight=3;" in diffed.stdout
    assert detail(dyups_server)["WebappReadonly_b"] == ["10.117.17.21:8180 weight=3", "10.117.17.22:8180 weight=2"]

    absent = dict(api_url=dyups_server.api_url, name="WebappReadonly_b", state="absent", upstream_conf=str(conf))
    checked = ok(ansible.playbook(play(task("delete", **absent)), check=True))
    assert checked["changed"] is True and "WebappReadonly_b" in detail(dyups_server)
    deleted = ok(ansible.playbook(play(task("delete", **absent))))
    assert deleted["requests"] == ["DELETE /upstream/WebappReadonly_b"]
    assert detail(dyups_server) == {} and "WebappReadonly_b" not in conf.read_text()
    assert ok(ansible.playbook(play(task("delete", **absent))))["changed"] is False


def test_address_and_port_as_a_dict_server(dyups_server, ansible, tmp_path):
    """Consul's server shape, {address, port} (issue 10), is accepted and idempotent; a port given twice with
    different values fails the task, and nothing is sent or written."""
    conf = tmp_path / "upstreams.conf"
    args = dict(api_url=dyups_server.api_url, name="ConsulShape", upstream_conf=str(conf),
                servers=[{"address": "127.0.0.1", "port": 18101, "weight": 2},
                         {"address": "127.0.0.1:18102", "port": 18102}, {"address": "::1", "port": 18103}])
    created = ok(ansible.playbook(play(task("set", **args))))
    assert created["changed"] is True
    assert detail(dyups_server) == {"ConsulShape": ["127.0.0.1:18101 weight=2", "127.0.0.1:18102", "[::1]:18103"]}
    assert ok(ansible.playbook(play(task("set", **args))))["changed"] is False
    written = conf.read_text()
    bad = {**args, "name": "Twice", "servers": [{"address": "127.0.0.1:18101", "port": 18109}]}
    result = failed(ansible.playbook(play(task("set", **bad))))
    assert "the port is given twice with different values" in result["msg"]
    assert "Twice" not in detail(dyups_server) and conf.read_text() == written


def check_the_ad_hoc_call(workdir):
    """The exact call of the issue, on the default api_url 127.0.0.1:18882 (in its own network namespace)."""
    ansible = AnsibleRunner(workdir / "ansible")
    command = "name=WebappReadonly_b servers=10.117.17.21:8180,10.117.17.22:8180"
    with FakeDyups(port=18882) as server:
        done = ansible.adhoc(MODULE, command, pattern="tengine")
        result = ok(done)
        assert result["changed"] is True and result["requests"] == ["POST /upstream/WebappReadonly_b"]
        assert detail(server) == {"WebappReadonly_b": ["10.117.17.21:8180", "10.117.17.22:8180"]}
        assert "CHANGED" in done.stdout
        assert ok(ansible.adhoc(MODULE, command, pattern="tengine"))["changed"] is False


def test_the_ad_hoc_call(tmp_path):
    """Runs in a private network namespace (tests/support/netns.py): the default port is free there even while
    a demo holds it on this machine."""
    run_isolated(check_the_ad_hoc_call, tmp_path, fallback_port=18882)


def test_module_defaults_group_carries_api_url_and_timeout(dyups_server, ansible):
    defaults = {"group/swallowkeeper.dyups.dyups": {"api_url": dyups_server.api_url, "timeout": 7}}
    done = ansible.playbook(play(
        task("set", name="Grouped", servers=["127.0.0.1:18101"]),
        task("read", _module=INFO, names=["Grouped"]),
        module_defaults=defaults))
    assert ok(done, "set")["invocation"]["module_args"]["api_url"] == dyups_server.api_url
    assert ok(done, "set")["invocation"]["module_args"]["timeout"] == 7
    read = ok(done, "read")
    assert read["names"] == ["Grouped"] and read["upstreams"]["Grouped"][0]["address"] == "127.0.0.1:18101"


def test_host_names_are_compared_by_address(dyups_server, ansible):
    port = free_port()
    args = dict(api_url=dyups_server.api_url, name="ByName", servers=[f"localhost:{port}"])
    assert ok(ansible.playbook(play(task("set", **args))))["changed"] is True
    assert detail(dyups_server) == {"ByName": [f"127.0.0.1:{port}"]}           # the interface shows the address
    again = ok(ansible.playbook(play(task("set", **args))))
    assert again["changed"] is False, again


# -- bulk, exclusive, the upstream file --------------------------------------------------------------------------
def test_bulk_and_exclusive_deletes_only_what_the_file_manages(dyups_server, ansible, tmp_path):
    conf = tmp_path / "upstreams.conf"
    base = dict(api_url=dyups_server.api_url, upstream_conf=str(conf))
    # an upstream someone else added through the interface: not in the file, never touched
    assert ok(ansible.playbook(play(task("foreign", api_url=dyups_server.api_url, name="Foreign",
                                         servers=["127.0.0.1:18109"]))))["changed"]
    first = ok(ansible.playbook(play(task("bulk", **base, upstreams={
        "A": ["127.0.0.1:18101", "127.0.0.1:18102 backup"],
        "B": {"servers": ["127.0.0.1:18103"], "directives": ["keepalive 8"]},
        "C": ["127.0.0.1:18104"]}))))
    assert sorted(first["requests"]) == ["POST /upstream/A", "POST /upstream/B", "POST /upstream/C"]
    assert set(detail(dyups_server)) == {"A", "B", "C", "Foreign"}
    assert "keepalive 8;" in conf.read_text()

    spec = {"A": ["127.0.0.1:18101", "127.0.0.1:18102 backup"], "B": ["127.0.0.1:18103"]}
    checked = ok(ansible.playbook(play(task("bulk", **base, upstreams=spec, exclusive=True)), check=True))
    assert checked["upstreams"]["C"]["action"] == "delete" and "Foreign" not in checked["upstreams"]
    assert set(detail(dyups_server)) == {"A", "B", "C", "Foreign"}
    done = ok(ansible.playbook(play(task("bulk", **base, upstreams=spec, exclusive=True))))
    assert done["requests"] == ["DELETE /upstream/C"]                           # B keeps keepalive 8: nothing to send
    assert set(detail(dyups_server)) == {"A", "B", "Foreign"}
    text = conf.read_text()
    assert "upstream C" not in text and "upstream Foreign" not in text and "keepalive 8;" in text
    assert ok(ansible.playbook(play(task("bulk", **base, upstreams=spec, exclusive=True))))["changed"] is False

    # directives: [] removes them, and the upstream is sent again (a POST replaces the whole upstream)
    spec["B"] = {"servers": ["127.0.0.1:18103"], "directives": []}
    cleared = ok(ansible.playbook(play(task("bulk", **base, upstreams=spec, exclusive=True))))
    assert cleared["requests"] == ["POST /upstream/B"] and "keepalive" not in conf.read_text()


def test_the_file_is_written_first_and_kept_when_the_interface_is_down(ansible, tmp_path):
    conf = tmp_path / "upstreams.conf"
    url = f"http://127.0.0.1:{free_port()}"                                     # nothing listens there
    result = failed(ansible.playbook(play(task("set", api_url=url, name="Web", servers=["127.0.0.1:18101"],
                                               upstream_conf=str(conf)))))
    assert "upstream Web {\n    server 127.0.0.1:18101;\n}" in conf.read_text()
    assert f"{url}/detail did not answer" in result["msg"]
    assert f"The upstream file {conf} was written before the request" in result["msg"]
    assert result["changed"] is True and result["file_changed"] is True
    # in check mode nothing is written and the failure says why
    other = tmp_path / "other.conf"
    result = failed(ansible.playbook(play(task("set", api_url=url, name="Web", servers=["127.0.0.1:18101"],
                                               upstream_conf=str(other))), check=True))
    assert "did not answer" in result["msg"] and not other.exists()


def test_the_file_holds_the_change_before_the_interface_is_called(ansible, tmp_path):
    conf = tmp_path / "upstreams.conf"
    seen = []

    def look_at_the_file(request):
        if request.method in ("POST", "DELETE"):
            seen.append((request.method, request.path, conf.read_text() if conf.exists() else None))

    with FakeDyups(on_request=look_at_the_file) as server:
        ok(ansible.playbook(play(task("set", api_url=server.api_url, upstream_conf=str(conf),
                                      upstreams={"A": ["127.0.0.1:18101"], "B": ["127.0.0.1:18102"]}))))
        ok(ansible.playbook(play(task("set", api_url=server.api_url, upstream_conf=str(conf), exclusive=True,
                                      upstreams={"A": ["127.0.0.1:18103"]}))))
    assert [(method, path) for method, path, _text in seen] == [
        ("POST", "/upstream/A"), ("POST", "/upstream/B"), ("POST", "/upstream/A"), ("DELETE", "/upstream/B")]
    for method, path, text in seen[:2]:
        assert "upstream A {\n    server 127.0.0.1:18101;" in text and "upstream B {" in text, (method, path)
    for method, path, text in seen[2:]:
        assert "upstream A {\n    server 127.0.0.1:18103;" in text and "upstream B" not in text, (method, path)


def test_directives_in_the_file_are_kept_and_sent(fake_dyups, ansible, tmp_path):
    conf = tmp_path / "upstreams.conf"
    conf.write_text("upstream Web {\n    server 127.0.0.1:18101;\n    check interval=3000 rise=2 fall=5 timeout=1000 type=http;\n}\n")
    done = ok(ansible.playbook(play(task("set", api_url=fake_dyups.api_url, name="Web",
                                         servers=["127.0.0.1:18101", "127.0.0.1:18102"], upstream_conf=str(conf)))))
    assert done["upstreams"]["Web"]["directives"] == ["check interval=3000 rise=2 fall=5 timeout=1000 type=http"]
    posted = [r for r in fake_dyups.requests if r.method == "POST"]
    assert posted[0].body == ("server 127.0.0.1:18101;\nserver 127.0.0.1:18102;\n"
                              "check interval=3000 rise=2 fall=5 timeout=1000 type=http;\n")
    assert "check interval=3000" in conf.read_text()


def test_force_sends_a_directive_change_without_a_file(fake_dyups, ansible):
    args = dict(api_url=fake_dyups.api_url, name="Web", servers=["127.0.0.1:18101"])
    ok(ansible.playbook(play(task("set", **args))))
    args["directives"] = ["keepalive 4"]
    assert ok(ansible.playbook(play(task("set", **args))))["changed"] is False   # /detail shows no directives
    forced = ok(ansible.playbook(play(task("set", **args, force=True))))
    assert forced["changed"] is True and fake_dyups.upstreams["Web"]["directives"] == ["keepalive 4"]


def test_backup_and_validate(fake_dyups, ansible, tmp_path):
    conf = tmp_path / "upstreams.conf"
    args = dict(api_url=fake_dyups.api_url, name="Web", servers=["127.0.0.1:18101"], upstream_conf=str(conf))
    ok(ansible.playbook(play(task("set", **args))))
    old = conf.read_text()
    fake_dyups.clear_requests()
    args["servers"] = ["127.0.0.1:18102"]
    refused = failed(ansible.playbook(play(task("set", **args, validate="grep -q 18109 %s"))))
    assert "validation command 'grep -q 18109 %s' failed" in refused["msg"]
    assert "was not changed and nothing was sent" in refused["msg"]
    assert conf.read_text() == old and not [r for r in fake_dyups.requests if r.method != "GET"]
    done = ok(ansible.playbook(play(task("set", **args, validate="grep -q 18102 %s", backup=True))))
    assert open(done["backup_file"]).read() == old and "18102" in conf.read_text()


# -- bad input: a clear message, no request, no file -------------------------------------------------------------
BAD = [
    ("name='x{y' servers=10.0.0.1:8080", "invalid upstream name 'x{y': contains '{'"),
    ("name='bad name' servers=10.0.0.1:8080", "invalid upstream name 'bad name': contains whitespace"),
    ("name=Web servers=10.0.0.1:0", "invalid server '10.0.0.1:0': the port 0 is outside 1-65535"),
    ("name=Web servers=10.0.0.1:70000", "invalid server '10.0.0.1:70000': the port 70000 is outside 1-65535"),
    ("name=Web servers='10.0.0.1:8080 weight=0'", "invalid server '10.0.0.1:8080 weight=0': weight=0 is outside 1-10000"),
    ("name=Web servers='10.0.0.1:8080 foo=1'", "invalid server '10.0.0.1:8080 foo=1': unknown parameter 'foo=1'"),
]


@pytest.mark.parametrize("args, message", BAD, ids=["x{y", "bad name", "port 0", "port 70000", "weight=0", "foo=1"])
def test_bad_input_sends_nothing_and_writes_nothing(fake_dyups, ansible, tmp_path, args, message):
    conf = tmp_path / "upstreams.conf"
    done = ansible.adhoc(MODULE, f"{args} api_url={fake_dyups.api_url} upstream_conf={conf}")
    result = failed(done)
    assert message in result["msg"] and "Nothing was sent or written." in result["msg"]
    assert fake_dyups.requests == []
    assert not conf.exists() and os.listdir(tmp_path) == ["ansible"]


def test_one_bad_entry_in_bulk_changes_nothing(fake_dyups, ansible, tmp_path):
    conf = tmp_path / "upstreams.conf"
    conf.write_text("upstream Keep {\n    server 127.0.0.1:18101;\n}\n")
    result = failed(ansible.playbook(play(task("bulk", api_url=fake_dyups.api_url, upstream_conf=str(conf),
                                               exclusive=True, upstreams={"Good": ["127.0.0.1:18102"],
                                                                          "Bad": ["127.0.0.1:18103 weight=0"]}))))
    assert "weight=0 is outside 1-10000" in result["msg"]
    assert fake_dyups.requests == [] and conf.read_text() == "upstream Keep {\n    server 127.0.0.1:18101;\n}\n"


# -- error paths only the stand-in produces ---------------------------------------------------------------------
def test_409_is_retried_then_succeeds(fake_dyups, ansible):
    fake_dyups.busy(2)
    result = ok(ansible.playbook(play(task("set", api_url=fake_dyups.api_url, name="Web", servers=["127.0.0.1:18101"]))))
    assert result["changed"] is True and "Web" in fake_dyups.upstreams
    assert [r.method for r in fake_dyups.requests] == ["GET", "GET", "GET", "POST"]


def test_409_for_ever_fails_with_a_clear_message(fake_dyups, ansible, tmp_path):
    fake_dyups.busy(always=True)
    result = failed(ansible.playbook(play(task("set", api_url=fake_dyups.api_url, name="Web",
                                               servers=["127.0.0.1:18101"]))))
    assert "answered 409 (busy, dyups_trylock) 7 times" in result["msg"]
    assert len(fake_dyups.requests) == 7


def test_tengine_500_says_a_reload_may_be_needed(ansible, tmp_path):
    conf = tmp_path / "upstreams.conf"
    with FakeDyups(hosts={}) as tengine:  # this "Tengine" cannot resolve localhost: it answers 500
        result = failed(ansible.playbook(play(task("set", api_url=tengine.api_url, name="Web", servers=["localhost:18101"],
                                                   upstream_conf=str(conf)))))
        assert [r.method for r in tengine.requests] == ["GET", "POST"]
    assert "answered 500 'add server failed'" in result["msg"]
    assert "needing a reload" in result["msg"]
    # what the interface refused does not stay in the file, which was written first (issue 26)
    assert f"the upstream file {conf} holds its old block again" in result["msg"]
    assert "localhost:18101" not in conf.read_text() and result["unsent"] == ["Web"]


def test_invalid_option_combinations_fail_before_any_request(fake_dyups, ansible, tmp_path):
    url = fake_dyups.api_url
    cases = [
        (dict(api_url=url, name="A", servers=["127.0.0.1:1"], upstreams={"B": ["127.0.0.1:1"]}), "mutually exclusive"),
        (dict(api_url=url, upstreams={"B": ["127.0.0.1:1"]}, exclusive=True), "upstream_conf"),
        (dict(api_url=url, name="A", servers=["127.0.0.1:1"], validate="true %s"), "upstream_conf"),
        (dict(api_url=url, name="A", servers=["127.0.0.1:1"], backup=True), "upstream_conf"),
        (dict(api_url="127.0.0.1:18882", name="A", servers=["127.0.0.1:1"]), "invalid api_url"),
        (dict(api_url=url, servers=["127.0.0.1:1"]), "one of the following is required: name, upstreams"),
    ]
    done = ansible.playbook(play(*[dict(task(f"case {i}", **args), ignore_errors=True) for i, (args, _m) in enumerate(cases)]))
    for i, (_args, message) in enumerate(cases):
        result = done.task(f"case {i}")
        assert result.get("failed") and message in result["msg"], (i, result)
    assert fake_dyups.requests == []


# -- dyups_upstream_info ------------------------------------------------------------------------------------------
def test_info_reads_everything_and_feeds_dyups_upstream(dyups_server, ansible):
    url = dyups_server.api_url
    done = ansible.playbook(play(
        task("empty", _module=INFO, api_url=url),
        task("set", api_url=url, upstreams={"A": ["127.0.0.1:18101 weight=3 max_fails=2 fail_timeout=5s",
                                                  "127.0.0.1:18102 backup"],
                                            "B": ["127.0.0.1:18103 down max_conns=10"]}),
        task("all", _module=INFO, api_url=url),
        task("some", _module=INFO, api_url=url, names=["B", "Nope"]),
        {"name": "checked", INFO: {"api_url": url}, "check_mode": True},
        task("back", api_url=url, upstreams="{{ all.upstreams }}"),
    ).replace("  - name: all\n", "  - name: all\n    register: all\n"))
    assert ok(done, "empty")["upstreams"] == {} and ok(done, "empty")["names"] == []
    everything = ok(done, "all")
    assert everything["changed"] is False and everything["names"] == ["A", "B"]
    assert everything["upstreams"]["A"] == [
        {"address": "127.0.0.1:18101", "host": "127.0.0.1", "port": 18101, "weight": 3, "max_fails": 2,
         "fail_timeout": 5, "max_conns": 0, "backup": False, "down": False},
        {"address": "127.0.0.1:18102", "host": "127.0.0.1", "port": 18102, "weight": 1, "max_fails": 1,
         "fail_timeout": 10, "max_conns": 0, "backup": True, "down": False}]
    assert everything["upstreams"]["B"][0]["down"] is True and everything["upstreams"]["B"][0]["max_conns"] == 10
    some = ok(done, "some")
    assert some["names"] == ["B"] and some["missing"] == ["Nope"] and list(some["upstreams"]) == ["B"]
    assert ok(done, "checked")["names"] == ["A", "B"]
    assert ok(done, "back")["changed"] is False                                 # info's output, given back: equal


def test_info_fails_naming_the_url(ansible):
    url = f"http://127.0.0.1:{free_port()}"
    result = failed(ansible.adhoc(INFO, f"api_url={url}"))
    assert f"the dyups interface at {url}/detail did not answer GET" in result["msg"]
