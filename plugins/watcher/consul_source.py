# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What Consul says, kept current with four blocking queries whatever the number of services.

Consul limits concurrent HTTP connections per client address (200 by default), so one long poll
per service does not scale. The watcher holds exactly four:

- ``/v1/health/state/critical`` and ``/v1/health/state/warning``: each wakes when a check enters,
  leaves or changes in its state, and lists the checks in it: small while the fleet is healthy,
  whatever its size. Their union is the set of checks not passing (what one filtered
  ``/v1/health/state/any?filter=Status != "passing"`` gave; that filter runs on every check at
  each wake-up, the state endpoints are indexed: at 5 000 services x 3, 23.9 ms of Consul's time
  per flip against 2.4 + 2.0 ms for the two, which both wake on every status change). A
  check that goes bad on a known instance is applied in place, without another request; one that
  recovers (or whose instance went away), and one the cache does not know, make its service be
  read again. The two answers are separate reads, so a check moving between the states can show in
  both (the worse, critical, counts) or in neither for a moment: see _take_states for why that never
  counts as passing.
- ``/v1/catalog/services``: wakes on registrations, deregistrations and re-registrations. Its
  answer (names and tags) cannot show a new instance of a known service, or a new port or Meta,
  so every new index makes the instances of every service be compared with the cache (by node:
  1 + nodes requests), and the services that differ are read again.

- ``/v1/catalog/nodes``: wakes on node registrations; re-registering a node with a new address moves
  neither index above (measured on 1.8.7), yet instances without a Service.Address take the node's,
  so the services on a node whose address changed are read again (see _fold_nodes).

``/v1/catalog/services`` alone never wakes on a health change (consul-facts.md: the original script
kept a critical instance in rotation for 200 s), hence the health query.

Answers arrive late and in batches, interleaved with the reads they cause, so an answer may be
older than what the cache already holds. Each answer is complete, and each is compared with the
cache, never with the previous answer: once the last answer of each poll is folded in, the cache
is what Consul holds, whatever happened in between (docs/watcher.md, "How events are ordered";
tests/unit/property/test_property_watcher_events.py and tests/integration/test_watcher_bursts.py).

Services are read again with ``/v1/health/service/NAME``: one consistent answer per service,
instances and checks at the same index. A service whose read fails is isolated (its last good state
kept, read again later: see _fetch_many); a name no URL path can read is skipped with the reason
(docs/watcher.md, "Names Consul accepts that no URL path reads").

A full read of every service also runs at start, after Consul comes back from an outage, and every
``consul_resync_interval`` as a safety net. The mapping of instances to upstreams is the shared one
(plugins/module_utils/_consul_mapping.py), applied per service and cached, so a change costs the
mapping of the services it touched only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Collection, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _consul_mapping as mapping
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_instance import (
    CheckPairs, HealthIndex, Instance, InstanceKey, health_index, node_registrations, parse_health_answer, shown)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_answers import slim_object
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import (
    UNREADABLE_NAME, BlockingQuery, ConsulClient, path_segment_safe, resolve_token)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_mapping import MappingResult
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    ConsulBadAnswer, ConsulError, ConsulForbidden, ConsulRateLimited, ConsulServerError, ConsulUnavailable)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher.backoff import Backoff
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from ansible_collections.swallowkeeper.dyups.plugins.watcher.settings import Settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.stale_reads import StaleReads
from ansible_collections.swallowkeeper.dyups.plugins.watcher.transport import KeepAliveTransport

log = logging.getLogger("swallowkeeper.watcher")
FETCH_THREADS = 8
BY_NODE_IN_FLIGHT = 1000  # services per batch of node answers held at once in a full read by node
# The two health polls: (event kind, Consul's check state). Their union is every check not passing.
HEALTH_POLLS = (("health_critical", "critical"), ("health_warning", "warning"))
OTHER_POLL = {"health_critical": "health_warning", "health_warning": "health_critical"}

UNREADABLE_NODE = "Consul answers a redirect for /v1/catalog/node-services/NODE when NODE is not a clean URL path"

Instances = Dict[InstanceKey, Instance]  # one service's registrations (_consul_instance.py)
CheckKey = Tuple[str, str, str]  # (node, service id, check id); a node check's service id is ""
StateView = Dict[CheckKey, str]  # one health state's checks: check key -> ServiceName (see _state_view)
Compacted = Tuple[Instances, HealthIndex]  # (registrations, health index) of one service, see _parse_entries
ByNode = Tuple[Dict[str, Instances], Dict[str, bytes]]  # a read by node: {service: instances}, {node: answer digest}


def consul_error_kind(exc: BaseException) -> str:
    for cls, kind in ((ConsulForbidden, "consul_forbidden"), (ConsulRateLimited, "consul_rate_limited"),
                      (ConsulServerError, "consul_server_error"), (ConsulUnavailable, "consul_unavailable"),
                      (ConsulBadAnswer, "consul_bad_answer")):
        if isinstance(exc, cls):
            return kind
    return "consul_bad_answer"


def _updatable(known: CheckPairs, failing_pairs: CheckPairs) -> bool:
    """True when every failing check is one the cache knows for that instance (so it can be updated
    in place)."""
    ids = {check_id for check_id, _status in known}
    return all(check_id in ids for check_id, _status in failing_pairs)


