# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: THE mapping from Consul service instances to upstreams (module and watcher).
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How Consul's services become upstreams. Pure functions of data: no I/O, no clock, no logging.

Input: for each service, two plain stores (_consul_instance.py): its registrations ``{(node, id):
Instance}`` and a health index ``{(node, id) or (node, ""): check pairs}``, as
``parse_health_answer`` builds them from the entries of ``/v1/health/service/NAME`` (the module) or
the watcher keeps them (plugins/watcher/consul_source.py); ``map_instances`` maps one service.

Rules, in order, for each instance (docs/consul.md has the table of skip reasons):

1. Filters (``MappingOptions.selects``): a service in ``exclude`` (default ``["consul"]``), outside
   a non-empty ``include``, or not starting with ``prefix`` is ignored silently.
2. Upstream name: ``SERVICE``, or ``SERVICE_TAG`` when the instance has a tag ``KEY=TAG`` (``KEY``
   is ``tag_key``, default ``gray``); ``gray=default`` or no such tag means no suffix. Two
   different ``KEY=`` tags on one instance, an empty ``KEY=``, or a resulting name that breaks
   the upstream name rule (``_names.py``) skip the instance; so does a reserved name
   (``_reserved.py``: the Lua flavor's ``DYUPS_BALANCER``, upstreams defined statically in nginx's
   configuration, ``reserved_names``), with the reason.
3. Server: host from ``Service.Address``, else ``Node.Address``; port from ``Service.Port``;
   parameters from ``Service.Meta``: ``dyups_weight``, ``dyups_max_fails``, ``dyups_fail_timeout``,
   ``dyups_max_conns``, ``dyups_backup``, ``dyups_down``; checked by ``parse_server``. Any other
   ``dyups_*`` Meta key (a typo such as ``dyups_bakup``) skips the instance rather than being
   ignored: a misread parameter must not reach nginx. Then the server policy (``_server_policy.py``):
   an address a registrant must not point nginx at (loopback, unspecified, link-local, multicast, this
   host, ``denied_networks``, outside ``allowed_networks``; host names unless allowed) or Meta out of
   bounds (``weight`` above ``max_weight``, ``max_fails=0``) skips the instance with the reason.
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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, TypeVar

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_instance import (
    DEFAULT_TAG_VALUE, META_KEYS, META_PREFIX, CheckPairs, Instance, InstanceKey, instance_checks, parse_health_answer,
    shown, tag_sources, worst_status)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._directives import parse_directives
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_key, name_problem
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._reserved import Reserved
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._server_policy import ServerPolicy
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._slots import with_slots
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream, build_upstream

__all__ = ["DEFAULT_TAG_KEY", "DEFAULT_TAG_VALUE", "META_KEYS", "META_PREFIX", "MappingOptions", "MappingResult",
           "map_instances", "map_services", "merge_results",
           "MergedMapping", "skipped_service"]

DEFAULT_TAG_KEY = "gray"
DEFAULT_EXCLUDE = ("consul",)
DEFAULT_PASSING = ("passing",)
CHECK_STATES = ("passing", "warning", "critical")


