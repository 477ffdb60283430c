"""A real Consul agent reached through CONSUL_HTTP_ADDR only (host:port, no scheme), as the consul CLI
takes it: the consul_services module with no consul_url, and the watcher with no consul_url in its
settings. The agent is on a free port, so nothing reaches it unless the variable is read."""

import json
import os
import subprocess
import sys

import pytest

from tests.support.collection import COLLECTIONS
from tests.support.consul import consul_agent  # noqa: F401 (fixture)  # pylint: disable=unused-import  # pytest fixtures
from tests.support.consul import LOOPBACK_OPT_IN
from tests.support.watcher import run_once

MODULE = "ansible_collections.swallowkeeper.dyups.plugins.modules.consul_services"


@pytest.fixture
def agent(consul_agent):  # noqa: F811
    yield consul_agent
    consul_agent.clear_services()


def clean_env(**extra):
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ANSIBLE_", "CONSUL_"))}
    env.update(PYTHONPATH=str(COLLECTIONS), ANSIBLE_COLLECTIONS_PATH=str(COLLECTIONS))
    env.update(extra)
    return env


def run_module(tmp_path, env, **args):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {**LOOPBACK_OPT_IN, **args}}))  # backends on loopback
    done = subprocess.run([sys.executable, "-m", MODULE, str(path)], capture_output=True, text=True, timeout=120,
                          env=env, cwd=tmp_path, check=False)
    return done.returncode, json.loads(done.stdout)


def test_module_reads_consul_http_addr(agent, tmp_path):
    agent.register("EnvWeb", "e1", port=18401)
    address = f"127.0.0.1:{agent.http_port}"
    rc, result = run_module(tmp_path, clean_env(CONSUL_HTTP_ADDR=address))
    assert rc == 0, result
    assert result["upstream_servers"]["EnvWeb"] == ["127.0.0.1:18401"]

    rc, result = run_module(tmp_path, clean_env())  # without it: the default address, where no agent of ours is
    assert rc != 0 or "EnvWeb" not in result.get("upstream_servers", {}), result

    rc, result = run_module(tmp_path, clean_env(CONSUL_HTTP_ADDR="127.0.0.1:9"), consul_url=agent.url)
    assert rc == 0 and "EnvWeb" in result["upstream_servers"], "an explicit consul_url wins"


def test_watcher_reads_consul_http_addr(agent, dyups_server, tmp_path, monkeypatch):
    agent.register("EnvWeb", "e1", port=18401)
    for name in [key for key in os.environ if key.startswith("CONSUL_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("CONSUL_HTTP_ADDR", f"127.0.0.1:{agent.http_port}")
    upstream_file = tmp_path / "upstreams.conf"
    dry = run_once(tmp_path, "--dry-run", dyups_url=dyups_server.api_url, upstream_file=str(upstream_file))
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "would POST EnvWeb:" in dry.stdout
    assert f"watching Consul at http://127.0.0.1:{agent.http_port}" in dry.stdout or "EnvWeb" in dry.stdout

    monkeypatch.setenv("CONSUL_HTTP_ADDR", "unix:///run/consul.sock")
    bad = run_once(tmp_path, "--dry-run", dyups_url=dyups_server.api_url, upstream_file=str(upstream_file))
    assert bad.returncode == 2 and "CONSUL_HTTP_ADDR" in bad.stderr
