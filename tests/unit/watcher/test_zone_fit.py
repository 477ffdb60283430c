"""zone_fit.py: the model of Tengine's dyups_shm_zone_size, against what Tengine 3.2.0 took, and the Syncer's use."""

from __future__ import annotations

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import post_body
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


def test_unread_messages_are_counted_by_slot_and_page_with_no_credit_for_what_tengine_frees():
    """32k: 7 pages, 2 of them the context's and statuses'; a 2-page body with its message, PIDs and
    name takes the other 5, so a second one waits; a 2m zone holds a whole push of small changes."""
    unread = zone_fit.Unread(zone_fit.parse_size("32k"))
    body = "x" * (zone_fit.PAGE + 1)
    assert unread.pages() == zone_fit.CONTEXT_PAGES and unread.room("Burst0", body)
    unread.add("Burst0", body)
    assert unread.pages() == 7 and not unread.room("Burst1", body) and unread.room("Burst1", None)  # shared slots
    unread.clear()
    assert unread.messages == 0 and unread.room("Burst1", body)
    unread = zone_fit.Unread(zone_fit.parse_size("2m"))
    for index in range(1000):
        unread.add(f"service-{index}", "server 10.0.0.1:8080;\n" * 12)
    # per message: 72 B (slot 128: 32 a page), PIDs (256: 16), a name (16: 254), a body of 264 B (512: 8)
    assert unread.pages() == 2 + 32 + 63 + 4 + 125 and unread.room("one-more", "x" * 300)
    assert [zone_fit.slots_per_page(size) for size in (8, 16, 32, 64, 128, 2048)] == [504, 254, 127, 64, 32, 2]


class Recorder:
    def __init__(self, confirmed=True):
        self.drained, self.slept, self.confirmed, self.counted = [], [], confirmed, []

    def drain(self, name, upstream, check):
        self.drained.append((name, upstream, check))
        return self.confirmed

    def count(self, name, amount=1):
        self.counted.append((name, amount))


@pytest.mark.parametrize("confirmed", [True, False])
def test_the_pacer_waits_for_every_worker_only_when_the_next_change_would_not_fit(confirmed):
    recorder = Recorder(confirmed)
    pacer = zone_fit.Pacer(zone_fit.parse_size("32k"), recorder, recorder.drain, sleep=recorder.slept.append)
    first, second = big("A", 100), big("B", 100)
    body = post_body(first)
    assert zone_fit.PAGE < len(body) <= 2 * zone_fit.PAGE
    pacer.before("A", body)
    pacer.sent("A", first, body, answered=True)
    pacer.before("C", None)  # a DELETE fits beside it (its pieces share the message's pages)
    assert recorder.drained == [] and recorder.counted == []
    pacer.before("B", post_body(second))
    # the last change answered is what every worker must show; unconfirmed: two read intervals of 1 s
    assert recorder.drained == [("A", first, True)] and recorder.counted == [("zone_waits", 1)]
    assert recorder.slept == ([] if confirmed else [zone_fit.UNCONFIRMED_WAIT])
    assert pacer.unread.messages == 0
    pacer.sent("B", second, post_body(second), answered=False)   # a failed POST may still have left its message
    pacer.before("A", body)
    assert recorder.drained[-1] == ("B", second, False) and pacer.unread.messages == 0


def test_no_zone_size_never_waits():
    recorder = Recorder()
    pacer = zone_fit.Pacer(0, recorder, recorder.drain, sleep=recorder.slept.append)
    for index in range(100):
        pacer.before(f"U{index}", "x" * 100000)
        pacer.sent(f"U{index}", None, "x" * 100000, answered=True)
    assert recorder.drained == recorder.slept == recorder.counted == []