def _updated(known: CheckPairs, failing_pairs: CheckPairs) -> CheckPairs:
    """The instance's (id, status) pairs: the failing ones as listed, every other one passing."""
    failing = dict(failing_pairs)
    return tuple(sorted((check_id, failing.get(check_id, "passing")) for check_id, _status in known))


def _kept(held: Optional[Tuple[str, CheckPairs]], failing_pairs: CheckPairs) -> bool:
    """True when every check ``held`` (the cache's failing entry of an instance) lists is still in
    ``failing_pairs`` (whatever its status): updating in place then makes no check passing."""
    ids = {check_id for check_id, _status in failing_pairs}
    return held is None or all(check_id in ids for check_id, _status in held[1])


def _parse_entries(name: str, health_entries: Any, tag_key: str) -> Compacted:
    """The two stores of one service's ``/v1/health/service/NAME`` answer (parse_health_answer), without
    Meta (only its dyups_* keys matter, already in the server); an answer that is not a list holds no
    instance."""
    return parse_health_answer(name, health_entries, tag_key, keep_meta=False) or ({}, {})


def _parse_node(node: str, answer: Any, instances: Dict[str, Instances], known: Mapping[str, Instances],
                tag_key: str) -> None:
    """Add the Instances of one ``/v1/catalog/node-services/NODE`` answer to ``instances``
    ({service name: {(node, service id): Instance}}, only the names it already holds). An instance
    equal to the one ``known`` (the cache) holds under its key is taken from there (a lookup), so
    that a full read of an unchanged fleet allocates next to nothing that stays."""
    for name, key, instance in node_registrations(node, answer, tag_key, keep_meta=False, wanted=instances):
        before = known.get(name, {}).get(key)
        instances[name][key] = before if before is not None and before == instance else instance


def _on_node(instances: Instances, node: str) -> Instances:
    """The part of one service's ``instances`` on ``node``."""
    return {key: instance for key, instance in instances.items() if key[0] == node}


def _node_addresses(nodes: Any) -> Dict[str, Any]:
    """{node: Node.Address} of a ``/v1/catalog/nodes`` answer (anything else gives {})."""
    if not isinstance(nodes, list):
        return {}
    return {node["Node"]: node.get("Address") for node in nodes
            if isinstance(node, dict) and isinstance(node.get("Node"), str)}


def _state_view(answer: Any) -> StateView:
    """{(node, service id, check id): ServiceName} of a ``/v1/health/state/STATE`` answer."""
    view: StateView = {}
    for check in answer if isinstance(answer, list) else ():
        if isinstance(check, dict):
            view[(str(check.get("Node") or ""), str(check.get("ServiceID") or ""), str(check.get("CheckID") or ""))] = \
                str(check.get("ServiceName") or "")
    return view


def _union(critical: StateView, warning: StateView) -> List[Dict[str, str]]:
    """The checks not passing, as one ``/v1/health/state/any?filter=Status != "passing"`` would list
    them, from the two state views: a check in both (read at different moments while it moved) is
    critical, the worse."""
    checks = [{"Node": node, "ServiceID": service_id, "CheckID": check_id, "ServiceName": name, "Status": "critical"}
              for (node, service_id, check_id), name in critical.items()]
    checks.extend({"Node": node, "ServiceID": service_id, "CheckID": check_id, "ServiceName": name, "Status": "warning"}
                  for (node, service_id, check_id), name in warning.items() if (node, service_id, check_id) not in critical)
    return checks


def _catalog(answer: Dict[str, Any]) -> Dict[str, Tuple[str, ...]]:
    """{service: sorted tags} of a ``/v1/catalog/services`` answer (tuples: no tags is the one empty tuple)."""
    return {name: tuple(sorted(tags or ())) for name, tags in answer.items()}


