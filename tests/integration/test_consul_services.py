"""The consul_services module against a real Consul agent.

Most cases run the module file the way Ansible runs it on a managed node (a Python process given
its arguments as JSON); the token cases run it through ``ansible`` and ``ansible-playbook -vvv``
and search everything they print, their log file and the agent's debug log for the token.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support.ansible_run import AnsibleRunner
from tests.support.collection import COLLECTIONS
from tests.support.consul import consul_acl_agent, consul_agent  # noqa: F401 (fixtures)  # pylint: disable=unused-import  # pytest fixtures
from tests.support.consul import LOOPBACK_OPT_IN
from tests.support.ports import free_port

MODULE = "ansible_collections.swallowkeeper.dyups.plugins.modules.consul_services"
BIN = Path(sys.executable).parent


def module_env(extra=None):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ANSIBLE_", "CONSUL_"))}
    env.update(PYTHONPATH=str(COLLECTIONS), ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS))
    env.update(extra or {})
    return env


def run_module(tmp_path, env=None, loopback=True, wrapper=(), **args):
    """(rc, result) of one module run with ``args``; ``loopback``: with LOOPBACK_OPT_IN (the backends' addresses);
    ``wrapper``: a command the module runs under (its arguments, then the module's command)."""
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**(LOOPBACK_OPT_IN if loopback else {}), **args}}))
    done = subprocess.run([*wrapper, sys.executable, "-m", MODULE, str(path)], capture_output=True, text=True, timeout=120,
                          env=module_env(env), cwd=tmp_path, check=False)
    try:
        return done.returncode, json.loads(done.stdout)
    except ValueError:
        raise AssertionError(f"module printed no JSON (rc {done.returncode}):\n{done.stdout}\n{done.stderr}") from None


def ok(tmp_path, **args):
    rc, result = run_module(tmp_path, **args)
    assert rc == 0 and not result.get("failed"), result
    assert result["changed"] is False
    return result


def fails(tmp_path, **args):
    rc, result = run_module(tmp_path, **args)
    assert rc != 0 and result.get("failed"), result
    return result


@pytest.fixture
def agent(consul_agent):  # noqa: F811
    yield consul_agent
    consul_agent.clear_services()


def whys(result):
    return {item["what"]: item["why"] for item in result["skipped_items"]}


# -- mapping against real registrations ---------------------------------------------------------------------
def test_gray_tags_and_health_states(agent, tmp_path):
    agent.register("Webapp", "w1", port=18101)
    agent.register("Webapp", "w2", port=18102, tags=["gray=default"])
    agent.register("Webapp", "w3", port=18103, tags=["gray=b", "v2"])
    agent.register("Webapp", "w4", port=18104, tags=["gray=b"], status="warning")
    agent.register("Webapp", "w5", port=18105, tags=["gray=c"], status="critical")
    result = ok(tmp_path, consul_url=agent.url)
    assert result["upstreams"] == {
        "Webapp": {"servers": ["127.0.0.1:18101", "127.0.0.1:18102"], "directives": []},
        "Webapp_b": {"servers": ["127.0.0.1:18103"], "directives": []},
    }
    assert result["empty"] == ["Webapp_c"]
    assert result["upstream_servers"] == {"Webapp": ["127.0.0.1:18101", "127.0.0.1:18102"],
                                          "Webapp_b": ["127.0.0.1:18103"]}
    status = {item["id"]: (item["status"], item["serving"], item["upstream"]) for item in result["instances"]}
    assert status == {"w1": ("passing", True, "Webapp"), "w2": ("passing", True, "Webapp"),
                      "w3": ("passing", True, "Webapp_b"), "w4": ("warning", False, "Webapp_b"),
                      "w5": ("critical", False, "Webapp_c")}
    assert result["skipped_items"] == [] and result["catalog_index"] > 0

    warn = ok(tmp_path, consul_url=agent.url, include_warning=True)
    assert warn["upstreams"]["Webapp_b"]["servers"] == ["127.0.0.1:18103", "127.0.0.1:18104"]

    agent.fail_check("w3")
    agent.fail_check("w4")
    agent.pass_check("w5")
    flipped = ok(tmp_path, consul_url=agent.url)
    assert sorted(flipped["upstreams"]) == ["Webapp", "Webapp_c"] and flipped["empty"] == ["Webapp_b"]


