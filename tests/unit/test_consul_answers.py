"""slim_object, the watcher's json.loads object_hook (plugins/module_utils/_consul_answers.py): what it keeps.

A record of a large answer (a check of ``/v1/health/state/any``, a service of a node's answer) is slimmed
as it is parsed. The slimmed record is a dict of its kept fields' size: deleting keys from a dict does not
shrink it, and the full read's 15 000 checks at 5 000 upstreams left such dicts alive, interleaved with what
the cache keeps, while the health index was built (issue 22: RSS 46.1-46.9 -> 43.0-43.3 MB after a full read
and flips, tests/benchmarks/bench_watcher_inprocess.py).
"""

from __future__ import annotations

import json
import sys

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_answers import UNREAD_FIELDS, slim_object

CHECK = {"Node": "n1", "CheckID": "service:web-1", "Name": "Service 'web' check", "Status": "passing",
         "Notes": "", "Output": "HTTP GET http://10.0.0.1:80/health: 200 OK Output: ok" * 3,
         "ServiceID": "web-1", "ServiceName": "web", "ServiceTags": ["a", "b"], "Type": "http",
         "Definition": {"Interval": "10s", "Timeout": "1s"}, "CreateIndex": 12, "ModifyIndex": 40,
         "Namespace": "default", "ExposedPort": 0}


def test_a_slimmed_record_keeps_what_is_read_and_is_a_dict_of_that_size():
    slimmed = json.loads(json.dumps([CHECK]), object_hook=slim_object)[0]
    kept = {key: value for key, value in CHECK.items() if key not in UNREAD_FIELDS}
    assert slimmed == kept and list(slimmed) == list(kept)    # the same fields, in the answer's order
    assert sys.getsizeof(slimmed) == sys.getsizeof(dict(kept))  # not the original dict with holes
    assert slimmed["Status"] is sys.intern("passing")          # values that repeat are shared


def test_a_record_with_nothing_to_drop_is_kept_as_parsed():
    record = {"Node": "n1", "Address": "10.0.0.1"}
    assert slim_object(record) is record


def test_a_check_hook_keeps_only_the_fields_it_names():
    kept = slim_object(dict(CHECK), check_fields=("Node", "CheckID", "Status"))
    assert kept == {"Node": "n1", "CheckID": "service:web-1", "Status": "passing"}
