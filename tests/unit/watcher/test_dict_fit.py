"""dict_fit.py: the Lua flavor's shared dict, as its free space says, and the Syncer's use."""

from __future__ import annotations

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import dict_fit
from tests.unit.watcher.test_syncer import fake, make  # noqa: F401  (fixtures)  # pylint: disable=unused-import


def servers(name, count, first=1, extra=""):
    return build_upstream(name, [f"10.0.{i // 250}.{1 + i % 250}:80{extra}" for i in range(first, first + count)])


def test_an_entry_is_the_record_as_state_lua_encodes_it_in_whole_pages():
    one = servers("Web", 1)
    # "N Web", "S 80 1 0 1 10 0 0 10.0.0.2 10.0.0.2"
    assert dict_fit.encoded_length(one) == len("N Web\nS 80 1 0 1 10 0 0 10.0.0.2 10.0.0.2")
    assert dict_fit.entry_pages(one) == 1
    assert dict_fit.entry_pages(servers("Web", 250)) == 3   # 250 lines of about 36 bytes: 9 kB
    named = build_upstream("Named", ["backend.example:80"])
    assert dict_fit.encoded_length(named) > dict_fit.HOST_ADDRESSES * dict_fit.LONGEST_ADDRESS


def test_limit_counts_the_changes_of_a_sync_against_the_free_pages():
    applied = {"Old": servers("Old", 250)}
    desired = {"A": servers("A", 250), "B": servers("B", 250), "Old": servers("Old", 200, extra=" weight=2"),
               "Gone": None}
    limited, skipped, refused = dict_fit.limit(desired, applied, 4 * 4096)
    # Old fits where it was; A takes 3 of the 4 free pages; B does not fit the one left
    assert refused == {"B"} and limited["B"] is None and limited["A"] is desired["A"]
    assert limited["Old"] is desired["Old"] and limited["Gone"] is None
    assert [item["what"] for item in skipped] == ["upstream B"] and "4 page(s)" not in skipped[0]["why"]
    assert dict_fit.limit(desired, applied, None) == (desired, [], set())   # not known (Tengine): not checked


def test_the_free_space_is_kept_from_every_answer():
    space = dict_fit.FreeSpace()
    answers = iter([(200, b"", {"x-dyups-free-space": "8192"}), (200, b"", {})])
    transport = space.watching(lambda *args, **kwargs: next(answers))
    transport("POST", "http://x/upstream/a", b"", 1.0)
    assert space.bytes == 8192
    transport("GET", "http://x/list", None, 1.0)
    assert space.bytes == 8192   # an answer without it (Tengine) changes nothing


def test_the_syncer_skips_and_counts_what_the_dict_cannot_hold(make, fake):  # noqa: F811
    syncer, _clock = make(removal_guard_share=1)
    syncer.sync({"A": servers("A", 2)})
    syncer.dict_space.seen({"x-dyups-free-space": "4096"})
    report = syncer.sync({"A": servers("A", 2), "Big": servers("Big", 200)}, changed=["Big"])
    assert report.posted == [] and "Big" not in fake.upstreams and "Big" not in syncer.applied
    assert [item["what"] for item in syncer.skipped] == ["upstream Big"]
    assert syncer.metrics.snapshot()["counters"]["dict_refusals"] == 1
    syncer.dict_space.seen({"x-dyups-free-space": str(16 * 4096)})
    report = syncer.sync({"A": servers("A", 2), "Big": servers("Big", 200)}, changed=[])
    assert report.posted == ["Big"] and syncer.skipped == []   # examined again at every sync
