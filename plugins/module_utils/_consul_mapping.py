# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: THE mapping from Consul service instances to upstreams (module and watcher).
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How Consul's services become upstreams. Pure functions of data: no I/O, no clock, no logging.

Input: for each service name, the entries of ``/v1/health/service/NAME`` (each ``{"Node": {...},
"Service": {...}, "Checks": [...]}``, every instance whatever its health).

Rules, in order, for each instance (docs/consul.md has the table of skip reasons):

1. Filters (``MappingOptions.selects``): a service in ``exclude`` (default ``["consul"]``), outside
   a non-empty ``include``, or not starting with ``prefix`` is ignored silently.
2. Upstream name: ``SERVICE``, or ``SERVICE_TAG`` when the instance has a tag ``KEY=TAG`` (``KEY``
   is ``tag_key``, default ``gray``); ``gray=default`` or no such tag means no suffix. Two
   different ``KEY=`` tags on one instance, an empty ``KEY=``, or a resulting name that breaks
   the upstream name rule (``_names.py``) skip the instance.
3. Server: host from ``Service.Address``, else ``Node.Address``; port from ``Service.Port``;
   parameters from ``Service.Meta``: ``dyups_weight``, ``dyups_max_fails``, ``dyups_fail_timeout``,
   ``dyups_max_conns``, ``dyups_backup``, ``dyups_down``; checked by ``parse_server``. Any other
   ``dyups_*`` Meta key (a typo such as ``dyups_bakup``) skips the instance rather than being
   ignored: a misread parameter must not reach nginx.
4. Health: the instance's status is the worst of its checks (node checks and service checks, as
   the endpoint returns them; no check at all is ``passing``). It serves only when every check's
   status is in ``passing_states`` (default ``("passing",)``; ``include_warning`` adds ``warning``).
5. One address twice in one upstream: one instance is kept (a serving one before one that is not,
   then the first by node and ID), the others are skipped.
6. One upstream name from two services (``a_b`` untagged and ``a`` tagged ``gray=b``; names that
   differ only in letter case count as one, as nginx compares them so): the service whose name *is*
   the upstream name wins, else the alphabetically first; the other's instances are skipped. The
   same rule applies whether services are mapped together or per service and merged
   (``merge_results``), so the watcher's per-service cache gives the module's answer.

Output (``MappingResult``): ``instances`` (every usable instance, sorted), ``upstreams``
``{name: Upstream}`` (built by ``build_upstream``, only from serving instances), ``empty`` (upstream
names that have instances, none serving: callers apply their zero-instance policy), ``skipped``
(``[{"what", "why", "service", "node", "id"}]``), ``sources`` (``{upstream: service}``).

``index_checks`` indexes a ``/v1/health/state/any`` answer by instance, for the watcher's health poll.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_problem
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import parse_server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import build_upstream

DEFAULT_TAG_KEY = "gray"
DEFAULT_TAG_VALUE = "default"
DEFAULT_EXCLUDE = ("consul",)
DEFAULT_PASSING = ("passing",)
CHECK_STATES = ("passing", "warning", "critical")
META_PREFIX = "dyups_"
META_KEYS = {
    "dyups_weight": "weight",
    "dyups_max_fails": "max_fails",
    "dyups_fail_timeout": "fail_timeout",
    "dyups_max_conns": "max_conns",
    "dyups_backup": "backup",
    "dyups_down": "down",
}
_SEVERITY = {"passing": 0, "warning": 1, "critical": 2}


@dataclass(frozen=True)
class MappingOptions:
    """How services are selected and mapped; validated on creation (ValueError)."""

    tag_key: str = DEFAULT_TAG_KEY
    include: tuple = ()
    exclude: tuple = DEFAULT_EXCLUDE
    prefix: str = ""
    include_warning: bool = False
    passing_states: tuple = DEFAULT_PASSING

    def __post_init__(self):
        tag_key = self.tag_key
        if not isinstance(tag_key, str) or not tag_key or "=" in tag_key or tag_key.strip() != tag_key:
            raise ValueError(f"tag_key must be a non-empty word without '=' or spaces, not {self.tag_key!r}")
        for what in ("include", "exclude"):
            value = getattr(self, what)
            value = () if value is None else (value,) if isinstance(value, str) else tuple(value)
            if not all(isinstance(item, str) for item in value):
                raise ValueError(f"{what} must be a list of service names")
            object.__setattr__(self, what, value)
        object.__setattr__(self, "prefix", self.prefix or "")
        states = (self.passing_states,) if isinstance(self.passing_states, str) else tuple(self.passing_states or ())
        unknown = [state for state in states if state not in CHECK_STATES]
        if unknown or not states:
            raise ValueError(f"passing_states must be a non-empty list from {', '.join(CHECK_STATES)}, not {states!r}")
        if self.include_warning and "warning" not in states:
            states = states + ("warning",)
        object.__setattr__(self, "passing_states", states)

    def selects(self, service):
        """True when ``service`` passes the include / exclude / prefix filters."""
        if service in self.exclude:
            return False
        if self.include and service not in self.include:
            return False
        return service.startswith(self.prefix)


