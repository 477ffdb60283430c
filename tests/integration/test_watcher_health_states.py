"""The two health polls against a real agent: a check moving between warning and critical is never passing.

The watcher reads health with two long polls, ``/v1/health/state/critical`` and
``/v1/health/state/warning`` (plugins/watcher/consul_source.py). They answer separately, so a check
that moves from one state to the other can be in neither answer for a moment; folded so, an
instance with another check listed would be updated in place with the moving check passing. Here
one instance has two TTL checks that a thread flips between warning and critical as fast as the
agent takes it, never passing, while the real long polls run and a loop folds their answers as
they come (no quiescence: one state's answer often comes alone). After every fold the cache must
hold neither check as passing, and the instance must never be mapped as serving (what the watcher
would POST); with ``include_warning`` (warning counts as passing) only the first holds, as the
instance serves whenever both checks are warning. Then both checks go passing -> warning ->
critical -> passing, and each step must end mapped right.

On the code before the two polls (one filtered ``/v1/health/state/any`` answer, a check is in it or
not) this cannot fail; it fails when the other state's catch-up read is left out (checked by hand,
docs/benchmarks.md, "Two health polls").
"""

from __future__ import annotations

import queue
import random
import threading
import time

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import ConsulSource
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from tests.support.consul import consul_agent  # noqa: F401 (fixture)  # pylint: disable=unused-import  # pytest fixtures
from tests.support.consul import LOOPBACK_OPT_IN

CHECKS = ("race-a", "race-b")
FLIP_SECONDS = 4.0


@pytest.fixture
def agent(consul_agent):  # noqa: F811
    yield consul_agent
    consul_agent.clear_services()


def register(agent):
    """Service Race: race-1 (two TTL checks, race-a critical and race-b warning) and race-2 (passing)."""
    agent.register("Race", "race-2", port=18602)
    agent.call("PUT", "/v1/agent/service/register", {
        "Name": "Race", "ID": "race-1", "Port": 18601, "Address": "127.0.0.1",
        "Checks": [{"CheckID": "race-a", "Name": "a", "TTL": "600s", "Status": "critical"},
                   {"CheckID": "race-b", "Name": "b", "TTL": "600s", "Status": "warning"}]})
    agent._registered.add("race-1")  # pylint: disable=protected-access  # cleared with the others
    agent.wait_until(lambda: len(agent.get("/v1/health/checks/Race")) == 3, "race-1's two checks")


def set_check(agent, check_id, status):
    verb = {"passing": "pass", "warning": "warn", "critical": "fail"}[status]
    agent.call("PUT", f"/v1/agent/check/{verb}/{check_id}")


def race_1(source):
    """(the cache's (check id, status) pairs of race-1, whether race-1 is mapped as serving)."""
    key = next((key for key in source.entries.get("Race", {}) if key[1] == "race-1"), None)
    pairs = source.checks.get(key, ()) if key else ()
    upstream = source.mapping().upstreams.get("Race")
    serving = upstream is not None and any(server.port == 18601 for server in upstream.servers)
    return pairs, serving


class Folding:
    """The daemon's part: fold the long polls' answers as they come, checking after every fold."""

    def __init__(self, source, include_warning):
        self.source = source
        self.include_warning = include_warning
        self.events = queue.Queue()
        self.folds = 0
        self.seen = set()   # (check id, status) pairs seen in the cache for race-1

    def fold(self, timeout):
        try:
            batch = [self.events.get(timeout=timeout)]
        except queue.Empty:
            return
        while True:
            try:
                batch.append(self.events.get_nowait())
            except queue.Empty:
                break
        self.source.apply_events(batch)
        self.folds += 1

    def never_passing(self):
        pairs, serving = race_1(self.source)
        self.seen.update(pairs)
        passing = [check_id for check_id, status in pairs if status == "passing"]
        assert not passing, f"fold {self.folds}: {passing} held as passing, never passing in Consul ({pairs})"
        if not self.include_warning:
            assert not serving, f"fold {self.folds}: race-1 mapped as serving with {pairs}"

    def until(self, predicate, what, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"{what}: not within {timeout} s (race-1: {race_1(self.source)})"
            self.fold(0.05)


@pytest.mark.parametrize("include_warning", [False, True], ids=["default", "include-warning"])
def test_a_check_moving_between_warning_and_critical_is_never_taken_for_passing(agent, include_warning):
    register(agent)
    settings = watcher_settings.build({"consul_url": agent.url, "status_listen": "", "include_warning": include_warning,
                                       "upstream_file": "/nonexistent/upstreams.conf", **LOOPBACK_OPT_IN})
    source = ConsulSource(settings, Metrics())
    loop = Folding(source, include_warning)
    stop = threading.Event()
    flips = []

    def flip():   # both checks between warning and critical, interleaved, never passing
        rng = random.Random(20261207)
        statuses = {"race-a": "critical", "race-b": "warning"}
        while not stop.is_set():
            check_id = rng.choice(CHECKS)
            statuses[check_id] = "warning" if statuses[check_id] == "critical" else "critical"
            set_check(agent, check_id, statuses[check_id])
            flips.append(check_id)
            time.sleep(rng.choice((0, 0, 0.001, 0.003)))

    flipper = threading.Thread(target=flip, name="flipper", daemon=True)
    try:
        source.refresh_all()
        loop.never_passing()
        source.start_watching(loop.events)
        flipper.start()
        ends = time.monotonic() + FLIP_SECONDS
        while time.monotonic() < ends:
            loop.fold(0.05)
            loop.never_passing()
        stop.set()
        flipper.join(5)
        loop.until(loop.events.empty, "the answers of the flips folded")
        loop.never_passing()
        # both states were seen on both checks, or the race was not run
        assert {("race-a", "warning"), ("race-a", "critical"), ("race-b", "warning"), ("race-b", "critical")} <= loop.seen
        assert len(flips) > 100 and loop.folds > 50, (len(flips), loop.folds)
        print(f"{len(flips)} flips, {loop.folds} folds, "
              f"{source.metrics.counters.get('consul_health_catchup_reads')} catch-up reads")

        # passing -> warning -> critical -> passing ends right after each step
        for status in ("passing", "warning", "critical", "passing"):
            for check_id in CHECKS:
                set_check(agent, check_id, status)
            serves = status == "passing" or (status == "warning" and include_warning)
            loop.until(lambda status=status, serves=serves: race_1(source) == (
                tuple((check_id, status) for check_id in CHECKS), serves), f"race-1 {status}")
    finally:
        stop.set()
        flipper.join(5)
        source.stop()
