"""The two health polls (critical, warning) folded together: the catch-up read and its reads.

consul_source.py's _take_states: when one state's answer at index I shows a check leaving it on an
instance that still has a check listed, and the other state's view is older than I, the other state
is read once without blocking: through the watch client (``?stale``, with the stale bound), and again
from the leader when that answer is older than I. A recovery (nothing left listed on the instance)
reads the service again instead, with no catch-up read. The Consul here is the property test's
``ModelConsul`` (its docstring says what it is); the property and the real-agent race are in
tests/unit/property/test_property_watcher_events.py and tests/integration/test_watcher_health_states.py.
"""

from __future__ import annotations

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import ConsulAnswer
from tests.unit.property.test_property_watcher_events import ModelConsul, health_events, source_on


class Recording:
    """A client that records its reads and answers through ``inner`` (``older``: the index it claims,
    as a follower behind would)."""

    def __init__(self, inner, older=None):
        self.inner = inner
        self.older = older
        self.reads = []

    def health_service(self, name, **kwargs):
        self.reads.append(("/v1/health/service/" + name, None))
        return self.inner.health_service(name, **kwargs)

    def read(self, path, **kwargs):
        self.reads.append((path, kwargs.get("stale")))
        answer = self.inner.read(path, **kwargs)
        if self.older is None:
            return answer
        return ConsulAnswer(data=[], index=self.older, url=answer.url)


def two_checks():
    """Web/i1 with a warning check and a critical one, and one Consul read by a source."""
    model = ModelConsul()
    model.register("n1", "i1", "Web", 8080, (), {}, "warning")
    model.second_check("n1", "i1", "critical")
    source = source_on(model)
    source.refresh_all()
    source.apply_events(health_events(model))
    return model, source


def pairs(source):
    return source.checks[("n1", "i1")]


def event(model, kind):
    return next(item for item in health_events(model) if item[0] == kind)


def test_a_check_leaving_warning_is_read_in_the_critical_state_before_it_is_folded():
    model, source = two_checks()
    watch = source.watch_client = Recording(source.client)
    model.set_status("n1", "i1", "critical")
    source.apply_events([event(model, "health_warning")])   # the warning answer alone: the check left it
    assert watch.reads == [("/v1/health/state/critical", None)]   # the watch client's own ?stale
    assert pairs(source) == (("service:i1", "critical"), ("service:i1:2", "critical"))
    assert source.metrics.counters["consul_health_catchup_reads"] == 1
    source.apply_events([event(model, "health_critical")])   # the critical poll's answer, same index: nothing more
    assert watch.reads == [("/v1/health/state/critical", None)]


def test_a_catch_up_answer_older_than_the_leaving_one_is_read_again_from_the_leader():
    model, source = two_checks()
    source.watch_client = Recording(source.client, older=1)
    leader = source.client = Recording(source.client)
    model.set_status("n1", "i1", "critical")
    source.apply_events([event(model, "health_warning")])
    assert leader.reads == [("/v1/health/state/critical", False)]
    assert pairs(source) == (("service:i1", "critical"), ("service:i1:2", "critical"))


def test_a_recovery_reads_the_service_again_without_a_catch_up_read():
    model = ModelConsul()
    model.register("n1", "i1", "Web", 8080, (), {}, "critical")
    source = source_on(model)
    source.refresh_all()
    source.apply_events(health_events(model))
    model.set_status("n1", "i1", "passing")
    watch = source.watch_client = Recording(source.client)
    reads = source.client = Recording(source.client)
    source.apply_events([event(model, "health_critical")])   # alone: the warning poll has not answered
    assert watch.reads == [] and reads.reads == [("/v1/health/service/Web", None)]
    assert source.mapping().upstreams["Web"].servers


def test_views_of_two_indexes_never_make_a_listed_instance_passing_in_place():
    """The warning check goes critical (the warning answer, without it, is taken) and back to warning
    before the fold: the catch-up read of the critical state lacks it too. In neither view, of two
    indexes: its service is read again, it is not updated in place as passing."""
    model, source = two_checks()
    model.set_status("n1", "i1", "critical")
    warning_answer = event(model, "health_warning")
    model.set_status("n1", "i1", "warning")
    reads = source.client = Recording(source.client)
    source.apply_events([warning_answer])
    assert ("/v1/health/service/Web", None) in reads.reads
    assert pairs(source) == (("service:i1", "warning"), ("service:i1:2", "critical"))
