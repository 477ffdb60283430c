"""Bursts of Consul changes with the watcher's own faults between and inside them (issue 18, item 5).

The burst test (test_watcher_bursts.py: its oracle, its checks, its shrinking) with four more kinds of
event, against a real Consul agent and the Lua flavor's real interface:

* ``["sighup", pause]``: the watcher reloads its settings (everything rebuilt, as at a start);
* ``["restart", pause]``: the watcher is stopped (SIGTERM) and started again on the same upstream file
  (``pause``: 0, in the middle of a burst, or 0.3 s after the last operation, between events);
* ``["dyups_cut"]``: the watcher's connection to the interface is cut (tests/support/cut_proxy.py, a relay
  in front of the real interface) until the burst ends, so POSTs and DELETEs fail and stay pending,
  across whatever SIGHUP or restart follows in the burst;
* a Consul outage while a change is held: whenever a burst leaves a change held, the watcher's connection to
  Consul is cut (the same relay, in front of the real agent) for twice ``removal_hold_seconds``; nothing
  applied may change meanwhile (the hold must not run out unconfirmed), and after the outage the state
  must converge to the oracle as always.

After each burst the file and the interface must match the oracle (within the zero-instance policy and
the removal guard, as in test_watcher_bursts.py). Three bursts in ten cut the interface from a random
moment and end with a SIGHUP or a restart, so that pushes are pending across it (a DELETE among them
is what issue 18's finding 6 lost). Budget: RESTART_BURSTS_OPS operations (default 100,
the CI profile), RESTART_BURSTS_SEED fixes the random sequence; a failing run is written to
tests/output/bursts/ (not shrunk) and RESTART_BURSTS_REPLAY=that-file replays it. Long profile:
``RESTART_BURSTS_OPS=100000 .venv/bin/python -m pytest tests/integration/test_watcher_bursts_restarts.py``.
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from tests.integration import test_watcher_bursts as base
from tests.support import bursts
from tests.support.consul import ConsulAgent
from tests.support.cut_proxy import CutProxy
from tests.support.watcher import WatcherProcess

HOLD_SECONDS = 2.0
CONFIGS = {
    # the guard in play: holds happen, run out by time (confirmed only) or are released
    "keep-guard-hold": {"zero_instances": "keep", "removal_hold_seconds": HOLD_SECONDS, "removal_guard_min": 2},
    "delete-noguard": {"zero_instances": "delete", "removal_guard_min": 100000},
}
FAULTS = (["sighup", 0], ["sighup", 0.3], ["restart", 0], ["restart", 0.3])   # [kind, pause before]
FAULT_KINDS = ("sighup", "restart", "dyups_cut")


class RestartBench(base.Bench):
    """The burst test's bench, with the watcher behind two relays (Consul, the interface) and restartable."""

    def __init__(self, workdir, agent, config_name):  # pylint: disable=super-init-not-called  # its CONFIGS
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flavor_class = base.flavor_class("lua")
        self.agent = agent
        self.config_name = config_name
        self.settings = dict(CONFIGS[config_name])
        self.hosts = self.workdir / "hosts"
        self.hosts.write_text(base.TEST_HOSTS)
        self.watcher = self.interface = self.fresh = None
        self.proxy = None   # the base bench's fault proxy in front of Consul: this bench has relays instead
        self.releases = self.fresh_checks = 0
        self.upstream_file = self.workdir / "upstreams.conf"
        self.consul_relay = self.dyups_relay = None
        self.reloads = self.restarts = self.outages = self.pending_at_fault = 0

    def start(self):
        bursts.reset(self.agent)
        self.upstream_file.unlink(missing_ok=True)
        state = self.upstream_file.parent / f".{self.upstream_file.name}.state.json"
        state.unlink(missing_ok=True)
        self.interface = self.flavor_class(workers=2, upstream_file=str(self.upstream_file)).start()
        self.fresh = self.flavor_class(workers=1).start()
        self.consul_relay = CutProxy(self.agent.http_port).start()
        self.dyups_relay = CutProxy(int(self.interface.api_url.rsplit(":", 1)[1])).start()
        self.start_watcher()
        self.watcher.wait_for(lambda: self.watcher.metrics().get("swallowkeeper_watcher_syncs_total", 0) >= 1,
                              "first sync")
        return self

    def start_watcher(self):
        self.watcher = WatcherProcess(
            self.workdir / "watcher", consul_url=self.consul_relay.url, dyups_url=self.dyups_relay.url,
            upstream_file=str(self.upstream_file), hosts_file=str(self.hosts), drift_interval=3600,
            consul_resync_interval=3600, dyups_timeout=1, **self.settings).start()

    def stop(self):
        super().stop()
        for relay in (self.consul_relay, self.dyups_relay):
            if relay is not None:
                relay.stop()

    def fault(self, op):
        kind = op[0]
        if kind in ("sighup", "restart"):
            if op[1:] and op[1]:
                time.sleep(op[1])   # between events: what was sent is synced (its pushes may have failed)
            if self.watcher.metrics()["swallowkeeper_watcher_pending_upstreams"]:
                self.pending_at_fault += 1
        if kind == "sighup":
            done = self.watcher.log_text().count("config reloaded")
            self.watcher.hup()
            self.watcher.wait_for(lambda: self.watcher.log_text().count("config reloaded") > done, "SIGHUP handled")
            self.reloads += 1
        elif kind == "restart":
            status = self.watcher.stop()
            if status != 0:
                raise base.Mismatch(f"the watcher exited {status} on SIGTERM")
            self.start_watcher()
            self.restarts += 1
        elif kind == "dyups_cut":
            self.dyups_relay.cut()

    def outage_while_held(self):
        """Cut Consul while a change is held: nothing applied may change (the hold may not run out)."""
        self.consul_relay.cut()
        try:
            self.watcher.wait_for(lambda: self.watcher.metrics()["swallowkeeper_watcher_consul_up"] == 0,
                                  "Consul unreachable", timeout=10)
            time.sleep(0.3)   # a sync of what was folded before the cut may still run
            before = self.applied()
            time.sleep(2 * HOLD_SECONDS)
            after = self.applied()
            if after != before:
                raise base.Mismatch(f"the applied state changed while Consul was unreachable with a change held:\n"
                                    f" before {before}\n after {after}")
        finally:
            self.consul_relay.restore()
        self.outages += 1

    def converge(self, history):
        """The burst test's converge, with a Consul outage first when the burst left a change held."""
        held, deadline = False, time.monotonic() + base.CONVERGE_TIMEOUT
        while time.monotonic() < deadline:
            try:
                held = self.check(history)
                break
            except base.Mismatch:
                time.sleep(0.02)
        if held:
            self.outage_while_held()
        return super().converge(history)