def test_service_address_else_node_address(agent, tmp_path):
    agent.register("api", "own", port=18201, address="127.0.0.5")
    agent.register("api", "agentnode", port=18202, address=None)
    agent.catalog_register("ext-1", "127.0.0.9", "api", "external", port=18203)
    agent.catalog_register("ext-2", "127.0.0.10", "api", "external-own", port=18204, address="127.0.0.11")
    result = ok(tmp_path, consul_url=agent.url)
    assert sorted(result["upstreams"]["api"]["servers"]) == [
        "127.0.0.11:18204", "127.0.0.1:18202", "127.0.0.5:18201", "127.0.0.9:18203"]
    nodes = {item["id"]: item["node"] for item in result["instances"]}
    assert nodes["external"] == "ext-1" and nodes["own"] == agent.node_name


def test_external_node_health(agent, tmp_path):
    agent.catalog_register("ext-1", "127.0.0.9", "api", "e1", port=18203, status="critical")
    agent.catalog_register("ext-2", "127.0.0.10", "api", "e2", port=18203, status="passing")
    result = ok(tmp_path, consul_url=agent.url)
    assert result["upstreams"]["api"]["servers"] == ["127.0.0.10:18203"]


def test_meta_parameters(agent, tmp_path):
    agent.register("pay", "p1", port=18301, meta={"dyups_weight": "5", "dyups_max_fails": "3",
                                                  "dyups_fail_timeout": "20s", "version": "7"})
    agent.register("pay", "p2", port=18302, meta={"dyups_backup": "true", "dyups_max_conns": "50"})
    agent.register("pay", "p3", port=18303, meta={"dyups_down": "yes"})
    result = ok(tmp_path, consul_url=agent.url)
    assert result["upstreams"]["pay"]["servers"] == [
        "127.0.0.1:18301 weight=5 max_fails=3 fail_timeout=20s", "127.0.0.1:18303 down",
        "127.0.0.1:18302 max_conns=50 backup"]
    meta = {item["id"]: item["meta"] for item in result["instances"]}
    assert meta["p1"]["version"] == "7"


def test_hostile_names_tags_and_meta_are_skipped_with_reasons(agent, tmp_path):
    agent.register("a b", "space", port=18401)
    agent.register("a/b", "slash", port=18402)
    agent.register("x{y", "brace", port=18403)
    agent.register("ünï", "unicode", port=18404)
    agent.register("good", "tag-space", port=18405, tags=["gray=x y"])
    agent.register("good", "tag-template", port=18406, tags=["gray={{ lookup('env', 'HOME') }}"])
    agent.register("good", "two-gray", port=18407, tags=["gray=a", "gray=b"])
    agent.register("good", "weight-abc", port=18408, meta={"dyups_weight": "abc"})
    agent.register("good", "meta-typo", port=18409, meta={"dyups_bakup": "true"})
    agent.register("good", "port-high", port=70000)
    agent.register("good", "fine", port=18410)
    agent.register("good", "same-address", port=18410)
    result = ok(tmp_path, consul_url=agent.url)
    assert result["upstreams"] == {"good": {"servers": ["127.0.0.1:18410"], "directives": []}}
    reasons = whys(result)
    expected = {
        "service 'a b'": "contains whitespace",
        "service 'a/b'": "contains '/'",
        "service 'x{y'": "contains '{'",
        "service 'ünï'": "contains 'ü'",
        "instance 'tag-space' of service 'good'": "contains whitespace",
        "instance 'tag-template' of service 'good'": "contains '{'",
        "instance 'two-gray' of service 'good'": "2 different gray= tags",
        "instance 'weight-abc' of service 'good'": "weight='abc' is not a whole number",
        "instance 'meta-typo' of service 'good'": "unknown Meta key 'dyups_bakup'",
        "instance 'port-high' of service 'good'": "port 70000 is not 1-65535",
        "instance 'same-address' of service 'good'": "already in upstream good",
    }
    for what, why in expected.items():
        matching = [reason for key, reason in reasons.items() if key.startswith(what)]
        assert matching and why in matching[0], (what, reasons)
    assert len(reasons) == len(expected)
    joined = json.dumps(result["upstreams"])
    assert "x y" not in joined and "{{" not in joined and "abc" not in joined
    warnings = " ".join(str(warning) for warning in result.get("warnings", []))
    assert "weight='abc'" in warnings


