"""fleet_kv.py: what a follower accepts from the fleet's KV (any KV writer may be hostile), the mapping
digest, the journal's shape, and the fleet_* settings' bounds. The real exchange through Consul is
tests/integration/test_watcher_fleet.py."""

from __future__ import annotations

import json

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_mapping import MappingOptions
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import fleet_kv
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as s

MAX = 4096


def options(**changes):
    values = {"policy": {"allowed_networks": ["10.0.0.0/8"]}, "directives": ("keepalive 8",),
              "exclude": ("consul", "Secret"), "reserved": ("DYUPS_BALANCER",)}
    values.update(changes)
    return MappingOptions(**values)


def test_a_published_upstream_round_trips_with_this_watchers_directives():
    upstream = build_upstream("Web", ["10.0.0.1:80 weight=2", "10.0.0.2:80 backup"], ["keepalive 8"])
    value = fleet_kv.dumps(fleet_kv.encode(upstream, False))
    kind, decoded = fleet_kv.decode("Web", value, options(), MAX)
    assert kind == "upstream" and decoded == upstream
    assert fleet_kv.decode("Web", fleet_kv.dumps(fleet_kv.encode(None, True)), options(), MAX) == ("empty", None)
    assert fleet_kv.encode(None, False) is None
    # the value's own directives are never taken: only servers
    with pytest.raises(fleet_kv.Refused, match="neither"):
        fleet_kv.decode("Web", {"servers": ["10.0.0.1:80"], "directives": ["hash $evil"]}, options(), MAX)


@pytest.mark.parametrize("name,value,why", [
    ("bad{name", {"servers": ["10.0.0.1:80"]}, "the name"),
    ("", {"servers": ["10.0.0.1:80"]}, "the name"),
    ("DYUPS_BALANCER", {"servers": ["10.0.0.1:80"]}, "reserved"),
    ("Secret", {"servers": ["10.0.0.1:80"]}, "include/exclude/prefix"),
    ("Web", {"servers": ["127.0.0.1:18882"]}, "outside allowed_networks"),   # the proxy's own interface
    ("Web", {"servers": ["169.254.169.254:80"]}, "outside allowed_networks"),
    ("Web", {"servers": ["10.0.0.1:80 weight=1000"]}, "max_weight"),
    ("Web", {"servers": ["10.0.0.1:80; include /etc/passwd"]}, "breaks a rule"),
    ("Web", {"servers": []}, "breaks a rule"),
    ("Web", {"servers": "10.0.0.1:80"}, "neither"),
    ("Web", {"servers": [1]}, "server strings"),
    ("Web", ["10.0.0.1:80"], "neither"),
    ("Web", {"empty": False}, "neither"),
    ("Web", b"not json", "not JSON"),
    ("Web", b"{" + b" " * MAX + b"}", "fleet_value_max"),
])
def test_a_value_that_breaks_a_rule_is_refused(name, value, why):
    with pytest.raises(fleet_kv.Refused, match=why):
        fleet_kv.decode(name, value, options(), MAX)


def test_without_allowed_networks_the_builtin_classes_refuse_the_proxys_own_interface():
    with pytest.raises(fleet_kv.Refused, match="loopback"):
        fleet_kv.decode("Web", {"servers": ["127.0.0.1:18882"]}, options(policy={}), MAX)


def test_the_digest_follows_the_mapping_settings_only():
    base = fleet_kv.digest_of(options())
    assert base == fleet_kv.digest_of(options(reserved=("Other",)))   # each follower checks its own
    for changes in ({"tag_key": "color"}, {"prefix": "W"}, {"include": ("Web",)}, {"directives": ()},
                    {"include_warning": True}, {"policy": {"allowed_networks": ["10.0.0.0/16"]}},
                    {"policy": {"allowed_networks": ["10.0.0.0/8"], "max_weight": 5}}):
        assert fleet_kv.digest_of(options(**changes)) != base, changes


def journal(**changes):
    value = {"format": 1, "session": "s", "seq": 3, "heartbeat": 1.5, "digest": "d",
             "entries": [{"seq": 2, "all": True}, {"seq": 3, "names": ["Web"]}],
             "inline": {"seq": 3, "values": {"Web": None}}}
    value.update(changes)
    return value


@pytest.mark.parametrize("changes", [{"format": 2}, {"seq": "3"}, {"seq": True}, {"session": None},
                                     {"entries": [{"seq": 1}]}, {"entries": [{"seq": 1, "names": [1]}]},
                                     {"inline": {"values": {}}}, {"digest": "x" * MAX}])
def test_a_journal_of_another_shape_is_refused(changes):
    assert fleet_kv.check_journal(journal(), MAX)
    with pytest.raises(fleet_kv.Refused):
        fleet_kv.check_journal(json.loads(json.dumps(journal(**changes))), MAX)


@pytest.mark.parametrize("values,what", [
    ({"fleet_kv_prefix": "a//b"}, "fleet_kv_prefix"), ({"fleet_kv_prefix": "/swk"}, "fleet_kv_prefix"),
    ({"fleet_group": "a/b"}, "fleet_group"), ({"fleet_session_ttl": 5}, "fleet_session_ttl"),
    ({"fleet_lock_delay": 61}, "fleet_lock_delay"), ({"fleet_heartbeat": 10, "fleet_stale_after": 15},
                                                     "fleet_stale_after"),
    ({"fleet_journal_entries": 0}, "fleet_journal_entries"), ({"fleet_inline_max": -1}, "fleet_inline_max"),
    ({"fleet_value_max": 600000}, "fleet_value_max"), ({"fleet_share": "maybe"}, "fleet_share"),
])
def test_fleet_settings_out_of_bounds_are_refused(values, what):
    with pytest.raises(s.SettingsError, match=what):
        s.build(values, environ={})


def test_fleet_share_reads_on_and_off():
    assert s.build({"fleet_share": "on", "fleet_kv_prefix": "ops/swk"}, environ={}).fleet_share is True
    assert s.build({}, environ={}).fleet_share is False
