"""Hypothesis profiles for the property tests, and the count of cases each one ran.

``HYPOTHESIS_PROFILE=ci`` (the default: tests/run.sh's unit stage, under a minute) or ``long`` (many
more examples: ``HYPOTHESIS_PROFILE=long .venv/bin/python -m pytest tests/unit/property``, which
tests/tools/bench.sh runs). At the end of the session the number of examples each property ran is
printed and written to tests/output/property-cases-<profile>.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from hypothesis import HealthCheck, settings

from tests.unit.property.strategies import CASES

settings.register_profile("ci", max_examples=300, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")
settings.load_profile(PROFILE)
OUTPUT = Path(__file__).resolve().parents[2] / "output"


def pytest_terminal_summary(terminalreporter):
    if not CASES:
        return
    terminalreporter.write_sep("-", f"property cases run (hypothesis profile {PROFILE})")
    for name, number in sorted(CASES.items()):
        terminalreporter.write_line(f"{number:8d}  {name}")
    terminalreporter.write_line(f"{sum(CASES.values()):8d}  in all")
    if OUTPUT.is_dir():
        (OUTPUT / f"property-cases-{PROFILE}.json").write_text(
            json.dumps({"profile": PROFILE, "cases": dict(sorted(CASES.items())), "total": sum(CASES.values())},
                       indent=1))