@dataclass
class MappingResult:
    """See the module docstring. ``upstreams`` and ``empty`` never share a name."""

    instances: list = field(default_factory=list)
    upstreams: dict = field(default_factory=dict)
    empty: tuple = ()
    skipped: list = field(default_factory=list)
    sources: dict = field(default_factory=dict)

    def upstream_specs(self):
        """``{name: {"servers": [spec, ...], "directives": []}}``: the bulk form of dyups_upstream."""
        return {name: {"servers": upstream.to_dict()["servers"], "directives": upstream.to_dict()["directives"]}
                for name, upstream in self.upstreams.items()}

    def to_dict(self):
        return {
            "instances": [dict(item) for item in self.instances],
            "upstreams": self.upstream_specs(),
            "empty": list(self.empty),
            "skipped": [dict(item) for item in self.skipped],
        }


class _Skip(Exception):
    def __init__(self, why):
        super().__init__(why)
        self.why = why


def _text(value):
    """Shown form of a hostile value: repr-quoted and cut, so it cannot forge a log line."""
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _skip_item(what, why, service=None, node=None, instance_id=None):
    return {"what": what, "why": why, "service": service, "node": node, "id": instance_id}


def _instance_what(service, node, instance_id):
    return f"instance {_text(instance_id)} of service {_text(service)} on node {_text(node)}"


def _tag_value(tags, tag_key):
    prefix = tag_key + "="
    values = sorted({tag[len(prefix):] for tag in tags if tag.startswith(prefix)})
    if len(values) > 1:
        raise _Skip(f"it has {len(values)} different {tag_key}= tags ({', '.join(_text(v) for v in values)}); "
                    "an instance belongs to one upstream")
    if not values or values[0] == DEFAULT_TAG_VALUE:
        return None
    if not values[0]:
        raise _Skip(f"its tag {tag_key}= has no value (write {tag_key}={DEFAULT_TAG_VALUE} for no suffix)")
    return values[0]


def _status(checks):
    """The worst status of ``checks``; an unknown status counts as critical."""
    worst = "passing"
    for check in checks:
        status = check.get("Status")
        if not isinstance(status, str) or status not in _SEVERITY:  # also a list or object: unhashable
            status = "critical"
        if _SEVERITY[status] > _SEVERITY[worst]:
            worst = status
    return worst


def _server_from(service_data, node_data):
    address = service_data.get("Address") or node_data.get("Address")
    if not isinstance(address, str) or not address:
        raise _Skip("neither Service.Address nor Node.Address holds an address")
    port = service_data.get("Port")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise _Skip(f"its port {_text(port)} is not 1-65535")
    meta = service_data.get("Meta") or {}
    if not isinstance(meta, dict):
        raise _Skip("its Meta is not a JSON object")
    spec = {"host": address, "port": port}
    for key in sorted(meta):
        if not isinstance(key, str) or not key.startswith(META_PREFIX):
            continue
        if key not in META_KEYS:
            raise _Skip(f"unknown Meta key {_text(key)}; known: {', '.join(sorted(META_KEYS))}")
        value = meta[key]
        if not isinstance(value, str):
            raise _Skip(f"Meta {key}={_text(value)} is not a string")
        spec[META_KEYS[key]] = value.strip()
    try:
        return parse_server(spec)
    except ValidationError as exc:
        raise _Skip(f"its server breaks the server rules: {exc.rule}") from None


