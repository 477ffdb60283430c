"""Run a piece of a test in a private network namespace (only loopback, up), for code that must use a fixed
port such as the default 127.0.0.1:18882 of the README examples: inside the namespace the port is free even
while a demo (or a real nginx) holds it on this machine, and nothing started inside can reach outside.

    run_isolated(tests.integration.test_readme_examples.check_adhoc, tmp_path)

The function (a module-level function, taking one ``Path`` argument; its file is loaded again inside) runs in a new Python process
under ``unshare --net`` with loopback brought up; its exceptions become the test's failure with the inner
traceback. Needs root (or CAP_SYS_ADMIN) and util-linux's unshare and iproute2's ip; where the namespace
cannot be made, the function runs in this process when ``fallback_port`` is free, and the test fails with
a message naming the port otherwise.
"""

from __future__ import annotations

import inspect
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from tests.support.collection import ROOT

INNER_ENV = "SWALLOWKEEPER_TEST_NETNS"


def namespace_possible():
    if not shutil.which("unshare") or not shutil.which("ip"):
        return False
    probe = subprocess.run(["unshare", "--net", "--", "ip", "link", "set", "lo", "up"], capture_output=True,
                           check=False, timeout=30)
    return probe.returncode == 0


def port_taken(port, host="127.0.0.1"):
    with socket.socket() as probe:
        return probe.connect_ex((host, port)) == 0


def run_isolated(function, workdir, fallback_port=None, timeout=600):
    """Run ``function(Path(workdir))`` in a private network namespace (see the module docstring)."""
    workdir = Path(workdir)
    if os.environ.get(INNER_ENV) == "1":   # already inside one
        function(workdir)
        return
    if not namespace_possible():
        if fallback_port is not None and port_taken(fallback_port):
            raise AssertionError(f"127.0.0.1:{fallback_port} is taken and no private network namespace can be made "
                                 "here (unshare --net needs root); stop what listens there, or run as root")
        function(workdir)
        return
    source = inspect.getsourcefile(function)  # loaded by path: pytest may have imported it under another name
    code = ("import importlib.util, sys; from pathlib import Path; "
            "from tests.support.collection import ensure_importable; ensure_importable(); "
            "spec = importlib.util.spec_from_file_location('isolated_test_module', sys.argv[2]); "
            "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
            "getattr(module, sys.argv[3])(Path(sys.argv[1]))")
    env = dict(os.environ, **{INNER_ENV: "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    done = subprocess.run(["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "netns",
                           sys.executable, "-c", code, str(workdir), source, function.__name__],
                          capture_output=True, text=True, timeout=timeout, cwd=str(ROOT), env=env, check=False)
    if done.returncode != 0:
        raise AssertionError(f"{function.__name__} failed in its private network namespace (rc {done.returncode}):\n"
                             f"{done.stdout[-4000:]}\n{done.stderr[-6000:]}")
