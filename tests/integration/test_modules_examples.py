"""The EXAMPLES of both modules run as written, against a real interface of each flavor guarded as the
tengine_dyups role's is by default (a request without its secret refused: checked first).

Only three things are changed: /etc/nginx/ and /var/lib/swallowkeeper-dyups/ become a temporary directory, the
interface address (the default http://127.0.0.1:18882 through module_defaults, and the http://127.0.0.1:18883 the
examples name) becomes the test server's, and the role's secret file (/etc/swallowkeeper-dyups/dyups.secret,
named by the examples, and through module_defaults for those that leave it to the play, as the examples say)
becomes the test's. The validate example runs the real nginx -t.
"""

from __future__ import annotations

import shutil

import pytest
import yaml

from ansible_collections.swallowkeeper.dyups.plugins.modules import dyups_upstream, dyups_upstream_info
from tests.support.ansible_run import AnsibleRunner


@pytest.mark.parametrize("module", [dyups_upstream, dyups_upstream_info], ids=["dyups_upstream", "dyups_upstream_info"])
def test_examples_run(module, guarded_dyups_server, tmp_path):
    dyups_server = guarded_dyups_server
    assert "api_secret_file: /etc/swallowkeeper-dyups/dyups.secret" in module.EXAMPLES
    status, _text, _headers = dyups_server.api("POST", "/upstream/WebappReadonly_b", "server 10.9.9.9:80;")
    assert status == 403, "the interface is guarded as the role's is: a request without the secret is refused"
    if "nginx -t" in module.EXAMPLES and not shutil.which("nginx", path="/usr/sbin:/usr/bin"):
        pytest.skip("the validate example needs nginx (tests/tools/install-system-deps.sh)")
    etc = tmp_path / "etc-nginx"
    etc.mkdir()
    text = (module.EXAMPLES.replace("/etc/nginx/", f"{etc}/").replace("/var/lib/swallowkeeper-dyups/", f"{etc}/")
            .replace("http://127.0.0.1:18883", dyups_server.api_url)
            .replace("/etc/swallowkeeper-dyups/dyups.secret", dyups_server.secret_file))
    tasks = yaml.safe_load(text)
    playbook = yaml.safe_dump([{
        "name": "examples", "hosts": "tengine", "gather_facts": False,
        "module_defaults": {"group/swallowkeeper.dyups.dyups": {"api_url": dyups_server.api_url,
                                                                "api_secret_file": dyups_server.secret_file}},
        "tasks": tasks}], sort_keys=False)
    done = AnsibleRunner(tmp_path / "ansible").playbook(playbook)
    assert done.rc == 0, done.stdout[-5000:] + done.stderr[-3000:]
    names = [name for name, _result in done.tasks]
    assert len(done.tasks) >= len(tasks), names
    assert not [result for _name, result in done.tasks if result.get("failed")]
    secret = open(dyups_server.secret_file, encoding="utf-8").read().strip()
    assert secret not in done.stdout + done.stderr, "the secret never shows in the output"
    if module is dyups_upstream:
        assert (etc / "upstreams.conf").exists()
