"""The EXAMPLES of both modules run as written, against the dyups server.

Only two things are changed: /etc/nginx/ and /var/lib/swallowkeeper-dyups/ become a temporary directory, and the interface address
(the default http://127.0.0.1:18882 through module_defaults, and the http://127.0.0.1:18883 the
examples name) becomes the test server's. The validate example runs the real nginx -t.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from ansible_collections.swallowkeeper.dyups.plugins.modules import dyups_upstream, dyups_upstream_info
from tests.support.ansible_run import AnsibleRunner


@pytest.mark.parametrize("module", [dyups_upstream, dyups_upstream_info], ids=["dyups_upstream", "dyups_upstream_info"])
def test_examples_run(module, dyups_server, tmp_path):
    if "nginx -t" in module.EXAMPLES and not shutil.which("nginx", path="/usr/sbin:/usr/bin"):
        pytest.skip("the validate example needs nginx (tests/tools/install-system-deps.sh)")
    etc = tmp_path / "etc-nginx"
    etc.mkdir()
    text = (module.EXAMPLES.replace("/etc/nginx/", f"{etc}/").replace("/var/lib/swallowkeeper-dyups/", f"{etc}/")
            .replace("http://127.0.0.1:18883", dyups_server.api_url))
    tasks = yaml.safe_load(text)
    playbook = yaml.safe_dump([{
        "name": "examples", "hosts": "tengine", "gather_facts": False,
        "module_defaults": {"group/swallowkeeper.dyups.dyups": {"api_url": dyups_server.api_url}},
        "tasks": tasks}], sort_keys=False)
    done = AnsibleRunner(tmp_path / "ansible").playbook(playbook)
    assert done.rc == 0, done.stdout[-5000:] + done.stderr[-3000:]
    names = [name for name, _result in done.tasks]
    assert len(done.tasks) >= len(tasks), names
    assert not [result for _name, result in done.tasks if result.get("failed")]
    if module is dyups_upstream:
        assert (etc / "upstreams.conf").exists()
