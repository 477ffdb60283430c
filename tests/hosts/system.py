"""Running host commands: one place that turns a missing tool or a failed command into HostsError."""

from __future__ import annotations

import shutil
import subprocess
import sys

from tests.hosts.errors import HostsError

PACKAGES = {  # the Debian package that brings each tool (tests/tools/install-system-deps.sh installs them)
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "apt-cacher-ng": "apt-cacher-ng",
    "nsenter": "util-linux",
    "ip": "iproute2",
    "mount": "mount",
}


def need(*tools: str) -> None:
    """Fail with the package to install when a tool is missing."""
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        packages = sorted({PACKAGES.get(tool, tool) for tool in missing})
        raise HostsError(
            f"missing {', '.join(missing)}: install {' '.join(packages)} "
            "(tests/tools/install-system-deps.sh does)")


def run(argv: list[str], *, check: bool = True, quiet: bool = False, timeout: float | None = None,
        input_text: str | None = None) -> subprocess.CompletedProcess:
    """Run a command; on failure (check) raise HostsError with its output."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout,
                              input=input_text)
    except FileNotFoundError as exc:
        raise HostsError(f"{argv[0]}: not found ({exc})") from exc
    except subprocess.TimeoutExpired as exc:
        raise HostsError(f"{' '.join(argv)}: no answer within {timeout} s") from exc
    if check and done.returncode != 0:
        raise HostsError(f"{' '.join(argv)} failed (exit {done.returncode}): "
                         f"{(done.stderr or done.stdout).strip()[-2000:]}")
    if not quiet and done.returncode != 0:
        print(f"hosts: {' '.join(argv)}: exit {done.returncode} {done.stderr.strip()}", file=sys.stderr)
    return done


def say(message: str) -> None:
    print(f"hosts: {message}", file=sys.stderr, flush=True)