@dataclass(frozen=True)
class MappingOptions:
    """How services are selected and mapped; validated on creation (ValueError).

    ``directives`` (every upstream) and ``upstream_directives`` (``{upstream: [directive, ...]}``,
    instead of ``directives`` for that upstream) are attached to the upstreams the mapping builds,
    so that ``build_upstream`` checks them with the servers (the watcher's settings; none for the
    consul_services module). ``reserved``: a ``_reserved.Reserved`` (or names to reserve besides the
    balancer's): upstreams of those names are skipped with the reason. ``policy``: a
    ``_server_policy.ServerPolicy`` (or its keyword arguments): where servers may point and their Meta
    bounds; instances it refuses are skipped with the reason (rule 3)."""

    tag_key: str = DEFAULT_TAG_KEY
    include: tuple = ()
    exclude: tuple = DEFAULT_EXCLUDE
    prefix: str = ""
    include_warning: bool = False
    passing_states: tuple = DEFAULT_PASSING
    directives: tuple = ()
    upstream_directives: Any = None
    reserved: Any = None
    policy: Any = None

    def __post_init__(self) -> None:
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
        if not isinstance(self.reserved, Reserved):
            object.__setattr__(self, "reserved", Reserved(extra=self.reserved or ()))
        if not isinstance(self.policy, ServerPolicy):
            object.__setattr__(self, "policy", ServerPolicy(**(self.policy or {})))
        states = (self.passing_states,) if isinstance(self.passing_states, str) else tuple(self.passing_states or ())
        unknown = [state for state in states if state not in CHECK_STATES]
        if unknown or not states:
            raise ValueError(f"passing_states must be a non-empty list from {', '.join(CHECK_STATES)}, not {states!r}")
        if self.include_warning and "warning" not in states:
            states = states + ("warning",)
        object.__setattr__(self, "passing_states", states)
        try:
            object.__setattr__(self, "directives", parse_directives(list(self.directives or ())))
            object.__setattr__(self, "upstream_directives", {
                name: parse_directives(values) for name, values in dict(self.upstream_directives or {}).items()})
        except ValidationError as exc:
            raise ValueError(str(exc)) from None

    def selects(self, service: str) -> bool:
        """True when ``service`` passes the include / exclude / prefix filters."""
        if service in self.exclude:
            return False
        if self.include and service not in self.include:
            return False
        return service.startswith(self.prefix)

    def may_map_to(self, upstream: str) -> bool:
        """True when a service these filters select can map to ``upstream``: the service's name, or the
        name, ``_`` and a tag (rule 2). What an exclusive sync with these filters may remove."""
        return any(self.selects(service) for service in tag_sources(upstream))

    def directives_for(self, upstream: str) -> tuple:
        """The directives attached to ``upstream``."""
        return self.upstream_directives.get(upstream, self.directives)


@with_slots  # a watcher holds one per service
@dataclass
class MappingResult:
    """See the module docstring. ``upstreams`` and ``empty`` never share a name. ``instances`` and
    ``skipped`` are lists, or the empty tuple when empty (a watcher holds thousands of results)."""

    instances: Sequence[dict] = ()
    upstreams: dict = field(default_factory=dict)
    empty: tuple = ()
    skipped: Sequence[dict] = ()
    sources: dict = field(default_factory=dict)

    def upstream_specs(self) -> dict:
        """``{name: {"servers": [spec, ...], "directives": [...]}}``: the bulk form of dyups_upstream."""
        specs = {}
        for name, upstream in self.upstreams.items():
            spec = upstream.to_dict()
            specs[name] = {"servers": spec["servers"], "directives": spec["directives"]}
        return specs

    def to_dict(self) -> dict:
        """The result as plain data; ``instances`` holds this result's own items (made for it by the mapping)."""
        return {
            "instances": list(self.instances),
            "upstreams": self.upstream_specs(),
            "empty": list(self.empty),
            "skipped": [dict(item) for item in self.skipped],
        }


_text = shown


def _skip_item(what: str, why: Optional[str], service: Optional[str] = None, node: Optional[str] = None,
               instance_id: Optional[str] = None) -> dict:
    return {"what": what, "why": why, "service": service, "node": node, "id": instance_id}


def _instance_what(service: str, node: str, instance_id: str) -> str:
    return f"instance {_text(instance_id)} of service {_text(service)} on node {_text(node)}"


def _report(instance: Instance, status: str, serving: bool) -> dict:
    """The ``instances`` item of the module's answer."""
    server = instance.server
    if server is None:  # a parse guarantee: only usable Instances are reported
        raise AssertionError("only usable Instances are reported")
    return {
        "service": instance.service,
        "id": instance.id,
        "node": instance.node,
        "address": server.host,
        "port": server.port,
        "server": server.spec(),
        "tags": list(instance.tags),
        "meta": dict(instance.meta),
        "status": status,
        "serving": serving,
        "upstream": instance.upstream,
    }


def skipped_service(service: str, why: str) -> MappingResult:
    """The mapping of a service that is not read (its instances unknown): one skip item saying why."""
    return MappingResult(skipped=[_skip_item(f"service {_text(service)}", why, service=service)])


