"""The resilience scenarios; each runs on its own stack (stack.py) and returns its figures as a dict.

Sizes come from ``SHORT`` (CI: tests/resilience/test_resilience.py, tests/tools/bench.sh --short)
or ``LONG`` (tests/resilience/run.py, tests/tools/bench.sh). docs/resilience.md explains every
figure. Nothing here asserts: the pytest tests and run.py decide what is a failure.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

from tests.resilience.faultproxy import Answer, FaultProxy
from tests.resilience.stack import (
    SERVICES, ConsulWithDefinitions, Load, NginxAccounting, _cmdline, detail, file_state, nginx_snapshot, proc_kb,
    shared_stack, stack_a, stack_b, wait_until)
from tests.support.nginx_lua import NginxLua
from tests.support.tengine import missing_reason, tengine_binary
from tests.support.watcher import WatcherProcess

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_problem

SHORT = {
    "rolling": {"step": 1.5, "settle": 2.0, "tail": 3.0, "rate": 200, "connections": 16, "ws": 20,
                "ws_lifetime": "4:10", "propagation_bound": 0.5},
    "scale": {"events": 10, "interval": 1.0, "settle": 2.0, "tail": 8.0, "rate": 200, "connections": 16,
              "ws": 20, "ws_lifetime": "8:20"},
    "faults": {"consul_outage": 10.0, "fault": 8.0, "kill_loop": 8, "changes": 2, "recovery_timeout": 30.0,
               "rate": 150, "connections": 8, "ws": 10, "ws_lifetime": ""},
    "fuzz": {"cases": 60, "converge_every": 10},
}
LONG = {
    "rolling": {"step": 2.0, "settle": 3.0, "tail": 5.0, "rate": 300, "connections": 16, "ws": 50,
                "ws_lifetime": "5:20", "propagation_bound": 0.5},
    "scale": {"events": 100, "interval": 1.5, "settle": 3.0, "tail": 20.0, "rate": 300, "connections": 16,
              "ws": 50, "ws_lifetime": "20:60"},
    "faults": {"consul_outage": 60.0, "fault": 30.0, "kill_loop": 30, "changes": 4, "recovery_timeout": 120.0,
               "rate": 300, "connections": 16, "ws": 20, "ws_lifetime": ""},
    "fuzz": {"cases": 500, "converge_every": 25},
}
WORKER_SHUTDOWN_TIMEOUT = "10s"


def _round(value, digits=3):
    return None if value is None else round(value, digits)


def load_summary(result, since=None, until=None):
    """Failed requests (by kind), drops and latency of one loadgen result, optionally in a window."""
    http, ws = result["http"], result["ws"]
    failures = [f for f in http["failures"] if (since is None or f[0] >= since) and (until is None or f[0] <= until)]
    drops = [e for e in ws["events"] if e[1] == "drop"]
    kinds = {}
    for failure in failures:
        kinds[failure[1]] = kinds.get(failure[1], 0) + 1
    return {
        "requests": http["requests"], "failed_requests": len(failures) if since or until else http["failed"],
        "failed_by_kind": kinds if since or until else http["by_kind"], "latency_ms": http["latency_ms"],
        "stale_keepalive_reconnects": http.get("stale_reconnects", 0),
        "ws_clients": ws["clients"], "ws_connects": ws["connects"], "ws_dropped": ws["drops"],
        "ws_connect_failures": ws["connect_failures"], "ws_bad_echoes": ws["bad_echoes"],
        "ws_echoes": ws["echoes"], "ws_echo_latency_ms": ws["echo_latency_ms"],
        "first_failures": failures[:5], "first_ws_drops": drops[:5],
    }


# == 1. scale events under load, side by side ========================================================
APPROACHES = {
    "A": {"label": "A: watcher + dyups interface (Lua flavor), no reload"},
    "B": {"label": f"B: render + nginx -s reload, worker_shutdown_timeout {WORKER_SHUTDOWN_TIMEOUT}",
          "worker_shutdown_timeout": WORKER_SHUTDOWN_TIMEOUT},
    "B0": {"label": "B: render + nginx -s reload, no worker_shutdown_timeout", "worker_shutdown_timeout": None},
    # the same on a real Tengine ($TENGINE_BIN): this collection with Tengine's dyups module, and the reload
    # approach with `tengine -s reload`
    "AT": {"label": "A on Tengine: watcher + Tengine's dyups interface, no reload", "flavor": "tengine"},
    "BT": {"label": f"B on Tengine: render + tengine -s reload, worker_shutdown_timeout {WORKER_SHUTDOWN_TIMEOUT}",
           "worker_shutdown_timeout": WORKER_SHUTDOWN_TIMEOUT, "flavor": "tengine"},
}


def scale_events(workdir, approach, params, seed=7):
    """``params["events"]`` scale-outs, scale-ins and health flips through Consul, one every
    ``interval`` seconds, under steady HTTP load and open websockets; the same sequence for every
    approach (same seed)."""
    spec = APPROACHES[approach]
    workdir = Path(workdir) / f"scale-{approach}"
    flavor = spec.get("flavor", "lua")
    binary = None
    if flavor == "tengine":
        binary = tengine_binary()
        if binary is None:
            raise RuntimeError(f"approach {approach} needs a Tengine: {missing_reason()}")
    context = stack_a(workdir, flavor=flavor) if approach.startswith("A") else \
        stack_b(workdir, worker_shutdown_timeout=spec["worker_shutdown_timeout"], binary=binary)
    rng = random.Random(seed)
    moves = []
    with context as stack:
        accounting = NginxAccounting(stack.master_pid())
        accounting.start()
        idle = nginx_snapshot(stack.master_pid())
        load = Load(workdir, stack.proxy_port, rate=params["rate"], connections=params["connections"],
                    ws=params["ws"], ws_lifetime=params["ws_lifetime"]).start()
        try:
            time.sleep(params["settle"])
            events_started = time.time()
            next_at = time.monotonic()
            for _unused in range(params["events"]):
                moves.append(stack.fleet.event(rng))
                next_at += params["interval"]
                time.sleep(max(0.0, next_at - time.monotonic()))
            events_ended = time.time()
            at_last_event = nginx_snapshot(stack.master_pid())
            time.sleep(params["tail"])
        finally:
            result = load.stop()
            accounting.stop()
        expected = stack.fleet.expected()
        if approach.startswith("A"):
            converged = wait_until(lambda: detail(stack.nginx.api_port) == expected, 30) is not None
            changes = stack.watcher.log_text().count(" INFO upstream ")
            reloads = 0
            reload_failures = 0
        else:
            converged = wait_until(lambda: file_state(stack.upstream_file) == expected, 30) is not None
            commands = [line for line in stack.syncer.lines if " command (" in line]
            reloads = len(commands)
            reload_failures = sum(1 for line in commands if "exit 0" not in line)
            changes = reloads
        master_same = stack.nginx.process is not None and stack.nginx.process.poll() is None
    out = {"approach": approach, "flavor": flavor, "label": spec["label"], "events": len(moves), "interval_s": params["interval"],
           "moves": {kind: sum(1 for m in moves if m.startswith(kind)) for kind in
                     ("scale_out", "scale_in", "health_fail", "health_pass")},
           "load_seconds": round(result["ended"] - result["started"], 1), "events_seconds":
           round(events_ended - events_started, 1), "reloads": reloads, "reload_failures": reload_failures,
           "upstream_changes_applied": changes, "converged": converged, "nginx_master_kept": master_same,
           "nginx_idle": idle, "nginx_at_last_event": at_last_event,
           "nginx_during_events": accounting.summary(until=events_ended),
           "nginx_whole_run": accounting.summary()}
    out.update(load_summary(result))
    return out


# == 1b. a rolling deploy of every service under load =================================================
def rolling_deploy(workdir, params, watcher_entry=None):
    """Every instance of every service replaced, one step at a time, under steady HTTP load and open
    websockets: a new instance registers and, at once, the old one's check goes critical (two
    changes that reach Consul together), then ``step`` seconds later the old one is deregistered.
    The backends themselves keep running (as an old instance does while it drains).

    Measured from the load generator's record of which backend answered when: requests answered
    by an instance that started more than ``propagation_bound`` seconds after its check went
    critical (``late_requests``; the latest of them in ``latest_after_critical_s``), new instances
    of Web (the HTTP load's service) that answered no request within ``propagation_bound`` of their
    registration (``late_joins``;
    the slowest first answer in ``slowest_join_s``), failed requests and websocket drops.
    ``watcher_entry``: another watcher to run (a comparison with an earlier commit)."""
    workdir = Path(workdir) / "rolling"
    settings = {"entry": watcher_entry} if watcher_entry else {}
    with stack_a(workdir, web_ports=6, ws_ports=6, watcher_settings=settings) as stack:
        load = Load(workdir, stack.proxy_port, rate=params["rate"], connections=params["connections"],
                    ws=params["ws"], ws_lifetime=params["ws_lifetime"], record_backends=True).start()
        critical_at, registered_at, steps = {}, {}, 0
        try:
            time.sleep(params["settle"])
            for service in SERVICES:
                for old in sorted(stack.fleet.passing(service)):
                    used = {d["port"] for d in stack.fleet.instances.values() if d["service"] == service}
                    port = next(p for p in stack.fleet.ports[service] if p not in used and p not in critical_at)
                    if service == "Web":  # the HTTP load reaches Web ("/"); Ws carries the websockets
                        registered_at[port] = time.time()
                    stack.fleet.register(service, port, wait=False)
                    critical_at[stack.fleet.instances[old]["port"]] = time.time()
                    stack.agent.set_status(old, "critical", wait=False, service=service)
                    stack.fleet.instances[old]["passing"] = False
                    time.sleep(params["step"])
                    stack.fleet.apply(("scale_in", service, old), wait=False)
                    steps += 1
            time.sleep(params["tail"])
        finally:
            result = load.stop()
        expected = stack.fleet.expected()
        converged = wait_until(lambda: detail(stack.nginx.api_port) == expected, 30) is not None
        master_same = stack.nginx.process is not None and stack.nginx.process.poll() is None
    late, latest, first_answer = [], None, {}
    for started, port in result["http"]["backends"]:
        if str(port).isdigit() and int(port) in registered_at and started >= registered_at[int(port)]:
            first_answer.setdefault(int(port), started - registered_at[int(port)])
        went = critical_at.get(int(port)) if str(port).isdigit() else None
        if went is None or started < went:
            continue
        latest = max(latest or 0.0, started - went)
        if started - went > params["propagation_bound"]:
            late.append([started, int(port), round(started - went, 3)])
    out = {"steps": steps, "step_s": params["step"], "propagation_bound_s": params["propagation_bound"],
           "instances_replaced": len(critical_at), "converged": converged, "nginx_master_kept": master_same,
           "answers_recorded": len(result["http"]["backends"]), "late_requests": len(late),
           "first_late_requests": late[:5], "latest_after_critical_s": _round(latest),
           "late_joins": sum(1 for port in registered_at if first_answer.get(port, float("inf"))
                             > params["propagation_bound"]),
           "slowest_join_s": _round(max((first_answer.get(port, float("inf")) for port in registered_at),
                                        default=None))}
    out.update(load_summary(result))
    return out


# == 2. faults, each under steady load ==================================================================
class Monitor(threading.Thread):
    """Polls the interface's /detail and the upstream file every ``interval``: upstreams lost, invalid files."""

    def __init__(self, stack, interval=0.1):
        super().__init__(daemon=True)
        self.stack = stack
        self.interval = interval
        self.samples = 0
        self.unavailable = 0
        self.lost = {}              # name -> number of samples where the interface lacked it
        self.file_checks = 0
        self.file_invalid = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            state = detail(self.stack.nginx.api_port, timeout=1.0)
            if state is None:
                self.unavailable += 1
            else:
                self.samples += 1
                for name in SERVICES:
                    if not state.get(name):
                        self.lost[name] = self.lost.get(name, 0) + 1
            self.check_file()
            self._halt.wait(self.interval)

    def check_file(self):
        self.file_checks += 1
        try:
            _upstream_file.read(str(self.stack.upstream_file))
        except (ValidationError, UnicodeDecodeError) as exc:
            self.file_invalid.append(str(exc)[:300])
        except OSError:
            pass

    def stop(self):
        self._halt.set()
        self.join(timeout=5)
        return {"interface_samples": self.samples, "interface_unavailable_samples": self.unavailable,
                "upstreams_lost": sorted(self.lost), "upstream_lost_samples": sum(self.lost.values()),
                "file_checks": self.file_checks, "file_invalid": len(self.file_invalid),
                "file_invalid_examples": self.file_invalid[:3]}


def converged(stack):
    return detail(stack.nginx.api_port) == stack.fleet.expected() and \
        file_state(stack.upstream_file) == stack.fleet.expected()


NET_CHANGES = (("scale_out", "Web"), ("health_fail", "Ws"), ("scale_out", "Ws"), ("health_fail", "Web"))


def _changes(stack, _rng, count, spacing=0.5):
    """``count`` changes in Consul that do not undo each other (so something is left to apply)."""
    made = []
    for i in range(count):
        kind, service = NET_CHANGES[i % len(NET_CHANGES)]
        move = next((m for m in stack.fleet.options() if m[:2] == (kind, service)), None)
        if move is not None:
            made.append(stack.fleet.apply(move))
        time.sleep(spacing)
    return made


@contextlib.contextmanager
def under_load(stack, params, out):
    """Load and monitor around a fault; fills ``out`` with their figures when the block ends."""
    monitor = Monitor(stack)
    monitor.start()
    load = Load(stack.workdir, stack.proxy_port, rate=params["rate"], connections=params["connections"],
                ws=params["ws"], ws_lifetime=params["ws_lifetime"]).start()
    try:
        time.sleep(2.0)
        yield
        time.sleep(2.0)
    finally:
        result = load.stop()
        out.update(monitor.stop())
        out.update(load_summary(result))


def fault_consul_killed(workdir, params, rng):
    """SIGKILL the Consul agent, keep it down ``consul_outage`` s, start it again (its config file
    defines the services, as a real agent's does), then one registration: recovered when the
    interface and the file hold what Consul says."""
    out = {"fault": "consul_killed", "duration_s": params["consul_outage"]}
    agent = ConsulWithDefinitions()
    with stack_a(workdir, agent=agent) as stack, under_load(stack, params, out):
        agent.definitions = stack.fleet.definitions()
        agent.kill()
        time.sleep(params["consul_outage"])
        ended = time.monotonic()
        agent.start()
        out["consul_start_s"] = _round(time.monotonic() - ended)
        out["changes"] = _changes(stack, rng, 1, spacing=0)
        recovered = wait_until(lambda: converged(stack), params["recovery_timeout"])
        out["recovery_s"] = _round(None if recovered is None else time.monotonic() - ended)
        out["watcher_alive"] = stack.watcher.alive()
    return out


def fault_watcher_kill_loop(workdir, params, rng):
    """``kill_loop`` times: a change in Consul, SIGKILL of the watcher 0-150 ms later (mid-sync),
    a new watcher; the file must parse after every kill."""
    out = {"fault": "watcher_kill_9_loop", "kills": params["kill_loop"]}
    with stack_a(workdir) as stack, under_load(stack, params, out):
        invalid_after_kill = 0
        changes = []
        for _unused in range(params["kill_loop"]):
            changes.append(stack.fleet.event(rng))
            time.sleep(rng.uniform(0.0, 0.15))
            stack.watcher.kill()
            try:
                _upstream_file.read(str(stack.upstream_file))
            except ValidationError:
                invalid_after_kill += 1
            stack.watcher.start()
        ended = time.monotonic()
        recovered = wait_until(lambda: converged(stack), params["recovery_timeout"])
        out.update(changes=changes, file_invalid_after_kill=invalid_after_kill,
                   recovery_s=_round(None if recovered is None else time.monotonic() - ended))
        leftovers = [p.name for p in stack.upstream_file.parent.iterdir() if p.name.endswith(".tmp")]
        out["temp_files_left"] = leftovers
    return out


def _hup(nginx, timeout=15.0):
    """SIGHUP to the master; returns when two new workers run (old ones may still be shutting down:
    they keep the websockets they serve, so NginxLua.reload(), which waits for them, is not used)."""
    old = set(nginx.worker_pids())
    os.kill(nginx.master_pid(), signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fresh = [pid for pid in nginx.worker_pids() if pid not in old and "shutting" not in _cmdline(pid)]
        if len(fresh) >= nginx.workers:
            return
        time.sleep(0.01)
    raise TimeoutError("no new nginx workers after SIGHUP")


def fault_nginx_restarted(workdir, params, rng, reload_only=False):
    """nginx stopped (SIGTERM) and started again (or, ``reload_only``, SIGHUP): the Lua flavor loads
    the upstream file at start; recovered when the interface holds the desired state again."""
    out = {"fault": "nginx_reloaded" if reload_only else "nginx_restarted"}
    with stack_a(workdir) as stack, under_load(stack, params, out):
        started = time.monotonic()
        if reload_only:
            _hup(stack.nginx)
        else:
            stack.nginx.restart()
        ended = time.monotonic()
        out["restart_s"] = _round(ended - started)
        recovered = wait_until(lambda: converged(stack), params["recovery_timeout"])
        out["recovery_s"] = _round(None if recovered is None else time.monotonic() - ended)
        out["changes"] = _changes(stack, rng, 1, spacing=0)
        out["change_after_restart_s"] = _round(wait_until(lambda: converged(stack), params["recovery_timeout"]))
    return out


def _fill(directory):
    """Fill the filesystem of ``directory`` with one file; returns its path."""
    filler = Path(directory) / "filler"
    with open(filler, "wb", buffering=0) as handle:
        chunk = b"\0" * 4096
        while True:
            try:
                handle.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    return filler


def fault_filesystem_full(workdir, params, rng):
    """The upstream file on a small tmpfs (mounted here); the filesystem filled; changes made in
    Consul during the fault must not reach the interface (the file comes first); space freed;
    recovered when the interface and the file hold what Consul says."""
    out = {"fault": "upstream_filesystem_full", "duration_s": params["fault"]}
    mountpoint = Path(workdir) / "small-fs"
    mountpoint.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0755", "tmpfs", str(mountpoint)],
                           capture_output=True, text=True, check=False)
    if mount.returncode != 0:
        out["skipped"] = f"mount -t tmpfs not allowed here: {mount.stderr.strip()}"
        return out
    out["filesystem"] = "tmpfs, size=256k, mounted by the test"
    try:
        with stack_a(workdir, upstream_file=mountpoint / "upstreams.conf") as stack, under_load(stack, params, out):
            before = detail(stack.nginx.api_port)
            filler = _fill(mountpoint)
            out["free_bytes_after_fill"] = os.statvfs(mountpoint).f_bavail * os.statvfs(mountpoint).f_frsize
            fault_end = time.monotonic() + params["fault"]
            out["changes"] = _changes(stack, rng, params["changes"], spacing=params["fault"] / (params["changes"] + 1))
            interface_moved = False
            while time.monotonic() < fault_end:
                if detail(stack.nginx.api_port) not in (None, before):
                    interface_moved = True
                time.sleep(0.1)
            out["interface_changed_while_file_unwritable"] = interface_moved
            out["write_errors_logged"] = stack.watcher.log_text().count("upstream file not replaced")
            filler.unlink()
            ended = time.monotonic()
            recovered = wait_until(lambda: converged(stack), params["recovery_timeout"])
            out["recovery_s"] = _round(None if recovered is None else time.monotonic() - ended)
            if recovered is None:   # does the next, unrelated Consul event bring it back?
                out["changes_after_fault"] = _changes(stack, rng, 1, spacing=0)
                later = wait_until(lambda: converged(stack), params["recovery_timeout"])
                out["recovery_after_next_event_s"] = _round(later)
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], capture_output=True, check=False)
    return out


