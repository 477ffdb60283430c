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


GPL3_FIRST_LINES = ("GNU GENERAL PUBLIC LICENSE", "Version 3, 29 June 2007")
AUTHOR = "swallowkeeper.dyups contributors"
# Workarounds for the project's test machines: never in the built collection.
TEST_MACHINE_ONLY = ("tests/tools/ansible_test_get_pip.py", ".ci/run")
# What a user runs to test the collection: always in it.
USER_TESTS = ("tests/run.sh", "tests/tools/venv.sh", "tests/tools/get-consul.sh", "tests/tools/install-system-deps.sh",
              "tests/tools/sanity.sh", "tests/tools/lint.sh", "tests/tools/check-shell-pipes.py", "tests/requirements.txt",
              "tests/unit/test_names.py", "tests/integration/test_galaxy_build.py", "tests/support/consul.py")


def check_packaging(tarball, names, manifest):
    """LICENSE (the full GPL-3.0-or-later text galaxy.yml declares), one author string, no foreign links,
    no test-machine workarounds, the user's tests kept."""
    info = manifest["collection_info"]
    assert info["license"] == ["GPL-3.0-or-later"]
    assert "LICENSE" in names, "the built collection has no LICENSE file"
    with tarfile.open(tarball) as archive:
        built_license = archive.extractfile("LICENSE").read().decode()
    assert built_license == (ROOT / "LICENSE").read_text()
    first = [line.strip() for line in built_license.splitlines() if line.strip()][:2]
    assert tuple(first) == GPL3_FIRST_LINES, first
    assert "TERMS AND CONDITIONS" in built_license and "END OF TERMS AND CONDITIONS" in built_license
    assert info["authors"] == [AUTHOR]
    for key in ("repository", "documentation", "homepage", "issues"):
        assert not info.get(key), f"galaxy.yml {key}: {info.get(key)!r} is not this collection's home"
    for path in TEST_MACHINE_ONLY:
        assert path not in names, f"{path} is a test-machine workaround, not part of the collection"
    for path in USER_TESTS:
        assert path in names, f"{path} (the tests a user runs) is missing from the built collection"


def test_one_author_string_everywhere():
    """galaxy.yml, the role's meta and the plugins' documentation name the same authors (modules add the
    "(!UNKNOWN)" GitHub-handle marker that ansible-test's validate-modules asks for)."""
    galaxy_authors = yaml.safe_load((ROOT / "galaxy.yml").read_text())["authors"]
    assert galaxy_authors == [AUTHOR]
    role_meta = yaml.safe_load((ROOT / "roles/tengine_dyups/meta/main.yml").read_text())["galaxy_info"]["author"]
    assert role_meta == AUTHOR
    specs = yaml.safe_load((ROOT / "roles/tengine_dyups/meta/argument_specs.yml").read_text())
    assert {spec["author"] for spec in specs["argument_specs"].values()} == {AUTHOR}
    for path in sorted((ROOT / "plugins").glob("*/*.py")):
        text = path.read_text()
        if "DOCUMENTATION" not in text or "\nauthor:" not in text:
            continue
        doc = yaml.safe_load(text.split('DOCUMENTATION = r"""', 1)[1].split('"""', 1)[0])
        authors = doc["author"] if isinstance(doc["author"], list) else [doc["author"]]
        assert authors in ([AUTHOR], [f"{AUTHOR} (!UNKNOWN)"]), (path, authors)


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
    check_packaging(tarball, names, manifest)

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
