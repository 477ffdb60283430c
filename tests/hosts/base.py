"""The base root filesystem: debootstrap (minbase) of a Debian release with just what a booted,
ssh-reachable host needs, built once and cached outside the checkout under a key made from the
package list (and this file's set-up version): a changed list builds a new one, old ones go."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from tests.hosts.errors import HostsError
from tests.hosts.paths import CACHE
from tests.hosts.system import need, run, say

SUITE = "bookworm"  # the default: what CI runs
SUITES = ("bookworm", "trixie")  # Debian 12 and 13; SKDY_SUITE picks one
PACKAGES = ["systemd", "systemd-sysv", "dbus", "python3", "openssh-server", "iproute2", "procps"]
LAYOUT = 2  # bump when the set-up below changes


def suite_from_env() -> str:
    """The suite of the run's containers: SKDY_SUITE (unset or empty: SUITE), one of SUITES."""
    suite = os.environ.get("SKDY_SUITE") or SUITE
    if suite not in SUITES:
        raise HostsError(f"SKDY_SUITE must be one of {', '.join(SUITES)}: {suite!r}")
    return suite


def key(suite: str = SUITE, packages: list[str] | None = None) -> str:
    spec = {"suite": suite, "packages": sorted(packages or PACKAGES), "layout": LAYOUT}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def path(suite: str = SUITE) -> Path:
    return CACHE / f"base-{suite}-{key(suite)}"


def ensure(mirror_url: str, suite: str = SUITE) -> Path:
    """The cached base for `suite`, built through `mirror_url` (the run's proxy) when missing."""
    need("debootstrap")
    CACHE.mkdir(parents=True, exist_ok=True)
    target = path(suite)
    # One lock per suite: a bookworm and a trixie base (CI's scenarios use both) build side by side.
    with open(CACHE / f"base-{suite}.lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / ".complete").exists():
            return target
        for old in CACHE.glob(f"base-{suite}-*"):
            say(f"removing the outdated or unfinished base {old.name}")
            _remove(old)
        partial = target.with_name(target.name + ".partial")
        _remove(partial)
        say(f"building the base root filesystem ({suite}, {' '.join(PACKAGES)}); takes a minute or two")
        start = time.monotonic()
        run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", suite, str(partial),
             mirror_url], timeout=1800)
        _set_up(partial)
        partial.rename(target)
        (target / ".complete").write_text(key(suite) + "\n", encoding="utf-8")
        say(f"base ready in {time.monotonic() - start:.0f} s: {target}")
        return target


def _remove(root: Path) -> None:
    """Remove a base tree; first unmount what an interrupted debootstrap left mounted in it (/proc, /sys)."""
    if not root.exists():
        return
    prefix = str(root.resolve()) + "/"
    with open("/proc/mounts", encoding="utf-8") as handle:
        mounts = [line.split()[1] for line in handle if line.split()[1].startswith(prefix)]
    for mount in sorted(mounts, key=len, reverse=True):
        run(["umount", "--lazy", mount], check=False)
    shutil.rmtree(root, ignore_errors=True)


def _set_up(root: Path) -> None:
    """What every container shares: networkd and sshd enabled, no apt caches, no machine identity."""
    run(["systemctl", f"--root={root}", "enable", "systemd-networkd.service", "ssh.service"])
    # Units that only fail or wait in a container without consoles or hardware.
    run(["systemctl", f"--root={root}", "mask", "systemd-networkd-wait-online.service",
         "getty@tty1.service", "console-getty.service"], check=False)
    (root / "etc/machine-id").write_text("", encoding="utf-8")
    for f in (root / "var/cache/apt/archives").glob("*.deb"):
        f.unlink()
    for f in (root / "var/lib/apt/lists").glob("*_dists_*"):
        f.unlink()  # named after the building run's proxy address: each container reads its own
    if not (root / "usr/bin/python3").exists():
        raise HostsError(f"debootstrap left no python3 in {root}")