def _proxied_fault(workdir, params, rng, name, side, answer):
    """The watcher talks to ``side`` ("dyups" or "consul") through a FaultProxy that answers
    ``answer`` during the fault; changes are made in Consul meanwhile."""
    out = {"fault": name, "duration_s": params["fault"]}
    proxy = FaultProxy(0)
    proxy.start()

    def aim(stack):
        proxy.target = ("127.0.0.1", stack.nginx.api_port if side == "dyups" else stack.agent.http_port)
        return proxy.url

    try:
        kwargs = {"dyups_url": aim} if side == "dyups" else {"consul_url": aim}
        with stack_a(workdir, **kwargs) as stack, under_load(stack, params, out):
            proxy.set_fault(answer)
            started = time.monotonic()
            out["changes"] = _changes(stack, rng, params["changes"], spacing=params["fault"] / (params["changes"] + 1))
            time.sleep(max(0.0, started + params["fault"] - time.monotonic()))
            proxy.clear_fault()
            ended = time.monotonic()
            recovered = wait_until(lambda: converged(stack), params["recovery_timeout"])
            out["recovery_s"] = _round(None if recovered is None else time.monotonic() - ended)
            out["fault_answers"] = sum(1 for record in proxy.records if record[5] == "proxy")
    finally:
        proxy.stop()
    return out


