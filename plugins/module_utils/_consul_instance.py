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
(``skip``), and its check states. Nothing after this reads Consul's JSON again: the mapping
(_consul_mapping.py) and the watcher's cache work on Instances.

Any answer gives Instances or a skip reason, never an exception (tests/unit/property/
test_property_consul_instance.py). Rules (docs/consul.md, "The mapping"), checked in this order, the
first one broken being the reason: the entry has a Node and a Service object; its Checks are a list of
objects; its Tags a list of strings; at most one ``KEY=`` tag (``tag_key``), with a value; the upstream
name ``SERVICE`` or ``SERVICE_TAG`` follows the name rule; an address; a port 1-65535; Meta an object,
with no unknown ``dyups_*`` key and string values; the server they make follows the server rules.
"""

from __future__ import annotations

from typing import Any, Callable, Container, Iterable, List, NamedTuple, Optional, Tuple

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

CheckPairs = Tuple[Tuple[str, str], ...]


class Instance(NamedTuple):
    """One registration of a service on a node, as the mapping needs it (immutable, compares by value).

    ``skip`` is None when the instance can map, else why not (``upstream`` and ``server`` are None
    then, or ``upstream`` only when the server is what breaks a rule). ``checks`` are the instance's
    own checks and ``node_checks`` those of its node, as sorted ``(check id, status)`` pairs; the
    watcher keeps them apart (a node check applies to every instance on the node) and attaches them
    when it maps. ``meta`` (the whole Service.Meta, sorted pairs) is kept for reports only, when asked.
    ``malformed``: the entry had no Node or Service object (node and ID are "" then).
    """

    service: str
    node: str
    id: str
    upstream: Optional[str]
    server: Optional[Server]
    skip: Optional[str]
    tags: Tuple[str, ...] = ()
    checks: CheckPairs = ()
    node_checks: CheckPairs = ()
    meta: Tuple[Tuple[str, Any], ...] = ()
    malformed: bool = False

    @property
    def status(self) -> str:
        """The worst status of its checks (node and own); an unknown status counts as critical."""
        worst = 0
        for _check_id, status in self.node_checks + self.checks:
            worst = max(worst, SEVERITY.get(status, 2))
        return ("passing", "warning", "critical")[worst]

    def serving(self, passing_states: Iterable[str]) -> bool:
        """True when every check (node and own) has a status in ``passing_states``."""
        return all(status in passing_states for _check_id, status in self.node_checks + self.checks)

    def with_checks(self, checks: CheckPairs, node_checks: CheckPairs) -> "Instance":
        if checks == self.checks and node_checks == self.node_checks:
            return self
        return self._replace(checks=checks, node_checks=node_checks)


class _Skip(Exception):
    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def shown(value: Any) -> str:
    """Shown form of a hostile value: repr-quoted and cut, so it cannot forge a log line."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_pairs(checks: Iterable[dict]) -> CheckPairs:
    """((check id, status), ...) sorted and without repeats, as the watcher's health index holds them."""
    return tuple(sorted({(str(check.get("CheckID") or ""), str(check.get("Status") or "")) for check in checks}))


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


def _parses_to(instance: Instance, node_data: dict, service_data: dict) -> bool:
    """True when the fields the mapping reads (address, port, tags, dyups_* Meta) are those that gave
    ``instance``, a usable one parsed without checks or Meta, so that parsing them again would give
    it. Told from the Instance itself (a watcher keeps thousands; a copy of the raw fields would
    cost as much as the Instance): the address (Service.Address, else Node.Address) is its server's
    host as written, the port its port, the tags its tags, and there is no dyups_* Meta key while
    its server has the default parameters. Anything else (a host name not in lower case, dyups_*
    Meta, a skipped instance) is simply parsed again."""
    server = instance.server
    if (server is None or instance.skip is not None or instance.checks or instance.node_checks or instance.meta
            or instance.malformed):
        return False
    port = service_data.get("Port")
    if isinstance(port, bool) or not isinstance(port, int) or port != server.port:
        return False
    if (service_data.get("Address") or node_data.get("Address")) != server.host:
        return False
    tags = service_data.get("Tags") or []
    if not isinstance(tags, list) or tuple(tags) != instance.tags:
        return False
    meta = service_data.get("Meta") or {}
    if not isinstance(meta, dict) or any(isinstance(key, str) and key.startswith(META_PREFIX) for key in meta):
        return False
    return not server.parameters()  # every parameter nginx's default, as a host and port alone give


