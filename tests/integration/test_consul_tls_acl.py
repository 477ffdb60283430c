"""consul_services, playbooks/sync.yml and the watcher against a Consul agent with TLS and ACLs on.

The agent (``consul_tls_acl_agent``, tests/support/consul.py) serves its API on HTTPS only, requires a
client certificate of its CA (``verify_incoming``), and has ACLs on with ``default_policy = deny``. Its CA
and certificates are made when the test starts (tests/support/consul_tls.py); so is a second CA whose
client certificate the agent must refuse. The readers' token is made through the ACL API from the
least-privilege policy, tests/support/consul_acl_policy.hcl (the text docs/consul.md shows).

Each misconfiguration must fail with a message that names its cause and the option to set, for the
module and the watcher alike (the texts come from one place: _consul_client.py), and never show the
token. The daemon case checks what matters most: a token that loses its rights while the watcher runs
(Consul then *filters* answers instead of refusing them) must not be read as "every service went away".
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from tests.integration.test_consul_services import run_module
from tests.support.ansible_run import AnsibleRunner
from tests.support.consul import (  # noqa: F401  (fixtures)  # pylint: disable=unused-import  # pytest fixtures
    consul_agent, consul_tls_acl_agent, reader_policy_rules)
from tests.support.consul import LOOPBACK_OPT_IN
from tests.support.consul_tls import make_tls_material
from tests.support.nginx_lua import TEST_HOSTS, nginx_lua_factory  # noqa: F401  # pylint: disable=unused-import
from tests.support.watcher import WatcherProcess, run_once

ROOT = Path(__file__).resolve().parents[2]
# (service, id, port, tags, status): Web has a gray group and a failing instance; Api one instance.
REGISTRATIONS = (("Web", "w1", 18101, [], "passing"), ("Web", "w2", 18102, ["gray=b"], "passing"),
                 ("Web", "w3", 18103, [], "critical"), ("Api", "a1", 18201, [], "passing"))
EXPECTED = {"Web": ["127.0.0.1:18101"], "Web_b": ["127.0.0.1:18102"], "Api": ["127.0.0.1:18201"]}
SERVICE_ONLY = 'service_prefix "" { policy = "read" }\n'
NODE_ONLY = 'node_prefix "" { policy = "read" }\n'
WEB_ONLY = 'service "Web" { policy = "read" }\nnode_prefix "" { policy = "read" }\n'


def register_all(agent):
    for name, instance_id, port, tags, status in REGISTRATIONS:
        agent.register(name, instance_id, port=port, tags=tags, status=status)


@pytest.fixture(scope="module")
def secured(consul_tls_acl_agent):  # noqa: F811
    """The TLS+ACL agent with REGISTRATIONS, the readers' token (least privilege) and a foreign CA."""
    agent = consul_tls_acl_agent
    register_all(agent)
    agent.reader_token = agent.create_token(reader_policy_rules(), name="dyups-reader")
    agent.stranger = make_tls_material(Path(tempfile.mkdtemp(prefix="consul-stranger-")), binary=agent.binary)
    return agent


@pytest.fixture(scope="module")
def plain(consul_agent):  # noqa: F811
    """The same registrations on an agent without TLS or ACLs: what the secured runs must equal."""
    register_all(consul_agent)
    return consul_agent


def upstream_state(path):
    """{upstream: [server specs]} of an upstream file."""
    return {name: sorted(server.spec() for server in upstream.servers)
            for name, upstream in _upstream_file.read(str(path)).items()}


def token_file(tmp_path, token):
    path = tmp_path / "consul.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return str(path)


def module_args(agent, tmp_path, ca=True, cert="own", token="reader"):
    """consul_services arguments; ``cert``: "own", "stranger" (another CA's) or None; ``token``: "reader",
    None, or a token."""
    args = {"consul_url": agent.url, **LOOPBACK_OPT_IN}  # the test's backends are on loopback
    if ca:
        args["ca_path"] = str(agent.tls.ca_file)
    if cert:
        material = agent.tls if cert == "own" else agent.stranger
        args.update(client_cert=str(material.client_cert), client_key=str(material.client_key))
    if token:
        args["token_file"] = token_file(tmp_path, agent.reader_token if token == "reader" else token)
    return args


def watcher_settings(agent, tmp_path, **args):
    """The watcher's settings for the same choices as module_args (its option names)."""
    given = module_args(agent, tmp_path, **args)
    names = {"consul_url": "consul_url", "ca_path": "consul_ca_path", "client_cert": "consul_client_cert",
             "client_key": "consul_client_key", "token_file": "consul_token_file"}
    return {names.get(key, key): value for key, value in given.items()}


def module_fails(agent, tmp_path, **choices):
    rc, result = run_module(tmp_path, **module_args(agent, tmp_path, **choices))
    assert rc != 0 and result.get("failed"), result
    assert agent.reader_token not in json.dumps(result)
    return result["msg"]


