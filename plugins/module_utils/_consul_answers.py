# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: Consul's answers kept small as they are parsed.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Consul's answers kept small as they are parsed: ``slim_object``, the one ``json.loads`` object_hook of
every reader (``ConsulClient(object_hook=...)``, or per read: ``ConsulClient.get(object_hook=...)``).

Most of a large answer is fields no reader here reads (a check's Output, Notes and Definition; indexes,
tagged addresses). ``slim_object`` drops them as the JSON is parsed, and shares the values that repeat in
every check and instance. Its readers:

- the watcher (plugins/watcher/consul_source.py), a long-running reader: every answer, ``slim_object``
  as it is (UNREAD_FIELDS: what neither the mapping, plugins/module_utils/_consul_mapping.py, nor the
  watcher reads);
- consul_services, for ``/v1/health/state/any`` only: ``check_fields`` makes a check (an object with a
  ``CheckID``) keep only the fields it names, those ``_consul_instance.health_index`` reads (an
  allow-list: the module reads the checks of that answer and nothing else of it).

Answers keyed by names users choose (the catalog: {service: tags}) are never slimmed (ConsulClient's
NAME_KEYED_ANSWERS): a service may be called "Name".
"""

from __future__ import annotations

import sys
from typing import Dict, Iterable, Optional

# Fields of Consul's answers that neither the mapping nor the watcher reads; some are large (a check's
# Output, Definition, ServiceTags). ``slim_object`` drops them as the JSON is parsed.
UNREAD_FIELDS = frozenset((
    "Output", "Notes", "Definition", "ServiceTags", "CreateIndex", "ModifyIndex", "TaggedAddresses", "Weights",
    "Proxy", "Connect", "EnableTagOverride", "Type", "Datacenter", "Namespace", "Partition", "ExposedPort",
    "Interval", "Timeout", "SocketPath", "PeerName", "ServiceMeta", "Name",
))
_SHARED_VALUES = ("Status", "Node", "ServiceName", "Service", "Address")
_PORTS: Dict[int, int] = {}  # one int object per port number seen (at most 65 535): the cache keeps one per instance


def slim_object(obj: dict, check_fields: Optional[Iterable[str]] = None) -> dict:
    """``json.loads`` object_hook: the object without UNREAD_FIELDS (with ``check_fields``, a check with only
    those fields instead), and with the values that repeat in every check and instance (status, node and
    service names, addresses: a node's address is in each of its instances, and the watcher's cache keeps
    it; ports) shared. A new dict when fields are dropped: a dict does not shrink when keys are deleted, and
    the full read's thousands of records at their parsed size, interleaved with what the cache keeps, were
    3 MB of the watcher's RSS at 5 000 upstreams (tests/unit/test_consul_answers.py)."""
    if check_fields is not None and "CheckID" in obj:
        obj = {key: obj[key] for key in check_fields if key in obj}
    elif not UNREAD_FIELDS.isdisjoint(obj):
        obj = {key: value for key, value in obj.items() if key not in UNREAD_FIELDS}
    for key in _SHARED_VALUES:
        value = obj.get(key)
        if isinstance(value, str):
            obj[key] = sys.intern(value)
    port = obj.get("Port")
    if isinstance(port, int) and not isinstance(port, bool) and 0 < port < 65536:
        obj["Port"] = _PORTS.setdefault(port, port)
    return obj
