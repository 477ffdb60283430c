"""A run: bridge, proxy, base, N containers, ssh key; and undoing it (down, cleanup of leftovers)."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import time
from pathlib import Path

from tests.hosts import base, containers, network, proxy
from tests.hosts.errors import HostsError
from tests.hosts.paths import CACHE, RUNS, SUBNET, run_dir
from tests.hosts.state import load, save
from tests.hosts.system import need, run, say


def new_run_id() -> str:
    return f"{int(time.time())}-{os.getpid()}"


def up(run_id: str, names: list[str], suite: str | None = None) -> dict:
    """Start the containers `names` (Debian `suite`; None: SKDY_SUITE or bookworm); on any failure
    undo what was made, then raise."""
    suite = suite or base.suite_from_env()
    need("debootstrap", "systemd-nspawn", "ssh", "ssh-keygen", "apt-cacher-ng", "nsenter", "ip", "mount")
    if os.geteuid() != 0:
        raise HostsError("the test hosts need root (bridges, mounts, systemd-nspawn)")
    if len(set(names)) != len(names) or not names:
        raise HostsError(f"container names must be given and unique: {names}")
    directory = run_dir(run_id)
    directory.mkdir(parents=True, exist_ok=True)
    state = load(run_id)
    # Whose run this is: `cleanup --stale` removes runs whose owner is gone (a killed test); owner 0
    # (SKDY_OWNER_PID=0) is a run kept on purpose, for development.
    state["owner"] = int(os.environ.get("SKDY_OWNER_PID") or os.getppid())
    save(state)
    try:
        CACHE.mkdir(parents=True, exist_ok=True)
        with open(CACHE / "subnet.lock", "w", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            k = network.free_subnet()
            state.update(k=k, bridge=network.bridge_name(k), suite=suite)
            save(state)
            network.create_bridge(k)
        host = f"{SUBNET}.{k}.1"
        state["host_address"] = host
        state["proxy"] = proxy.start(directory, host, suite)
        save(state)
        base_root = base.ensure(state["proxy"]["url"], suite)
        key = directory / "id_ed25519"
        if not key.exists():
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"swallowkeeper-dyups-hosts {run_id}",
                 "-f", str(key)])
        state["ssh_key"] = str(key)
        public = (directory / "id_ed25519.pub").read_text(encoding="utf-8")
        for i, name in enumerate(names):
            machine = containers.machine_name(k, name)
            entry = {"name": name, "machine": machine, "address": f"{SUBNET}.{k}.{10 + i}",
                     "dir": str(directory / name), "link": f"vb-{machine}"[:15]}
            state["containers"].append(entry)
            save(state)
            containers.prepare_root(base_root, Path(entry["dir"]), machine=machine, address=entry["address"],
                                    prefix=24, proxy_url=state["proxy"]["url"], suite=suite,
                                    public_key=public)
            entry["loop_pid"] = containers.boot(Path(entry["dir"]), machine=machine, bridge=state["bridge"])
            save(state)
        for entry in state["containers"]:
            containers.wait_booted(entry["loop_pid"], entry["machine"])
            wait_ssh(entry["address"])
            # Package lists as a user's host has them (through the run's proxy: fast when cached).
            containers.in_container(entry["loop_pid"], ["apt-get", "-qq", "update"], timeout=300)
        write_inventory(state)
        save(state)
        return state
    except BaseException:
        say(f"run {run_id} failed to start: undoing it")
        down(run_id)
        raise


def wait_ssh(address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((address, 22), timeout=2) as conn:
                if conn.recv(4).startswith(b"SSH"):
                    return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise HostsError(f"no ssh on {address}:22 within {timeout:.0f} s: {exc}") from exc
        time.sleep(0.5)


def ssh_args(state: dict) -> list[str]:
    return ["-i", state["ssh_key"], "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10"]


def write_inventory(state: dict) -> Path:
    """An Ansible inventory of the run's containers (ssh as root with the run's key)."""
    lines = ["all:", "  hosts:"]
    for entry in state["containers"]:
        lines += [f"    {entry['name']}:", f"      ansible_host: {entry['address']}",
                  "      ansible_user: root",
                  f"      ansible_ssh_private_key_file: {state['ssh_key']}",
                  "      ansible_ssh_common_args: -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                  " -o IdentitiesOnly=yes",
                  "      ansible_python_interpreter: /usr/bin/python3",
                  f"      skdy_machine: {entry['machine']}",
                  f"      skdy_link: {entry['link']}"]
    lines += ["  vars:", f"    skdy_host_address: {state['host_address']}",
              f"    skdy_run_dir: {run_dir(state['id'])}"]
    path = run_dir(state["id"]) / "inventory.yml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    state["inventory"] = str(path)
    return path


def down(run_id: str) -> None:
    """Stop and remove everything of a run; safe to call on a half-made or already removed run."""
    state = load(run_id)
    directory = run_dir(run_id)
    problems = []
    for entry in state.get("containers", []):
        try:
            containers.stop(Path(entry["dir"]), entry["machine"])
        except HostsError as exc:
            problems.append(str(exc))
    if state.get("proxy"):
        proxy.stop(state["proxy"])
    if state.get("bridge"):
        network.delete_bridge(state["bridge"])
    mounted = [entry["dir"] for entry in state.get("containers", []) if os.path.ismount(Path(entry["dir"]) / "root")]
    if mounted:
        problems.append(f"still mounted, kept: {mounted}")
    elif directory.exists():
        shutil.rmtree(directory, ignore_errors=True)
    if problems:
        raise HostsError(f"run {run_id}: " + "; ".join(problems))
    say(f"run {run_id} removed")


def cleanup(stale_only: bool = False) -> list[str]:
    """Remove every run found under the runs directory (stale_only: those whose owner process is
    gone) and any bridge of the kit that no remaining run uses."""
    removed, kept_bridges = [], set()
    if RUNS.exists():
        for directory in sorted(RUNS.iterdir()):
            if not directory.is_dir():
                continue
            state = load(directory.name)
            owner = state.get("owner")
            if stale_only and (owner == 0 or (owner and Path(f"/proc/{owner}").exists())):
                kept_bridges.add(state.get("bridge"))
                continue
            down(directory.name)
            removed.append(directory.name)
    for bridge in network.leftover_bridges():
        if bridge not in kept_bridges:
            network.delete_bridge(bridge)
            removed.append(bridge)
    return removed