def test_names_no_url_path_reads_are_skipped_and_block_nothing(agent, tmp_path):
    """Issue 18: Consul 1.8.7 accepts service names such as ``x//y``, ``a/../b`` and ``..``;
    ``/v1/health/service/<name>`` answers 301 for them (Go cleans the path). 940f60b failed the
    whole module; each is skipped with the reason, the others are mapped."""
    for number, name in enumerate(("x//y", "a/../b", "..")):
        agent.catalog_register("odd-node", "127.0.0.3", name, f"odd-{number}", port=18501 + number, wait=False)
    agent.register("good", "fine", port=18510)
    agent.wait_until(lambda: {"x//y", "a/../b", ".."} <= set(agent.get("/v1/catalog/services")), "the odd names")
    result = ok(tmp_path, consul_url=agent.url)
    assert result["upstreams"] == {"good": {"servers": ["127.0.0.1:18510"], "directives": []}}
    reasons = whys(result)
    for name in ("x//y", "a/../b", ".."):
        assert "not a clean URL path" in reasons[f"service {name!r}"], reasons


def test_filters_and_explicit_services(agent, tmp_path):
    for name in ("webA", "webB", "api", "batch"):
        agent.register(name, f"{name}-1", port=18500 + len(name))
    everything = ok(tmp_path, consul_url=agent.url)
    assert sorted(everything["upstreams"]) == ["api", "batch", "webA", "webB"]
    assert sorted(ok(tmp_path, consul_url=agent.url, prefix="web")["upstreams"]) == ["webA", "webB"]
    assert sorted(ok(tmp_path, consul_url=agent.url, include=["api", "webB"])["upstreams"]) == ["api", "webB"]
    assert sorted(ok(tmp_path, consul_url=agent.url, exclude=["consul", "batch"])["upstreams"]) == [
        "api", "webA", "webB"]
    with_consul = ok(tmp_path, consul_url=agent.url, exclude=[])
    assert "consul" in with_consul["upstreams"]
    explicit = ok(tmp_path, consul_url=agent.url, services=["api", "nosuch"])
    assert list(explicit["upstreams"]) == ["api"]
    assert whys(explicit) == {"service 'nosuch'": "it is not registered in Consul"}


def test_several_services_with_many_instances(agent, tmp_path):
    expected = {}
    for service in range(6):
        name = f"svc{service}"
        for number in range(25):
            port = 20000 + service * 100 + number
            tags = ["gray=canary"] if number % 5 == 0 else []
            status = "critical" if number % 7 == 3 else "passing"
            agent.register(name, f"{name}-{number}", port=port, tags=tags, status=status, wait=False)
            if status == "passing":
                upstream = f"{name}_canary" if tags else name
                expected.setdefault(upstream, []).append(f"127.0.0.1:{port}")
    agent.wait_until(lambda: sum(len(agent.get(f"/v1/health/service/svc{s}")) for s in range(6)) == 150,
                     "150 instances", timeout=30)
    agent.wait_until(lambda: len(agent.get("/v1/health/state/critical")) == 6 * 4, "24 critical", timeout=30)
    result = ok(tmp_path, consul_url=agent.url)
    assert {name: spec["servers"] for name, spec in result["upstreams"].items()} == {
        name: sorted(servers) for name, servers in expected.items()}
    assert len(result["instances"]) == 150


