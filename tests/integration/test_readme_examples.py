"""The examples in README.md run as written, against the Lua flavor on the default 127.0.0.1:18882.

The blocks are read from README.md itself (the fenced block after each ``<!-- README example: ... -->``
marker), so an edit of the README is what gets tested. The only addition is the path of the upstream
file, passed as the variable the example reads (``dyups_upstream_file``), so the test does not write
into /var/lib/swallowkeeper-dyups.

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


def example(kind):
    text = README.read_text()
    match = re.search(rf"<!-- README example: {kind} .*?-->\s*```\w*\n(.*?)```", text, re.S)
    assert match, f"README.md has no example marked {kind!r}"
    return match.group(1)


def detail_specs(nginx):
    return {name: sorted(server.spec() for server in servers) for name, servers in nginx.client().detail().items()}


def nginx_on_default_port():
    return NginxLua(workers=2, api_port=DEFAULT_PORT)


def check_the_ad_hoc_example(workdir):
    words = shlex.split(example("adhoc"))
    assert words[:2] == ["ansible", "tengine"] and words[2] == "-m" and words[4] == "-a"
    with nginx_on_default_port() as nginx:
        runner = AnsibleRunner(workdir, group="tengine")
        done = runner.adhoc(words[3], words[5], pattern=words[1])
        assert done.rc == 0, done.stdout + done.stderr
        assert done.module["changed"] is True
        assert detail_specs(nginx) == {"WebappReadonly_b": ["10.117.17.21:8180", "10.117.17.22:8180"]}
        again = runner.adhoc(words[3], words[5], pattern=words[1])
        assert again.rc == 0 and again.module["changed"] is False


def check_the_playbook_example(workdir):
    with nginx_on_default_port() as nginx:
        runner = AnsibleRunner(workdir, group="tengine")
        conf = workdir / "upstreams.conf"
        text = example("playbook")
        done = runner.playbook(text, extra_vars={"dyups_upstream_file": str(conf)})
        assert done.rc == 0, done.stdout + done.stderr
        assert detail_specs(nginx) == {
            "WebappReadonly": ["10.117.17.11:8180", "10.117.17.12:8180 weight=2"],
            "WebappReadonly_b": ["10.117.17.21:8180", "10.117.17.22:8180 backup"],
        }
        on_disk = _upstream_file.read(str(conf))
        assert [d.text for d in on_disk["WebappReadonly_b"].directives] == ["keepalive 16"]
        again = runner.playbook(text, extra_vars={"dyups_upstream_file": str(conf)})
        assert again.rc == 0 and "changed=0" in again.stdout


def test_the_ad_hoc_example(tmp_path):
    run_isolated(check_the_ad_hoc_example, tmp_path, fallback_port=DEFAULT_PORT)


def test_the_playbook_example(tmp_path):
    run_isolated(check_the_playbook_example, tmp_path, fallback_port=DEFAULT_PORT)
