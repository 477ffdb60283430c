"""ConsulSource under faults a real Consul cannot be made to produce on demand (issue 18).

A catalog answer whose index went back (a restored snapshot, a new leader behind) to exactly the
index of the cache's last full read: BlockingQuery reports it as a reset, and the answer is new data
even on a known index. The model Consul of the property test answers the reads (a stand-in: a real
agent's index cannot be set back to a chosen value); the rest of issue 18's faults run against a real
agent in tests/integration/test_watcher_faults.py.
"""

from __future__ import annotations

from tests.unit.property.test_property_watcher_events import ModelConsul, source_on


def test_a_catalog_answer_after_an_index_reset_is_folded_even_on_the_cached_index():
    model = ModelConsul()
    model.register("n1", "i1", "Web", 8080, (), {}, "passing")
    source = source_on(model)
    source.refresh_all()
    cached = source.read_index["catalog"]
    model.register("n1", "i2", "Api", 8081, (), {}, "passing")
    data, _index = model.catalog_answer()
    assert source.apply_events([("catalog", data, cached, "backwards")])   # 940f60b skipped it: same index
    assert "Api" in source.mapping().upstreams
    # without a reset, an answer on the cached index is the one the last read already folded
    assert not source.apply_events([("catalog", data, cached, None)])
