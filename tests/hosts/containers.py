"""Booted containers: an overlay of the base per container, systemd-nspawn -b on the run's bridge
(`--register=no --keep-unit`: the host needs no systemd), restarted by a small loop when the container
reboots (nspawn exits 133 then), stopped with a clean poweroff and killed only when that fails."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.hosts.errors import HostsError
from tests.hosts.system import need, run, say

NSPAWN_REBOOT = 133


def machine_name(k: int, name: str) -> str:
    full = f"sk{k}-{name}"
    if len(full) > 12:  # nspawn names the host side of the link vb-<first 12 characters>
        raise HostsError(f"container name {name!r} is too long (at most {12 - len(f'sk{k}-')} characters)")
    return full


def prepare_root(base: Path, directory: Path, *, machine: str, address: str, prefix: int,
                 proxy_url: str, suite: str, public_key: str) -> Path:
    """Mount the overlay and write what makes this container itself."""
    for sub in ("upper", "work", "root"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    root = directory / "root"
    run(["mount", "-t", "overlay", "overlay", "-o",
         f"lowerdir={base},upperdir={directory / 'upper'},workdir={directory / 'work'}", str(root)])
    files = {
        "etc/hostname": f"{machine}\n",
        "etc/hosts": f"127.0.0.1 localhost\n{address} {machine}\n::1 localhost ip6-localhost\n",
        "etc/machine-id": uuid.uuid4().hex + "\n",
        "etc/resolv.conf": "# no name servers: the test hosts reach nothing beyond the host\n",
        "etc/apt/sources.list": f"deb {proxy_url} {suite} main\n",
        "etc/systemd/network/10-skdy-host0.network": (
            "[Match]\nName=host0\n\n[Network]\n"
            f"Address={address}/{prefix}\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n"),
        "root/.ssh/authorized_keys": public_key,
    }
    for rel, text in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink():
            target.unlink()
        target.write_text(text, encoding="utf-8")
    (root / "root/.ssh").chmod(0o700)
    (root / "root/.ssh/authorized_keys").chmod(0o600)
    return root


def boot(directory: Path, *, machine: str, bridge: str) -> int:
    """Start the container's nspawn loop in the background; returns the loop's PID."""
    need("systemd-nspawn")
    root = directory / "root"
    nspawn = ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--boot",
              f"--directory={root}", f"--machine={machine}", f"--network-bridge={bridge}",
              "--resolv-conf=off", "--timezone=off", "--link-journal=no", "--console=read-only"]
    stop_file = directory / "stopping"
    script = (
        f"while :; do {shlex.join(nspawn)}; rc=$?; "
        f'[ "$rc" = {NSPAWN_REBOOT} ] && [ ! -e {shlex.quote(str(stop_file))} ] || break; done; '
        f"echo \"$rc\" > {shlex.quote(str(directory / 'exit'))}")
    with open(directory / "console.log", "ab") as log:
        loop = subprocess.Popen(["/bin/sh", "-c", script], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    (directory / "loop.pid").write_text(f"{loop.pid}\n", encoding="utf-8")
    return loop.pid


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text(encoding="utf-8")
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [int(p) for p in text.split()]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""


def nspawn_pid(loop_pid: int) -> int | None:
    for child in _children(loop_pid):
        if _comm(child) == "systemd-nspawn":
            return child
    return None


def leader_pid(loop_pid: int) -> int | None:
    """The container's PID 1, seen from the host."""
    nspawn = nspawn_pid(loop_pid)
    if nspawn is None:
        return None
    for child in _children(nspawn):
        if _comm(child) in ("systemd", "init"):
            return child
    return None


def in_container(loop_pid: int, argv: list[str], *, check: bool = True, timeout: float = 60,
                 quiet: bool = False):
    leader = leader_pid(loop_pid)
    if leader is None:
        raise HostsError(f"the container of loop {loop_pid} is not running")
    return run(["nsenter", "-t", str(leader), "-a"] + argv, check=check, timeout=timeout, quiet=quiet)


def wait_booted(loop_pid: int, machine: str, timeout: float = 120) -> str:
    """Wait until systemd in the container says running (or degraded: then say which units failed)."""
    deadline = time.monotonic() + timeout
    last = "not started"
    while time.monotonic() < deadline:
        if not Path(f"/proc/{loop_pid}").exists():
            raise HostsError(f"{machine}: systemd-nspawn exited during boot (see its console.log)")
        if leader_pid(loop_pid) is not None:
            done = in_container(loop_pid, ["systemctl", "is-system-running"], check=False, timeout=30,
                                quiet=True)
            last = done.stdout.strip()
            if last == "running":
                return last
            if last == "degraded":
                failed = in_container(loop_pid, ["systemctl", "--failed", "--plain", "--no-legend"],
                                      check=False).stdout
                say(f"{machine}: degraded, failed units: {failed.strip()}")
                return last
        time.sleep(0.5)
    raise HostsError(f"{machine}: not booted within {timeout:.0f} s (systemctl is-system-running: {last})")


def alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def stop(directory: Path, machine: str, timeout: float = 60) -> None:
    """Poweroff, wait; then SIGTERM/SIGKILL nspawn; then unmount. Safe when nothing runs."""
    (directory / "stopping").write_text("", encoding="utf-8") if directory.exists() else None
    try:
        loop_pid = int((directory / "loop.pid").read_text())
    except (FileNotFoundError, ValueError):
        loop_pid = None
    if loop_pid and alive(loop_pid) and b"systemd-nspawn" in Path(f"/proc/{loop_pid}/cmdline").read_bytes():
        if leader_pid(loop_pid):
            in_container(loop_pid, ["systemctl", "poweroff"], check=False, timeout=30)
        deadline = time.monotonic() + timeout
        while alive(loop_pid) and time.monotonic() < deadline:
            time.sleep(0.3)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            nspawn = nspawn_pid(loop_pid)
            if not alive(loop_pid):
                break
            say(f"{machine}: no clean poweroff, sending {sig.name}")
            for pid in ([nspawn] if nspawn else []) + [loop_pid]:
                try:
                    os.killpg(pid, sig) if pid == loop_pid else os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            end = time.monotonic() + 10
            while alive(loop_pid) and time.monotonic() < end:
                time.sleep(0.2)
    root = directory / "root"
    if os.path.ismount(root):
        for _attempt in range(10):
            if run(["umount", str(root)], check=False, quiet=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            run(["umount", "--lazy", str(root)], check=False)