# -- failures -----------------------------------------------------------------------------------------------------
def test_agent_down_names_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = fails(tmp_path, consul_url=url, timeout=3)
    assert url in result["msg"] and "did not answer" in result["msg"]


def test_server_error_and_non_api_answers(agent, tmp_path):
    agent.register("web", "w1", port=18101)
    server_error = fails(tmp_path, consul_url=agent.url, datacenter="nowhere")
    assert "500" in server_error["msg"] and "No path to datacenter" in server_error["msg"]
    assert server_error["status"] == 500
    not_json = fails(tmp_path, consul_url=agent.url + "/ui")
    assert "not JSON" in not_json["msg"]


def test_bad_options_fail_clearly(agent, tmp_path):
    assert "tag_key" in fails(tmp_path, consul_url=agent.url, tag_key="a=b")["msg"]
    missing = fails(tmp_path, consul_url=agent.url, token_file=str(tmp_path / "nope"))
    assert "token_file" in missing["msg"] and "cannot be read" in missing["msg"]


def test_check_mode_reads_the_same(agent, tmp_path):
    agent.register("web", "w1", port=18101)
    normal = ok(tmp_path, consul_url=agent.url)
    checked = ok(tmp_path, consul_url=agent.url, _ansible_check_mode=True)
    assert checked["upstreams"] == normal["upstreams"]


# -- ACLs and the token -----------------------------------------------------------------------------------------
def test_acl_no_token_fails_clearly(consul_acl_agent, tmp_path):  # noqa: F811
    consul_acl_agent.register("web", "w1", port=18101)
    result = fails(tmp_path, consul_url=consul_acl_agent.url)
    assert "no ACL token was sent" in result["msg"] and "CONSUL_HTTP_TOKEN" in result["msg"]


def test_acl_bad_token_fails_with_403(consul_acl_agent, tmp_path):  # noqa: F811
    result = fails(tmp_path, consul_url=consul_acl_agent.url, token="11111111-2222-3333-4444-555555555555")
    assert "403" in result["msg"] and "lacks the rights" in result["msg"]
    assert "11111111-2222" not in json.dumps(result)


def test_acl_token_without_node_read_fails_instead_of_mapping_no_instance(consul_acl_agent, tmp_path):  # noqa: F811
    consul_acl_agent.register("web", "w1", port=18101)
    token = consul_acl_agent.create_token('service_prefix "" { policy = "read" }\n')
    result = fails(tmp_path, consul_url=consul_acl_agent.url, token=token)
    assert "the ACL token lacks node:read" in result["msg"] and token not in json.dumps(result)


def test_acl_token_from_option_file_and_environment(consul_acl_agent, tmp_path):  # noqa: F811
    agent = consul_acl_agent
    agent.register("web", "w1", port=18101)
    token = agent.create_token()
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    expected = {"web": {"servers": ["127.0.0.1:18101"], "directives": []}}
    for env, args in (({}, {"token": token}), ({}, {"token_file": str(token_file)}),
                      ({"CONSUL_HTTP_TOKEN": token}, {}),
                      ({"CONSUL_HTTP_TOKEN": "wrong"}, {"token_file": str(token_file)})):
        rc, result = run_module(tmp_path, env=env, consul_url=agent.url, **args)
        assert rc == 0 and result["upstreams"] == expected, (args, result)
        shown = json.dumps({key: value for key, value in result.items() if key != "invocation"})
        assert token not in shown


