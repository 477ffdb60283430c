"""The demo and its cleanup on a fresh booted Debian container (issue 24).

    python -m tests.hosts.demo_check [--short]   (as root; tests/run.sh demo; tests/tools/molecule.sh demo_host: --short)

One container of the kit (README.md here) gets a copy of this checkout at the same path (tracked and new
files, plus the cached Consul binary where tests/tools/get-consul.sh keeps it), and the demo's own
playbooks run against it over ssh exactly as `playbooks/demo.sh` runs them on a user's machine (the
inventory names the container `localhost`). The container boots systemd, so the demo runs under systemd;
`-e tengine_dyups_service_manager=supervisor` runs it under supervisor. Rounds, in this order:

1. the demo under supervisor passes; the role again with `tengine_dyups_watcher_enabled: false`
   (`--tags tengine_dyups_watcher`, the demo's settings): after a restart of supervisord and a reboot the
   demo's nginx runs and its watcher does not;
2. `demo-cleanup.yml`; after a restart of supervisord and a reboot nothing of the demo runs or listens;
3. the demo under systemd passes (again, after the cleanup); watcher disabled as in 1, reboot: nginx runs,
   the watcher does not;
4. `demo-cleanup.yml`; restart of supervisord, reboot: nothing of the demo;
5. supervisord stopped, the demo under supervisor passes once more (the role starts supervisord); the
   cleanup stops that supervisord (in 2 and 4 it leaves the one systemd started); its restart: nothing.
--short runs rounds 1 and 2 (supervisor, the case of the issue; CI's form, in the molecule stage).

"Nothing of the demo": no process of its nginx, watcher, Consul agent or backends, no listener on any of
its ports (read from playbooks/vars/demo.yml). After a restart of supervisord or a boot it is watched for
a few seconds, long enough for an autostarted program to appear. The container is removed at the end,
also when a round fails or the run is interrupted (SIGINT, SIGTERM, SIGHUP). Ansible's output goes to
tests/output/demo_host/; each round's time is printed.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.hosts import runs
from tests.hosts.errors import HostsError
from tests.hosts.state import load
from tests.support.collection import ROOT, ensure_importable

OUTPUT = ROOT / "tests" / "output" / "demo_host"
WATCH_SECONDS = 8  # how long a restart's or a boot's aftermath is watched for a demo process coming back


def demo_ports() -> set[int]:
    settings = yaml.safe_load((ROOT / "playbooks" / "vars" / "demo.yml").read_text(encoding="utf-8"))
    listens = [settings["demo_api_listen"], settings["demo_status_listen"]]
    return ({int(listen.rsplit(":", 1)[1]) for listen in listens} | {int(settings["demo_front_port"])}
            | {int(port) for port in settings["demo_consul_ports"].values()}
            | {int(backend["port"]) for backend in settings["demo_backends"]})


# What each kind of demo process has in its command line (ps -o args).
PROCESSES = {
    "nginx": re.compile(r"nginx: master process .*swallowkeeper-demo"),
    "watcher": re.compile(r"plugins\.watcher .*swallowkeeper-demo"),
    "consul": re.compile(r"consul agent -dev .*-node=demo\b"),
    "backend": re.compile(r"demo_backend\.py"),
}


class Box:
    """The container: commands over ssh, playbooks with it as `localhost`."""

    def __init__(self, state: dict, consul_bin: str):
        self.state = state
        self.entry = state["containers"][0]
        self.inventory = Path(state["inventory"]).with_name("demo-inventory.yml")
        self.inventory.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
            "ansible_host": self.entry["address"], "ansible_connection": "ssh", "ansible_user": "root",
            "ansible_ssh_private_key_file": state["ssh_key"],
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
                                       " -o IdentitiesOnly=yes",
            "ansible_python_interpreter": "/usr/bin/python3"}}}}), encoding="utf-8")
        self.consul_bin = consul_bin
        self.env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(ensure_importable()),
                        ANSIBLE_HOME=str(ROOT / ".cache" / "ansible-home"), ANSIBLE_NOCOLOR="1",
                        ANSIBLE_FORCE_COLOR="0", PY_COLORS="0")
        self.step = 0

    def ssh(self, command: str, *, check: bool = True, timeout: float = 120, stdin=None) -> str:
        argv = ["ssh", *runs.ssh_args(self.state), f"root@{self.entry['address']}", command]
        done = subprocess.run(argv, stdin=stdin, capture_output=True, text=stdin is None, timeout=timeout,
                              check=False)
        if check and done.returncode != 0:
            raise HostsError(f"in the container: {command}: exit {done.returncode}: {done.stderr!r}")
        return done.stdout if stdin is None else ""

    def copy_checkout(self) -> None:
        """This checkout at the same path in the container, and Consul where get-consul.sh caches it."""
        files = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=ROOT,
                               capture_output=True, check=True).stdout
        with tempfile.TemporaryFile() as archive:
            subprocess.run(["tar", "--null", "-T", "-", "-cf", "-"], cwd=ROOT, input=files, stdout=archive,
                           check=True)
            archive.seek(0)
            self.ssh(f"mkdir -p {shlex.quote(str(ROOT))} && tar -xf - -C {shlex.quote(str(ROOT))}",
                     stdin=archive)
        version = subprocess.run([self.consul_bin, "version"], capture_output=True, text=True,
                                 check=True).stdout.split()[1].lstrip("v")
        target = ROOT / ".cache" / "tools" / f"consul-{version}" / "usr" / "bin" / "consul"
        with open(self.consul_bin, "rb") as binary:
            self.ssh(f"mkdir -p {shlex.quote(str(target.parent))} && cat > {shlex.quote(str(target))}"
                     f" && chmod 0755 {shlex.quote(str(target))}", stdin=binary)
        # The collection's link (tests/support/collection.py, which demo.sh makes too): the role reads its own
        # files through it, and a task delegated to `localhost` reads them in the container.
        link = Path(self.env["ANSIBLE_COLLECTIONS_PATH"]) / "ansible_collections" / "swallowkeeper" / "dyups"
        self.ssh(f"mkdir -p {shlex.quote(str(link.parent))} && ln -sfn {shlex.quote(str(ROOT))} "
                 f"{shlex.quote(str(link))}")
        found = self.ssh(f"{shlex.quote(str(ROOT))}/tests/tools/get-consul.sh").strip()
        if found != str(target):
            raise HostsError(f"get-consul.sh in the container found {found!r}, not the copied {target}")

    def playbook(self, name: str, playbook: str, *args: str) -> None:
        self.step += 1
        log = OUTPUT / f"{self.step:02d}-{name}.log"
        argv = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "-i", str(self.inventory),
                str(ROOT / "playbooks" / playbook), *args]
        with open(log, "w", encoding="utf-8") as out:
            done = subprocess.run(argv, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                  timeout=900, check=False)
        if done.returncode != 0:
            tail = log.read_text(encoding="utf-8").splitlines()[-25:]
            raise AssertionError(f"{name}: ansible-playbook {playbook} failed (exit {done.returncode}, log "
                                 f"{log}):\n" + "\n".join(tail))

    def running(self) -> list[str]:
        """The demo's processes and listeners in the container now, one line each."""
        found = []
        for line in self.ssh("ps -eo pid=,args=").splitlines():
            for kind, pattern in PROCESSES.items():
                if pattern.search(line):
                    found.append(f"{kind}: {line.strip()}")
        ports = demo_ports()
        for line in self.ssh("ss -Hltn").splitlines():
            fields = line.split()
            if len(fields) >= 4 and fields[3].rsplit(":", 1)[-1].isdigit():
                if int(fields[3].rsplit(":", 1)[-1]) in ports:
                    found.append(f"listener: {line.strip()}")
        return found

    def watch(self, what: str, *, allowed: tuple[str, ...] = (), needed: tuple[str, ...] = ()) -> None:
        """For WATCH_SECONDS: nothing of the demo but `allowed` kinds; at the end `needed` kinds run."""
        deadline = time.monotonic() + WATCH_SECONDS
        while True:
            found = self.running()
            stray = [line for line in found
                     if line.split(":", 1)[0] not in allowed and not line.startswith("listener")]
            if not needed:
                stray += [line for line in found if line.startswith("listener")]
            if stray:
                raise AssertionError(f"{what}: the demo runs again:\n" + "\n".join(stray))
            if time.monotonic() >= deadline:
                missing = [kind for kind in needed if not any(line.startswith(kind + ":") for line in found)]
                if missing:
                    raise AssertionError(f"{what}: {', '.join(missing)} of the demo does not run: {found}")
                return
            time.sleep(1)

    def restart_supervisord(self) -> None:
        self.ssh("systemctl restart supervisor.service")
        deadline = time.monotonic() + 30
        while not re.fullmatch(r"\d+\s*", self.ssh("supervisorctl pid", check=False)):
            if time.monotonic() > deadline:
                raise HostsError("supervisord did not answer within 30 s of its restart")
            time.sleep(0.5)

    def reboot(self) -> None:
        boot_id = self.ssh("cat /proc/sys/kernel/random/boot_id").strip()
        self.ssh("systemctl reboot", check=False, timeout=30)
        deadline = time.monotonic() + 180
        while True:
            try:
                now = self.ssh("cat /proc/sys/kernel/random/boot_id", check=False, timeout=15).strip()
            except subprocess.TimeoutExpired:
                now = ""
            if now and now != boot_id:
                break
            if time.monotonic() > deadline:
                raise HostsError("the container did not come back within 180 s of its reboot")
            time.sleep(1)
        state = self.ssh("systemctl is-system-running --wait", check=False, timeout=180).strip()
        if state not in ("running", "degraded"):
            raise HostsError(f"the container after its reboot: {state}")


