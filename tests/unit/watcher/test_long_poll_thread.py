"""The watcher's long-poll threads survive what a poll raises (plugins/watcher/consul_source.py)."""

from __future__ import annotations

import queue
import threading

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import ConsulAnswer
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import ConsulSource
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics


class ScriptedClient:
    """A stand-in for the watch ConsulClient (a unit test of the thread's error path: a real agent never
    makes a poll raise anything but a ConsulError). Each read plays the next step of the script; after the
    script, reads block until the test stops the source."""

    def __init__(self, steps, stop):
        self.steps = list(steps)
        self.stop = stop

    def read(self, path, params=None, index=None, wait=None, stale=None):
        if not self.steps:
            self.stop.wait(10)
            raise RuntimeError("stopped")
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        return ConsulAnswer(data=step[0], index=step[1], url="http://127.0.0.1:1" + path)


def test_an_unexpected_error_in_a_poll_is_reported_and_the_poll_goes_on():
    settings = watcher_settings.build({"retry_initial": 0.01, "retry_max": 0.02}, environ={})
    source = ConsulSource(settings, Metrics())
    source.watch_client = ScriptedClient([AttributeError("'NoneType' object has no attribute 'readinto'"),
                                          ({"consul": []}, 7)], source.stop_event)
    events: queue.Queue = queue.Queue()
    thread = threading.Thread(target=source._watch, args=("catalog", "/v1/catalog/services", None, events))
    thread.start()
    try:
        seen = [events.get(timeout=5) for _n in range(3)]
    finally:
        source.stop_event.set()
        thread.join(5)
    assert [event[0] for event in seen] == ["consul_error", "resync", "catalog"]
    assert seen[0][1] == "consul_bad_answer" and isinstance(seen[0][2], AttributeError)
    assert seen[2][1:] == ({"consul": []}, 7, None)
    assert not thread.is_alive()