def run_ansible(command, tmp_path, extra_env=None):
    log = tmp_path / "ansible.log"
    env = module_env({"ANSIBLE_LOG_PATH": str(log), "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0",
                      "ANSIBLE_LOCALHOST_WARNING": "0", "ANSIBLE_INVENTORY_UNPARSED_WARNING": "0",
                      "ANSIBLE_PYTHON_INTERPRETER": sys.executable, "ANSIBLE_HOME": str(tmp_path / "home"),
                      "ANSIBLE_KEEP_REMOTE_FILES": "0", "ANSIBLE_NO_TARGET_SYSLOG": "1"})
    env.update(extra_env or {})
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path, check=False)
    logged = log.read_text() if log.exists() else ""
    return done, done.stdout + done.stderr + logged


def test_token_never_appears_in_ansible_output_or_logs(consul_acl_agent, tmp_path):  # noqa: F811
    agent = consul_acl_agent
    agent.register("web", "w1", port=18101, tags=["gray=b"])
    token = agent.create_token()
    token_file = tmp_path / "read.token"
    token_file.write_text(token)
    playbook = tmp_path / "read.yml"
    playbook.write_text(textwrap.dedent(f"""\
        - name: Read Consul with the token from module_defaults, a file and the environment
          hosts: localhost
          connection: local
          gather_facts: false
          module_defaults:
            group/swallowkeeper.dyups.consul:
              consul_url: {agent.url}
              allowed_networks: [127.0.0.0/8]
          tasks:
            - name: Token as an option (carried by the action group)
              swallowkeeper.dyups.consul_services:
                token: {token}
              register: by_option
            - name: Token from a file
              swallowkeeper.dyups.consul_services:
                token_file: {token_file}
              register: by_file
            - name: Token from CONSUL_HTTP_TOKEN (inherited by the local connection)
              swallowkeeper.dyups.consul_services:
              register: by_env
            - name: Everything read the same
              ansible.builtin.assert:
                that:
                  - by_option.upstreams == by_file.upstreams
                  - by_option.upstreams == by_env.upstreams
                  - by_option.upstreams.web_b.servers == ['127.0.0.1:18101']
                  - by_option is not changed
            - name: Show the whole result
              ansible.builtin.debug:
                var: by_file
        """))
    # Not the "environment:" keyword: with -vvv Ansible itself prints the variables it sets on the
    # command line it runs (docs/consul.md says so); the module cannot hide that.
    done, everything = run_ansible([str(BIN / "ansible-playbook"), "-vvv", str(playbook)], tmp_path,
                                   extra_env={"CONSUL_HTTP_TOKEN": token})
    assert done.returncode == 0, everything[-4000:]
    assert "web_b" in everything and "127.0.0.1:18101" in everything
    assert token not in everything
    adhoc, adhoc_output = run_ansible(
        [str(BIN / "ansible"), "localhost", "-c", "local", "-vvv", "-m", "swallowkeeper.dyups.consul_services",
         "-a", json.dumps({"consul_url": agent.url, "token_file": str(token_file), **LOOPBACK_OPT_IN})], tmp_path)
    assert adhoc.returncode == 0 and "web_b" in adhoc_output, adhoc_output[-3000:]
    assert token not in adhoc_output
    assert agent.log_level == "debug" and "/v1/catalog/services" in agent.log_text()
    assert token not in agent.log_text()


def test_failure_through_ansible_is_clear_and_keeps_the_token_out(consul_acl_agent, tmp_path):  # noqa: F811
    bad = "99999999-8888-7777-6666-555555555555"
    done, everything = run_ansible(
        [str(BIN / "ansible"), "localhost", "-c", "local", "-vvv", "-m", "swallowkeeper.dyups.consul_services",
         "-a", json.dumps({"consul_url": consul_acl_agent.url, "token": bad})], tmp_path)
    assert done.returncode != 0
    assert "403" in everything and "lacks the rights" in everything
    assert bad not in everything


