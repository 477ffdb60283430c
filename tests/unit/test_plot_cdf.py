# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""tests/benchmarks/plot_cdf.py: the CDF figure drawn from bench_watcher.py's JSON (its summary's samples_ms)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from tests.benchmarks import bench_watcher, plot_cdf

SVG = "{http://www.w3.org/2000/svg}"


def run_json(tmp_path, row):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"date": "d", "machine": "m", "sizes": [row]}))
    return path


def test_one_line_per_watcher_and_flavor_ending_at_the_propagated_share(tmp_path):
    row = {"upstreams": 1000,
           "ours_health_flip": bench_watcher.summary([0.03, 0.04, 0.05, 0.2], 4),
           "tengine_ours_health_flip": bench_watcher.summary([0.03, 0.035], 2),
           "original_health_flip": bench_watcher.summary([None, None], 2),
           "ours_scale_out": bench_watcher.summary([0.02, None], 2)}
    assert row["ours_health_flip"]["samples_ms"] == [30.0, 40.0, 50.0, 200.0]
    out = tmp_path / "figure.svg"
    assert plot_cdf.main([str(run_json(tmp_path, row)), str(out)]) == 0
    lines = ET.parse(out).getroot().findall(f"{SVG}polyline")
    assert len(lines) == 4                                  # 3 series of health flips, 1 of scale-outs
    ends = [float(line.get("points").split()[-1].split(",")[1]) for line in lines]
    top, bottom = plot_cdf.TOP, plot_cdf.TOP + plot_cdf.PANEL_H
    assert ends[0] == pytest.approx(top) and ends[1] == pytest.approx(top)   # every flip propagated: 100 %
    assert ends[2] == pytest.approx(bottom)                                  # the original approach: 0 %
    second_top = top + plot_cdf.PANEL_H + plot_cdf.GAP
    assert ends[3] == pytest.approx(second_top + plot_cdf.PANEL_H / 2)      # 1 of 2 scale-outs: 50 %


def test_a_run_without_samples_is_refused_saying_why(tmp_path):
    row = {"upstreams": 10, "ours_health_flip": {"attempts": 2, "propagated": 2, "p50_ms": 3.0}}
    with pytest.raises(SystemExit, match="no samples_ms"):
        plot_cdf.main([str(run_json(tmp_path, row)), str(tmp_path / "x.svg")])