def _map_one_service(service, entries, options):
    """The mapping of one service's entries, before cross-service collisions are resolved."""
    result = MappingResult()
    problem = name_problem(service)
    if problem:
        count = len(entries) if isinstance(entries, list) else 0
        result.skipped.append(_skip_item(f"service {_text(service)}",
                                         f"the service name {problem}, so it cannot name an upstream "
                                         f"({count} instance(s) skipped)", service=service))
        return result
    if not isinstance(entries, list):
        result.skipped.append(_skip_item(f"service {_text(service)}", "its health entries are not a list",
                                         service=service))
        return result
    if not entries:
        result.skipped.append(_skip_item(f"service {_text(service)}",
                                         "the catalog lists it but /v1/health/service returned no instance "
                                         "(deregistered meanwhile, or the ACL token lacks node:read)",
                                         service=service))
        return result
    rows = []
    for entry in entries:
        node_data = entry.get("Node") if isinstance(entry, dict) else None
        service_data = entry.get("Service") if isinstance(entry, dict) else None
        checks = entry.get("Checks") if isinstance(entry, dict) else None
        if not isinstance(node_data, dict) or not isinstance(service_data, dict):
            result.skipped.append(_skip_item(f"an entry of service {_text(service)}",
                                             "it lacks the Node or Service object", service=service))
            continue
        rows.append((str(node_data.get("Node", "")), str(service_data.get("ID", "")), node_data, service_data,
                     checks))
    rows.sort(key=lambda row: (row[0], row[1]))
    candidates = []
    for node, instance_id, node_data, service_data, checks in rows:
        try:
            if checks is None:
                checks = []
            if not isinstance(checks, list) or not all(isinstance(check, dict) for check in checks):
                raise _Skip("its Checks are not a list of objects")
            tags = service_data.get("Tags") or []
            if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
                raise _Skip("its Tags are not a list of strings")
            tag = _tag_value(tags, options.tag_key)
            upstream = service if tag is None else f"{service}_{tag}"
            problem = name_problem(upstream)
            if problem:
                raise _Skip(f"the upstream name {_text(upstream)} {problem}")
            server = _server_from(service_data, node_data)
        except _Skip as skip:
            result.skipped.append(_skip_item(_instance_what(service, node, instance_id), skip.why,
                                             service=service, node=node, instance_id=instance_id))
            continue
        serving = all(check.get("Status") in options.passing_states for check in checks)
        candidates.append((node, instance_id, service_data, tags, upstream, server, _status(checks), serving))
    # One address once per upstream: a serving instance before a non-serving one, then by node and ID.
    candidates.sort(key=lambda row: (not row[7], row[0], row[1]))
    by_upstream = {}
    kept = {}
    for node, instance_id, service_data, tags, upstream, server, status, serving in candidates:
        key = (upstream, server.address)
        if key in kept:
            result.skipped.append(_skip_item(
                _instance_what(service, node, instance_id),
                f"{server.address} is already in upstream {upstream} from instance {_text(kept[key])}",
                service=service, node=node, instance_id=instance_id))
            continue
        kept[key] = instance_id
        meta = service_data.get("Meta") or {}
        result.instances.append({
            "service": service,
            "id": instance_id,
            "node": node,
            "address": server.host,
            "port": server.port,
            "server": server.spec(),
            "tags": list(tags),
            "meta": {str(k): v for k, v in sorted(meta.items())},
            "status": status,
            "serving": serving,
            "upstream": upstream,
        })
        by_upstream.setdefault(upstream, []).append((server, serving))
    result.instances.sort(key=lambda item: (item["node"], item["id"]))
    empty = []
    for upstream in sorted(by_upstream):
        servers = [server for server, serving in by_upstream[upstream] if serving]
        result.sources[upstream] = service
        if not servers:
            empty.append(upstream)
            continue
        try:
            result.upstreams[upstream] = build_upstream(upstream, servers)
        except ValidationError as exc:
            result.skipped.append(_skip_item(f"upstream {_text(upstream)}", f"it breaks a rule: {exc}",
                                             service=service))
            del result.sources[upstream]
            result.instances = [item for item in result.instances if item["upstream"] != upstream]
    result.empty = tuple(empty)
    return result


def _skip_order(item):
    return (item.get("service") or "", item.get("node") or "", item.get("id") or "", item["what"], item["why"])


def _winner(claims):
    """The (service, upstream) pair that keeps a name nginx sees as one (names compare case-insensitively):
    a service named exactly like its upstream first, then the alphabetically first service, then upstream."""
    return min(claims, key=lambda pair: (pair[0] != pair[1], pair[0], pair[1]))


_WINS = "(the service named like the upstream, else the alphabetically first; nginx compares names ignoring case)"


def _loses(winners, service, upstream):
    return winners[upstream.lower()] != (service, upstream)


