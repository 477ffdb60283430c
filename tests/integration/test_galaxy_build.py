"""``ansible-galaxy collection build`` -> ``install`` -> run the modules by FQCN from the installed copy only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import yaml

from tests.support.ansible_run import AnsibleRunner
from tests.support.collection import ROOT
from tests.support.fake_dyups import FakeDyups

GALAXY = Path(sys.executable).parent / "ansible-galaxy"


def galaxy(*args, cwd):
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env["ANSIBLE_HOME"] = str(cwd / ".ansible-home")
    done = subprocess.run([str(GALAXY), *args], capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
                          check=False)
    assert done.returncode == 0, f"ansible-galaxy {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


def test_build_install_and_run_by_fqcn(tmp_path):
    version = yaml.safe_load((ROOT / "galaxy.yml").read_text())["version"]
    galaxy("collection", "build", str(ROOT), "--output-path", str(tmp_path / "dist"), cwd=tmp_path)
    tarball = tmp_path / "dist" / f"swallowkeeper-dyups-{version}.tar.gz"
    assert tarball.is_file()
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
        manifest = json.load(archive.extractfile("MANIFEST.json"))
    assert manifest["collection_info"]["namespace"] == "swallowkeeper"
    assert manifest["collection_info"]["name"] == "dyups"
    for wanted in ("plugins/modules/dyups_upstream.py", "plugins/modules/dyups_upstream_info.py",
                   "plugins/module_utils/_plan.py", "plugins/doc_fragments/_dyups.py", "meta/runtime.yml"):
        assert wanted in names, wanted
    assert not [n for n in names if n.startswith((".venv", ".cache", ".git/", "tests/output")) or "__pycache__" in n]

    installed = tmp_path / "collections"
    galaxy("collection", "install", str(tarball), "-p", str(installed), "--offline", cwd=tmp_path)
    copy = installed / "ansible_collections" / "swallowkeeper" / "dyups"
    assert (copy / "plugins" / "modules" / "dyups_upstream.py").is_file()

    runner = AnsibleRunner(tmp_path / "run", collections_path=installed)
    with FakeDyups() as server:
        done = runner.adhoc("swallowkeeper.dyups.dyups_upstream",
                            f"name=WebappReadonly_b servers=10.117.17.21:8180,10.117.17.22:8180 api_url={server.api_url}")
        assert done.rc == 0 and done.module["changed"] is True, done.stdout + done.stderr
        assert server.upstreams["WebappReadonly_b"]["servers"][0]["address"] in ("10.117.17.21:8180", "10.117.17.22:8180")
        playbook = yaml.safe_dump([{
            "name": "installed copy", "hosts": "tengine", "gather_facts": False,
            "module_defaults": {"group/swallowkeeper.dyups.dyups": {"api_url": server.api_url}},
            "tasks": [{"name": "read", "swallowkeeper.dyups.dyups_upstream_info": {}}]}])
        done = runner.playbook(playbook)
        assert done.rc == 0 and done.module["names"] == ["WebappReadonly_b"], done.stdout + done.stderr

    # the modules ran from the installed copy: ansible-doc finds them there, and only there
    env = runner.env()
    listing = subprocess.run([str(GALAXY.parent / "ansible-doc"), "--json", "swallowkeeper.dyups.dyups_upstream"],
                             capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path, check=False)
    assert listing.returncode == 0, listing.stderr
    doc = json.loads(listing.stdout)["swallowkeeper.dyups.dyups_upstream"]["doc"]
    assert doc["filename"].startswith(str(copy)), doc["filename"]