def watcher_fails(agent, tmp_path, **choices):
    done = run_once(tmp_path, dyups_url="http://127.0.0.1:9", upstream_file=str(tmp_path / "upstreams.conf"),
                    **watcher_settings(agent, tmp_path, **choices))
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "nothing changed" in output and not (tmp_path / "upstreams.conf").exists()
    assert agent.reader_token not in output
    return output


# -- 1. the right CA, client certificate and token --------------------------------------------------------
def test_module_reads_through_tls_and_acl_as_without_them(secured, plain, tmp_path):
    rc, result = run_module(tmp_path, **module_args(secured, tmp_path))
    assert rc == 0 and not result.get("failed"), result
    assert result["upstream_servers"] == EXPECTED and result["empty"] == []
    rc, unsecured = run_module(tmp_path, consul_url=plain.url)
    assert rc == 0, unsecured
    for key in ("upstreams", "upstream_servers", "empty", "skipped_items"):
        assert result[key] == unsecured[key], key
    assert secured.reader_token not in json.dumps(result)


def test_module_takes_tls_and_token_from_the_consul_cli_environment(secured, tmp_path):
    env = {"CONSUL_HTTP_ADDR": secured.url.replace("https://", ""), "CONSUL_HTTP_SSL": "true",
           "CONSUL_CACERT": str(secured.tls.ca_file), "CONSUL_CLIENT_CERT": str(secured.tls.client_cert),
           "CONSUL_CLIENT_KEY": str(secured.tls.client_key), "CONSUL_HTTP_TOKEN": secured.reader_token}
    rc, result = run_module(tmp_path, env=env)
    assert rc == 0 and result["upstream_servers"] == EXPECTED, result


def test_watcher_once_writes_what_it_writes_without_tls(secured, plain, nginx_lua_factory, tmp_path):  # noqa: F811
    nginx = nginx_lua_factory()
    hosts = tmp_path / "hosts"
    hosts.write_text(TEST_HOSTS)
    files = {}
    for label, settings in (("secured", watcher_settings(secured, tmp_path)), ("plain", {"consul_url": plain.url})):
        files[label] = tmp_path / f"{label}.conf"
        done = run_once(tmp_path, dyups_url=nginx.api_url, upstream_file=str(files[label]), hosts_file=str(hosts),
                        **settings)
        assert done.returncode == 0, done.stdout + done.stderr
        assert secured.reader_token not in done.stdout + done.stderr
    assert files["secured"].read_text() == files["plain"].read_text()
    assert upstream_state(files["secured"]) == EXPECTED


# -- 2. no CA: the system trust store does not know the agent's CA ----------------------------------------
def test_missing_ca_is_named(secured, tmp_path):
    for output in (module_fails(secured, tmp_path, ca=False), watcher_fails(secured, tmp_path, ca=False)):
        assert "certificate verification failed" in output
        assert "ca_path" in output and "consul_ca_path" in output and "CONSUL_CACERT" in output


# -- 3. the agent refuses the client certificate: none, or another CA's --------------------------------------
@pytest.mark.parametrize("cert", [None, "stranger"])
def test_refused_client_certificate_is_named(secured, tmp_path, cert):
    for output in (module_fails(secured, tmp_path, cert=cert), watcher_fails(secured, tmp_path, cert=cert)):
        assert "TLS handshake failed: the agent refused the client certificate" in output
        assert "client_cert and client_key" in output and "consul_client_cert" in output


def test_plain_http_on_the_https_port_is_named(secured, tmp_path):
    args = module_args(secured, tmp_path)
    args["consul_url"] = secured.url.replace("https://", "http://")
    rc, result = run_module(tmp_path, **args)
    assert rc != 0 and "use an https:// URL" in result["msg"], result


# -- 4. ACLs: no token, a token without service:read, without node:read, an unknown token -----------------------
@pytest.mark.parametrize("rules, right", [(NODE_ONLY, "service:read"), (SERVICE_ONLY, "node:read"),
                                          (WEB_ONLY, "service:read")],
                         ids=["no-service-read", "no-node-read", "not-consul-service"])
def test_token_without_read_rights_fails_instead_of_mapping_nothing(secured, tmp_path, rules, right):
    token = secured.create_token(rules)
    for output in (module_fails(secured, tmp_path, token=token), watcher_fails(secured, tmp_path, token=token)):
        assert f"the ACL token lacks {right}" in output and "leaves out what a token may not read" in output
        assert token not in output


def test_no_token_fails_and_names_the_token_options(secured, tmp_path):
    for output in (module_fails(secured, tmp_path, token=None), watcher_fails(secured, tmp_path, token=None)):
        assert "no ACL token was sent" in output
        assert "token_file" in output and "CONSUL_HTTP_TOKEN" in output and "consul_token_file" in output


def test_unknown_token_is_refused_with_403(secured, tmp_path):
    token = "11111111-2222-3333-4444-555555555555"
    for output in (module_fails(secured, tmp_path, token=token), watcher_fails(secured, tmp_path, token=token)):
        assert "403" in output and "ACL not found" in output and token not in output


