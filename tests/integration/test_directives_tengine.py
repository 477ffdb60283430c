"""The directive rules against Tengine itself: what ``_directives.py`` accepts, ``tengine -t`` accepts,
and the ``check*`` arguments Tengine refuses (issue 26 finding 3) are refused by the rules too.

One ``tengine -t`` on a configuration with an upstream per valid vector, one per refused case: about
50 ms each. Equivalent spellings are one text (so they cost no POST and no file rewrite).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._plan import plan
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import parse_server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream_file import render
from tests.support.tengine import require_tengine

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
# What Tengine 3.2.0 refuses (ngx_http_upstream_check_module.c), and the rule that refuses it here.
REFUSED_BY_TENGINE = [
    (["check rise=0"], "directive.check_value"),
    (["check fall=0"], "directive.check_value"),
    (["check interval=0"], "directive.check_value"),
    (["check timeout=0"], "directive.check_value"),
    (["check port=0"], "directive.check_value"),
    (["check_keepalive_requests 0"], "directive.number"),
    (['check_http_send "GET / HTTP/1.0\\r\\n\\r\\n"'], "directives.http_send_check"),
    (["check interval=3000", 'check_http_send "GET / HTTP/1.0\\r\\n\\r\\n"'], "directives.http_send_type"),
    (["check_http_expect_alive http_9xx"], "directive.expect_alive"),
]


def tengine_t(tmp_path, upstreams_text):
    binary = require_tengine()
    conf = tmp_path / "nginx.conf"
    conf.write_text(f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\n{upstreams_text}\n}}\n")
    (tmp_path / "logs").mkdir(exist_ok=True)
    return subprocess.run([binary, "-t", "-q", "-p", f"{tmp_path}/", "-c", str(conf)],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False)


def raw_block(directives):
    """An upstream block with ``directives`` as written (not through the rules)."""
    return "upstream raw {\n    server 10.0.0.1:80;\n" + "".join(f"    {d};\n" for d in directives) + "}\n"


def test_every_valid_directive_vector_is_accepted_by_tengine(tmp_path):
    cases = [case for case in json.loads((VECTORS / "directives.json").read_text())["cases"] if case["valid"]]
    upstreams = []
    for number, case in enumerate(cases):
        directives = [case["text"]]
        if case["text"].startswith("check_http_send"):
            directives.insert(0, "check type=http")
        upstreams.append(build_upstream(f"u{number}", ["10.0.0.1:80"], directives))
    bodies = [case for case in json.loads((VECTORS / "bodies.json").read_text())["cases"] if case["valid"]]
    upstreams += [build_upstream(f"b{number}", case["servers"], case["directives"])
                  for number, case in enumerate(bodies) if all(":" in s or "." in s for s in case["servers"])
                  and not any(s.split(":")[0].endswith(".example") for s in case["servers"])]
    done = tengine_t(tmp_path, render(upstreams))
    assert done.returncode == 0, done.stdout.decode()


@pytest.mark.parametrize("directives, rule", REFUSED_BY_TENGINE, ids=lambda value: str(value)[:50])
def test_what_tengine_refuses_is_refused_by_the_rules(tmp_path, directives, rule):
    done = tengine_t(tmp_path, raw_block(directives))
    assert done.returncode != 0, f"Tengine accepted {directives}: the rule is stricter than Tengine"
    with pytest.raises(ValidationError) as caught:
        build_upstream("raw", ["10.0.0.1:80"], directives)
    assert caught.value.rule_id == rule


@pytest.mark.parametrize("mine, theirs", [
    (["keepalive_timeout 60s"], ["keepalive_timeout 1m"]),
    (["check interval=3000 rise=2 fall=5 timeout=1000 type=http"], ["check type=http timeout=1000 fall=5 rise=2 interval=3000"]),
    (["check_http_expect_alive http_2xx http_3xx", "check type=http"], ["check type=http", "check_http_expect_alive http_3xx http_2xx"]),
    (["keepalive 032"], ["keepalive 32"]),
])
def test_equivalent_spellings_cost_no_post_and_no_file_rewrite(mine, theirs):
    """Issue 26 finding 9: ``keepalive_timeout 60s`` vs ``1m``, check arguments reordered."""
    held = build_upstream("web", ["10.0.0.1:80"], mine)
    wanted = build_upstream("web", ["10.0.0.1:80"], theirs)
    result = plan({"web": wanted}, {"web": [parse_server("10.0.0.1:80")]}, {"web": held})
    assert not result.changed and result.posts == [], result
