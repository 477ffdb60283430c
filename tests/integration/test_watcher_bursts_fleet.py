"""The model-based burst test (test_watcher_bursts.py) with the fleet share: random bursts of Consul
operations (and the faults of issue 18, on the publisher's reads), a publisher watcher, and the watcher
whose interface is checked against the oracle a follower of the publisher's journal (fleet.py), which never
reads Consul's catalog or health itself. After each burst and a quiet period the follower's upstream file and
its real interface (the Lua flavor; a real Tengine in the last case, skipped without one) must equal the
oracle, within the zero-instance policy's and the removal guard's rules, exactly as for a single watcher;
the follower must still be following at the end (no fallback: what it applied came from the journal).

Budget: BURSTS_FLEET_OPS operations per configuration (default 200: well under a minute); BURSTS_SEED as in
test_watcher_bursts.py.
"""

from __future__ import annotations

import os
import random

import pytest

from test_watcher_bursts import BUDGET, CONFIGS, RETRIES, Bench, Mismatch, history_of  # pylint: disable=import-error
from tests.support import bursts
from tests.support.consul import ConsulAgent
from tests.support.watcher import WatcherProcess

FLEET = {"fleet_share": True, "fleet_heartbeat": 0.5, "fleet_stale_after": 3.0, "fleet_session_ttl": 10,
         "fleet_lock_delay": 1}


class FleetBench(Bench):
    """Bench's agent, fault proxy and checked interface, with a publisher in front: ``self.watcher`` (the
    one checked) is a follower."""

    publisher = publisher_interface = None

    def start(self):
        bursts.reset(self.agent)
        self.upstream_file.unlink(missing_ok=True)
        self.interface = self.flavor_class(workers=2, upstream_file=str(self.upstream_file)).start()
        self.publisher_interface = self.flavor_class(workers=1).start()
        self.proxy = bursts_proxy(self.agent)
        common = {"consul_url": self.proxy.url, "hosts_file": str(self.hosts), "drift_interval": 3600,
                  "consul_resync_interval": 3600, **RETRIES, **self.settings, **FLEET}
        self.publisher = WatcherProcess(self.workdir / "publisher", dyups_url=self.publisher_interface.api_url,
                                        upstream_file=str(self.workdir / "publisher.conf"), **common).start()
        self.publisher.wait_for(lambda: role(self.publisher) == "publisher", "the publisher", timeout=15)
        self.watcher = WatcherProcess(self.workdir / "follower", dyups_url=self.interface.api_url,
                                      upstream_file=str(self.upstream_file), **common).start()
        self.watcher.wait_for(lambda: role(self.watcher) == "follower", "the follower", timeout=15)
        return self

    def stop(self):
        super().stop()
        for part in (self.publisher, self.publisher_interface):
            if part is not None:
                try:
                    part.stop() if part is self.publisher else part.cleanup()
                except Exception:  # keep stopping; the test has already failed or passed
                    pass


def bursts_proxy(agent):
    from tests.support.consul_fault_proxy import FaultProxy   # pylint: disable=import-outside-toplevel
    return FaultProxy(agent.url).start()


def role(watcher):
    metrics = watcher.metrics()
    for name in ("publisher", "follower", "fallback"):
        if metrics.get(f"swallowkeeper_watcher_fleet_{name}") == 1:
            return name
    return None


@pytest.fixture(scope="module")
def agent():
    with ConsulAgent() as started:
        yield started


# the third case: no inline results and a journal of one entry, so that the follower reads each changed key,
# and every key whenever it missed a write (the paths the defaults take only now and then)
@pytest.mark.parametrize("config_name,flavor,journal", [
    ("delete-noguard", "lua", {}), ("keep-guard", "lua", {}),
    ("delete-noguard", "lua", {"fleet_inline_max": 0, "fleet_journal_entries": 1}), ("keep-guard", "tengine", {})])
def test_a_follower_converges_to_the_oracle_after_bursts(tmp_path, agent, config_name, flavor, journal):
    assert config_name in CONFIGS
    seed = (BUDGET.get("seed") or 1) + 100 + sorted(CONFIGS).index(config_name)
    rng = random.Random(seed)
    run = []
    target = int(os.environ.get("BURSTS_FLEET_OPS", "200"))
    while bursts.operation_count(run) < target:
        run.append(bursts.random_burst(rng, faults=BUDGET.get("faults", 0.1)))
    print(f"{config_name}: seed {seed}, {len(run)} bursts, {bursts.operation_count(run)} operations")
    bench = FleetBench(tmp_path / "run", agent, config_name, flavor)
    bench.settings.update(journal)
    try:
        bench.start()
        bursts.register_node_check(agent)
        for number, burst in enumerate(run):
            before, _wire = bench.applied()
            history = history_of(agent, before, burst)
            for op in burst:
                bursts.send(agent, op, bench.proxy)
            bench.proxy.heal()
            try:
                bench.converge(history)
            except Mismatch as exc:
                pytest.fail(f"burst {number} of seed {seed}: {exc}\nfollower log tail:\n"
                            f"{bench.watcher.log_text()[-4000:]}\npublisher log tail:\n"
                            f"{bench.publisher.log_text()[-3000:]}\nrun: {run[:number + 1]}")
        metrics = bench.watcher.metrics()
        assert role(bench.watcher) == "follower"
        assert metrics.get("swallowkeeper_watcher_fleet_fallbacks_total") == 0
        assert metrics.get("swallowkeeper_watcher_fleet_journal_seq", 0) > 0
        print(f"{config_name} {flavor} {journal}: the follower read every key "
              f"{metrics.get('swallowkeeper_watcher_fleet_full_reads_total'):.0f} time(s)")
    finally:
        bench.stop()
        bursts.reset(agent)
