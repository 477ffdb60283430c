"""The examples in README.md run as written, against the Lua flavor on the default 127.0.0.1:18882.

The blocks are read from README.md itself (the fenced block after each ``<!-- README example: ... -->``
marker), so an edit of the README is what gets tested. The only additions are the path of the upstream
file and of the interface's secret file, passed as the variables the example reads (``dyups_upstream_file``,
``dyups_secret_file``; the ad hoc example's ``/etc/swallowkeeper-dyups/dyups.secret`` is replaced by the
test's), so the test does not write into /var/lib or /etc. The interface requires the secret, as the role's
does by default (a request without it is refused and changes nothing: checked first).

Each example runs in a private network namespace (tests/support/netns.py): there, 127.0.0.1:18882 is
free even while the demo (playbooks/demo.sh) or a real nginx holds it on this machine, and the example
cannot reach theirs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from tests.support.ansible_run import AnsibleRunner
from tests.support.netns import run_isolated
from tests.support.nginx_lua import NginxLua

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULT_PORT = 18882
ROLE_SECRET_FILE = "/etc/swallowkeeper-dyups/dyups.secret"
SECRET = "readme-example-secret-0123456789"


def example(kind):
    text = README.read_text()
    match = re.search(rf"<!-- README example: {kind} .*?-->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"README.md has no example marked {kind!r}"
    return match.group(1)


def detail_specs(nginx):
    return {name: sorted(server.spec() for server in servers) for name, servers in nginx.client().detail().items()}


def nginx_on_default_port():
    return NginxLua(workers=2, api_port=DEFAULT_PORT, api_secret=SECRET)


def secret_file(workdir):
    path = workdir / "dyups.secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return str(path)


def refused_without_the_secret(nginx):
    """The interface is guarded as the role's is: a POST without the header is refused and changes nothing."""
    status, _text, _headers = nginx.api("POST", "/upstream/WebappReadonly_b", "server 10.9.9.9:80;")
    assert status == 403
    assert detail_specs(nginx) == {}


def check_the_ad_hoc_example(workdir):
    words = shlex.split(example("adhoc"))
    assert words[:2] == ["ansible", "tengine"] and words[2] == "-m" and words[4] == "-a"
    assert f"api_secret_file={ROLE_SECRET_FILE}" in words[5].split()
    args = words[5].replace(ROLE_SECRET_FILE, secret_file(workdir))
    with nginx_on_default_port() as nginx:
        refused_without_the_secret(nginx)
        runner = AnsibleRunner(workdir, group="tengine")
        done = runner.adhoc(words[3], args, pattern=words[1])
        assert done.rc == 0, done.stdout + done.stderr
        assert done.module["changed"] is True
        assert detail_specs(nginx) == {"WebappReadonly_b": ["10.117.17.21:8180", "10.117.17.22:8180"]}
        again = runner.adhoc(words[3], args, pattern=words[1])
        assert again.rc == 0 and again.module["changed"] is False


def check_the_playbook_example(workdir):
    with nginx_on_default_port() as nginx:
        refused_without_the_secret(nginx)
        runner = AnsibleRunner(workdir, group="tengine")
        conf = workdir / "upstreams.conf"
        text = example("playbook")
        variables = {"dyups_upstream_file": str(conf), "dyups_secret_file": secret_file(workdir)}
        done = runner.playbook(text, extra_vars=variables)
        assert done.rc == 0, done.stdout + done.stderr
        assert detail_specs(nginx) == {
            "WebappReadonly": ["10.117.17.11:8180", "10.117.17.12:8180 weight=2"],
            "WebappReadonly_b": ["10.117.17.21:8180", "10.117.17.22:8180 backup"],
        }
        on_disk = _upstream_file.read(str(conf))
        assert [d.text for d in on_disk["WebappReadonly_b"].directives] == ["keepalive 16"]
        again = runner.playbook(text, extra_vars=variables)
        assert again.rc == 0 and "changed=0" in again.stdout


def test_the_ad_hoc_example(tmp_path):
    run_isolated(check_the_ad_hoc_example, tmp_path, fallback_port=DEFAULT_PORT)


def test_the_playbook_example(tmp_path):
    run_isolated(check_the_playbook_example, tmp_path, fallback_port=DEFAULT_PORT)
