"""The resilience tests record their figures: tests/output/resilience-short.json at the end of the session."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.resilience import scenarios
from tests.resilience.run import machine

OUTPUT = Path(__file__).resolve().parents[1] / "output" / "resilience-short.json"


def pytest_configure(config):
    """SIGTERM (tests/tools/bench.sh's timeout) unwinds the running test, so its servers are stopped."""
    signal.signal(signal.SIGTERM, lambda *_args: sys.exit(143))


@pytest.fixture(scope="session")
def record():
    """``record(part, result)``: keep a scenario's figures for the session's report."""
    results = {}
    started = time.monotonic()
    yield results.__setitem__
    if results:
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_text(json.dumps({
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": machine(), "sizes": "short",
            "parameters": scenarios.SHORT, "command": "pytest tests/resilience", "seconds":
            round(time.monotonic() - started, 1), "results": results,
            "violations": scenarios.violations(results)}, indent=1, default=str))