def test_ansible_doc_renders(tmp_path):
    done, everything = run_ansible([str(BIN / "ansible-doc"), "swallowkeeper.dyups.consul_services"], tmp_path)
    assert done.returncode == 0, everything
    assert "consul_url" in everything and "CONSUL_HTTP_TOKEN" in everything and "skipped_items" in everything


def test_examples_run_as_written(agent, dyups_server, tmp_path):
    """The EXAMPLES, with only the agent's URL, the dyups URL and two paths pointed at this test."""
    import yaml

    from ansible_collections.swallowkeeper.dyups.plugins.modules import consul_services

    agent.register("webappReadonly", "r1", port=18101)
    agent.register("webappReadonly", "r2", port=18102, tags=["gray=b"], status="warning")
    agent.register("webappBad", "x", port=18103, meta={"dyups_weight": "abc"})
    token_file = tmp_path / "read.token"
    token_file.write_text("anything: this agent has no ACLs\n")
    conf = tmp_path / "dyups.upstream.conf"
    text = (consul_services.EXAMPLES.replace("http://127.0.0.1:8500", agent.url)
            .replace("/etc/consul.d/read.token", str(token_file)).replace("/var/lib/swallowkeeper-dyups/upstreams.conf", str(conf)))
    tasks = yaml.safe_load(text)
    play = [{"name": "EXAMPLES", "hosts": "all", "gather_facts": False, "tasks": tasks,
             "module_defaults": {"group/swallowkeeper.dyups.consul": {"consul_url": agent.url, **LOOPBACK_OPT_IN},
                                 "group/swallowkeeper.dyups.dyups": {"api_url": dyups_server.api_url}}}]
    runner = AnsibleRunner(tmp_path / "ansible")
    done = runner.playbook(yaml.safe_dump(play, sort_keys=False))
    assert done.rc == 0, done.stdout[-4000:]
    assert done.tasks[0][1]["upstreams"]["webappReadonly"]["servers"] == ["127.0.0.1:18101"]
    assert sorted(done.tasks[1][1]["upstreams"]) == ["webappReadonly", "webappReadonly_b"]
    assert "webappBad" not in done.tasks[1][1]["upstreams"]
    assert "weight='abc'" in done.stdout
    assert "upstream webappReadonly_b" in conf.read_text()


# -- at scale (issue 26 finding 10) ---------------------------------------------------------------------------------
COUNTING = textwrap.dedent("""
    import runpy, socket, ssl, sys
    counts = {"connect": 0, "ssl_context": 0}
    connect, context = socket.socket.connect, ssl.SSLContext.__new__
    def counting_connect(self, *args):
        counts["connect"] += 1
        return connect(self, *args)
    def counting_context(cls, *args, **kwargs):
        counts["ssl_context"] += 1
        return context(cls, *args, **kwargs)
    socket.socket.connect, ssl.SSLContext.__new__ = counting_connect, counting_context
    sys.argv = sys.argv[1:]
    try:
        runpy.run_module(sys.argv[0], run_name="__main__")
    finally:
        sys.stderr.write("COUNTS=%d,%d\\n" % (counts["connect"], counts["ssl_context"]))
""")