def fault_interface_500(workdir, params, rng):
    return _proxied_fault(workdir, params, rng, "dyups_interface_500", "dyups", Answer(500, b"add server failed"))


def fault_consul_429(workdir, params, rng):
    return _proxied_fault(workdir, params, rng, "consul_429", "consul",
                          Answer(429, b"rate limit exceeded", {"Content-Type": "text/plain"}))


FAULTS = {
    "consul_killed": fault_consul_killed,
    "watcher_kill_9_loop": fault_watcher_kill_loop,
    "nginx_restarted": fault_nginx_restarted,
    "nginx_reloaded": lambda workdir, params, rng: fault_nginx_restarted(workdir, params, rng, reload_only=True),
    "upstream_filesystem_full": fault_filesystem_full,
    "dyups_interface_500": fault_interface_500,
    "consul_429": fault_consul_429,
}


def run_fault(name, workdir, params, seed=11):
    started = time.monotonic()
    result = FAULTS[name](Path(workdir) / name, params, random.Random(seed))
    result["scenario_seconds"] = round(time.monotonic() - started, 1)
    return result


# == 3. fuzzed Consul answers to the real watcher ==========================================================
HOSTILE_STRINGS = ["", " ", "a b", "x;y", "x{y", "}", "'", '"', "\\", "\n", "\x00", "\x7f", "é", "gray=",
                   "gray=a b", "gray=x;}", "127.0.0.1;", "127.0.0.1:80;server 10.0.0.1", "[::1", "::1",
                   "999.1.1.1", "-1", "0", "65536", "1e3", "a" * 300, "unix:/tmp/x", "localhost", "..", "$x"]


