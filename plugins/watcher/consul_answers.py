# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the watcher keeps Consul's answers small: ``slim_object`` and ``index_checks``.

The watcher is a long-running reader: ``slim_object`` drops, as the JSON is parsed, the fields that
neither the mapping (plugins/module_utils/_consul_mapping.py) nor the watcher reads, and
``index_checks`` indexes a ``/v1/health/state/any`` answer by instance, once, for the health poll.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Dict, List, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_instance import CheckPairs

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


@dataclass(frozen=True)
class CheckSnapshot:
    """One ``/v1/health/state/any`` answer, indexed once by instance.

    ``states``: {(node, service id): (service name, ((check id, status), ...) sorted)};
    ``checks``: {(node, service id): [the check dicts]}. Node-level checks have service id "".
    The watcher compares each health answer with what its cache holds (not with the previous
    answer), so each answer is indexed once (one pass over the list).
    """

    states: dict
    checks: dict


def index_checks(checks: Any) -> CheckSnapshot:
    """A CheckSnapshot from a list of checks (anything that is not a dict is ignored)."""
    grouped: Dict[Tuple[str, str], List[dict]] = {}
    for check in checks or ():
        if not isinstance(check, dict):
            continue
        node, service_id = check.get("Node") or "", check.get("ServiceID") or ""
        key = (node if isinstance(node, str) else str(node), service_id if isinstance(service_id, str) else str(service_id))
        found = grouped.get(key)
        if found is None:
            grouped[key] = [check]
        else:
            found.append(check)
    states: Dict[Tuple[str, str], Tuple[str, CheckPairs]] = {}
    for key, group in grouped.items():
        pairs = [(str(c.get("CheckID") or ""), str(c.get("Status") or "")) for c in group]
        if len(pairs) > 1:
            pairs = sorted(set(pairs))
        states[key] = (str(group[0].get("ServiceName") or ""), tuple(pairs))
    return CheckSnapshot(states=states, checks=grouped)