def random_run(rng, target):
    """Random bursts (tests/support/bursts.py) with faults inserted; one in four also deregisters every
    instance of two services, so that the removal guard holds changes often."""
    run = []
    while bursts.operation_count(run) < target:
        burst = bursts.random_burst(rng)
        if rng.random() < 0.25:
            for service in rng.sample(bursts.SERVICES[:3], 2):
                burst += [["deregister", service, slot] for slot in range(bursts.SLOTS)]
        for _fault in range(rng.choice((0, 1, 1, 2))):
            burst.insert(rng.randrange(len(burst) + 1), list(rng.choice(FAULTS)))
        if rng.random() < 0.3:   # the interface cut from a moment in the burst, then a reload or restart
            burst.insert(rng.randrange(len(burst)), ["dyups_cut"])
            burst.append([rng.choice(("sighup", "restart")), 0.3])
        run.append(burst)
    return run


def play(workdir, agent, config_name, run, counts=None):
    """Play ``run`` from a clean start; None, or (burst index, message)."""
    bench = RestartBench(workdir, agent, config_name)
    try:
        bench.start()
        bursts.register_node_check(agent)
        for number, burst in enumerate(run):
            before, _wire = bench.applied()
            history = base.history_of(agent, before, [op for op in burst if op[0] not in FAULT_KINDS])
            try:
                for op in burst:
                    if op[0] in FAULT_KINDS:
                        bench.fault(op)
                    else:
                        bursts.send(agent, op)
                bench.dyups_relay.restore()
                bench.converge(history)
                if number % base.FRESH_EVERY == base.FRESH_EVERY - 1:
                    bench.check_fresh()
            except (base.Mismatch, AssertionError) as exc:
                return number, f"{exc}\nwatcher log tail:\n{bench.watcher.log_text()[-4000:]}"
        return None
    finally:
        if counts is not None:
            counts.update(reloads=bench.reloads, restarts=bench.restarts, outages=bench.outages,
                          releases=bench.releases, pending_at_fault=bench.pending_at_fault)
        bench.stop()
        bursts.reset(agent)


@pytest.fixture(scope="module")
def agent():
    with ConsulAgent() as started:
        yield started


def budget():
    replay = os.environ.get("RESTART_BURSTS_REPLAY")
    if replay:
        return json.loads(Path(replay).read_text())
    seed = int(os.environ.get("RESTART_BURSTS_SEED") or random.SystemRandom().randrange(1, 10 ** 9))
    return {"seed": seed, "ops": int(os.environ.get("RESTART_BURSTS_OPS", "100"))}


BUDGET = budget()


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_bursts_with_reloads_restarts_and_outages_converge_to_the_oracle(tmp_path, agent, config_name):
    if "run" in BUDGET:
        if BUDGET["config"] != config_name:
            pytest.skip(f"replaying a run of {BUDGET['config']}")
        run, seed = BUDGET["run"], BUDGET["seed"]
    else:
        seed = BUDGET["seed"] + sorted(CONFIGS).index(config_name)
        run = random_run(random.Random(seed), BUDGET["ops"] // len(CONFIGS))
    print(f"{config_name}: seed {seed}, {len(run)} bursts, {bursts.operation_count(run)} operations")
    counts = {}
    started = time.monotonic()
    failure = play(tmp_path / "run", agent, config_name, run, counts)
    print(f"{config_name}: {time.monotonic() - started:.1f}s; {counts.get('reloads')} SIGHUP, "
          f"{counts.get('restarts')} restarts ({counts.get('pending_at_fault')} of both with pushes pending), "
          f"{counts.get('outages')} Consul outages with a change held, "
          f"{counts.get('releases')} held changes released")
    if failure is None:
        return
    number, message = failure
    failing = run[:number + 1]
    path = base.record(f"restarts-failure-{config_name}-{seed}.json",
                       {"config": config_name, "seed": seed, "run": failing})
    pytest.fail(f"{config_name}: burst {number} of seed {seed} did not converge to the oracle: {message}\n"
                f"run written to {path}; replay: RESTART_BURSTS_REPLAY={path} .venv/bin/python -m pytest "
                f"tests/integration/test_watcher_bursts_restarts.py")