def map_instances(service: str, registrations: Optional[Mapping[InstanceKey, Instance]],
                  health: Mapping[InstanceKey, CheckPairs], options: MappingOptions,
                  report: bool = True) -> MappingResult:
    """The mapping of one service's registrations (``{(node, id): Instance}``; None: its answer was not
    a list), their checks looked up in ``health`` (the health index: see _consul_instance.py), before
    cross-service collisions are resolved. ``report``: also list the usable instances (the module's
    ``instances``; the watcher does without)."""
    instances = None if registrations is None else registrations.values()
    result = MappingResult()
    skipped: List[dict] = []
    result.skipped = skipped  # the empty tuple again at the end when nothing was skipped
    problem = name_problem(service)
    if problem:
        # None: not read (consul_services sends no request for a name it cannot use)
        count = f"{len(instances)} instance(s)" if instances is not None else "its instances"
        skipped.append(_skip_item(f"service {_text(service)}",
                                  f"the service name {problem}, so it cannot name an upstream "
                                  f"({count} skipped)", service=service))
        return result
    if instances is None:
        skipped.append(_skip_item(f"service {_text(service)}", "its health entries are not a list",
                                  service=service))
        return result
    if not instances:
        skipped.append(_skip_item(f"service {_text(service)}",
                                  "the catalog lists it but /v1/health/service returned no instance "
                                  "(deregistered meanwhile, or the ACL token lacks node:read)",
                                  service=service))
        return result
    candidates = []
    for instance in sorted(instances, key=lambda item: (item.node, item.id)):
        if instance.malformed:
            skipped.append(_skip_item(f"an entry of service {_text(service)}", instance.skip, service=service))
        elif instance.skip is not None:
            skipped.append(_skip_item(_instance_what(service, instance.node, instance.id), instance.skip,
                                      service=service, node=instance.node, instance_id=instance.id))
        else:
            refused = options.policy.problem(instance.server)
            if refused is not None:
                skipped.append(_skip_item(_instance_what(service, instance.node, instance.id), refused,
                                          service=service, node=instance.node, instance_id=instance.id))
                continue
            checks = instance_checks(health, instance)
            serving = all(status in options.passing_states for _check_id, status in checks)
            candidates.append((not serving, instance, checks))
    # One address once per upstream: a serving instance before a non-serving one, then by node and ID.
    candidates.sort(key=lambda row: (row[0], row[1].node, row[1].id))
    by_upstream: Dict[str, list] = {}
    kept: Dict[Tuple[str, str], str] = {}
    reports = []
    for not_serving, instance, checks in candidates:
        upstream, server = instance.upstream, instance.server
        if upstream is None or server is None:  # a parse guarantee
            raise AssertionError("a candidate is a usable Instance")
        key = (upstream, server.address)
        if key in kept:
            skipped.append(_skip_item(
                _instance_what(service, instance.node, instance.id),
                f"{server.address} is already in upstream {upstream} from instance {_text(kept[key])}",
                service=service, node=instance.node, instance_id=instance.id))
            continue
        kept[key] = instance.id
        if report:
            reports.append(_report(instance, worst_status(checks), not not_serving))
        by_upstream.setdefault(upstream, []).append((server, not not_serving))
    empty = []
    broken = set()
    for upstream in sorted(by_upstream):
        reserved = options.reserved.problem(upstream)
        if reserved:
            skipped.append(_skip_item(f"upstream {_text(upstream)}", f"the name is reserved: {reserved} "
                                      f"({len(by_upstream[upstream])} instance(s) skipped)", service=service))
            broken.add(upstream)
            continue
        servers = [server for server, serving in by_upstream[upstream] if serving]
        result.sources[upstream] = service
        if not servers:
            empty.append(upstream)
            continue
        try:
            result.upstreams[upstream] = build_upstream(upstream, servers, options.directives_for(upstream))
        except ValidationError as exc:
            skipped.append(_skip_item(f"upstream {_text(upstream)}", f"it breaks a rule: {exc}",
                                      service=service))
            del result.sources[upstream]
            broken.add(upstream)
    result.instances = sorted((item for item in reports if item["upstream"] not in broken),
                              key=lambda item: (item["node"], item["id"])) or ()
    result.empty = tuple(empty)
    result.skipped = skipped or ()
    return result


def _folded(name: str) -> str:
    """The name's key (``name_key``): the same string object when already so."""
    lower = name_key(name)
    return name if lower == name else lower


def _skip_order(item: dict) -> Tuple[str, str, str, str, str]:
    return (item.get("service") or "", item.get("node") or "", item.get("id") or "", item["what"], item["why"])


def _winner(claims: Iterable[Tuple[str, str]]) -> Tuple[str, str]:
    """The (service, upstream) pair that keeps a name nginx sees as one (names compare case-insensitively):
    a service named exactly like its upstream first, then the alphabetically first service, then upstream."""
    return min(claims, key=lambda pair: (pair[0] != pair[1], pair[0], pair[1]))