def _collision_survivors(result, winners, skipped):
    """The instances of ``result`` whose upstream its service wins; a skip item for each other one.

    A result whose instances were dropped to save memory (the watcher keeps ``instances`` empty)
    gets one skip item per lost upstream instead.
    """
    if not result.instances:
        for upstream, service in sorted(result.sources.items()):
            if _loses(winners, service, upstream):
                winner, taken = winners[upstream.lower()]
                skipped.append(_skip_item(
                    f"upstream {upstream} of service {_text(service)}",
                    f"upstream {taken} already comes from service {_text(winner)}, which wins {_WINS}",
                    service=service))
        return
    for item in result.instances:
        if _loses(winners, item["service"], item["upstream"]):
            winner, taken = winners[item["upstream"].lower()]
            skipped.append(_skip_item(
                _instance_what(item["service"], item["node"], item["id"]),
                f"upstream {taken} already comes from service {_text(winner)}, which wins {_WINS}",
                service=item["service"], node=item["node"], instance_id=item["id"]))
            continue
        yield item


def merge_results(results):
    """One MappingResult from per-service results (or merged ones), resolving name collisions (rule 6)."""
    results = list(results)
    claims = {}
    for result in results:
        for upstream, service in result.sources.items():
            claims.setdefault(upstream.lower(), set()).add((service, upstream))
    winners = {key: _winner(pairs) for key, pairs in claims.items()}
    merged = MappingResult()
    upstreams = {}
    empty = set()
    for result in results:
        if not any(_loses(winners, service, upstream) for upstream, service in result.sources.items()):
            merged.instances.extend(result.instances)  # the common case: no name collision
        else:
            merged.instances.extend(_collision_survivors(result, winners, merged.skipped))
        merged.skipped.extend(result.skipped)
        for upstream, service in result.sources.items():
            if _loses(winners, service, upstream):
                continue
            merged.sources[upstream] = service
            if upstream in result.upstreams:
                upstreams[upstream] = result.upstreams[upstream]
            elif upstream in result.empty:
                empty.add(upstream)
    merged.instances.sort(key=lambda item: (item["service"], item["node"], item["id"]))
    merged.skipped.sort(key=_skip_order)
    merged.upstreams = {name: upstreams[name] for name in sorted(upstreams)}
    merged.empty = tuple(sorted(empty))
    merged.sources = {name: merged.sources[name] for name in sorted(merged.sources)}
    return merged


def map_services(health, options=None):
    """Map ``{service: [health entries]}`` to a MappingResult. Services the filters drop are ignored."""
    options = options or MappingOptions()
    per_service = [_map_one_service(service, health[service], options)
                   for service in sorted(health, key=str) if isinstance(service, str) and options.selects(service)]
    return merge_results(per_service)


# -- health/state/any snapshots ------------------------------------------------------------------------
# Fields of Consul's answers that neither the mapping nor the watcher reads; some are large (a check's
# Output, Definition, ServiceTags). ``slim_object`` drops them as the JSON is parsed.
UNREAD_FIELDS = frozenset((
    "Output", "Notes", "Definition", "ServiceTags", "CreateIndex", "ModifyIndex", "TaggedAddresses", "Weights",
    "Proxy", "Connect", "EnableTagOverride", "Type", "Datacenter", "Namespace", "Partition", "ExposedPort",
    "Interval", "Timeout", "SocketPath", "PeerName", "ServiceMeta", "Name",
))
_SHARED_VALUES = ("Status", "Node", "ServiceName", "Service")


def slim_object(obj):
    """``json.loads`` object_hook for a long-running reader: the same object without UNREAD_FIELDS, and
    with the values that repeat in every check and instance (status, node and service names) shared."""
    for key in UNREAD_FIELDS.intersection(obj):
        del obj[key]
    for key in _SHARED_VALUES:
        value = obj.get(key)
        if isinstance(value, str):
            obj[key] = sys.intern(value)
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

    def keys_of(self, service):
        """Instance keys with at least one check of ``service``."""
        return {key for key, (name, _states) in self.states.items() if key[1] and name == service}


def index_checks(checks):
    """A CheckSnapshot from a list of checks (anything that is not a dict is ignored)."""
    grouped = {}
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
    states = {}
    for key, group in grouped.items():
        pairs = [(str(c.get("CheckID") or ""), str(c.get("Status") or "")) for c in group]
        if len(pairs) > 1:
            pairs = sorted(set(pairs))
        states[key] = (str(group[0].get("ServiceName") or ""), tuple(pairs))
    return CheckSnapshot(states=states, checks=grouped)
