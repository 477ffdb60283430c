"""docs/monitoring/: the alert rules pass `promtool check rules` and their unit tests (`promtool test
rules`), and every metric the rules, their tests and the Grafana dashboard name is one the watcher
exports (tests/integration/test_watcher_monitoring.py checks the same names against a running watcher).

Without promtool (Debian package prometheus; tests/tools/install-system-deps.sh installs it) the promtool
checks are skipped, saying so; under CI=true they fail instead."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from tests.support import monitoring


def promtool():
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed (Debian package prometheus: tests/tools/install-system-deps.sh)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    return path


def test_promtool_check_rules():
    result = subprocess.run([promtool(), "check", "rules", str(monitoring.RULES)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_promtool_test_rules():
    result = subprocess.run([promtool(), "test", "rules", str(monitoring.RULES_TEST)], capture_output=True,
                            text=True, timeout=60, check=False, cwd=str(monitoring.MONITORING))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def watcher_names():
    metrics = Metrics()
    metrics.set_index("health_critical", 1)
    return monitoring.exported_names(metrics.prometheus())


@pytest.mark.parametrize("path", monitoring.FILES, ids=lambda path: path.name)
def test_every_metric_named_is_exported(path):
    used = monitoring.used_names(path)
    assert used, f"{path.name} names no metric"
    unknown = sorted(used - watcher_names())
    assert not unknown, f"{path.name} names metrics the watcher does not export: {unknown}"


def test_every_dashboard_query_names_an_exported_metric():
    exported = watcher_names()
    queries = monitoring.dashboard_queries()
    assert len(queries) >= 12
    for query in queries:
        named = set(monitoring.NAME.findall(query))
        assert named and named <= exported, f"{query!r} names {sorted(named - exported) or 'no metric'}"


def test_the_check_catches_an_unknown_name(tmp_path):
    """The name check itself: a misspelt metric is found."""
    path = tmp_path / "rules.yml"
    path.write_text("expr: swallowkeeper_watcher_consul_upp == 0 and process_open_fd > 1\n")
    assert sorted(monitoring.used_names(path) - watcher_names()) == ["process_open_fd",
                                                                     "swallowkeeper_watcher_consul_upp"]
