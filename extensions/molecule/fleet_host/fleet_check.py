"""The fleet's flips and faults, driven from the test machine (verify.yml runs it; README.md here).

    PYTHONPATH=. .venv/bin/python extensions/molecule/fleet_host/fleet_check.py --run RUN --secrets DIR \\
        --servers s1=ADDR,s2=ADDR,s3=ADDR --proxies p1=ADDR,p2=ADDR,p3=ADDR [--flips 50] [--json OUT]

A flip: the TTL check of the instance on backend-3 (fleet_web) goes critical through s1's HTTPS API
(CA, the test's client certificate, the master token); the clock runs from just before that request
until the last worker of the last proxy serves {backend-1, backend-2}. Each proxy is polled from here,
on its bridge address, by a thread of its own, each request on a new connection; Tengine names the
answering worker in X-Dyups-Worker. A worker counts as switched at its third answer without
backend-3 in the proxy's final backend-3-free streak (a stale worker answers backend-3 once in any three:
round robin over three), so the time is an upper bound (the rule of tests/benchmarks/bench_watcher.py).
The check then goes back to passing (not measured) and every worker of every proxy must answer from
backend-3 again before the next flip.

Where a flip's time goes (``timeline`` in the JSON, ms from the flip request, median / p90 / max over
the flips; the clocks agree: the containers share the test machine's kernel clock):
  server_applied   each server's state holds the new status (a blocking ``?stale`` query on each
                   server, held from before the flip: the leader's commit, each follower's apply);
  watcher_read     each proxy's watcher read Consul's answer (its log line for the change says how
                   long after that answer the interface answered; journald's time of that line
                   minus that figure);
  interface_answered  each proxy's dyups interface answered the watcher's POST (the line's time);
  last_stale       the proxy's last answer from backend-3 (a worker not switched yet): every worker
                   switched after it;
  worker_first / worker_confirmed  the first and the third answer of the proxy's last worker in its
                   final streak without backend-3: every worker switched before the first (the
                   probe's resolution: a worker is seen only when the kernel hands it a probe's
                   connection; the scenario's vhost listens with reuseport, so connections spread
                   evenly over the workers).

Faults, each with flips during it:
  (a) a Consul server killed (SIGKILL; the leader unless s1, which holds the checks and which this
      script talks to): a flip started right at the kill reaches every worker of every proxy within
      90 s (when the leader went, s1's agent writes the new status only at its anti-entropy retry,
      about 15 s later), and so does each of --fault-flips flips once the two left have a leader
      (30 s each); the server starts again afterwards and the cluster must have three peers;
  (b) a proxy cut off (``python -m tests.hosts link RUN NAME down``): the other two follow a flip; the
      cut-off one keeps serving the state it had (traffic inside it, through nsenter: every backend it
      had, no error, for longer than its watcher's Consul timeout); after ``link up`` it catches up;
  (c) with ``fleet_share`` (the scenario's default): the publisher's watcher killed (SIGKILL; systemd
      starts it again 2 s later): a flip sent at the kill reaches every worker of every proxy within
      PUBLISHER_TIMEOUT (the followers read Consul themselves after fleet_stale_after, 15 s, or follow a
      new publisher), and every answer meanwhile is from backend-1..3 (no error); then --fault-flips
      flips once a publisher publishes again.

Prints one JSON object (figures in ms) and exits 1 with the failed expectations listed.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.benchmarks.bench_watcher import summary  # noqa: E402 (PYTHONPATH=the checkout)
from tests.hosts.containers import in_container
from tests.hosts.state import load

SERVICE = "fleet_web"
GONE = "backend-3 27903"
FRONT_PORT = 27880
WORKERS = 2
TIMEOUT = 30.0          # one flip, every proxy
KILL_TIMEOUT = 90.0     # the flip right after a server (the leader) was killed: election, agent's retry
CATCH_UP_TIMEOUT = 120.0  # a proxy whose link came back (Consul's gossip reconnects within 30 s)
PUBLISHER_TIMEOUT = 60.0  # the flip at the publisher's kill (fleet_stale_after 15 s, TTL 10 s + lock delay 15 s)
LOCK_KEY = "swk/default/leader"  # the fleet share's lock (fleet_kv_prefix/fleet_group/leader)
# How long the cut-off proxy is watched serving its last state: longer than the watcher's
# consul_timeout (10 s) and drift_interval (30 s).
CUT_HOLD = 35.0


class Consul:
    """s1's HTTPS API with the CA, the test's client certificate and the master token."""

    def __init__(self, address, secrets):
        self.address = address
        self.context = ssl.create_default_context(cafile=str(secrets / "consul-agent-ca.pem"))
        self.context.load_cert_chain(str(secrets / "driver.pem"), str(secrets / "driver-key.pem"))
        self.token = (secrets / "master.token").read_text(encoding="utf-8").strip()

    def request(self, method, path, address=None, timeout=10, index=False):
        """The answer's JSON (and its X-Consul-Index, with ``index``), from s1 or ``address``."""
        connection = http.client.HTTPSConnection(address or self.address, 8501, timeout=timeout,
                                                 context=self.context)
        try:
            connection.request(method, path, headers={"X-Consul-Token": self.token})
            response = connection.getresponse()
            body = response.read().decode()
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: HTTP {response.status} {body}")
            answer = json.loads(body) if body else None
            return (answer, int(response.getheader("X-Consul-Index") or 0)) if index else answer
        finally:
            connection.close()

    def set_check(self, status):
        self.request("PUT", f"/v1/agent/check/{'fail' if status == 'critical' else 'pass'}/{SERVICE}-backend-3")


