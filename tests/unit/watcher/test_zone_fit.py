"""zone_fit.py: the model of Tengine's dyups_shm_zone_size, against what Tengine 3.2.0 took, and the Syncer's use."""

from __future__ import annotations

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher import zone_fit
from tests.unit.watcher.test_syncer import fake, make  # noqa: F401  (fixtures)  # pylint: disable=unused-import

# Measured on Tengine 3.2.0 (issue 25): (zone, workers) -> the most pages of body one POST took in an empty
# zone (one more answered 500 "update success but not sync to other process").
TENGINE_TOOK = {("32k", 2): 4, ("40k", 16): 4, ("64k", 1): 11, ("64k", 2): 12, ("64k", 4): 10, ("64k", 8): 12,
                ("128k", 2): 28, ("1m", 2): 251}


@pytest.mark.parametrize("zone, workers", sorted(TENGINE_TOOK))
def test_the_model_never_sends_what_tengine_refused_and_refuses_at_most_two_pages_it_took(zone, workers):
    took = TENGINE_TOOK[(zone, workers)] * zone_fit.PAGE
    largest = zone_fit.largest_body(zone_fit.parse_size(zone), "z12")
    assert took - 2 * zone_fit.PAGE <= largest <= took
    assert zone_fit.fits("z12", "x" * largest, zone_fit.parse_size(zone))
    assert not zone_fit.fits("z12", "x" * (took + 1), zone_fit.parse_size(zone))


def test_zone_pages_follow_ngx_slab_init():
    assert [zone_fit.zone_pages(zone_fit.parse_size(size)) for size in ("28k", "32k", "64k", "2m")] == [6, 7, 15, 508]
    assert zone_fit.zone_pages(1000) == 0


@pytest.mark.parametrize("text, expected", [("2m", 2 << 20), ("512K", 512 << 10), ("4096", 4096), (" 1M ", 1 << 20)])
def test_parse_size(text, expected):
    assert zone_fit.parse_size(text) == expected


@pytest.mark.parametrize("value", ["2g", "", "m", "-1m", "1.5m"])
def test_a_bad_zone_size_is_a_clear_settings_error(value):
    with pytest.raises(watcher_settings.SettingsError, match="dyups_shm_zone_size"):
        watcher_settings.build({"dyups_shm_zone_size": value, "status_listen": ""})


def test_a_zone_too_small_for_any_change_is_refused():
    with pytest.raises(watcher_settings.SettingsError, match="holds no change"):
        watcher_settings.build({"dyups_shm_zone_size": "16k", "status_listen": ""})


def big(name, count, first=1):
    return build_upstream(name, [f"10.0.{i // 250}.{1 + i % 250}:80 max_fails=10 fail_timeout=30s"
                                 for i in range(first, first + count)])


def test_a_change_that_cannot_fit_the_zone_is_skipped_counted_and_examined_again(make, fake):  # noqa: F811
    """A body bigger than dyups_shm_zone_size holds would be applied by one Tengine worker only: the Syncer
    keeps what is applied (a new upstream is not created), says why, counts it, and sends the change
    once it fits; a DELETE always fits."""
    syncer, _clock = make(dyups_shm_zone_size="28k", removal_guard_share=1)
    syncer.sync({"A": big("A", 2), "B": big("B", 2)})
    report = syncer.sync({"A": big("A", 200), "B": big("B", 2), "C": big("C", 200)}, changed=["A", "C"])
    assert report.posted == [] and "C" not in fake.upstreams and len(syncer.applied["A"].servers) == 2
    assert sorted(item["what"] for item in syncer.skipped) == ["upstream A", "upstream C"]
    assert "dyups_shm_zone_size (28672 bytes: at most 4096)" in syncer.skipped[0]["why"]
    assert syncer.metrics.snapshot()["counters"]["zone_refusals"] == 2
    report = syncer.sync({"A": big("A", 3), "B": big("B", 2), "C": big("C", 200)}, changed=["A"])
    assert report.posted == ["A"] and [item["what"] for item in syncer.skipped] == ["upstream C"]
    report = syncer.sync({"A": big("A", 3), "B": big("B", 2)}, changed=["C"])
    assert syncer.skipped == [] and "C" not in fake.upstreams
    syncer.sync({"A": big("A", 3)}, changed=["B"])
    assert "B" not in fake.upstreams


def test_without_a_zone_size_nothing_is_checked(make, fake):  # noqa: F811
    syncer, _clock = make(removal_guard_share=1)
    assert syncer.sync({"A": big("A", 2000)}).posted == ["A"]
