# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: Consul's answers about service instances, parsed once (module and watcher).
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One service instance as Consul describes it, parsed once at the edge into an ``Instance``.

Two answers describe instances: ``/v1/health/service/NAME`` (entries ``{"Node", "Service", "Checks"}``)
and ``/v1/catalog/node-services/NODE`` (``{"Node", "Services": [...]}``, no checks). Both go through
``parse_registration``, which turns the fields the mapping reads into an ``Instance``: node, ID,
service, the upstream it maps to, the server (host from ``Service.Address``, else ``Node.Address``;
``Service.Port``; the ``dyups_*`` Meta keys as server parameters), or else the reason it cannot map
(``skip``). Nothing after this reads Consul's JSON again: the mapping (_consul_mapping.py) and the
watcher's cache work on two plain stores, the same for the module and the watcher:

- registrations: ``{(node, service id): Instance}``, without checks (``parse_health_answer``,
  ``parse_node_services``; ``registration_key`` says the key);
- the health index: ``{(node, service id) or (node, ""): ((check id, status), ...)}``, built by
  ``health_index`` from any list of checks (a health answer's entries, ``/v1/health/state/any``);
  a node's checks are under ``(node, "")`` and apply to every instance on the node.

Any answer gives Instances or a skip reason, never an exception (tests/unit/property/
test_property_consul_instance.py). Rules (docs/consul.md, "The mapping"), checked in this order, the
first one broken being the reason: the entry has a Node and a Service object; its Checks are a list of
objects; its Tags a list of strings; at most one ``KEY=`` tag (``tag_key``), with a value; the upstream
name ``SERVICE`` or ``SERVICE_TAG`` follows the name rule; an address; a port 1-65535; Meta an object,
with no unknown ``dyups_*`` key and string values; the server they make follows the server rules.
"""

from __future__ import annotations

from typing import Any, Container, Dict, List, Mapping, NamedTuple, Optional, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_problem
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server, parse_server

DEFAULT_TAG_VALUE = "default"
META_PREFIX = "dyups_"
META_KEYS = {
    "dyups_weight": "weight",
    "dyups_max_fails": "max_fails",
    "dyups_fail_timeout": "fail_timeout",
    "dyups_max_conns": "max_conns",
    "dyups_backup": "backup",
    "dyups_down": "down",
}
SEVERITY = {"passing": 0, "warning": 1, "critical": 2}
ENTRY_SKIP = "it lacks the Node or Service object"
CHECKS_SKIP = "its Checks are not a list of objects"

REPEATED_SKIP = "another entry of the same answer has its node and ID (Consul keeps one registration per node and ID)"
NAMELESS_SKIP = "it has no node name or no service ID, so its checks cannot be found (Consul always gives both)"

CheckPairs = Tuple[Tuple[str, str], ...]
InstanceKey = Tuple[str, str]  # (node, service id); (node, "") for the checks of a node
HealthIndex = Dict[InstanceKey, CheckPairs]


class Instance(NamedTuple):
    """One registration of a service on a node, as the mapping needs it (immutable, compares by value).

    ``skip`` is None when the instance can map, else why not (``upstream`` and ``server`` are None
    then, or ``upstream`` only when the server is what breaks a rule). Its checks are not here: they
    are in the health index (see ``health_index``), under its (node, ID) and its node's (node, "").
    ``meta`` (the whole Service.Meta, sorted pairs) is kept for reports only, when asked.
    ``malformed``: the entry had no Node or Service object (node and ID are "" then).
    """

    service: str
    node: str
    id: str
    upstream: Optional[str]
    server: Optional[Server]
    skip: Optional[str]
    tags: Tuple[str, ...] = ()
    meta: Tuple[Tuple[str, Any], ...] = ()
    malformed: bool = False


def worst_status(pairs: CheckPairs) -> str:
    """The worst status of ``pairs`` (passing when empty); an unknown status counts as critical."""
    worst = 0
    for _check_id, status in pairs:
        worst = max(worst, SEVERITY.get(status, 2))
    return ("passing", "warning", "critical")[worst]


def instance_checks(health: Mapping[InstanceKey, CheckPairs], instance: Instance) -> CheckPairs:
    """The checks of ``instance`` in the health index: its own and its node's (none for a malformed one)."""
    if instance.malformed or not instance.node:
        return ()
    return health.get((instance.node, ""), ()) + health.get((instance.node, instance.id), ())


class _Skip(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def shown(value: Any) -> str:
    """Shown form of a hostile value: repr-quoted and cut, so it cannot forge a log line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value) if value else ""


def health_index(checks: Any, instance: Optional[InstanceKey] = None, index: Optional[HealthIndex] = None,
                 owners: Optional[Dict[InstanceKey, str]] = None) -> HealthIndex:
    """The health index of a list of checks (anything in it that is not an object is left out; an
    answer that is not a list gives nothing): ``{(node, service id): ((check id, status), ...)}``,
    sorted and without repeats, a node's checks (no ServiceID) under ``(node, "")``. The one builder
    of check states, for every answer that lists checks.

    A check's key is its own Node and ServiceID, or, with ``instance`` (node, ID), that of the entry
    that lists it (a ``/v1/health/service`` entry's Checks: its own checks, with a ServiceID, and its
    node's). ``index``: add to it (a key it holds gets the union) and return it. ``owners``: filled
    with {key: the check's ServiceName} (the first check of each key), for the health poll."""
    index = {} if index is None else index
    grouped: Dict[InstanceKey, List[Tuple[str, str]]] = {}
    for check in checks if isinstance(checks, list) else ():
        if not isinstance(check, dict):
            continue
        if instance is None:
            key = (_text(check.get("Node")), _text(check.get("ServiceID")))
        else:
            key = instance if check.get("ServiceID") else (instance[0], "")
        pair = (_text(check.get("CheckID")), _text(check.get("Status")))
        found = grouped.get(key)
        if found is None:
            grouped[key] = [pair]
            if owners is not None:
                owners.setdefault(key, _text(check.get("ServiceName")))
        else:
            found.append(pair)
    for key, pairs in grouped.items():
        held = index.get(key)
        if held:
            pairs.extend(held)
        index[key] = tuple(sorted(set(pairs))) if len(pairs) > 1 else tuple(pairs)
    return index


def _tag_value(tags: Tuple[str, ...], tag_key: str) -> Optional[str]:
    prefix = tag_key + "="
    values = sorted({tag[len(prefix):] for tag in tags if tag.startswith(prefix)})
    if len(values) > 1:
        raise _Skip(f"it has {len(values)} different {tag_key}= tags ({', '.join(shown(v) for v in values)}); "
                    "an instance belongs to one upstream")
    if not values or values[0] == DEFAULT_TAG_VALUE:
        return None
    if not values[0]:
        raise _Skip(f"its tag {tag_key}= has no value (write {tag_key}={DEFAULT_TAG_VALUE} for no suffix)")
    return values[0]


def tagged_upstream(service: str, tag: Optional[str]) -> str:
    """The gray-tag rule: the upstream of an instance of ``service`` is ``SERVICE``, or ``SERVICE_TAG`` when
    it carries the tag ``KEY=TAG`` (see _tag_value)."""
    return service if tag is None else f"{service}_{tag}"


def tag_sources(upstream: str) -> List[str]:
    """The service names ``upstream`` can come from by the gray-tag rule: its own name, or the part
    before any ``_`` (``a_b_c``: ``a``, ``a_b``, ``a_b_c``)."""
    parts = upstream.split("_")
    return ["_".join(parts[:end]) for end in range(1, len(parts) + 1)]


def _server(service_data: dict, node_data: dict) -> Server:
    address = service_data.get("Address") or node_data.get("Address")
    if not isinstance(address, str) or not address:
        raise _Skip("neither Service.Address nor Node.Address holds an address")
    port = service_data.get("Port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _Skip(f"its port {shown(port)} is not 1-65535")
    meta = service_data.get("Meta") or {}
    if not isinstance(meta, dict):
        raise _Skip("its Meta is not a JSON object")
    spec: dict = {"host": address, "port": port}
    for key in sorted(meta, key=str):
        if not isinstance(key, str) or not key.startswith(META_PREFIX):
            continue
        if key not in META_KEYS:
            raise _Skip(f"unknown Meta key {shown(key)}; known: {', '.join(sorted(META_KEYS))}")
        value = meta[key]
        if not isinstance(value, str):
            raise _Skip(f"Meta {key}={shown(value)} is not a string")
        spec[META_KEYS[key]] = value.strip()
    try:
        return parse_server(spec)
    except ValidationError as exc:
        raise _Skip(f"its server breaks the server rules: {exc.rule}") from None


def parse_registration(service: str, node_data: Any, service_data: Any, checks: Any, tag_key: str,
                       keep_meta: bool = True) -> Instance:
    """The Instance of one registration of ``service``: ``node_data`` and ``service_data`` are the
    Node and Service objects of an answer, ``checks`` its Checks (None: none), whose shape is checked
    here (their states go to the health index: ``health_index``). Never raises."""
    if not isinstance(node_data, dict) or not isinstance(service_data, dict):
        return Instance(service, "", "", None, None, ENTRY_SKIP, malformed=True)
    node, instance_id = str(node_data.get("Node", "")), str(service_data.get("ID", ""))
    tags: Tuple[str, ...] = ()
    upstream = None
    meta = service_data.get("Meta")
    kept_meta = tuple(sorted((str(k), v) for k, v in meta.items())) if keep_meta and isinstance(meta, dict) else ()
    try:
        if checks is not None and (not isinstance(checks, list) or not all(isinstance(c, dict) for c in checks)):
            raise _Skip(CHECKS_SKIP)
        raw_tags = service_data.get("Tags") or []
        if not isinstance(raw_tags, list) or not all(isinstance(tag, str) for tag in raw_tags):
            raise _Skip("its Tags are not a list of strings")
        tags = tuple(raw_tags)
        tag = _tag_value(tags, tag_key)
        upstream = tagged_upstream(service, tag)
        problem = name_problem(upstream)
        if problem:
            raise _Skip(f"the upstream name {shown(upstream)} {problem}")
        server = _server(service_data, node_data)
    except _Skip as skip:
        return Instance(service, node, instance_id, upstream, None, skip.why, tags, kept_meta)
    return Instance(service, node, instance_id, upstream, server, None, tags, kept_meta)


def _other_service(entry: dict, service: str) -> bool:
    """True when a health entry names, in Service.Service, a service other than ``service``."""
    service_data = entry.get("Service")
    name = service_data.get("Service") if isinstance(service_data, dict) else None
    return isinstance(name, str) and name != service


def registration_key(instance: Instance, seen: Container[InstanceKey], fallback: str) -> InstanceKey:
    """The key of an Instance in the registrations store: (node, service id). A malformed one, or one
    without a node or ID, gets ``("", fallback)`` (the mapping skips it); so does one whose key is
    already in ``seen`` (from the same answer), made a skipped Instance by ``keyed``."""
    key = (instance.node, instance.id)
    if instance.malformed or not instance.node or not instance.id or key in seen:
        return ("", fallback)
    return key


def keyed(instance: Instance, registrations: Dict[InstanceKey, Instance], fallback: str) -> InstanceKey:
    """Put ``instance`` into ``registrations`` under its key (see registration_key) and return the key. A
    second registration of one node and ID in an answer, or one without a node name or ID, is kept as a
    skipped Instance (it cannot have checks of its own: the health index has one entry per node and ID)."""
    key = registration_key(instance, registrations, fallback)
    if not key[0] and not instance.malformed and instance.skip is None:
        # a fallback key holds no checks: an instance under it would be served as if it had none
        why = REPEATED_SKIP if instance.node and instance.id else NAMELESS_SKIP
        instance = instance._replace(server=None, skip=why)
    registrations[key] = instance
    return key


def parse_health_answer(service: str, entries: Any, tag_key: str,
                        keep_meta: bool = True) -> Optional[Tuple[Dict[InstanceKey, Instance], HealthIndex]]:
    """The two stores of a ``/v1/health/service/NAME`` answer: its registrations ``{(node, id):
    Instance}`` (a malformed entry gives a ``malformed`` Instance) and its health index (see
    health_index; every instance's key and its node's are in it, ``()`` when without checks: the
    answer says so). None when the answer is not a list. An entry of another service is left out:
    Consul 1.8 matches NAME ignoring letter case (``web`` also answers the instances of ``Web``),
    while ``/v1/catalog/node-services`` keeps them apart; each service gets only its own instances,
    whichever way it is read."""
    if not isinstance(entries, list):
        return None
    registrations: Dict[InstanceKey, Instance] = {}
    health: HealthIndex = {}
    for position, entry in enumerate(entries):
        checks = None
        if not isinstance(entry, dict):
            instance = parse_registration(service, None, None, None, tag_key, keep_meta)
        elif _other_service(entry, service):
            continue
        else:
            checks = entry.get("Checks")
            instance = parse_registration(service, entry.get("Node"), entry.get("Service"), checks, tag_key,
                                          keep_meta)
        key = keyed(instance, registrations, f"#malformed-{position}")
        if key[0]:
            health.setdefault(key, ())
            health.setdefault((key[0], ""), ())
            if instance.skip != CHECKS_SKIP:
                health_index(checks, key, health)
    return registrations, health


def parse_node_services(answer: Any, tag_key: str, keep_meta: bool = True,
                        wanted: Optional[Container[str]] = None) -> List[Tuple[str, Instance]]:
    """``(service name, Instance)`` for each service of a ``/v1/catalog/node-services/NODE`` answer
    (no checks: that endpoint has none). A service without a string name is left out (no service to
    put it under), and so is one not in ``wanted`` (when given); an answer of another shape gives
    nothing."""
    if not isinstance(answer, dict):
        return []
    node_data, services = answer.get("Node"), answer.get("Services")
    if not isinstance(services, list):
        return []
    result = []
    for service_data in services:
        name = service_data.get("Service") if isinstance(service_data, dict) else None
        if not isinstance(name, str) or (wanted is not None and name not in wanted):
            continue
        result.append((name, parse_registration(name, node_data, service_data, None, tag_key, keep_meta)))
    return result


def node_registrations(node: str, answer: Any, tag_key: str, keep_meta: bool = True,
                       wanted: Optional[Container[str]] = None) -> List[Tuple[str, InstanceKey, Instance]]:
    """``(service name, key, Instance)`` of each registration of a ``/v1/catalog/node-services/NODE``
    answer (see parse_node_services), keyed as in the registrations store (see keyed)."""
    seen: Dict[InstanceKey, Instance] = {}
    result = []
    for position, (name, instance) in enumerate(parse_node_services(answer, tag_key, keep_meta, wanted)):
        key = keyed(instance, seen, f"#malformed-{node}-{position}")
        result.append((name, key, seen[key]))
    return result