class ServerWatch:
    """When each server's state first holds backend-3's check as critical: one blocking ``?stale``
    query per server (answered from its own state), started before the flip."""

    PATH = f"/v1/health/checks/{SERVICE}?stale"

    def __init__(self, consul, servers):
        self.consul, self.servers, self.applied, self.threads = consul, servers, {}, []

    def start(self, deadline):
        for name, address in self.servers.items():
            _answer, index = self.consul.request("GET", self.PATH, address=address, index=True)
            thread = threading.Thread(target=self._watch, args=(name, address, index, deadline), daemon=True)
            thread.start()
            self.threads.append(thread)
        return self

    def _watch(self, name, address, index, deadline):
        while time.time() < deadline:
            try:
                checks, index = self.consul.request("GET", f"{self.PATH}&index={index}&wait=5s", address=address,
                                                    timeout=15, index=True)
            except (OSError, RuntimeError):
                time.sleep(0.05)
                continue
            if any(check.get("ServiceID", "").endswith("backend-3") and check.get("Status") == "critical"
                   for check in checks or []):
                self.applied[name] = time.time()
                return

    def join(self):
        for thread in self.threads:
            thread.join()


def get(address):
    """(body, worker) of one request through a proxy on a new connection; (None, None) on an error."""
    connection = http.client.HTTPConnection(address, FRONT_PORT, timeout=2)
    try:
        connection.request("GET", "/", headers={"Connection": "close"})
        response = connection.getresponse()
        body = response.read().decode().strip()
        return (body if response.status == 200 else f"HTTP {response.status}"), response.getheader("X-Dyups-Worker")
    except OSError:
        return None, None
    finally:
        connection.close()


def wait_proxy(address, started, gone, deadline, workers=None):
    """Seconds from ``started`` until every worker of one proxy serves the new set (module docstring):
    without ``GONE`` when ``gone``, else each worker has answered from it once. None: not by ``deadline``.
    ``workers`` (a dict, when gone): filled with {worker: (first, third)} answers of the final streak,
    as time.time() values, and "stale": the time of the last answer from ``GONE`` (None: none came)."""
    streak, seen = {}, {}
    if workers is not None:
        workers["stale"] = None
    while time.perf_counter() < deadline:
        body, worker = get(address)
        now = time.perf_counter()
        if gone:
            if body is not None and body != GONE and not body.startswith("HTTP"):
                streak.setdefault(worker, []).append((now, time.time()))
            else:
                streak = {}
                if workers is not None and body == GONE:
                    workers["stale"] = time.time()
            done = [times[2][0] for times in streak.values() if len(times) >= 3]
            if len(done) >= WORKERS:
                if workers is not None:
                    workers.update({worker: (times[0][1], times[2][1]) for worker, times in streak.items()})
                return max(done) - started
        elif body == GONE:
            seen.setdefault(worker, now)
            if len(seen) >= WORKERS:
                return max(seen.values()) - started
    return None