def _junk(rng, depth=0):
    kind = rng.randrange(9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 1, 65535, 65536, 2 ** 31, 2 ** 70, -2 ** 63])
    if kind == 3:
        return rng.choice([0.5, -0.0, 1e308, float("inf")]) if rng.random() < 0.5 else 3.25
    if kind in (4, 5):
        return rng.choice(HOSTILE_STRINGS)
    if kind == 6:
        return [_junk(rng, depth + 1) for _unused in range(rng.randrange(4))]
    return {rng.choice(["ID", "Service", "Node", "Address", "Port", "Tags", "Meta", "Checks", "Status",
                        "ServiceID", "x"]): _junk(rng, depth + 1) for _unused in range(rng.randrange(4))}


def _walk(value, rng, action):
    """Apply ``action(container, key)`` to one random key of the nested JSON ``value``; True if done."""
    containers = []

    def collect(node):
        if isinstance(node, dict):
            containers.extend((node, key) for key in list(node))
            for child in node.values():
                collect(child)
        elif isinstance(node, list):
            containers.extend((node, i) for i in range(len(node)))
            for child in node:
                collect(child)

    collect(value)
    if not containers:
        return False
    container, key = rng.choice(containers)
    action(container, key)
    return True


def _json_float_safe(value):
    return json.dumps(value, allow_nan=True).encode()