SUPERVISOR = ("-e", "tengine_dyups_service_manager=supervisor")
NO_WATCHER = ("-e", '{"tengine_dyups_watcher_enabled": false}', "--tags", "tengine_dyups_watcher")


def rounds(box: Box, short: bool) -> None:
    timed(box, "1. demo under supervisor", lambda: box.playbook("demo-supervisor", "demo.yml", *SUPERVISOR))
    timed(box, "1. watcher disabled (supervisor); restart supervisord, reboot",
          lambda: watcher_disabled(box, "supervisor", SUPERVISOR))
    # supervisord now is the one systemd started at the reboot, not the demo's: the cleanup leaves it running
    timed(box, "2. cleanup; restart supervisord, reboot",
          lambda: cleanup_and_check(box, reboot=True, supervisord_stays=True))
    if short:
        return
    timed(box, "3. demo under systemd", lambda: box.playbook("demo-systemd", "demo.yml"))
    timed(box, "3. watcher disabled (systemd); reboot", lambda: watcher_disabled(box, "systemd", ()))
    timed(box, "4. cleanup; restart supervisord, reboot",
          lambda: cleanup_and_check(box, reboot=True, supervisord_stays=True))
    # A host where supervisord does not run: the role starts it for the demo, and the cleanup stops it.
    timed(box, "5. demo under supervisor again, supervisord stopped first", lambda: (
        box.ssh("systemctl stop supervisor.service"),
        box.playbook("demo-supervisor-again", "demo.yml", *SUPERVISOR)))
    timed(box, "5. cleanup; restart supervisord",
          lambda: cleanup_and_check(box, reboot=False, supervisord_stays=False))