def wait_all(addresses, started, gone, timeout=TIMEOUT, workers=None):
    """{address: seconds or None}, the proxies polled side by side; ``workers``: {address: wait_proxy's}."""
    results, deadline = {}, started + timeout
    if workers is not None:
        workers.update({address: {} for address in addresses})

    def poll(address):
        results[address] = wait_proxy(address, started, gone, deadline, None if workers is None else workers[address])

    threads = [threading.Thread(target=poll, args=(address,)) for address in addresses]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def flip(consul, addresses, timeout=TIMEOUT, timeline=None, servers=None):
    """One measured flip to critical (seconds to the last worker of the last proxy, or None) and its
    unmeasured way back; raises when the way back does not reach every proxy. ``timeline`` (a list):
    gets {"sent": time.time(), "servers": {name: time}, "workers": {address: {worker: (first, third)}}}."""
    watch = ServerWatch(consul, servers).start(time.time() + timeout) if timeline is not None else None
    sent = time.time()
    started = time.perf_counter()
    consul.set_check("critical")
    workers = {} if timeline is not None else None
    times = wait_all(addresses, started, gone=True, timeout=timeout, workers=workers)
    if watch is not None:
        watch.join()
        timeline.append({"sent": sent, "servers": dict(watch.applied), "workers": workers})
    consul.set_check("passing")
    back = wait_all(addresses, time.perf_counter(), gone=False)
    if None in back.values():
        raise RuntimeError(f"backend-3 did not come back on {[a for a, t in back.items() if t is None]}")
    return None if None in times.values() else max(times.values())


def hosts(*args):
    done = subprocess.run([sys.executable, "-m", "tests.hosts", *args], capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"tests.hosts {' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")


