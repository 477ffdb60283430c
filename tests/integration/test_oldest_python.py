"""The oldest Python the collection claims, run for real: the watcher (Python 3.7, the role's preflight
minimum) and the modules (Python 3.8, what their ``requirements`` say for the managed host).

The interpreters come from the machine (``python3.7``/``python3.8`` on PATH, or pyenv's
``~/.pyenv/versions/3.7.*`` and ``3.8.*``); where one is missing its case is skipped and says so. Each
case runs against a real Consul agent and the real stock-nginx Lua flavor on loopback.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.integration.test_watcher import running_stack
from tests.support.collection import ensure_importable
from tests.support.consul import LOOPBACK_OPT_IN
from tests.support.nginx_lua import NginxLua
from tests.support.watcher import ENTRY

ROOT = Path(__file__).resolve().parents[2]


def _interpreter(version: str) -> str:
    """A working Python ``version``: pyenv's own build first (its shims on PATH may refuse to run one that is
    not selected), then ``python{version}`` on PATH; skip when neither runs."""
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")), reverse=True)
    on_path = shutil.which(f"python{version}")
    for candidate in candidates + ([on_path] if on_path else []):
        probe = subprocess.run([candidate, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True, timeout=30, check=False)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return candidate
    pytest.skip(f"no Python {version} on this machine (pyenv's ~/.pyenv/versions/{version}.* or python{version} on PATH)")


@pytest.fixture
def lua_stack(tmp_path):
    upstream_file = tmp_path / "upstreams.conf"
    nginx = NginxLua(workers=1, upstream_file=str(upstream_file))
    nginx.start()
    try:
        with running_stack(tmp_path, nginx, upstream_file, backends=2) as stack:
            yield stack
    finally:
        nginx.cleanup()


def test_the_watcher_syncs_on_python_3_7(lua_stack, tmp_path):
    python = _interpreter("3.7")
    stack = lua_stack
    p1, p2 = stack.ports
    stack.agent.register("Web", "w1", port=p1)
    stack.agent.register("Web", "w2", port=p2, tags=["gray=b"])
    config = tmp_path / "once.json"
    config.write_text(json.dumps(dict(stack.common, status_listen="", **LOOPBACK_OPT_IN)))
    once = subprocess.run([python, str(ENTRY), "--config", str(config), "--once"], capture_output=True, text=True,
                          timeout=60, cwd=str(ROOT), check=False)
    assert once.returncode == 0, once.stdout + once.stderr
    stack.nginx.wait_for(lambda: stack.serves("Web", p1) and stack.serves("Web_b", p2),
                         "the nginx workers serve what the watcher on Python 3.7 sent")
    assert "upstream Web:" in once.stdout


def test_the_modules_run_on_python_3_8(lua_stack, tmp_path):
    python = _interpreter("3.8")
    stack = lua_stack
    p1, _p2 = stack.ports
    stack.agent.register("Api", "a1", port=p1)
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ensure_importable()), ANSIBLE_HOME=str(tmp_path / "ansible-home"),
               ANSIBLE_PYTHON_INTERPRETER=python, ANSIBLE_NOCOLOR="1")
    ansible = str(ROOT / ".venv" / "bin" / "ansible") if (ROOT / ".venv" / "bin" / "ansible").exists() else "ansible"

    def run(module, args):
        done = subprocess.run([ansible, "localhost", "-c", "local", "-e", f"ansible_python_interpreter={python}", "-m", module, "-a", json.dumps(args), "-o"],
                              capture_output=True, text=True, timeout=120, env=env, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    facts = run("ansible.builtin.setup", {"filter": "ansible_python_version"})
    assert '"ansible_python_version": "3.8.' in facts, facts
    consul = run("swallowkeeper.dyups.consul_services", {"consul_url": stack.agent.url, **LOOPBACK_OPT_IN})
    assert '"Api"' in consul and f"127.0.0.1:{p1}" in consul, consul
    created = run("swallowkeeper.dyups.dyups_upstream",
                  {"api_url": stack.nginx.api_url, "name": "Api", "servers": [f"127.0.0.1:{p1}"],
                   "upstream_conf": str(stack.upstream_file)})
    assert '"changed": true' in created, created
    info = run("swallowkeeper.dyups.dyups_upstream_info", {"api_url": stack.nginx.api_url, "names": ["Api"]})
    assert f"127.0.0.1:{p1}" in info or f'"port": {p1}' in info, info
    stack.nginx.wait_for(lambda: stack.serves("Api", p1), "the upstream the module made on Python 3.8 serves")