def test_one_connection_per_fetch_thread_no_tls_for_http_no_request_for_a_bad_name(agent, tmp_path):
    """Before: open_url opened a connection and built an SSL context for every request, http:// included (7.25 of
    every 8.5 s at 5 000 services), and a service whose name cannot name an upstream was read all the same."""
    for index in range(24):
        agent.register(f"svc{index}", f"svc{index}-1", port=18100 + index)
    for index in range(6):
        agent.register(f"bad name {index}", f"bad-{index}", port=18200 + index)
    agent.wait_until(lambda: len(agent.get("/v1/catalog/services")) >= 31, "31 services", timeout=30)
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"consul_url": agent.url, **LOOPBACK_OPT_IN}}))
    done = subprocess.run([sys.executable, "-c", COUNTING, MODULE, str(path)], capture_output=True, text=True,
                          timeout=120, env=module_env(), cwd=tmp_path, check=False)
    result = json.loads(done.stdout)
    assert len(result["upstreams"]) == 24, result
    connects, contexts = (int(n) for n in done.stderr.rsplit("COUNTS=", 1)[1].split(","))
    assert contexts == 0 and connects <= 4 + 1, (connects, contexts)    # FETCH_THREADS, and the catalog's
    # the skipped, summarised: counted by reason, the first skipped_shown in full, not read (no request)
    assert result["skipped_count"] == 6 and len(result["skipped_items"]) == 6
    assert result["skipped_reasons"] == {
        "the service name contains whitespace, so it cannot name an upstream (its instances skipped)": 6}
    shown = ok(tmp_path, consul_url=agent.url, skipped_shown=2)
    assert shown["skipped_count"] == 6 and len(shown["skipped_items"]) == 2


def test_a_read_by_node_maps_as_the_read_by_service(agent):
    """At scale the module reads node by node (3 + nodes requests, not one per service: issue 26 finding 10)
    and builds the same two stores as the read of each service: the same result, node checks, tags, Meta,
    letter-case variants and names no upstream can have included; when the catalog moves during the read it
    reads service by service."""
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_mapping import MappingOptions
    from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_options import consul_client_from_params
    from ansible_collections.swallowkeeper.dyups.plugins.modules import consul_services

    for index in range(8):
        agent.register(f"svc{index}", f"svc{index}-1", port=18300 + index, tags=["gray=b"] if index % 3 else [],
                       meta={"dyups_weight": str(index + 1), "team": "x"}, status=("passing", "warning", "critical")[index % 3],
                       wait=False)
    agent.register("Web", "W1", port=18320)
    agent.register("web", "w1", port=18321)
    agent.register("bad name", "bad-1", port=18322)
    agent.catalog_register("ext-1", "127.0.0.9", "api", "e1", port=18323)
    agent.catalog_register("ext-2", "127.0.0.10", "api", "e2", port=18323)
    agent.call("PUT", "/v1/catalog/register", {"Node": "ext-1", "Address": "127.0.0.9", "Check": {
        "Node": "ext-1", "CheckID": "serfHealth", "Name": "node", "Status": "critical"}})
    agent.wait_until(lambda: len(agent.get("/v1/catalog/services")) >= 12, "12 services (Web and web: one)", timeout=30)
    agent.wait_until(lambda: len(agent.get("/v1/health/service/svc7")) == 1, "svc7", timeout=30)
    client = consul_client_from_params({"consul_url": agent.url})
    asked = []
    get = client.get

    def counting_get(path, *args, **kwargs):
        asked.append(path)
        return get(path, *args, **kwargs)

    client.get = counting_get
    catalog = client.catalog_services()
    options = MappingOptions(policy=dict(LOOPBACK_OPT_IN))
    names = {name for name in catalog.data if options.selects(name)}
    by_service = consul_services.read_and_map(client, names, options).to_dict()
    asked.clear()
    by_node = consul_services.read_and_map(client, names, options, catalog_index=catalog.index).to_dict()
    assert not [path for path in asked if path.startswith("/v1/health/service/")], asked
    assert len(asked) == 3 + 3, asked  # nodes, node-services of the agent's node, ext-1 and ext-2, checks, catalog
    assert by_node == by_service
    assert by_node["upstreams"]["api"]["servers"] == ["127.0.0.10:18323"]   # ext-1's node check is critical
    assert {item["status"] for item in by_node["instances"]} == {"passing", "warning", "critical"}
    assert any(item["meta"] == {"dyups_weight": "2", "team": "x"} for item in by_node["instances"])
    assert consul_services.read_by_node(client, sorted(names), options, True, catalog.index - 1) is None