def ssh(run, name, *command):
    done = subprocess.run([sys.executable, "-m", "tests.hosts", "ssh", run, name, *command],
                          capture_output=True, text=True, timeout=60, check=False)
    if done.returncode:
        raise RuntimeError(f"on {name}: {' '.join(command)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


def watcher_lines(run, name, since):
    """[(time, ms after Consul's answer)] of the proxy's watcher log lines for a change of the service
    to two servers (pushes.py's line), from its journal since ``since`` (time.time())."""
    text = ssh(run, name, "journalctl", "-u", "swallowkeeper-dyups-watcher", "-o", "json", "--no-pager",
               f"--since=@{int(since) - 1}")
    found = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("MESSAGE")
        if not isinstance(message, str) or f"upstream {SERVICE}: " not in message or "(2 server(s))" not in message:
            continue
        after = message.rsplit(", ", 1)[-1]
        if after.endswith(" ms after Consul's answer"):
            found.append((int(entry["__REALTIME_TIMESTAMP"]) / 1e6, float(after.split(" ", 1)[0])))
    return found


def stage(samples):
    """median / p90 / max (ms) of a stage's samples, and how many flips had one."""
    values = sorted(value for value in samples if value is not None)
    if not values:
        return {"flips": 0}
    p50, p90 = (values[min(len(values) - 1, int(q * len(values)))] for q in (0.5, 0.9))
    return {"flips": len(values), "p50_ms": round(p50, 1), "p90_ms": round(p90, 1), "max_ms": round(values[-1], 1)}


def timeline_summary(timeline, run, proxies):
    """Per stage (module docstring), per server and per proxy: ms from each flip's request."""
    if not timeline:
        return {}
    lines = {name: watcher_lines(run, name, timeline[0]["sent"]) for name in proxies}
    stages = {f"server_applied {name}": [] for name in sorted(timeline[0]["servers"] or {})}
    for name in proxies:
        for what in ("watcher_read", "interface_answered", "last_stale", "worker_first", "worker_confirmed"):
            stages[f"{what} {name}"] = []
    for number, entry in enumerate(timeline):
        sent = entry["sent"]
        until = timeline[number + 1]["sent"] if number + 1 < len(timeline) else float("inf")
        for name, at in entry["servers"].items():
            stages.setdefault(f"server_applied {name}", []).append((at - sent) * 1000)
        for name, address in proxies.items():
            line = next(((at, after) for at, after in lines[name] if sent <= at < until), None)
            stages[f"watcher_read {name}"].append(None if line is None else (line[0] - line[1] / 1000 - sent) * 1000)
            stages[f"interface_answered {name}"].append(None if line is None else (line[0] - sent) * 1000)
            workers = dict(entry["workers"].get(address) or {})
            stale = workers.pop("stale", None)
            stages[f"last_stale {name}"].append(None if stale is None else (stale - sent) * 1000)
            stages[f"worker_first {name}"].append(
                max((first - sent) * 1000 for first, _third in workers.values()) if workers else None)
            stages[f"worker_confirmed {name}"].append(
                max((third - sent) * 1000 for _first, third in workers.values()) if workers else None)
    return {what: stage(samples) for what, samples in stages.items()}


def probe_inside(run, name, count=30):
    """Traffic through a proxy from inside its container (nsenter: no network needed)."""
    entry = next(c for c in load(run)["containers"] if c["name"] == name)
    result = in_container(entry["loop_pid"], ["/usr/bin/python3", "/usr/local/lib/skdy-test/demo_probe.py",
                                              f"http://127.0.0.1:{FRONT_PORT}/", str(count)], quiet=True)
    return json.loads(result.stdout)


def wait_leader(consul, peers=None, timeout=90):
    """Until the cluster has a leader (and ``peers`` raft peers, when given)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if consul.request("GET", "/v1/status/leader") and (
                    peers is None or len(consul.request("GET", "/v1/status/peers")) == peers):
                return
        except (OSError, RuntimeError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"no leader (with {peers} peers) within {timeout} s")


def fault_server_killed(args, consul, servers, proxies, failures):
    leader = consul.request("GET", "/v1/status/leader").rsplit(":", 1)[0]
    by_address = {address: name for name, address in servers.items()}
    victim = by_address[leader] if by_address.get(leader) != "s1" else "s2"
    try:
        # kill(1) on the main PID: `systemctl kill` signals it but exits 1 in a container (the cgroup's
        # other processes cannot be signalled there).
        ssh(args.run, victim, "sh", "-c", "'kill -KILL $(systemctl show -p MainPID --value consul)'")
        # The flip right at the kill: when the leader went, s1's agent cannot write the check's new
        # status until a new leader is elected and its next anti-entropy retry runs (about 15 s later).
        at_kill = flip(consul, list(proxies.values()), timeout=KILL_TIMEOUT)
        wait_leader(consul)
        times = [flip(consul, list(proxies.values())) for _flip in range(args.fault_flips)]
    finally:
        ssh(args.run, victim, "systemctl", "start", "consul")
        wait_leader(consul, peers=3)
    result = {"killed": victim, "was_leader": by_address.get(leader) == victim,
              "flip_at_kill_ms": None if at_kill is None else round(at_kill * 1000, 1),
              "flips_with_two_servers": summary(times, len(times))}
    if at_kill is None:
        failures.append(f"(a) the flip right after killing {victim} did not reach every proxy within {KILL_TIMEOUT:.0f} s")
    if None in times:
        failures.append(f"(a) {times.count(None)} of {len(times)} flips did not reach every proxy with {victim} killed")
    return result


def fault_proxy_cut(args, consul, proxies, failures):
    name = args.cut
    others = [address for other, address in proxies.items() if other != name]
    before = probe_inside(args.run, name)
    hosts("link", args.run, name, "down")
    try:
        started = time.perf_counter()
        consul.set_check("critical")
        others_times = wait_all(others, started, gone=True)
        held = []
        watch_until = time.perf_counter() + CUT_HOLD
        while time.perf_counter() < watch_until:
            held.append(probe_inside(args.run, name))
            time.sleep(4)
    finally:
        hosts("link", args.run, name, "up")
    relinked = time.perf_counter()
    catch_up = wait_all([proxies[name]], relinked, gone=True, timeout=CATCH_UP_TIMEOUT)[proxies[name]]
    consul.set_check("passing")
    back = wait_all(list(proxies.values()), time.perf_counter(), gone=False)
    everything = sorted(before["answers"])
    result = {"cut": name, "others_ms": {a: None if t is None else round(t * 1000, 1) for a, t in others_times.items()},
              "held_probes": len(held), "held_seconds": CUT_HOLD,
              "catch_up_after_link_up_ms": None if catch_up is None else round(catch_up * 1000, 1)}
    if None in others_times.values():
        failures.append(f"(b) the proxies still linked did not all follow the flip: {others_times}")
    for probe in held:
        if sorted(probe["answers"]) != everything or probe["errors"]:
            failures.append(f"(b) the cut-off {name} did not keep serving {everything}: {probe}")
            break
    if len(everything) != 3:
        failures.append(f"(b) before the cut {name} served {everything}, not the three backends")
    if catch_up is None:
        failures.append(f"(b) {name} did not catch up within {CATCH_UP_TIMEOUT:.0f} s of link up")
    if None in back.values():
        failures.append(f"(b) backend-3 did not come back everywhere after the cut: {back}")
    return result


def publisher(consul, proxies, run):
    """The proxy whose watcher holds the fleet share's lock (its value names the host), or None."""
    try:
        entries = consul.request("GET", f"/v1/kv/{LOCK_KEY}")
    except RuntimeError:   # 404: no lock key (fleet_share off)
        return None
    entry = entries[0] if entries else {}
    if not entry.get("Session"):
        return None
    host = json.loads(base64.b64decode(entry["Value"])).get("host")
    for name in proxies:
        if ssh(run, name, "hostname").strip() == host:
            return name
    return None


def fault_publisher_killed(args, consul, proxies, failures):
    name = publisher(consul, proxies, args.run)
    if name is None:
        failures.append("(c) no proxy holds the fleet share's lock (fleet_share is on in the scenario)")
        return {}
    errors = []
    stop = threading.Event()

    def watch_errors():   # every answer of every proxy during the fault: a backend, never an error
        while not stop.is_set():
            for address in proxies.values():
                body, _worker = get(address)
                if body is None or not body.startswith("backend-"):
                    errors.append((address, body))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch_errors, daemon=True)
    watcher.start()
    try:
        ssh(args.run, name, "sh", "-c", "'kill -KILL $(systemctl show -p MainPID --value swallowkeeper-dyups-watcher)'")
        at_kill = flip(consul, list(proxies.values()), timeout=PUBLISHER_TIMEOUT)
        started = time.monotonic()
        while publisher(consul, proxies, args.run) is None and time.monotonic() - started < 60:
            time.sleep(0.5)
        new = publisher(consul, proxies, args.run)
        times = [flip(consul, list(proxies.values())) for _flip in range(args.fault_flips)]
    finally:
        stop.set()
        watcher.join()
    result = {"killed": name, "new_publisher": new, "flip_at_kill_ms": None if at_kill is None else round(at_kill * 1000, 1),
              "new_publisher_after_s": round(time.monotonic() - started, 1) if new else None,
              "flips_after": summary(times, len(times)), "answers_not_from_a_backend": len(errors)}
    if at_kill is None:
        failures.append(f"(c) the flip at the publisher's kill did not reach every proxy within {PUBLISHER_TIMEOUT:.0f} s")
    if new is None:
        failures.append("(c) no publisher within 60 s of the flip after the kill")
    if None in times:
        failures.append(f"(c) {times.count(None)} of {len(times)} flips after the publisher's kill did not reach every proxy")
    if errors:
        failures.append(f"(c) {len(errors)} answers were not from a backend during the publisher's kill: {errors[:5]}")
    return result