def watcher_disabled(box: Box, manager: str, args: tuple[str, ...]) -> None:
    """The role's own teardown of the watcher: gone now, and after supervisord's restart and a boot."""
    box.playbook(f"no-watcher-{manager}", "demo.yml", *args, *NO_WATCHER)
    others = ("nginx", "consul", "backend")
    box.watch(f"watcher disabled ({manager})", allowed=others, needed=("nginx",))
    if manager == "supervisor":
        box.restart_supervisord()
        box.watch("watcher disabled, supervisord restarted", allowed=others, needed=("nginx",))
    box.reboot()
    box.watch(f"watcher disabled ({manager}), after a reboot", allowed=("nginx",), needed=("nginx",))


def cleanup_and_check(box: Box, *, reboot: bool, supervisord_stays: bool) -> None:
    """The cleanup; then nothing of the demo, even after supervisord's restart (and a reboot). supervisord
    is stopped by the cleanup exactly when the demo started it (supervisord_stays False)."""
    box.playbook("cleanup", "demo-cleanup.yml")
    box.watch("after the cleanup")
    runs_now = bool(re.fullmatch(r"\d+\s*", box.ssh("supervisorctl pid", check=False)))
    if runs_now != supervisord_stays:
        raise AssertionError(f"after the cleanup supervisord {'runs' if runs_now else 'is stopped'}; expected "
                             f"{'running (the demo did not start it)' if supervisord_stays else 'stopped'}")
    box.restart_supervisord()
    box.watch("after the cleanup, supervisord restarted")
    if reboot:
        box.reboot()
        box.watch("after the cleanup and a reboot")


def timed(box: Box, title: str, action) -> None:
    start = time.monotonic()
    print(f"demo_check: {title} ...", flush=True)
    action()
    print(f"demo_check: {title}: passed in {time.monotonic() - start:.0f} s (container {box.entry['address']})",
          flush=True)


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)  # unwinds through the finally that removes the container


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--short", action="store_true", help="rounds 1 and 2 only (CI's form)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    consul_bin = os.environ.get("CONSUL_BIN") or subprocess.run(
        [str(ROOT / "tests" / "tools" / "get-consul.sh")], capture_output=True, text=True, check=True).stdout.strip()
    OUTPUT.mkdir(parents=True, exist_ok=True)
    run_id = f"demo-{runs.new_run_id()}"
    os.environ["SKDY_OWNER_PID"] = str(os.getpid())  # `cleanup --stale` removes the run if this process dies
    os.environ.setdefault("SKDY_APT_CACHE_GROUP", "demo_host")  # its own package cache (beside the scenarios)
    start = time.monotonic()
    try:
        state = runs.up(run_id, ["demo"])
        print(f"demo_check: container up in {time.monotonic() - start:.0f} s (run {run_id})", flush=True)
        box = Box(state, consul_bin)
        box.copy_checkout()
        rounds(box, args.short)
    except (AssertionError, HostsError) as exc:
        print(f"demo_check: FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if load(run_id)["containers"]:
            try:
                journal = runs.ssh_args(load(run_id))
                with open(OUTPUT / "journal.log", "w", encoding="utf-8") as out:
                    subprocess.run(["ssh", *journal, f"root@{load(run_id)['containers'][0]['address']}",
                                    "journalctl --no-pager -o short-iso -n 2000"], stdout=out,
                                   stderr=subprocess.STDOUT, timeout=60, check=False)
            except (OSError, subprocess.SubprocessError):
                pass
        runs.down(run_id)
    print(f"demo_check: all rounds passed in {time.monotonic() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
