"""Tengine's own test suite of the dyups module (``tests/nginx-tests/tengine-tests/dyups.t`` in the
Tengine tarball, on nginx's Test::Nginx), run with ``prove`` against the test Tengine ($TENGINE_BIN).

Nobody on this project wrote that suite: it is the most independent check that the Tengine the role
builds (tests/tools/get-tengine.sh: the role's source build, its default configure arguments, plus
``--with-debug`` for the test build, which the suite's TLS part needs) behaves as Tengine's authors
expect. The result goes to ``tests/output/tengine-dyups-t.txt``; tests/run.sh prints it in its summary.

The suite is run as shipped but for one block, cut out here (and the plan lowered by its checks): the
``ngx.dyups`` Lua API block needs Tengine's Lua module, which the role does not build. The cut is
checked (the block must be there, with the Lua API in it), so a new tarball that changes it fails
this test instead of running a different suite unnoticed.

dyups.t listens on fixed ports (8080, 8081, 8087-8090) and on ``/tmp/dyupssocket``: it runs in its own
network, mount and PID namespaces (``unshare``; loopback only, a private /tmp, every process it starts
killed with it), so it cannot collide with anything on the machine and reaches no network. Needs root
(as tests/run.sh's set-up does), ``prove`` (perl) and ``openssl``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

import pytest

from tests.support.tengine import require_tengine

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "tests" / "output" / "tengine-dyups-t.txt"
SHARED_TARBALL = ROOT.parent / "shared" / "tengine" / "tengine-3.2.0.tar.gz"
# The block of dyups.t that needs Tengine's Lua module: from its configuration to the stop after it.
LUA_BLOCK = re.compile(
    r"\$t->write_file_expand\('nginx\.conf', <<'EOF'\);(?:(?!write_file_expand).)*?"
    r"require \"ngx\.dyups\".*?\$t->stop\(\);\s*unlink\(\"/tmp/dyupssocket\"\);\n",
    re.S)
# The checks Test::Nginx adds after the suite's own (its DESTROY reads the error logs).
TEST_NGINX_OWN = ("no alerts", "no sanitizer errors")
CHECK = re.compile(r"^\s*(?:like|unlike|is)\(", re.M)
PLAN = re.compile(r"->plan\((\d+)\)")


def _skip_or_fail(reason):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def tengine_tarball():
    """$TENGINE_TARBALL, else ../shared/tengine/tengine-3.2.0.tar.gz beside the clone (as get-tengine.sh)."""
    path = Path(os.environ.get("TENGINE_TARBALL") or SHARED_TARBALL)
    if not path.is_file():
        _skip_or_fail(f"no Tengine tarball at {path} (set TENGINE_TARBALL)")
    return path


def runnable_suite(text):
    """dyups.t without its Lua API block, with the plan lowered by that block's checks: (text, plan)."""
    blocks = LUA_BLOCK.findall(text)
    assert len(blocks) == 1, "dyups.t has no (or more than one) ngx.dyups Lua block: a different suite"
    plans = PLAN.findall(text)
    assert len(plans) == 1, "dyups.t has no single plan(N)"
    cut = len(CHECK.findall(blocks[0]))
    assert cut > 0, "the Lua block holds no checks"
    plan = int(plans[0]) - cut
    assert len(CHECK.findall(text)) - cut == plan, "dyups.t's plan does not count its checks"
    return PLAN.sub(f"->plan({plan})", LUA_BLOCK.sub("", text)), plan


def extract_suite(tarball, into):
    """dyups.t (runnable form) and Test::Nginx's lib/ from the tarball into one directory: the plan."""
    with tarfile.open(tarball) as tar:
        top = tar.getmembers()[0].name.split("/")[0]
        base = f"{top}/tests/nginx-tests"
        members = [m for m in tar.getmembers()
                   if m.name == f"{base}/tengine-tests/dyups.t" or m.name.startswith(f"{base}/nginx-tests/lib/")]
        assert any(m.name.endswith("/dyups.t") for m in members), f"{tarball} has no {base}/tengine-tests/dyups.t"
        for member in members:
            if not (member.isfile() or member.isdir()):
                continue
            relative = member.name[len(base) + 1:].split("/", 1)[1]   # dyups.t or lib/...
            target = into / relative
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as source:
                target.write_bytes(source.read())
    text, plan = runnable_suite((into / "dyups.t").read_text())
    (into / "dyups.t").write_text(text)
    return plan


# Inside the namespaces: loopback up, a private /tmp (dyups.t's unix socket and Test::Nginx's test
# directories), then prove. The suite directory is outside /tmp so the tmpfs does not hide it.
NAMESPACE_SCRIPT = """
set -e
ip link set lo up
mount -t tmpfs -o mode=1777 swk-dyups-t /tmp
cd "$1"
exec prove -v dyups.t
"""


def test_tengine_dyups_suite():
    binary = require_tengine()
    tarball = tengine_tarball()
    for tool in ("prove", "unshare", "ip", "openssl"):
        if shutil.which(tool) is None:
            _skip_or_fail(f"{tool} is not installed (tests/tools/install-system-deps.sh)")
    if os.geteuid() != 0:
        _skip_or_fail("dyups.t runs in its own namespaces, which needs root")
    version = subprocess.run([binary, "-V"], capture_output=True, text=True, check=True).stderr
    for flag in ("--with-http_ssl_module", "--with-debug"):
        assert flag in version, f"{binary} lacks {flag}: build the test Tengine with tests/tools/get-tengine.sh"

    work = Path(tempfile.mkdtemp(prefix="swk-dyups-t-", dir="/var/tmp"))
    try:
        plan = extract_suite(tarball, work)
        run = subprocess.run(
            ["unshare", "--net", "--mount", "--pid", "--fork", "--kill-child", "--",
             "sh", "-c", NAMESPACE_SCRIPT, "sh", str(work)],
            capture_output=True, text=True, timeout=240, check=False,
            env={**os.environ, "TEST_NGINX_BINARY": binary})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    output = run.stdout + run.stderr
    totals = re.search(r"^Files=(\d+), Tests=(\d+),", output, re.M)
    summary = (f"Tengine's dyups.t (Lua API block cut, {plan} checks + Test::Nginx's {len(TEST_NGINX_OWN)}): "
               f"{'PASS' if run.returncode == 0 else 'FAIL'}, {totals.group(0) if totals else 'no totals'}")
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(summary + "\n\n" + output)
    assert run.returncode == 0, f"{summary}\n{output[-6000:]}"
    # prove exits 0 on skip_all (a missing feature): every planned check must have run and passed, and
    # Test::Nginx's own two at the end (no alerts, no sanitizer errors in the error logs).
    assert totals is not None and int(totals.group(2)) == plan + len(TEST_NGINX_OWN), f"{summary}\n{output[-3000:]}"
    for name in TEST_NGINX_OWN:
        assert re.search(rf"^ok \d+ - {name}$", output, re.M), f"{name!r} did not pass\n{output[-3000:]}"
    assert re.search(r"^All tests successful\.$", output, re.M), output[-3000:]
    assert not re.search(r"^ok \d+ # skip", output, re.M), output[-3000:]