_WINS = "(the service named like the upstream, else the alphabetically first; nginx compares names ignoring case)"


def _lost_items(result: MappingResult | _Kept, service: str, upstream: str, winner: Tuple[str, str]) -> List[dict]:
    """Skip items for the instances of ``result`` that map to ``upstream`` of ``service``, which lose
    the name to ``winner``; one item for the upstream when ``result`` lists no instances (the watcher
    keeps none)."""
    why = f"upstream {winner[1]} already comes from service {_text(winner[0])}, which wins {_WINS}"
    if not result.instances:
        return [_skip_item(f"upstream {upstream} of service {_text(service)}", why, service=service)]
    return [_skip_item(_instance_what(item["service"], item["node"], item["id"]), why, service=item["service"],
                       node=item["node"], instance_id=item["id"])
            for item in result.instances if item["service"] == service and item["upstream"] == upstream]


K = TypeVar("K")
V = TypeVar("V")


class _One(Mapping[K, V]):
    """A read-only mapping of exactly one item: 48 bytes, where a dict of one item is 184 (a watcher keeps two
    per service, see _Kept)."""

    __slots__ = ("_key", "_value")

    def __init__(self, key: K, value: V) -> None:
        self._key, self._value = key, value

    def __getitem__(self, key: K) -> V:
        if key == self._key:
            return self._value
        raise KeyError(key)

    def __iter__(self) -> Iterator[K]:
        return iter((self._key,))

    def __len__(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"{{{self._key!r}: {self._value!r}}}"


_NONE: Dict[Any, Any] = {}  # the one empty mapping every kept result shares (never written to)


def _small(items: Mapping[K, V]) -> Mapping[K, V]:
    """``items`` as kept: the shared empty one, a _One, or the dict itself (two items or more)."""
    if not items:
        return _NONE
    if len(items) == 1:
        ((key, value),) = items.items()
        return _One(key, value)
    return items


class _Kept(NamedTuple):
    """A service's MappingResult as MergedMapping keeps it: the same fields, its one-name dicts as _One."""

    instances: Sequence[dict]
    upstreams: Mapping[str, Upstream]
    empty: tuple
    skipped: Sequence[dict]
    sources: Mapping[str, str]


def _kept(result: MappingResult) -> _Kept:
    return _Kept(result.instances, _small(result.upstreams), result.empty, result.skipped, _small(result.sources))


class MergedMapping:
    """Per-service (or already merged) MappingResults merged into one, kept current as each changes:
    ``put`` costs the upstream names it touches, not the number of services. Name collisions
    (rule 6) are resolved here, the one place: ``merge_results`` is a MergedMapping filled at once.

    ``upstreams`` ({name: Upstream}), ``empty`` (set) and ``sources`` ({upstream: service}) are the
    live merged state (not sorted); ``take_changes`` gives the upstream names whose entry may have
    changed since its last call (None the first time: all of them); ``result`` a sorted MappingResult.
    """

    def __init__(self) -> None:
        self.results: Dict[Any, _Kept] = {}  # MappingResults as kept (_kept: a third of the size)
        self.upstreams: Dict[str, Upstream] = {}
        self.empty: set = set()
        self.sources: Dict[str, str] = {}
        # name_key(name) -> {(service, upstream): key}, held as the one pair ((service, upstream), key) when
        # one service claims the name (nearly always; a dict per upstream name would be most of the cost)
        self._claims: Dict[str, Any] = {}
        self._winners: Dict[str, Tuple[str, str]] = {}
        self._lost: Dict[str, List[dict]] = {}
        self._changed: Optional[set] = None
        self._skipped: Optional[List[dict]] = None

    def put(self, key: Any, result: Optional[MappingResult]) -> None:
        """Set (or, with None, drop) the result held under ``key`` (a service name)."""
        old = self.results.pop(key, None)
        touched = set()
        if old is not None:
            for upstream, service in old.sources.items():
                lower = _folded(upstream)
                touched.add(lower)
                self._unclaim(lower, (service, upstream))
            if old.skipped:
                self._skipped = None
        if result is not None:
            kept = self.results[key] = _kept(result)
            for upstream, service in kept.sources.items():
                lower = _folded(upstream)
                touched.add(lower)
                self._claim(lower, (service, upstream), key)
            if result.skipped:
                self._skipped = None
        for lower in touched:
            self._settle(lower)

    def _claim(self, lower: str, pair: Tuple[str, str], key: Any) -> None:
        held = self._claims.get(lower)
        if held is None or (not isinstance(held, dict) and held[0] == pair):
            self._claims[lower] = (pair, key)
        elif isinstance(held, dict):
            held[pair] = key
        else:
            self._claims[lower] = {held[0]: held[1], pair: key}

    def _unclaim(self, lower: str, pair: Tuple[str, str]) -> None:
        held = self._claims.get(lower)
        if isinstance(held, dict):
            held.pop(pair, None)
            if len(held) <= 1:
                self._claims[lower] = next(iter(held.items()), None)
                if not held:
                    del self._claims[lower]
        elif held is not None and held[0] == pair:
            del self._claims[lower]

    def _claims_of(self, lower: str) -> Dict[Tuple[str, str], Any]:
        """{(service, upstream): key} of the services that claim the name ``lower``."""
        held = self._claims.get(lower)
        if held is None:
            return {}
        return held if isinstance(held, dict) else {held[0]: held[1]}

    def _note(self, name: str) -> None:
        if self._changed is not None:
            self._changed.add(name)

    def _settle(self, lower: str) -> None:
        previous = self._winners.pop(lower, None)
        if previous is not None:
            name = previous[1]
            self.upstreams.pop(name, None)
            self.empty.discard(name)
            self.sources.pop(name, None)
            self._note(name)
        if self._lost.pop(lower, None):
            self._skipped = None
        claims = self._claims_of(lower)
        if not claims:
            return
        winner = _winner(claims) if len(claims) > 1 else next(iter(claims))
        service, name = winner
        self._winners[lower] = winner
        result = self.results[claims[winner]]
        self.sources[name] = service
        if name in result.upstreams:
            self.upstreams[name] = result.upstreams[name]
        elif name in result.empty:
            self.empty.add(name)
        self._note(name)
        if len(claims) > 1:
            self._lost[lower] = [item for pair, key in sorted(claims.items()) if pair != winner
                                 for item in _lost_items(self.results[key], pair[0], pair[1], winner)]
            self._skipped = None

    def take_changes(self) -> Optional[set]:
        changed, self._changed = self._changed, set()
        return changed

    def skipped(self) -> List[dict]:
        """Every skip item, sorted; the same list until a skip item comes or goes."""
        if self._skipped is None:
            items = [item for result in self.results.values() for item in result.skipped]
            items.extend(item for lost in self._lost.values() for item in lost)
            items.sort(key=_skip_order)
            self._skipped = items
        return self._skipped

    def _wins(self, service: str, upstream: str) -> bool:
        return self._winners.get(_folded(upstream)) == (service, upstream)

    def result(self) -> MappingResult:
        """The merged mapping as one MappingResult, sorted."""
        merged = MappingResult()
        instances: List[dict] = []
        for result in self.results.values():
            if all(self._wins(service, upstream) for upstream, service in result.sources.items()):
                instances.extend(result.instances)  # the common case: no name collision
            else:
                instances.extend(item for item in result.instances if self._wins(item["service"], item["upstream"]))
        instances.sort(key=lambda item: (item["service"], item["node"], item["id"]))
        merged.instances = instances
        merged.skipped = list(self.skipped())
        merged.upstreams = {name: self.upstreams[name] for name in sorted(self.upstreams)}
        merged.empty = tuple(sorted(self.empty))
        merged.sources = {name: self.sources[name] for name in sorted(self.sources)}
        return merged


def merge_results(results: Iterable[MappingResult]) -> MappingResult:
    """One MappingResult from per-service results (or merged ones), resolving name collisions (rule 6)."""
    merged = MergedMapping()
    for position, result in enumerate(results):
        merged.put(position, result)
    return merged.result()


def map_services(health: dict, options: Optional[MappingOptions] = None) -> MappingResult:
    """Map ``{service: [health entries]}`` to a MappingResult. Services the filters drop are ignored."""
    options = options or MappingOptions()
    per_service = []
    for service in sorted(health, key=str):
        if isinstance(service, str) and options.selects(service):
            registrations, checks = parse_health_answer(service, health[service], options.tag_key) or (None, {})
            per_service.append(map_instances(service, registrations, checks, options))
    return merge_results(per_service)
