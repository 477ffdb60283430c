"""The resilience properties, at the SHORT sizes (tests/tools/bench.sh --short runs this file).

Each test runs one scenario of scenarios.py on its own real stack (Consul, backends, nginx, the
watcher or the reload baseline, load), records its figures (tests/output/resilience-short.json)
and asserts the properties of ``scenarios.violations``: counts of lost requests, dropped
websockets, lost upstreams, invalid files and bodies, never timings. The long version:
tests/resilience/run.py.
"""

from __future__ import annotations

import pytest

from tests.resilience import scenarios
from tests.support.tengine import require_tengine


# The short run keeps one reload baseline (B); B0 (no worker_shutdown_timeout) and BT (the reload on
# Tengine) are measured by the long run (tests/resilience/run.py), whose figures docs/benchmarks.md quotes.
SHORT_APPROACHES = ("A", "AT", "B")


@pytest.mark.parametrize("approach", SHORT_APPROACHES)
def test_scale_events_under_load(approach, tmp_path, record):
    """A: no failed request, no dropped websocket, no reload, converged. B (the baseline): measured; it
    must follow Consul, or the comparison means nothing. AT: A on a real Tengine (skipped without
    $TENGINE_BIN, failed under CI=true)."""
    if scenarios.APPROACHES[approach].get("flavor") == "tengine":
        require_tengine()
    result = scenarios.scale_events(tmp_path, approach, scenarios.SHORT["scale"])
    part = f"scale:{approach}"
    record(part, result)
    assert scenarios.violations({part: result}) == []
    assert result["events"] == scenarios.SHORT["scale"]["events"]
    if approach.startswith("A"):
        assert result["reloads"] == 0 and result["upstream_changes_applied"] >= result["events"]
    else:
        assert result["reloads"] >= result["events"]


def test_rolling_deploy_under_load(tmp_path, record):
    """Every instance replaced (new one up and old one critical at once, then deregistered): no failed
    request, no dropped websocket, no request to an instance after its check went critical plus the
    propagation bound, converged, nginx never reloaded."""
    result = scenarios.rolling_deploy(tmp_path, scenarios.SHORT["rolling"])
    record("rolling", result)
    assert scenarios.violations({"rolling": result}) == []
    assert result["instances_replaced"] == 6 and result["answers_recorded"] > 0


@pytest.mark.parametrize("fault", list(scenarios.FAULTS))
def test_fault_under_load(fault, tmp_path, record):
    """No upstream lost, never an invalid file, recovered after the fault; while nginx runs, no
    failed request and no dropped websocket."""
    result = scenarios.run_fault(fault, tmp_path, scenarios.SHORT["faults"])
    part = f"fault:{fault}"
    record(part, result)
    if result.get("skipped"):
        pytest.skip(result["skipped"])
    assert scenarios.violations({part: result}) == []
    assert result["interface_samples"] > 0 and result["requests"] > 0


def test_fuzzed_consul_answers_to_the_real_watcher(tmp_path, record):
    """The watcher never crashes, never writes an invalid file, never posts an invalid body, and
    follows Consul again after every batch of fuzzed answers."""
    result = scenarios.fuzz_consul_answers(tmp_path, scenarios.SHORT["fuzz"])
    record("fuzz", result)
    assert scenarios.violations({"fuzz": result}) == [], "\n\n".join(result["problems"])
    assert result["cases"] == scenarios.SHORT["fuzz"]["cases"]
    assert result["answers_mutated"] >= result["cases"] - result["not_delivered"]
    assert result["posts"] > 0