MUTATIONS = ("invalid_json", "truncated_json", "empty_body", "html_body", "huge_body", "huge_valid_json",
             "missing_fields", "wrong_types", "hostile_values", "wrong_top_level", "index_backwards",
             "index_zero", "index_garbage", "index_missing", "index_huge", "status_500", "status_429",
             "status_403", "status_404", "drop")


def mutate(kind, answer, rng, last_index):
    """A mutated copy of a real Consul answer (or "drop")."""
    headers = dict(answer.headers)
    body = answer.body
    index_key = next((k for k in headers if k.lower() == "x-consul-index"), "X-Consul-Index")
    if kind == "drop":
        return "drop"
    if kind.startswith("status_"):
        return Answer(int(kind[7:]), rng.choice([b"", b"rate limit", b"{}", b"<html>oops</html>"]), {})
    if kind == "invalid_json":
        body = rng.choice([b"{", b"[{]", b"nul", b"\xff\xfe\x00", b"{'a': 1}", b"[1,]", b"NaN{"])
    elif kind == "truncated_json":
        body = body[:rng.randrange(max(1, len(body)))]
    elif kind == "empty_body":
        body = b""
    elif kind == "html_body":
        body = b"<html><body>502 Bad Gateway</body></html>"
    elif kind == "huge_body":
        body = b"[" + b'"' + b"x" * (12 * 1024 * 1024) + b'"]'
    elif kind in ("huge_valid_json", "missing_fields", "wrong_types", "hostile_values") and not _is_json(body):
        return answer   # Consul's own error text (a 400 to a bad index, say): nothing to reshape
    elif kind == "huge_valid_json":
        data = json.loads(body or b"null")
        if isinstance(data, list) and data:
            data = [dict(entry, ID=f"fuzz-{i}") if isinstance(entry, dict) else entry
                    for i, entry in enumerate(data * max(1, 20000 // len(data)))]
        elif isinstance(data, dict):
            data.update({f"FuzzSvc{i}": [f"t{i}"] for i in range(300)})
        body = json.dumps(data).encode()
    elif kind in ("missing_fields", "wrong_types", "hostile_values"):
        data = json.loads(body or b"null")
        for _unused in range(rng.randrange(1, 6)):
            if kind == "missing_fields":
                _walk(data, rng, lambda c, k: c.pop(k) if isinstance(c, dict) else c.__setitem__(k, None))
            elif kind == "wrong_types":
                _walk(data, rng, lambda c, k: c.__setitem__(k, _junk(rng)))
            else:
                _walk(data, rng, lambda c, k: c.__setitem__(k, rng.choice(HOSTILE_STRINGS)))
        body = _json_float_safe(data)
    elif kind == "wrong_top_level":
        body = rng.choice([b"null", b"42", b'"x"', b"true", b"{}", b"[]", b'{"a": []}', b"[[]]"])
    elif kind == "index_backwards":
        headers[index_key] = str(max(1, (last_index or 2) - rng.randrange(1, 50)))
    elif kind == "index_zero":
        headers[index_key] = "0"
    elif kind == "index_garbage":
        headers[index_key] = rng.choice(["abc", "-5", "1.5", "", "99999999999999999999999999", "0x10"])
    elif kind == "index_missing":
        headers.pop(index_key, None)
    elif kind == "index_huge":
        headers[index_key] = str(2 ** 63 + rng.randrange(1000))
    return Answer(answer.status, body, headers)


TARGETS = {"health_state": "/v1/health/state/any", "catalog": "/v1/catalog/services",
           "health_service": "/v1/health/service/", "any": "/v1/"}


class Armed:
    """The mutator of the Consul FaultProxy: mutate the next ``count`` answers to ``target`` requests."""

    def __init__(self, rng):
        self.rng = rng
        self.lock = threading.Lock()
        self.kind = None
        self.prefix = None
        self.left = 0
        self.applied = 0
        self.total = 0
        self.last_index = None

    def arm(self, kind, target, count):
        with self.lock:
            self.kind, self.prefix, self.left, self.applied = kind, TARGETS[target], count, 0

    def disarm(self):
        with self.lock:
            self.left = 0

    def __call__(self, request, answer):
        index = next((v for k, v in answer.headers.items() if k.lower() == "x-consul-index"), None)
        with self.lock:
            if index and index.isdigit():
                self.last_index = int(index)
            if self.left <= 0 or not request.path.startswith(self.prefix):
                return None
            self.left -= 1
            self.applied += 1
            self.total += 1
            return mutate(self.kind, answer, self.rng, self.last_index)


def _is_json(body):
    try:
        json.loads(body or b"null")
    except ValueError:
        return False
    return True


def _rss_mb(pid):
    return round(proc_kb(pid, "VmRSS") / 1024, 1)


def _valid_body(name, body):
    """True when a POST body for ``name`` is a valid upstream (the file parser's own rules)."""
    if name_problem(name) is not None:
        return False
    try:
        _upstream_file.parse(f"upstream {name} {{\n{body.decode('utf-8')}}}\n")
        return True
    except (ValidationError, UnicodeDecodeError):
        return False


def fuzz_consul_answers(workdir, params, seed=23):
    """``cases`` fuzzed Consul answers to the REAL watcher (through a FaultProxy in front of the real
    agent), the real Lua-flavor interface behind a recording FaultProxy; after every case: the
    watcher runs, the file parses, every body it posted is valid; every ``converge_every`` cases
    and at the end: after SIGHUP (a full read) the interface and the file equal what Consul says."""
    rng = random.Random(seed)
    workdir = Path(workdir) / "fuzz"
    out = {"cases": 0, "mutations": {}, "not_delivered": 0, "watcher_crashes": 0, "file_invalid": 0,
           "invalid_bodies": 0, "interface_rejections": 0, "posts": 0, "deletes": 0, "convergence_checks": 0,
           "convergence_failures": [], "problems": []}
    consul_proxy = FaultProxy(0)
    dyups_proxy = FaultProxy(0)
    armed = Armed(rng)
    consul_proxy.set_mutator(armed)
    started = time.monotonic()
    with contextlib.ExitStack() as cleanup, shared_stack(workdir) as stack:
        cleanup.callback(consul_proxy.stop)
        cleanup.callback(dyups_proxy.stop)
        stack.upstream_file = workdir / "upstreams.conf"
        nginx = NginxLua(workers=2, upstream_file=str(stack.upstream_file))
        nginx.start()
        cleanup.callback(nginx.cleanup)
        stack.nginx = nginx
        consul_proxy.target = ("127.0.0.1", stack.agent.http_port)
        dyups_proxy.target = ("127.0.0.1", nginx.api_port)
        consul_proxy.start()
        dyups_proxy.start()
        watcher = WatcherProcess(workdir / "watcher", consul_url=consul_proxy.url, dyups_url=dyups_proxy.url,
                                 upstream_file=str(stack.upstream_file), drift_interval=5, log_level="info")
        watcher.start()
        cleanup.callback(watcher.stop)
        stack.watcher = watcher
        # Churn: two instances whose checks flip, one that always passes (so the zero-instance
        # policy never applies), and spare ports registered and deregistered in turn
        churn = [stack.fleet.register("Churn", port) for port in stack.backends.ports[:3]][:2]
        spare = stack.backends.ports[3:]
        checked_records = 0

        def settle_statuses():
            for instance_id, data in stack.fleet.instances.items():
                if data["passing"] is None:
                    data["passing"] = stack.fleet.status(instance_id) == "passing"

        def truth_reached():
            expected = stack.fleet.expected()
            state = detail(nginx.api_port)
            owned = {name: state.get(name) for name in expected} if state else None
            return owned == expected and file_state(stack.upstream_file) == expected

        def converge(label):
            rss_series.append([label, _rss_mb(watcher.pid)])
            settle_statuses()
            out["convergence_checks"] += 1
            watcher.hup()
            if wait_until(truth_reached, 30) is None:
                out["convergence_failures"].append(label)

        rss_series = []
        growth = {}
        last_rss = _rss_mb(watcher.pid)
        if wait_until(truth_reached, 60) is None:
            raise RuntimeError(f"fuzz stack did not sync:\n{watcher.log_text()[-3000:]}")
        for case in range(params["cases"]):
            kind = rng.choice(MUTATIONS)
            target = rng.choice(list(TARGETS))
            armed.arm(kind, target, rng.randrange(1, 4))
            # wake the long polls: a check flip (health), and a registration or deregistration (catalog)
            instance = rng.choice(churn)
            stack.agent.set_status(instance, rng.choice(["passing", "critical"]), wait=False, service="Churn")
            stack.fleet.instances[instance]["passing"] = None   # unknown until the next convergence check
            port = rng.choice(spare)
            if f"Churn-{port}" in stack.fleet.instances:
                stack.agent.deregister(f"Churn-{port}", wait=False)
                del stack.fleet.instances[f"Churn-{port}"]
            else:
                stack.agent.register("Churn", f"Churn-{port}", port=port, wait=False)
                stack.fleet.instances[f"Churn-{port}"] = {"service": "Churn", "port": port, "passing": True}
            deadline = time.monotonic() + 3.0
            while armed.applied == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)
            delivered = armed.applied
            armed.disarm()
            out["cases"] += 1
            out["mutations"][kind] = out["mutations"].get(kind, 0) + 1
            if not delivered:
                out["not_delivered"] += 1
            rss = _rss_mb(watcher.pid) if watcher.alive() else 0.0
            growth[kind] = growth.get(kind, 0.0) + max(0.0, rss - last_rss)
            last_rss = rss
            # the invariants, after every case
            if not watcher.alive():
                out["watcher_crashes"] += 1
                out["problems"].append(f"case {case} ({kind} on {target}): watcher exited "
                                       f"{watcher.process.returncode}\n{watcher.log_text()[-2000:]}")
                watcher.start()
            try:
                _upstream_file.read(str(stack.upstream_file))
            except ValidationError as exc:
                out["file_invalid"] += 1
                out["problems"].append(f"case {case} ({kind} on {target}): invalid file: {exc}")
            records = dyups_proxy.records[checked_records:]
            checked_records += len(records)
            for _t, method, path, body, status, _source in records:
                name = path.split("/upstream/", 1)[1] if path.startswith("/upstream/") else None
                if method == "POST":
                    out["posts"] += 1
                    if name is None or not _valid_body(name, body):
                        out["invalid_bodies"] += 1
                        out["problems"].append(f"case {case}: invalid POST {path} {body[:200]!r}")
                elif method == "DELETE":
                    out["deletes"] += 1
                    if name is None or name_problem(name) is not None:
                        out["invalid_bodies"] += 1
                        out["problems"].append(f"case {case}: DELETE of an invalid name {path!r}")
                if method in ("POST", "DELETE") and status not in (200, 404, 409):
                    out["interface_rejections"] += 1
                    out["problems"].append(f"case {case}: {method} {path} answered {status}")
            if (case + 1) % params["converge_every"] == 0:
                converge(f"after case {case}")
        converge("at the end")
        log = watcher.log_text()
        out["tracebacks_in_log"] = log.count("Traceback")
        for position in [index for index in range(len(log)) if log.startswith("Traceback", index)][:2]:
            out["problems"].append("traceback in the watcher's log: " + log[max(0, position - 300):position + 1500])
        out["answers_mutated"] = armed.total
        out["log_consul_errors"] = log.count("Consul unavailable (")
        out["log_skipped_instances"] = log.count(" skipped ")
        out["watcher_rss_mb_end"] = _rss_mb(watcher.pid)
        out["watcher_rss_mb_series"] = rss_series
        out["watcher_rss_growth_by_mutation_mb"] = {kind: round(mb, 1) for kind, mb in sorted(
            growth.items(), key=lambda item: -item[1])}
    out["seconds"] = round(time.monotonic() - started, 1)
    out["problems"] = out["problems"][:20]
    return out


# == what must hold ====================================================================================
# Faults during which nginx itself keeps running: traffic must not notice them at all.
TRAFFIC_WHOLE = ("consul_killed", "watcher_kill_9_loop", "upstream_filesystem_full", "dyups_interface_500",
                 "consul_429")


def violations(results):
    """The properties that must hold, as a list of sentences (empty: all held)."""
    found = []
    for part, result in results.items():
        if part.startswith("scale:A") and "error" not in result:
            if result["failed_requests"]:
                found.append(f"{part}: {result['failed_requests']} failed requests {result['failed_by_kind']}")
            if result["ws_dropped"]:
                found.append(f"{part}: {result['ws_dropped']} websockets dropped")
            if not result["converged"]:
                found.append(f"{part}: the interface did not converge to what Consul says")
            if result["nginx_whole_run"].get("shutting_down_max") or not result["nginx_master_kept"]:
                found.append(f"{part}: nginx was reloaded or restarted")
        elif part.startswith("scale:") and "error" not in result:
            if not result["converged"] or result["reload_failures"]:
                found.append(f"{part}: the baseline did not follow Consul ({result['reload_failures']} failed "
                             "reloads); its figures are not comparable")
        elif part.startswith("fault:") and not result.get("skipped") and "error" not in result:
            if part[6:] in TRAFFIC_WHOLE and (result.get("failed_requests") or result.get("ws_dropped")):
                found.append(f"{part}: traffic was hurt: {result.get('failed_requests')} failed requests "
                             f"{result.get('failed_by_kind')}, {result.get('ws_dropped')} websockets dropped")
            if result.get("upstreams_lost"):
                found.append(f"{part}: upstreams lost {result['upstreams_lost']}")
            if result.get("file_invalid") or result.get("file_invalid_after_kill"):
                found.append(f"{part}: the upstream file was invalid")
            if result.get("recovery_s") is None:
                found.append(f"{part}: not recovered within the recovery timeout")
        elif part.startswith("rolling") and "error" not in result:
            for key, what in (("failed_requests", "failed requests"), ("ws_dropped", "websockets dropped"),
                              ("late_requests", "requests answered by an instance after its check went "
                                                "critical plus the propagation bound"),
                              ("late_joins", "new instances that answered nothing within the propagation bound")):
                if result.get(key):
                    found.append(f"{part}: {result[key]} {what}")
            if not result["converged"] or not result["nginx_master_kept"]:
                found.append(f"{part}: not converged, or nginx was restarted")
        elif part == "fuzz" and "error" not in result:
            for key in ("watcher_crashes", "file_invalid", "invalid_bodies", "interface_rejections",
                        "tracebacks_in_log"):
                if result.get(key):
                    found.append(f"fuzz: {key} = {result[key]}")
            if result.get("convergence_failures"):
                found.append(f"fuzz: no convergence {result['convergence_failures']}")
        if "error" in result:
            found.append(f"{part}: {result['error']}")
    return found
