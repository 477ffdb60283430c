"""Bursts of Consul changes against a real agent, a real interface and the real watcher (model-based).

The world changes in bursts (a rolling deploy, an autoscaler, a network blip), so this test sends
random sequences of operations to a real Consul agent (register, deregister, re-register with another
port / address / tags / Meta, check pass / warn / fail, a node check; several services, gray tags,
and services and instances the watcher must skip), in bursts with random gaps of 0 to 50 ms, and the
faults of issue 18 (BURSTS_FAULTS, default 0.1: the share of operations that are faults): one
service's reads answering 500 until the burst ends (the watcher reads Consul through
tests/support/consul_fault_proxy.py, a loopback proxy to the real agent), service names Consul accepts
but no URL path reads (``x//y``, ``a/../b``, ``..``), an instance on a node named ``n//1``, and a
node re-registered with a new address (tests/support/bursts.py lists them). After each burst (its
faults healed) and a quiet period it checks, against the Lua flavor's real interface:

* the running watcher's upstream file and the interface's /detail equal the oracle
  (tests/support/bursts.py: written in the test from plain Consul reads), within the zero-instance
  policy's and the removal guard's rules (below);
* every few bursts, a freshly started watcher (``--once`` on an empty file and an empty interface)
  produces exactly the oracle too.

Three configurations: zero_instances ``delete`` with the guard off (everything exact), ``keep`` and
``down`` with the default removal guard; all three on the Lua flavor, two of them on a real Tengine
too (tests/support/tengine.py; skipped without one, failed under CI=true). A service whose instances all fail keeps servers it had
(``down``: marked down) under keep/down, never one it never had; a change held by the guard keeps
every server the oracle wants plus only servers it had, and once released (POST /release) the
state is exact again.

Budget: BURSTS_OPS operations in all (default 2500, split over the cases); BURSTS_SEED fixes
the random sequence (printed). On a failure the run is written to tests/output/bursts/, shrunk by
replaying smaller runs from scratch for up to BURSTS_SHRINK_SECONDS (default 120), and the smallest
failing run is written too; ``BURSTS_REPLAY=that-file`` replays it exactly. The long profile:
``BURSTS_OPS=100000 .venv/bin/python -m pytest tests/integration/test_watcher_bursts.py``.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import time
from pathlib import Path

import pytest

from tests.support import bursts
from tests.support.consul import ConsulAgent
from tests.support.consul_fault_proxy import FaultProxy
from tests.support.nginx_lua import TEST_HOSTS
from tests.support.tengine import flavor_class
from tests.support.watcher import WatcherProcess, run_once

ROOT = Path(__file__).resolve().parents[2]
OUTPUT = ROOT / "tests" / "output" / "bursts"
CONFIGS = {
    "delete-noguard": {"zero_instances": "delete", "removal_guard_min": 100000},
    "keep-guard": {"zero_instances": "keep"},
    "down-guard": {"zero_instances": "down"},
}
# (configuration, interface): every configuration on the Lua flavor, two on a real Tengine (its other
# workers see a POST within dyups_read_msg_timeout; the checks poll until the state holds).
CASES = [(name, "lua") for name in sorted(CONFIGS)] + [("delete-noguard", "tengine"), ("keep-guard", "tengine")]
CONVERGE_TIMEOUT = 5.0   # seconds after a burst; the watcher takes tens of milliseconds (docs/benchmarks.md)
SETTLE = 0.2             # the state must still hold this long after it first matched
FRESH_EVERY = 5          # bursts between two fresh --once comparisons
# retries of a failed read (a fault): quick, so that a burst's faults heal within CONVERGE_TIMEOUT
RETRIES = {"retry_initial": 0.1, "retry_max": 0.5}


class Mismatch(AssertionError):
    pass


class Bench:
    """One Consul agent, two interfaces (the running watcher's and a fresh one's) and the watcher."""

    def __init__(self, workdir, agent, config_name, flavor="lua"):
        self.workdir = Path(workdir)
        self.flavor_class = flavor_class(flavor)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.agent = agent
        self.config_name = config_name
        self.settings = dict(CONFIGS[config_name])
        self.hosts = self.workdir / "hosts"
        self.hosts.write_text(TEST_HOSTS)
        self.watcher = self.interface = self.fresh = self.proxy = None
        self.releases = 0        # held changes released (the removal guard at work)
        self.fresh_checks = 0
        self.upstream_file = self.workdir / "upstreams.conf"

    def start(self):
        bursts.reset(self.agent)
        self.upstream_file.unlink(missing_ok=True)
        self.interface = self.flavor_class(workers=2, upstream_file=str(self.upstream_file)).start()
        self.fresh = self.flavor_class(workers=1).start()
        self.proxy = FaultProxy(self.agent.url).start()
        self.watcher = WatcherProcess(
            self.workdir / "watcher", consul_url=self.proxy.url, dyups_url=self.interface.api_url,
            upstream_file=str(self.upstream_file), hosts_file=str(self.hosts), drift_interval=3600,
            consul_resync_interval=3600, **RETRIES, **self.settings).start()
        # nothing registered yet: an empty state, synced
        self.watcher.wait_for(lambda: self.watcher.metrics().get("swallowkeeper_watcher_syncs_total", 0) >= 1, "first sync")
        return self

    def stop(self):
        for part in (self.watcher, self.interface, self.fresh, self.proxy):
            if part is None:
                continue
            try:
                part.stop() if part is self.watcher or part is self.proxy else part.cleanup()
            except Exception:  # keep stopping the others; the test has already failed or passed
                pass

    # -- checks ------------------------------------------------------------------------------------
    def applied(self):
        return bursts.read_file(self.upstream_file), bursts.read_detail(self.interface)

    def check(self, history):
        """Raise Mismatch when the applied state breaks the rules for the oracle now (see module doc)."""
        upstreams, empty = bursts.oracle(self.agent)
        expected = bursts.expected_servers(upstreams)
        on_file, on_wire = self.applied()
        if on_file != on_wire:
            raise Mismatch(f"the file and the interface differ:\n file {on_file}\n wire {on_wire}")
        held = self.watcher.status()["status"].get("held")
        policy = self.settings["zero_instances"]
        problems = []
        for name in sorted(set(on_file) | set(expected)):
            want, have = expected.get(name), on_file.get(name)
            allowed = history.get(name, set())
            if want is not None and (have == want or (held and have is not None and want.items() <= have.items()
                                                      and set(have) - set(want) <= allowed)):
                continue
            if want is None and name in empty and policy != "delete":
                # zero passing instances: keep (or mark down) servers it had, or it never had any
                if have is None or (set(have) <= allowed and all(down == (policy == "down")
                                                                 for _w, _b, down in have.values())):
                    continue
            if want is None and have is not None and held and set(have) <= allowed:
                continue
            problems.append(f"{name}: oracle {want}{' (empty: ' + policy + ')' if name in empty else ''}, "
                            f"applied {have}{' (a change is held)' if held else ''}")
        if problems:
            raise Mismatch("; ".join(problems))
        return bool(held)

    def converge(self, history):
        """Wait until check() passes and still passes SETTLE later; release a held change and wait
        again. Returns seconds from the call (after the burst's last operation and gap) to the first pass."""
        started = time.monotonic()
        deadline = started + CONVERGE_TIMEOUT
        first = None
        while True:
            try:
                held = self.check(history)
                if first is None:
                    first = time.monotonic() - started
                    time.sleep(SETTLE)
                    continue
                if held:
                    self.watcher.release()
                    self.releases += 1
                    # once released, held is gone from /status and check() allows no held server any
                    # more; the history stays (an empty upstream may still keep servers it had: keep/down)
                    first, deadline = None, time.monotonic() + CONVERGE_TIMEOUT
                    continue
                return first
            except Mismatch:
                first = None
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def check_fresh(self):
        """A fresh watcher (--once, empty file, empty interface) applies exactly the oracle."""
        for name in bursts.read_detail(self.fresh):
            self.fresh.api("DELETE", f"/upstream/{name}")
        fresh_file = self.workdir / "fresh.conf"
        fresh_file.unlink(missing_ok=True)
        done = run_once(self.workdir / "once", consul_url=self.agent.url, dyups_url=self.fresh.api_url,
                        upstream_file=str(fresh_file), hosts_file=str(self.hosts), **self.settings)
        if done.returncode != 0:
            raise Mismatch(f"--once exited {done.returncode}: {done.stderr[-2000:]}")
        self.fresh_checks += 1
        upstreams, _empty = bursts.oracle(self.agent)
        expected = bursts.expected_servers(upstreams)
        got_file, got_wire = bursts.read_file(fresh_file), bursts.read_detail(self.fresh)
        if not got_file == got_wire == expected:
            raise Mismatch(f"a fresh --once differs from the oracle:\n oracle {expected}\n file {got_file}\n"
                           f" wire {got_wire}")


def history_of(agent, before, burst):
    """{upstream: addresses it may keep}: what it had before the burst, every address an instance in
    Consul had then (passing or not: a check may pass for a moment within the burst) and every
    address an instance registered in the burst had; intermediate syncs may have applied any of them."""
    allowed = {name: set(servers) for name, servers in before.items()}
    known = {}
    bursts.oracle(agent, known)
    for name, addresses in known.items():
        allowed.setdefault(name, set()).update(addresses)
    for op in burst:
        if op[0] == "ext" and op[1] != "deregister":
            allowed.setdefault("Api", set()).add(f"{op[2]}:{bursts.EXT_PORT}")
        if op[0] != "register":
            continue
        _kind, service, slot, address, variant, tags, _meta, _status = op
        grays = sorted({tag[5:] for tag in tags if tag.startswith("gray=")})
        name = service if not grays or grays[0] == "default" else f"{service}_{grays[0]}"
        allowed.setdefault(name, set()).add(f"{address or '127.0.0.1'}:{bursts.port_of(service, slot, variant)}")
    return allowed


def play(workdir, agent, config_name, run, flavor="lua", fresh_every=FRESH_EVERY, latencies=None, counts=None):
    """Play ``run`` (a list of bursts) from a clean start; returns None, or (burst index, message).
    ``counts`` (a dict) gets the number of held changes released and of fresh --once comparisons."""
    bench = Bench(workdir, agent, config_name, flavor)
    try:
        bench.start()
        bursts.register_node_check(agent)
        history = {}
        for number, burst in enumerate(run):
            before, _wire = bench.applied()
            history = {name: history.get(name, set()) | addresses
                       for name, addresses in history_of(agent, before, burst).items()}
            for op in burst:
                bursts.send(agent, op, bench.proxy)
            bench.proxy.heal()   # a burst's faults end with it: then the watcher must converge
            try:
                seconds = bench.converge(history)
                if latencies is not None:
                    latencies.append(seconds)
                if fresh_every and number % fresh_every == fresh_every - 1:
                    bench.check_fresh()
            except Mismatch as exc:
                return number, f"{exc}\nwatcher log tail:\n{bench.watcher.log_text()[-4000:]}"
            history = {}
        return None
    finally:
        if counts is not None:
            counts.update(releases=bench.releases, fresh_checks=bench.fresh_checks)
        bench.stop()
        bursts.reset(agent)


def shrink(workdir, agent, config_name, flavor, run, seconds):
    """A smaller run that still fails, within ``seconds``: the shortest failing tail of ``run`` (its
    last burst failed), then without whole bursts, then without single operations."""
    deadline = time.monotonic() + seconds
    attempt = [0]

    def fails(candidate):
        attempt[0] += 1
        return play(Path(workdir) / f"shrink-{attempt[0]}", agent, config_name, candidate, flavor,
                    fresh_every=1) is not None

    best = run
    tail = 1
    while tail < len(best) and time.monotonic() < deadline:   # first the shortest failing tail: cheap replays
        if fails(best[-tail:]):
            best = best[-tail:]
            break
        tail *= 2
    chunk = max(1, len(best) // 2)
    while chunk >= 1 and time.monotonic() < deadline:   # drop whole bursts, then single operations
        index, progressed = 0, False
        while index < len(best) and time.monotonic() < deadline:
            candidate = best[:index] + best[index + chunk:]
            if candidate and fails(candidate):
                best, progressed = candidate, True
            else:
                index += chunk
        if not progressed:
            chunk //= 2
    for number in range(len(best)):
        burst = best[number]
        index = 0
        while index < len(burst) and time.monotonic() < deadline:
            candidate = best[:number] + [burst[:index] + burst[index + 1:]] + best[number + 1:]
            if candidate[number] and fails(candidate):
                burst = candidate[number]
                best = candidate
            else:
                index += 1
    return best


def record(name, payload):
    OUTPUT.mkdir(parents=True, exist_ok=True)
    path = OUTPUT / name
    path.write_text(json.dumps(payload, indent=1))
    return path


@pytest.fixture(scope="module")
def agent():
    with ConsulAgent() as started:
        yield started


def budget():
    replay = os.environ.get("BURSTS_REPLAY")
    if replay:
        return json.loads(Path(replay).read_text())
    seed = int(os.environ.get("BURSTS_SEED") or random.SystemRandom().randrange(1, 10 ** 9))
    return {"seed": seed, "ops": int(os.environ.get("BURSTS_OPS", "2500")),
            "faults": float(os.environ.get("BURSTS_FAULTS", "0.1"))}


BUDGET = budget()


@pytest.mark.parametrize("config_name,flavor", CASES)
def test_bursts_of_consul_changes_converge_to_the_oracle(tmp_path, agent, config_name, flavor):
    case = f"{config_name}-{flavor}"
    if "run" in BUDGET:   # a replay of a recorded run
        if (BUDGET["config"], BUDGET.get("flavor", "lua")) != (config_name, flavor):
            pytest.skip(f"replaying a run of {BUDGET['config']} on {BUDGET.get('flavor', 'lua')}")
        run, seed = BUDGET["run"], BUDGET.get("seed")
    else:
        seed = BUDGET["seed"] + CASES.index((config_name, flavor))
        rng = random.Random(seed)
        run, target = [], BUDGET["ops"] // len(CASES)
        while bursts.operation_count(run) < target:
            run.append(bursts.random_burst(rng, faults=BUDGET["faults"]))
    print(f"{case}: seed {seed}, {len(run)} bursts, {bursts.operation_count(run)} operations")
    latencies, counts = [], {}
    failure = play(tmp_path / "run", agent, config_name, run, flavor, latencies=latencies, counts=counts)
    if latencies:
        print(f"{case}: converged after each burst in median {statistics.median(latencies) * 1000:.0f} ms, "
              f"max {max(latencies) * 1000:.0f} ms; {counts['releases']} held change(s) released, "
              f"{counts['fresh_checks']} fresh --once comparisons")
    if failure is None:
        return
    number, message = failure
    failing = run[:number + 1]
    path = record(f"failure-{case}-{seed}.json", {"config": config_name, "flavor": flavor, "seed": seed,
                                                  "run": failing})
    smallest = shrink(tmp_path / "shrink", agent, config_name, flavor, failing,
                      float(os.environ.get("BURSTS_SHRINK_SECONDS", "120")))
    small = record(f"failure-{case}-{seed}-shrunk.json", {"config": config_name, "flavor": flavor, "seed": seed,
                                                          "run": smallest})
    pytest.fail(f"{case}: burst {number} of seed {seed} did not converge to the oracle: {message}\n"
                f"run written to {path}; shrunk to {bursts.operation_count(smallest)} operation(s) in "
                f"{len(smallest)} burst(s): {small}\nreplay: BURSTS_REPLAY={small} .venv/bin/python -m pytest "
                f"tests/integration/test_watcher_bursts.py\n{json.dumps(smallest)}")