class ConsulSource:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        if settings.policy is None:
            raise ValueError("ConsulSource needs settings made by settings.build (their server policy holds this "
                             "host's addresses)")
        self.settings = settings
        self.metrics = metrics
        self.options = mapping.MappingOptions(
            tag_key=settings.tag_key, include=tuple(settings.include), exclude=tuple(settings.exclude),
            prefix=settings.prefix, include_warning=settings.include_warning, directives=tuple(settings.directives),
            upstream_directives=settings.upstream_directives, reserved=settings.reserved,
            policy=settings.policy)
        token = resolve_token(token_file=settings.consul_token_file)
        cert = (settings.consul_client_cert, settings.consul_client_key) if settings.consul_client_cert else None
        verify = settings.consul_ca_path or settings.consul_validate_certs
        self.transport = KeepAliveTransport(verify=verify, cert=cert)
        self.client = ConsulClient(settings.consul_url, self.transport, token=token,
                                   datacenter=settings.consul_datacenter, timeout=settings.consul_timeout,
                                   object_hook=slim_object)
        self.watch_client = ConsulClient(settings.consul_url, self.transport, token=token,
                                         datacenter=settings.consul_datacenter, timeout=settings.consul_timeout,
                                         stale=settings.consul_stale, object_hook=slim_object,
                                         max_stale=settings.consul_max_stale,
                                         on_too_stale=StaleReads(metrics, settings.consul_max_stale))
        cleartext = self.client.cleartext_token_warning()
        if cleartext:
            log.warning("%s", cleartext)
        if settings.policy.own_unread:
            log.warning("%s", settings.policy.own_unread)
        self.entries: Dict[str, Instances] = {}  # service -> its registrations {(node, service_id): Instance}
        self.checks: HealthIndex = {}  # the health index: (node, service_id) -> ((check id, status), ...); node checks under (node, "")
        self.failing: Dict[InstanceKey, Tuple[str, CheckPairs]] = {}  # the part of self.checks not passing: key -> (service name or "", pairs)
        # node -> {service names with an instance there: None}; a dict, not a set: a third of the size
        # for a node with thousands of services
        self.node_services: Dict[str, Dict[str, None]] = {}
        self.catalog: Optional[Dict[str, Tuple[str, ...]]] = None  # service -> sorted tags, from /v1/catalog/services
        self.merged = mapping.MergedMapping()  # service -> its mapping, merged as it changes
        self.lock = threading.Lock()
        # The X-Consul-Index of what the cache holds from each long poll's endpoint (a full read's answer or
        # the last answer applied): an answer with a smaller one was read before that and is not applied
        # (see _newer). Health only after a full read by node, which reads the checks in one answer.
        self.read_index: Dict[str, Optional[int]] = {}
        # What each health poll's state holds, as the cache last took it: from that poll's last answer
        # applied, a catch-up read of it (see _take_states), or the last full read (see _views_from_cache)
        self.state_views: Dict[str, StateView] = {kind: {} for kind, _state in HEALTH_POLLS}
        self.node_addresses: Dict[str, Any] = {}  # node -> Node.Address, from /v1/catalog/nodes (see _fold_nodes)
        self.unread: Dict[str, str] = {}  # service -> why its last read failed; its last good state is kept, read again
        self.unsafe_nodes: List[str] = []  # nodes no path can read: full reads go service by service
        # node -> the digest of its last /v1/catalog/node-services answer, kept while the cached instances
        # on that node are what that answer says: an unchanged answer is then not parsed again (a catalog
        # change costs the nodes that changed). Dropped for a node whose cached instances change or differ, given
        # back when a read again brought the cache to what the answer said (_restore_digests).
        self.node_digests: Dict[str, bytes] = {}
        self.unreadable: Dict[str, None] = {}  # selected services no path can read (see path_segment_safe): skipped
        self.events: Optional[queue.Queue[Any]] = None
        self.retry = Backoff(settings.retry_initial, settings.retry_max)
        self.retry_timer: Optional[threading.Timer] = None
        self.read_by_node = True  # full reads by node when that is fewer requests (see _fetch_by_node)
        self.after_full_read: Optional[Callable[[], object]] = None  # called after each full read (the daemon's memory.settle)
        self.threads: List[threading.Thread] = []
        self.stop_event = threading.Event()
        self.failure: Optional[str] = None

    # -- reading -----------------------------------------------------------------------------------
    def _fetch_service(self, name: str) -> Tuple[str, Optional[Compacted], Optional[ConsulError]]:
        """(name, compacted instances, None) of ``/v1/health/service/NAME``, compacted in the fetching
        thread so that the parsed answer is freed at once; (name, None, the error) when it failed."""
        try:
            answer = self.client.health_service(name)
        except ConsulError as exc:
            return name, None, exc
        return name, _parse_entries(name, answer.data, self.options.tag_key), None

    def _store_service(self, name: str, health_entries: Any) -> None:
        """Cache one service from a ``/v1/health/service/NAME`` answer (see _parse_entries)."""
        self._store_compacted(name, _parse_entries(name, health_entries, self.options.tag_key))

    def _store_compacted(self, name: str, compacted: Compacted) -> None:
        """Cache one service's instances and their checks, as _parse_entries gives them. A service
        whose instances and checks did not change keeps its cached mapping (not mapped again)."""
        instances, checks = compacted
        if self.unread.pop(name, None) is not None:
            log.info("service %s read again", shown(name))
        changed = name not in self.merged.results or self.entries.get(name) != instances
        for key, pairs in checks.items():
            owner = name if key[1] else ""
            if self.checks.get(key) == pairs and self.failing.get(key, (owner,))[0] == owner:
                continue  # (an instance ID that moved to another service changes the owner of its failing checks)
            changed = True
            self._put_checks(key, pairs, owner)
            if not key[1]:  # a node check: every other service on that node maps differently now
                for other in self.node_services.get(key[0], {}):
                    if other != name:
                        self._remap(other)
        if not changed:
            return
        self._forget_nodes(instances, self.entries.get(name, {}))
        for node, _service_id in instances:
            if node:
                self.node_services.setdefault(node, {})[name] = None
        for key in set(self.entries.get(name, {})) - set(instances):
            if not self._held_elsewhere(key, name):  # an ID that moved to a service stored before keeps its checks
                self._drop_checks(key)
        if instances:
            self.entries[name] = instances
        else:
            self.entries.pop(name, None)
        self._remap(name)

    def _put_checks(self, key: InstanceKey, pairs: CheckPairs, owner: str) -> None:
        """Set the (id, status) pairs of one instance (or of a node, owner ""), keeping self.failing,
        the index of what is not passing, in step."""
        self.checks[key] = pairs
        bad = tuple(pair for pair in pairs if pair[1] != "passing")
        if bad:
            self.failing[key] = (owner, bad)
        else:
            self.failing.pop(key, None)

    def _held_elsewhere(self, key: InstanceKey, name: str) -> bool:
        """True when a service other than ``name`` holds the instance ``key`` (its ID moved there)."""
        return any(key in self.entries.get(other, {}) for other in self.node_services.get(key[0], ()) if other != name)

    def _drop_checks(self, key: InstanceKey) -> None:
        self.checks.pop(key, None)
        self.failing.pop(key, None)

    def _remap(self, name: str) -> None:
        """Map one service again from the two stores (its registrations, the health index); the merged
        mapping notes the upstreams whose result changed (see take_changes)."""
        instances = self.entries.get(name)
        if not instances:
            self.merged.put(name, None)
            return
        self.merged.put(name, mapping.map_instances(name, instances, self.checks, self.options, report=False))

    def _fetch_many(self, names: Collection[str]) -> List[Tuple[str, Compacted]]:
        """(name, compacted) of each service read with ``/v1/health/service/NAME`` (8 at a time).

        A service whose read fails is isolated: left out of the result (its last good state stays
        cached and mapped), noted in ``self.unread`` and read again with the next batch of events, a
        retry timer's ``reread`` event or the next full read, so that one service (a 500, a 429, a
        timeout) never holds back the others. Only when no read of the batch got any answer
        (ConsulUnavailable each) is it an outage: that error is raised. Names no path can read
        (``self.unreadable``) are not asked for."""
        names = sorted(name for name in names if path_segment_safe(name))
        if len(names) <= 1:
            results = [self._fetch_service(name) for name in names]
        else:
            with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(names)), thread_name_prefix="consul-fetch") as pool:
                results = list(pool.map(self._fetch_service, names))
        failed = [(name, exc) for name, _compacted, exc in results if exc is not None]
        if failed and len(failed) == len(results) and all(isinstance(exc, ConsulUnavailable) for _name, exc in failed):
            raise failed[0][1]
        for name, exc in failed:
            kind = consul_error_kind(exc)
            if self.unread.get(name) != kind:
                log.warning("reading service %s failed (%s): its last good state is kept, it is read again: %s",
                            shown(name), kind, exc)
            self.unread[name] = kind
            self.metrics.error("consul_service_read")
        return [(name, compacted) for name, compacted, exc in results if compacted is not None]

    def _schedule_reread(self) -> None:
        """After a batch: publish how many services wait for a read again, and while some do, make
        sure a ``reread`` event comes (after a backoff) even if Consul stays quiet."""
        self.metrics.set(unread_services=len(self.unread))
        if not self.unread:
            self.retry.reset()
            return
        timer = self.retry_timer
        if self.events is None or self.stop_event.is_set() or (timer is not None and timer.is_alive()):
            return
        timer = threading.Timer(self.retry.next(), self.events.put, (("reread", None, None),))
        timer.daemon = True
        timer.start()
        self.retry_timer = timer

    def _set_unreadable(self, names: Collection[str]) -> None:
        """Note the selected services no path can read (lock held): each is skipped with its reason
        (such a name breaks the upstream name rule too, so nothing that could map is lost)."""
        for name in set(self.unreadable) - set(names):
            del self.unreadable[name]
            self.merged.put(name, None)
        for name in set(names) - set(self.unreadable):
            self.unreadable[name] = None
            log.warning("service %s is not read: %s", shown(name), UNREADABLE_NAME)
            self.merged.put(name, mapping.skipped_service(name, UNREADABLE_NAME))

    def _instances_by_node(self, names: Collection[str], extra_requests: int = 0,
                           nodes: Any = None, reuse_unchanged: bool = False) -> Optional[ByNode]:
        """({service: instances}, {node: answer digest}): the instances, as _parse_entries makes them, of every service in
        ``names``, read with ``/v1/catalog/nodes`` and ``/v1/catalog/node-services/NODE`` per node.
        None when that (plus ``extra_requests``) is not fewer requests than one per service, or when
        this Consul has no node-services endpoint (before 1.7), or when a node cannot be read by
        name (see path_segment_safe) or its read fails: reading by service then gives every
        instance, whatever its node. An instance equal to the cached one is the cached object (see
        _parse_node). ``nodes``: the ``/v1/catalog/nodes`` answer, when already read.

        ``reuse_unchanged`` (after a catalog change): a node whose answer is byte for byte the one of
        the last read by node is not parsed; its instances are the cached ones (see self.node_digests,
        which the caller sets to the digests returned once the cache holds what they describe).
        A full read (refresh_all) parses every node."""
        if nodes is None:
            nodes = self.client.catalog_nodes().data
        node_names = sorted({node.get("Node") for node in nodes if isinstance(node.get("Node"), str)})
        if len(node_names) + 1 + extra_requests >= len(names):
            return None
        unsafe = sorted(node for node in node_names if not path_segment_safe(node))
        if unsafe:
            if unsafe != self.unsafe_nodes:
                log.warning("node(s) %s cannot be read by name (%s): reading service by service",
                            ", ".join(shown(node) for node in unsafe[:5]), UNREADABLE_NODE)
            self.unsafe_nodes = unsafe
            return None
        self.unsafe_nodes = unsafe
        instances: Dict[str, Instances] = {name: {} for name in names}
        known = self.node_digests if reuse_unchanged else {}
        digests: Dict[str, bytes] = {}
        # Answers are compacted as they come and then dropped. Few nodes with many services each make
        # big answers: fewer are fetched at once, so that about BY_NODE_IN_FLIGHT services' worth of
        # parsed JSON is alive at a time (the peak, not the cache, sets the watcher's RSS).
        window = max(1, min(FETCH_THREADS, BY_NODE_IN_FLIGHT * len(node_names) // len(names)))

        def fetch(node: str) -> Any:
            return self.client.catalog_node_services(node, known_digest=known.get(node, b""))

        def fold(node: str, answer: Any) -> None:
            digests[node] = answer.digest
            if answer.data is None:
                self._cached_on_node(node, instances)
            else:
                _parse_node(node, answer.data, instances, self.entries, self.options.tag_key)

        try:
            if window == 1:
                for node in node_names:
                    fold(node, fetch(node))
            else:
                with ThreadPoolExecutor(max_workers=window, thread_name_prefix="consul-fetch") as pool:
                    for node, answer in zip(node_names, pool.map(fetch, node_names)):
                        fold(node, answer)
        except ConsulBadAnswer as exc:
            if exc.status == 404:
                log.info("this Consul has no /v1/catalog/node-services (before 1.7): reading service by service")
                self.read_by_node = False
                return None
            self._node_read_failed(exc)
            return None
        except (ConsulForbidden, ConsulRateLimited, ConsulServerError) as exc:
            self._node_read_failed(exc)
            return None
        return instances, digests

    def _cached_on_node(self, node: str, instances: Dict[str, Instances]) -> None:
        """Add to ``instances`` the cached instances on ``node`` of the services it holds (those whose
        node answer did not change since the last read by node)."""
        for name in self.node_services.get(node, ()):
            found = instances.get(name)
            if found is not None:
                for key, instance in self.entries.get(name, {}).items():
                    if key[0] == node:
                        found[key] = instance

    def _forget_nodes(self, new: Instances, old: Instances) -> None:
        """The cache changes from ``old`` to ``new``, or Consul said ``new`` where the cache holds ``old``:
        the nodes where they differ are parsed at their next read by node (see self.node_digests)."""
        for key in new.keys() | old.keys():
            if new.get(key) != old.get(key):
                self.node_digests.pop(key[0], None)

    def _node_read_failed(self, exc: ConsulError) -> None:
        """A node's read failed (not Consul down): the caller reads service by service, where a
        failure is one service's (see _fetch_many)."""
        log.warning("reading by node failed (%s), reading service by service: %s", consul_error_kind(exc), exc)
        self.metrics.error("consul_service_read")

    def _fetch_by_node(self, names: Collection[str], nodes: Any = None
                       ) -> Optional[Tuple[List[Tuple[str, Compacted]], Dict[str, bytes], Optional[int]]]:
        """Every service in ``names`` as ``/v1/health/service/NAME`` would answer it, built from
        _instances_by_node and one ``/v1/health/state/any``: 2 + nodes requests instead of one per
        service, the digests of the node answers (see _instances_by_node) and the X-Consul-Index of the
        checks' answer. None when that is not fewer requests, or when this Consul has no node-services
        endpoint (before 1.7).

        Instances are read before checks: an instance registered meanwhile is simply absent (the
        catalog poll reports it), never present without its checks and so taken for passing.
        """
        by_node = self._instances_by_node(names, extra_requests=1, nodes=nodes)
        if by_node is None:
            return None
        instances, digests = by_node
        checks = self.client.health_state_any()
        pairs = health_index(checks.data)
        result: List[Tuple[str, Compacted]] = []
        for name, found in instances.items():
            service_checks: Dict[InstanceKey, CheckPairs] = {}
            for instance_key in found:
                if instance_key[0]:  # not a malformed one (those the mapping skips, checks or not)
                    # the instance's own key object, not an equal new tuple: the cache keys its checks by it too
                    for key in (instance_key, (instance_key[0], "")):
                        now, known = pairs.get(key, ()), self.checks.get(key)
                        service_checks[key] = known if known == now else now  # an equal old value is kept
            result.append((name, (found, service_checks)))
        return result, digests, checks.index

    def refresh_all(self) -> None:
        """Read every selected service from Consul; raises ConsulError and changes nothing then."""
        started = time.monotonic()
        answer = self.client.catalog_services()
        catalog = answer.data
        if not isinstance(catalog, dict):
            raise ConsulBadAnswer("/v1/catalog/services did not answer a JSON object", url=self.settings.consul_url)
        nodes_answer = self.client.catalog_nodes()  # before the services: a later address change moves its poll
        nodes = nodes_answer.data
        chosen = sorted(name for name in catalog if self.options.selects(name))
        selected = [name for name in chosen if path_segment_safe(name)]
        by_node = self._fetch_by_node(selected, nodes) if self.read_by_node and len(selected) > 3 else None
        fetched, digests, checks_index = by_node if by_node is not None else (self._fetch_many(selected), {}, None)
        with self.lock:
            self.catalog = _catalog(catalog)
            self.read_index = {"catalog": answer.index, "nodes": nodes_answer.index,
                               "health_critical": checks_index, "health_warning": checks_index}
            self.node_addresses = _node_addresses(nodes)
            self._set_unreadable([name for name in chosen if not path_segment_safe(name)])
            for name in set(self.entries) - set(selected):
                self._store_service(name, [])
            for name in set(self.unread) - set(selected):
                del self.unread[name]
            for name, compacted in fetched:
                self._store_compacted(name, compacted)
            self.node_digests = digests  # the cache now holds what these answers say
            self._views_from_cache()
        self._schedule_reread()
        self._recovered()
        log.debug("read %d services from Consul in %.3fs", len(selected), time.monotonic() - started)
        if self.after_full_read is not None:
            self.after_full_read()

    def _recovered(self) -> None:
        self.metrics.set(consul_up=1)
        if self.failure is not None:
            log.warning("Consul answers again after %s; state resynced", self.failure)
            self.failure = None

    def note_failure(self, kind: str, exc: BaseException) -> None:
        """Log a Consul failure once per kind of failure, not once per retry."""
        self.metrics.set(consul_up=0)
        if self.failure != kind:
            log.error("Consul unavailable (%s), keeping the last good state and retrying: %s", kind, exc)
            self.failure = kind

    # -- events ------------------------------------------------------------------------------------
    def apply_events(self, batch: Iterable[Tuple[Any, ...]]) -> bool:
        """Fold a batch of watch events into the cache; True when a sync is needed.

        Each answer of a long poll is complete (every check not passing; every service name), so only
        the newest of each kind in a batch counts (the last: one poll's answers come in order), and it
        is compared with the cache, never with the previous answer: whatever the cache learnt meanwhile
        from other reads, the newest answers bring it to what Consul holds (docs/watcher.md, "How
        events are ordered"). An answer older than what the cache holds from its endpoint is not
        applied (see _newer).
        """
        latest: Dict[str, Tuple[Any, ...]] = {}
        reread = False
        for event in batch:
            if event[0] == "resync":
                self.refresh_all()
                return True
            if event[0] in ("health_critical", "health_warning", "catalog", "nodes"):
                latest[event[0]] = event
            elif event[0] == "reread":
                reread = True
            elif event[0] == "consul_error":
                self.note_failure(event[1], event[2])
        health = self._take_states([latest[kind] for kind, _state in HEALTH_POLLS if self._newer(latest.get(kind))])
        catalog = latest["catalog"] if self._newer(latest.get("catalog"), equal_is_news=False) else None
        nodes = latest["nodes"][1] if self._newer(latest.get("nodes")) else None
        if health is None and catalog is None and nodes is None and not (reread or self.unread):
            return False
        refetch: Set[str] = set(self.unread)  # what failed before is read again with every batch
        touched: Set[str] = set()
        with self.lock:
            if health is not None:
                self._fold_health(health[0], touched, refetch, exact=health[1])
            for name in touched:  # a check applied in place is mapped at once: a fact is cached with its consequence
                self._remap(name)
            if nodes is not None:
                self._fold_nodes(nodes, refetch)
        said = self._fold_catalog(catalog[1], refetch) if catalog is not None else None
        if refetch:
            fetched = self._fetch_many(refetch)
            with self.lock:
                for name, compacted in fetched:
                    self._store_compacted(name, compacted)
                if said is not None:
                    self._restore_digests(said, refetch)
        self._schedule_reread()
        return bool(touched or refetch or catalog is not None)

    def _newer(self, event: Optional[Tuple[Any, ...]], equal_is_news: bool = True) -> bool:
        """Whether a long poll's answer is to be applied; if so, its index becomes the one the cache holds.

        Not when its X-Consul-Index is below the one the cache holds from that endpoint: it was read
        before a full read (or before the one a SIGHUP made, the old polls' answers still queued), and
        folding it would take the cache back with no later answer to bring it forward again (the
        poll's next answer comes with Consul's next change only). An index reset (event[3]: the poll
        saw the index go back, as after a snapshot restore) is always applied. A catalog answer with
        the cache's own index brings nothing (``equal_is_news`` False)."""
        if event is None:
            return False
        kind, index = event[0], event[2]
        known = self.read_index.get(kind)
        reset = len(event) > 3 and event[3]
        if not reset and known is not None and index is not None and (index < known or (index == known and not equal_is_news)):
            if index < known:
                self.metrics.count("consul_outdated_answers")
                log.debug("%s answer at index %s not applied: the cache holds index %s of it", kind, index, known)
            return False
        self.read_index[kind] = index
        return True

    def _take_states(self, events: List[Tuple[Any, ...]]) -> Optional[Tuple[List[Dict[str, str]], bool]]:
        """Take the health polls' new answers (those _newer let through) into the state views; the
        union of the views (see _union) to fold and whether both views are of one index (``exact``);
        None when neither poll brought an answer.

        The two states are read separately, so a check that moves from one to the other can, for a
        moment, show in neither: the poll of the state it left answered at index I, the other's last
        answer is older than I. Folded so, it would be absent from the union, and an instance with
        another check listed would be updated in place with that check passing (an instance that is
        failing, posted as serving when warning counts as passing). So: when an answer shows a check
        leaving its state (the view or the cache held it so, the answer at I does not list it), the
        other state's view must be at an index >= I before the union is folded; if its poll has not
        answered that far, the other state is read once, without blocking (as the polls read:
        ``?stale`` with its bound when consul_stale is on; from the leader when that answer is older
        than I). Both endpoints carry the checks
        table's index, so a view at >= I shows wherever the check went by I. A reset poll (its index
        went back) or a view of unknown index (after a full read service by service) is read too.
        Only for a check whose instance (or node) still has a check listed: one with none left is
        not updated in place anyway, its service is read again (_fold_health), so a recovery (the
        common way to leave a state) costs no catch-up read.

        The catch-up read is not enough alone: the check can move back between the answer at I and the catch-up
        read (warning at I, critical again when the warning state is read), and then each view lacks
        it, of different indexes. So a union whose views are not of one index is not ``exact``: a
        check the cache holds as not passing that it does not list is not taken for passing in place
        (its service is read again, see _fold_health). Views of one index are one moment of the
        checks table, where a check in neither state passes.
        """
        if not events:
            return None
        leaving: List[Tuple[str, Optional[int], bool, Set[InstanceKey]]] = []
        for kind, data, index, *rest in events:
            view = _state_view(data)
            state = dict(HEALTH_POLLS)[kind]
            held = set(self.state_views[kind])
            held.update((key[0], key[1], check_id) for key, (_owner, pairs) in self.failing.items()
                        for check_id, status in pairs if status == state)
            self.state_views[kind] = view
            left = {(key[0], key[1]) for key in held if key not in view}
            if left:
                leaving.append((kind, index, bool(rest and rest[0]), left))
        listed = {(key[0], key[1]) for view in self.state_views.values() for key in view}
        for kind, index, reset, left in leaving:
            if not left & listed:
                continue
            other = OTHER_POLL[kind]
            known = self.read_index.get(other)
            if reset or index is None or known is None or known < index:
                self._catch_up(other, index)
        critical, warning = self.read_index.get("health_critical"), self.read_index.get("health_warning")
        exact = critical is not None and critical == warning
        return _union(self.state_views["health_critical"], self.state_views["health_warning"]), exact

    def _catch_up(self, kind: str, index: Optional[int]) -> None:
        """Read one health state without blocking and take it as that state's view (see _take_states):
        from the watch client (as the polls read), and again from the leader when that answer
        is older than ``index``."""
        path = "/v1/health/state/" + dict(HEALTH_POLLS)[kind]
        answer = self.watch_client.read(path)
        if index is not None and (answer.index is None or answer.index < index):
            answer = self.client.read(path, stale=False)
        self.metrics.count("consul_health_catchup_reads")
        self.read_index[kind] = answer.index
        self.state_views[kind] = _state_view(answer.data)

    def _views_from_cache(self) -> None:
        """After a full read (lock held): each health state's view is what the cache holds in that
        state (the full read's answer); a poll's answer replaces it once its index is at least the
        full read's (see _newer; a full read service by service has no index: the next answer does)."""
        views: Dict[str, StateView] = {kind: {} for kind, _state in HEALTH_POLLS}
        for (node, service_id), (owner, pairs) in self.failing.items():
            for check_id, status in pairs:
                kind = "health_warning" if status == "warning" else "health_critical"  # any other status: the worse
                views[kind][(node, service_id, check_id)] = owner
        self.state_views = views

    def _fold_nodes(self, nodes: Any, refetch: Set[str]) -> None:
        """Apply a ``/v1/catalog/nodes`` answer (lock held): the services with an instance on a node
        whose address changed are read again. Re-registering a node with a new address moves neither
        the catalog's nor the health poll's index (measured on 1.8.7), only this one; the instances
        without a Service.Address take the node's."""
        addresses = _node_addresses(nodes)
        known = self.node_addresses
        for node in set(addresses) | set(known):
            if addresses.get(node) != known.get(node):
                refetch.update(name for name in self.node_services.get(node, ()) if name in self.entries)
        self.node_addresses = addresses

    def _fold_health(self, failing: Any, touched: Set[str], refetch: Set[str], exact: bool = True) -> None:
        """Apply the union of the two health polls' views (see _take_states): every check not passing.

        The answer is compared with the checks the cache holds as not passing (``self.failing``), so
        a flip costs what the failing checks cost, whatever the number of services. A check that
        got worse or changed on a known instance is updated in place: taking a server out early is
        always safe. A check the cache holds as failing that the answer no longer lists either
        recovered or went away with its instance: its service is read again to tell which, rather
        than assumed healthy. So is every service with a listed check the cache does not know (a
        new instance, a new check), and, when the union is not ``exact`` (see _take_states), every
        listed instance or node with a check the cache holds as not passing that the union does not
        list.
        """
        owners: Dict[InstanceKey, str] = {}
        listed = health_index(failing, owners=owners)
        for key, pairs in listed.items():
            name = owners[key]
            held = self.failing.get(key)
            if held is not None and held[1] == pairs:
                continue
            node, service_id = key
            if not service_id:  # a node-level check: every service with an instance on the node
                known = self.checks.get(key)
                services = self.node_services.get(node, ())
                if known is not None and _updatable(known, pairs) and (exact or _kept(self.failing.get(key), pairs)):
                    self._put_checks(key, _updated(known, pairs), "")
                    touched.update(services)
                else:
                    refetch.update(services)
            elif self.options.selects(name):
                known = self.checks.get(key)
                if key in self.entries.get(name, {}) and known is not None and _updatable(known, pairs) and (
                        exact or _kept(self.failing.get(key), pairs)):
                    self._put_checks(key, _updated(known, pairs), name)
                    touched.add(name)
                else:
                    refetch.add(name)
        for key, (owner, _pairs) in list(self.failing.items()):
            if key in listed:
                continue
            if key[1]:
                refetch.add(owner)
            else:
                self._drop_checks(key)  # the services read again bring it back if the node still has it
                refetch.update(self.node_services.get(key[0], ()))

    def _fold_catalog(self, catalog: Dict[str, Any], refetch: Set[str]) -> Optional[ByNode]:
        """Apply a ``/v1/catalog/services`` answer with a new index.

        A new index means that some instance was registered, changed or deregistered, but the
        answer (names and tags) shows only part of it: a new instance of a known service, or a new
        port or Meta, leaves it as it was. So the instances of every selected service are compared
        with the cache (by node when that is fewer requests: see _instances_by_node), and the
        services that differ are read again with ``/v1/health/service/NAME``, one consistent answer
        each, checks included. Services the catalog no longer lists are dropped. Returns what the node
        answers said (see _restore_digests), None when it read nothing by node.
        """
        with self.lock:
            self.catalog = _catalog(catalog)
            chosen = {name for name in self.catalog if self.options.selects(name)}
            selected = {name for name in chosen if path_segment_safe(name)}
            self._set_unreadable(chosen - selected)
            for name in set(self.entries) - selected:
                self._store_service(name, [])
            for name in set(self.unread) - selected:
                del self.unread[name]
            cached = set(self.entries)
        refetch.update(selected - cached)
        known = cached & selected
        if not known:
            return None
        by_node = self._instances_by_node(known, reuse_unchanged=True) if self.read_by_node else None
        if by_node is None:  # by service: read them all again (what a full read costs)
            refetch.update(known)
            return None
        found, digests = by_node
        self.node_digests = dict(digests)
        with self.lock:
            for name in known:
                held = self.entries.get(name, {})
                if found[name] != held:
                    refetch.add(name)
                    self._forget_nodes(found[name], held)
        return by_node

    def _restore_digests(self, said: ByNode, refetched: Collection[str]) -> None:
        """After a catalog change's services were read again (lock held): a node whose digest was dropped
        gets it back when the cache now holds on that node what its answer said (``said``: _fold_catalog's
        instances and digests), so that the next catalog change does not parse it again (at 5 000
        services on 3 nodes, half of a registration's compare was parsing the node of the registration
        before). Only the services read again can differ from the answers (every other one was equal),
        and only services the answers covered are compared: a node where a service read again is not
        one of them (a new service) keeps no digest."""
        found, digests = said
        if any(name not in found for name in refetched):
            return
        for node, digest in digests.items():
            if node in self.node_digests:
                continue
            if all(_on_node(found[name], node) == _on_node(self.entries.get(name, {}), node) for name in refetched):
                self.node_digests[node] = digest

    def mapping(self) -> MappingResult:
        """The whole mapping (MappingResult, sorted), as the module gives it."""
        with self.lock:
            return self.merged.result()

    def take_changes(self) -> Tuple[Dict[str, Upstream], Set[str], Optional[Set[str]]]:
        """(upstreams, empty, changed): the merged mapping ({name: Upstream}, names with no serving
        instance) and the upstream names whose entry may differ since the last call (None: the
        first call, every name). The dicts are the live ones: read them before the next event."""
        with self.lock:
            changed = self.merged.take_changes()
            return self.merged.upstreams, self.merged.empty, changed

    def skipped(self) -> List[dict]:
        """Every skip item of the mapping, sorted; the same list object until a service's skips change."""
        with self.lock:
            return self.merged.skipped()

    # -- watching ----------------------------------------------------------------------------------
    def start_watching(self, events: queue.Queue[Any]) -> None:
        """Start the four long polls; their events go to ``events`` until ``stop()``."""
        self.events = events
        polls = [(kind, "/v1/health/state/" + state, None) for kind, state in HEALTH_POLLS]
        polls += [("catalog", "/v1/catalog/services", None), ("nodes", "/v1/catalog/nodes", None)]
        for kind, path, params in polls:
            thread = threading.Thread(target=self._watch, args=(kind, path, params, events), name=f"consul-{kind}",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)

    def _watch(self, kind: str, path: str, params: Optional[Dict[str, str]], events: queue.Queue[Any]) -> None:
        query = BlockingQuery(self.watch_client, path, params=params, wait=self.settings.consul_wait,
                              sleep=self.stop_event.wait)
        backoff = Backoff(self.settings.retry_initial, self.settings.retry_max)
        failed = False
        while not self.stop_event.is_set():
            try:
                result = query.poll()
            except Exception as exc:  # a ConsulError, or a bug: either way this poll must go on, not die
                if self.stop_event.is_set():
                    break
                if not isinstance(exc, ConsulError):
                    log.error("the %s long poll failed unexpectedly, retrying: %s: %s", kind, type(exc).__name__, exc)
                failed = True
                events.put(("consul_error", consul_error_kind(exc), exc))
                self.stop_event.wait(backoff.next())
                continue
            backoff.reset()
            if failed:
                failed = False
                events.put(("resync", kind, None))
            self.metrics.set_index(kind, result.index, result.last_contact if result.reread_after is None
                                   else result.reread_after)
            if result.changed and not self.stop_event.is_set():
                events.put((kind, result.data, result.index, result.reset))

    def stop(self, join_timeout: float = 2.0) -> None:
        """Stop the long polls: a poll in flight ends at once (its connection is shut down) and its
        thread exits; waits up to ``join_timeout`` seconds for them."""
        self.stop_event.set()
        if self.retry_timer is not None:
            self.retry_timer.cancel()
        self.transport.close()
        deadline = time.monotonic() + join_timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.threads = [thread for thread in self.threads if thread.is_alive()]
