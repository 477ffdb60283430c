# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the watcher keeps Consul's answers small: ``slim_object``.

The watcher is a long-running reader: ``slim_object`` drops, as the JSON is parsed, the fields that
neither the mapping (plugins/module_utils/_consul_mapping.py) nor the watcher reads. (Check states
are indexed by ``_consul_instance.health_index``, the one builder for every answer.)
"""

from __future__ import annotations

import sys
from typing import Dict

# Fields of Consul's answers that neither the mapping nor the watcher reads; some are large (a check's
# Output, Definition, ServiceTags). ``slim_object`` drops them as the JSON is parsed.
UNREAD_FIELDS = frozenset((
    "Output", "Notes", "Definition", "ServiceTags", "CreateIndex", "ModifyIndex", "TaggedAddresses", "Weights",
    "Proxy", "Connect", "EnableTagOverride", "Type", "Datacenter", "Namespace", "Partition", "ExposedPort",
    "Interval", "Timeout", "SocketPath", "PeerName", "ServiceMeta", "Name",
))
_SHARED_VALUES = ("Status", "Node", "ServiceName", "Service", "Address")
_PORTS: Dict[int, int] = {}  # one int object per port number seen (at most 65 535): the cache keeps one per instance


def slim_object(obj: dict) -> dict:
    """``json.loads`` object_hook for a long-running reader: the same object without UNREAD_FIELDS, and
    with the values that repeat in every check and instance (status, node and service names, addresses:
    a node's address is in each of its instances, and the cache keeps it; ports) shared."""
    for key in UNREAD_FIELDS.intersection(obj):
        del obj[key]
    for key in _SHARED_VALUES:
        value = obj.get(key)
        if isinstance(value, str):
            obj[key] = sys.intern(value)
    port = obj.get("Port")
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        obj["Port"] = _PORTS.setdefault(port, port)
    return obj