def test_empty_catalog_under_the_full_policy_still_works(secured, tmp_path):
    """The detection does not misfire: a service with no instance left, a selection matching nothing."""
    rc, result = run_module(tmp_path, services=["Nope"], **module_args(secured, tmp_path))
    assert rc == 0 and result["upstreams"] == {}, result
    rc, result = run_module(tmp_path, prefix="Nothing", **module_args(secured, tmp_path))
    assert rc == 0 and result["upstreams"] == {} and result["empty"] == [], result


def test_sync_playbook_passes_tls_and_token(secured, nginx_lua_factory, tmp_path):  # noqa: F811
    nginx = nginx_lua_factory()
    conf = tmp_path / "upstreams.conf"
    variables = {"dyups_sync_consul_url": secured.url, "dyups_sync_consul_ca_path": str(secured.tls.ca_file),
                 "dyups_sync_consul_client_cert": str(secured.tls.client_cert),
                 "dyups_sync_consul_client_key": str(secured.tls.client_key),
                 "dyups_sync_consul_token_file": token_file(tmp_path, secured.reader_token),
                 "dyups_sync_api_url": nginx.api_url, "dyups_sync_upstream_conf": str(conf),
                 "dyups_sync_watcher_config": str(tmp_path / "none.yml"),
                 "dyups_sync_allowed_networks": LOOPBACK_OPT_IN["allowed_networks"]}
    done = AnsibleRunner(tmp_path / "ansible").playbook((ROOT / "playbooks" / "sync.yml").read_text(),
                                                        extra_vars=variables)
    output = done.stdout + done.stderr
    assert done.rc == 0, output[-5000:]
    assert secured.reader_token not in output
    assert upstream_state(conf) == EXPECTED


# -- the daemon: converges, then a token that loses its rights changes nothing ----------------------------------
def set_policy(agent, policy_id, rules):
    agent.call("PUT", f"/v1/acl/policy/{policy_id}", {"ID": policy_id, "Name": f"daemon-{policy_id[:8]}",
                                                      "Rules": rules})


def test_watcher_daemon_converges_and_never_applies_a_filtered_view(secured, nginx_lua_factory, tmp_path):  # noqa: F811
    nginx = nginx_lua_factory()
    conf = tmp_path / "upstreams.conf"
    hosts = tmp_path / "hosts"
    hosts.write_text(TEST_HOSTS)
    name = "daemon-reader"
    policy = secured.call("PUT", "/v1/acl/policy", {"Name": name, "Rules": reader_policy_rules()})
    token = secured.call("PUT", "/v1/acl/token", {"Description": name, "Policies": [{"ID": policy["ID"]}]})["SecretID"]
    settings = watcher_settings(secured, tmp_path, token=token)
    watcher = WatcherProcess(tmp_path, dyups_url=nginx.api_url, upstream_file=str(conf), hosts_file=str(hosts),
                             drift_interval=1, consul_resync_interval=2, removal_guard_share=1.0,  # no hold hides a removal
                             **settings).start()
    try:
        watcher.wait_for(lambda: conf.exists() and upstream_state(conf) == EXPECTED, "the first sync")
        secured.register("Web", "w4", port=18104)
        converged = dict(EXPECTED, Web=["127.0.0.1:18101", "127.0.0.1:18104"])
        watcher.wait_for(lambda: upstream_state(conf) == converged, "w4 joins through TLS")
        command_line = Path(f"/proc/{watcher.pid}/cmdline").read_bytes()
        assert token.encode() not in command_line and b"consul.token" not in command_line  # the file is in the config

        for rules, right in ((SERVICE_ONLY, "node:read"), (NODE_ONLY, "service:read")):
            mark = len(watcher.log_text())
            set_policy(secured, policy["ID"], rules)
            secured.fail_check("w1")          # health poll wakes; reads come back filtered
            secured.register("Api", "a2", port=18202)   # catalog poll wakes too
            watcher.wait_for(lambda r=right, m=mark: f"lacks {r}" in watcher.log_text()[m:]
                             or upstream_state(conf) != converged, f"the watcher sees {right} missing", timeout=15)
            time.sleep(2.5)                   # a resync (every 2 s) and a drift check (every 1 s) pass too
            assert upstream_state(conf) == converged, watcher.log_text()[mark:]
            assert f"lacks {right}" in watcher.log_text()[mark:]
            detail = nginx.client().detail()
            assert sorted(detail) == sorted(converged)
            secured.deregister("a2")
            secured.pass_check("w1")
        set_policy(secured, policy["ID"], reader_policy_rules())
        secured.fail_check("w4")
        watcher.wait_for(lambda: upstream_state(conf) == EXPECTED, "rights restored: w4 leaves on critical", timeout=15)
        assert token not in watcher.log_text()
    finally:
        watcher.stop()
        secured.deregister("w4")
    assert token not in secured.log_text()


def test_the_policy_file_is_the_documented_one():
    docs = (ROOT / "docs" / "consul.md").read_text()
    rules = "\n".join(line for line in reader_policy_rules().splitlines() if line and not line.startswith("#"))
    assert rules in docs
    assert os.path.basename("tests/support/consul_acl_policy.hcl") in docs
