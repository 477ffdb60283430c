"""The caching Debian proxy (apt-cacher-ng) on the run's bridge address, in front of the machine's
own mirror: http://198.18.K.1:3142/debian is that mirror for the containers (and for debootstrap).
Its configuration is written per run (the mirror is read from the machine's apt sources each time);
its cache stays in the kit's cache directory, so a second run downloads nothing."""

from __future__ import annotations

import os
import signal
import time
import urllib.request
from pathlib import Path

from tests.hosts.errors import HostsError
from tests.hosts.mirror import debian_mirror
from tests.hosts.paths import CACHE
from tests.hosts.system import need, run

PORT = 3142


def start(directory: Path, address: str, suite: str) -> dict:
    need("apt-cacher-ng")
    conf = directory / "acng"
    (conf / "log").mkdir(parents=True, exist_ok=True)
    # One cache per group (SKDY_APT_CACHE_GROUP; molecule.sh: the scenario): runs side by side have a
    # proxy each, and two apt-cacher-ng processes must not fill the same cache directory at once.
    group = os.environ.get("SKDY_APT_CACHE_GROUP", "default")
    if not group.replace("-", "").replace("_", "").isalnum():
        raise HostsError(f"SKDY_APT_CACHE_GROUP must be letters, digits, - and _: {group!r}")
    cache = CACHE / "apt-cacher-ng" / group
    cache.mkdir(parents=True, exist_ok=True)
    (conf / "backends_skdy").write_text(debian_mirror(suite) + "/\n", encoding="utf-8")
    (conf / "acng.conf").write_text(
        f"CacheDir: {cache}\nLogDir: {conf / 'log'}\nSupportDir: /usr/lib/apt-cacher-ng\n"
        "Remap-skdy: /debian ; file:backends_skdy\nExThreshold: 4\n", encoding="utf-8")
    pid_file = conf / "pid"
    run(["apt-cacher-ng", "-c", str(conf), "ForeGround=0", f"Port={PORT}", f"BindAddress={address}",
         f"PidFile={pid_file}", f"SocketPath={conf / 'socket'}"])
    url = f"http://{address}:{PORT}/debian"
    deadline = time.monotonic() + 20
    while True:
        try:
            with urllib.request.urlopen(f"{url}/dists/{suite}/Release", timeout=10) as answer:
                if answer.status == 200:
                    break
        except OSError as exc:
            if time.monotonic() > deadline:
                if pid_file.exists():  # started, but not serving: not left behind
                    stop({"pid": int(pid_file.read_text().strip() or 0)})
                raise HostsError(f"the package proxy at {url} does not serve {suite}: {exc} "
                                 f"(log: {conf / 'log'})") from exc
        time.sleep(0.5)
    return {"pid": int(pid_file.read_text().strip()), "url": url, "pid_file": str(pid_file)}


def stop(proxy: dict) -> None:
    pid = proxy.get("pid")
    if not pid:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return
    if b"apt-cacher-ng" not in cmdline:
        return  # the PID was reused: not ours
    os.kill(pid, signal.SIGTERM)
    for _attempt in range(50):
        if not Path(f"/proc/{pid}").exists():
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
