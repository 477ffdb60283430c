"""The fleet's per-stage timeline (extensions/molecule/fleet_host/fleet_check.py): which watcher log line
belongs to which flip, and what each stage is measured from. The journal is replaced by prepared lines
(the real one is read over ssh from the booted proxies, in the fleet_host scenario)."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load():
    spec = importlib.util.spec_from_file_location("fleet_check", ROOT / "extensions/molecule/fleet_host/fleet_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_each_flip_takes_the_first_line_after_it_and_stages_count_from_its_request(monkeypatch):
    fleet = load()
    # two flips at 1000.0 and 1010.0; p1's watcher answered 40 ms after flip 1 (Consul's answer 15 ms
    # before that), and twice after flip 2 (the second line, a repair, must not count); p2 missed flip 1
    lines = {"p1": [(1000.040, 15.0), (1010.030, 5.0), (1010.500, 1.0)], "p2": [(1010.060, 20.0)]}
    monkeypatch.setattr(fleet, "watcher_lines", lambda run, name, since: lines[name])
    timeline = [
        {"sent": 1000.0, "servers": {"s1": 1000.010, "s2": 1000.020},
         "workers": {"A1": {101: (1000.045, 1000.050), 102: (1000.047, 1000.070), "stale": 1000.030},
                     "A2": {}}},
        {"sent": 1010.0, "servers": {"s1": 1010.012, "s2": 1010.014},
         "workers": {"A1": {101: (1010.035, 1010.040), 102: (1010.033, 1010.036)},
                     "A2": {201: (1010.065, 1010.080), 202: (1010.061, 1010.090), "stale": None}}},
    ]
    found = fleet.timeline_summary(timeline, "run", {"p1": "A1", "p2": "A2"})
    assert found["server_applied s2"] == {"flips": 2, "p50_ms": 20.0, "p90_ms": 20.0, "max_ms": 20.0}
    assert found["watcher_read p1"]["max_ms"] == 25.0 and found["watcher_read p1"]["flips"] == 2
    assert found["interface_answered p1"] == {"flips": 2, "p50_ms": 40.0, "p90_ms": 40.0, "max_ms": 40.0}
    assert found["interface_answered p2"] == {"flips": 1, "p50_ms": 60.0, "p90_ms": 60.0, "max_ms": 60.0}
    assert found["worker_first p1"]["max_ms"] == 47.0 and found["worker_confirmed p1"]["max_ms"] == 70.0
    assert found["worker_first p2"] == {"flips": 1, "p50_ms": 65.0, "p90_ms": 65.0, "max_ms": 65.0}
    assert found["last_stale p1"] == {"flips": 1, "p50_ms": 30.0, "p90_ms": 30.0, "max_ms": 30.0}
    assert found["last_stale p2"] == {"flips": 0}