def pairs(text):
    return dict(item.split("=", 1) for item in text.split(","))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True)
    parser.add_argument("--secrets", type=Path, required=True)
    parser.add_argument("--servers", type=pairs, required=True)
    parser.add_argument("--proxies", type=pairs, required=True)
    parser.add_argument("--flips", type=int, default=50)
    parser.add_argument("--fault-flips", type=int, default=10)
    parser.add_argument("--cut", default="p3")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    consul = Consul(args.servers["s1"], args.secrets)
    addresses = list(args.proxies.values())
    failures = []
    # Every proxy serves all three backends, in every worker, before anything is measured.
    ready = wait_all(addresses, time.perf_counter(), gone=False, timeout=60)
    if None in ready.values():
        failures.append(f"not every worker of every proxy serves backend-3 at the start: {ready}")
        print(json.dumps({"failures": failures}, indent=2))
        return 1
    timeline = []
    times = [flip(consul, addresses, timeline=timeline, servers=args.servers) for _flip in range(args.flips)]
    result = {"proxies": len(addresses), "workers_per_proxy": WORKERS, "flip_to_every_worker": summary(times, len(times))}
    try:
        result["timeline"] = timeline_summary(timeline, args.run, args.proxies)
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:   # figures only: not a failure
        result["timeline"] = {"error": str(exc)}
    if None in times:
        failures.append(f"{times.count(None)} of {len(times)} flips did not reach every worker within {TIMEOUT:.0f} s")
    result["server_killed"] = fault_server_killed(args, consul, args.servers, args.proxies, failures)
    result["proxy_cut_off"] = fault_proxy_cut(args, consul, args.proxies, failures)
    result["publisher_killed"] = fault_publisher_killed(args, consul, args.proxies, failures)
    result["failures"] = failures
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n", encoding="utf-8")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