def parse_registration(service: str, node_data: Any, service_data: Any, checks: Any, tag_key: str,
                       keep_meta: bool = True, reuse: Optional[Instance] = None) -> Instance:
    """The Instance of one registration of ``service``: ``node_data`` and ``service_data`` are the
    Node and Service objects of an answer, ``checks`` its Checks (None: none). Never raises.
    ``reuse``: an Instance parsed before (without checks or Meta) returned as it is when this
    registration has the same node and ID, no checks, and would parse to it (see _parses_to)."""
    if not isinstance(node_data, dict) or not isinstance(service_data, dict):
        return Instance(service, "", "", None, None, ENTRY_SKIP, malformed=True)
    node, instance_id = str(node_data.get("Node", "")), str(service_data.get("ID", ""))
    if (reuse is not None and checks is None and not keep_meta and reuse.node == node and reuse.id == instance_id
            and reuse.service == service and _parses_to(reuse, node_data, service_data)):
        return reuse
    own: CheckPairs = ()
    on_node: CheckPairs = ()
    tags: Tuple[str, ...] = ()
    upstream = None
    meta = service_data.get("Meta")
    kept_meta = tuple(sorted((str(k), v) for k, v in meta.items())) if keep_meta and isinstance(meta, dict) else ()
    try:
        if checks is None:
            checks = []
        if not isinstance(checks, list) or not all(isinstance(check, dict) for check in checks):
            raise _Skip("its Checks are not a list of objects")
        own = check_pairs(check for check in checks if check.get("ServiceID"))
        on_node = check_pairs(check for check in checks if not check.get("ServiceID"))
        raw_tags = service_data.get("Tags") or []
        if not isinstance(raw_tags, list) or not all(isinstance(tag, str) for tag in raw_tags):
            raise _Skip("its Tags are not a list of strings")
        tags = tuple(raw_tags)
        tag = _tag_value(tags, tag_key)
        upstream = service if tag is None else f"{service}_{tag}"
        problem = name_problem(upstream)
        if problem:
            raise _Skip(f"the upstream name {shown(upstream)} {problem}")
        server = _server(service_data, node_data)
    except _Skip as skip:
        return Instance(service, node, instance_id, upstream, None, skip.why, tags, own, on_node, kept_meta)
    return Instance(service, node, instance_id, upstream, server, None, tags, own, on_node, kept_meta)


def parse_health_entries(service: str, entries: Any, tag_key: str, keep_meta: bool = True) -> Optional[List[Instance]]:
    """The Instances of a ``/v1/health/service/NAME`` answer, one per entry (a malformed entry gives a
    ``malformed`` Instance); None when the answer is not a list."""
    if not isinstance(entries, list):
        return None
    result = []
    for entry in entries:
        if not isinstance(entry, dict):
            result.append(parse_registration(service, None, None, None, tag_key, keep_meta))
        else:
            result.append(parse_registration(service, entry.get("Node"), entry.get("Service"), entry.get("Checks"),
                                             tag_key, keep_meta))
    return result


def parse_node_services(answer: Any, tag_key: str, keep_meta: bool = True,
                        known: Optional[Callable[[str, str, str], Optional[Instance]]] = None,
                        wanted: Optional[Container[str]] = None) -> List[Tuple[Any, Any, Instance]]:
    """``(service name, raw service ID, Instance)`` for each service of a
    ``/v1/catalog/node-services/NODE`` answer (no checks: that endpoint has none). A service
    without a string name is left out (no service to put it under), and so is one not in
    ``wanted`` (when given); an answer of another shape gives nothing. ``known(service, node, id)``:
    the Instance parsed before for that registration, kept when nothing it was parsed from changed
    (see parse_registration)."""
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
        reuse = None
        if known is not None and isinstance(node_data, dict):
            reuse = known(name, str(node_data.get("Node", "")), str(service_data.get("ID", "")))
        result.append((name, service_data.get("ID"),
                       parse_registration(name, node_data, service_data, None, tag_key, keep_meta, reuse)))
    return result
