# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What Consul says, kept current with two blocking queries whatever the number of services.

Consul limits concurrent HTTP connections per client address (200 by default), so one long poll
per service does not scale. The watcher holds exactly two:

- ``/v1/health/state/any?filter=Status != "passing"``: wakes on every check change (its index is
  that of all checks), and its answer lists only the checks that are not passing: small while the
  fleet is healthy, whatever its size. A check that goes bad is applied in place, without another
  request; one that recovers (or whose instance went away) makes its service be read again.
- ``/v1/catalog/services``: wakes on registrations and deregistrations. New, removed or retagged
  services are read with ``/v1/health/service/NAME``; a change this answer cannot pin down (a new
  instance of an existing service, say) is looked up in one full ``/v1/health/state/any`` read,
  and only if that explains nothing either is every service read again.

``/v1/catalog/services`` alone never wakes on a health change (consul-facts.md: the original script
kept a critical instance in rotation for 200 s), hence the health query.

A full read of every service also runs at start, after Consul comes back from an outage, and every
``consul_resync_interval`` as a safety net. The mapping of instances to upstreams is the shared one
(plugins/module_utils/_consul_mapping.py), applied per service and cached, so a change costs the
mapping of the services it touched only.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _consul_mapping as mapping
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import (
    BlockingQuery, ConsulClient, resolve_token)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    ConsulBadAnswer, ConsulError, ConsulForbidden, ConsulRateLimited, ConsulServerError, ConsulUnavailable)
from ansible_collections.swallowkeeper.dyups.plugins.watcher.backoff import Backoff
from ansible_collections.swallowkeeper.dyups.plugins.watcher.memory import release_free_memory
from ansible_collections.swallowkeeper.dyups.plugins.watcher.transport import KeepAliveTransport

log = logging.getLogger("swallowkeeper.watcher")
FETCH_THREADS = 8
BY_NODE_IN_FLIGHT = 1000  # services per batch of node answers held at once in a full read by node
FAILING_FILTER = 'Status != "passing"'  # the health poll reads only the checks that are not passing


def consul_error_kind(exc):
    for cls, kind in ((ConsulForbidden, "consul_forbidden"), (ConsulRateLimited, "consul_rate_limited"),
                      (ConsulServerError, "consul_server_error"), (ConsulUnavailable, "consul_unavailable"),
                      (ConsulBadAnswer, "consul_bad_answer")):
        if isinstance(exc, cls):
            return kind
    return "consul_bad_answer"


def _compact(node_data, service):
    """What the mapping reads of one instance, in a tuple (Meta: only the ``dyups_*`` keys it reads)."""
    meta = service.get("Meta")
    if isinstance(meta, dict):
        meta = {key: value for key, value in meta.items() if str(key).startswith(mapping.META_PREFIX)} or None
    return (node_data.get("Node"), node_data.get("Address"), service.get("ID"), service.get("Address"),
            service.get("Port"), service.get("Tags"), meta)


def _updatable(known, failing_pairs):
    """True when every failing check is one the cache knows for that instance (so it can be updated
    in place)."""
    ids = {check_id for check_id, _status in known}
    return all(check_id in ids for check_id, _status in failing_pairs)


def _updated(known, failing_pairs):
    """The instance's (id, status) pairs: the failing ones as listed, every other one passing."""
    failing = dict(failing_pairs)
    return tuple(sorted((check_id, failing.get(check_id, "passing")) for check_id, _status in known))


def _failing_snapshot(states):
    """The part of full check states that is not passing, as a CheckSnapshot."""
    failing = {}
    for key, (name, pairs) in states.items():
        bad = tuple(pair for pair in pairs if pair[1] != "passing")
        if bad:
            failing[key] = (name, bad)
    return mapping.CheckSnapshot(states=failing, checks={})


def _compact_entries(health_entries):
    """({(node, service id): instance}, {(node, service id) or (node, ""): check pairs}) of one
    service's ``/v1/health/service/NAME`` entries.

    Instances are kept compact (what the mapping reads, in a tuple, see _compact) and checks as
    (id, status) pairs: at thousands of services the cache is most of the watcher's memory.
    Malformed entries are kept as they are, under a key of their position, so that the mapping skips
    them with a reason instead of the watcher failing on them.
    """
    instances, checks = {}, {}
    for position, entry in enumerate(health_entries if isinstance(health_entries, list) else []):
        entry = entry if isinstance(entry, dict) else {"Node": entry}
        node_data, service = entry.get("Node"), entry.get("Service")
        node = node_data.get("Node") if isinstance(node_data, dict) else None
        service_id = service.get("ID") if isinstance(service, dict) else None
        raw_checks = entry.get("Checks") if isinstance(entry.get("Checks"), list) else []
        entry_checks = [check for check in raw_checks if isinstance(check, dict)]
        if not (isinstance(node, str) and node and isinstance(service_id, str) and service_id):
            instances[("", f"#malformed-{position}")] = {"Node": node_data, "Service": service, "Checks": entry_checks}
            continue
        key = (node, service_id)
        instances[key] = _compact(node_data, service)
        checks[key] = _pairs(check for check in entry_checks if check.get("ServiceID"))
        checks[(node, "")] = _pairs(check for check in entry_checks if not check.get("ServiceID"))
    return instances, checks


def _compact_node(answer, instances, known):
    """Add the instances of one ``/v1/catalog/node-services/NODE`` answer to ``instances``
    ({service name: {(node, service id): instance}}, only the names it already holds), compact as
    _compact_entries makes them. An instance equal to the one ``known`` (the cache) holds is taken
    from there, so that a full read of an unchanged fleet allocates next to nothing that stays."""
    node_data = answer["Node"]
    node = node_data.get("Node")
    for position, service in enumerate(answer["Services"]):
        name, service_id = service.get("Service"), service.get("ID")
        if not (isinstance(name, str) and name in instances):
            continue
        if isinstance(node, str) and node and isinstance(service_id, str) and service_id:
            key = (node, service_id)
            now, cached = _compact(node_data, service), known.get(name, {}).get(key)
            instances[name][key] = cached if cached == now else now
        else:
            instances[name][("", f"#malformed-{node}-{position}")] = {"Node": node_data, "Service": service,
                                                                      "Checks": []}


def _pairs(checks):
    """((check id, status), ...) sorted, as CheckSnapshot states hold them."""
    return tuple(sorted({(str(check.get("CheckID") or ""), str(check.get("Status") or "")) for check in checks}))


class ConsulSource:
    def __init__(self, settings, metrics):
        self.settings = settings
        self.metrics = metrics
        self.options = mapping.MappingOptions(
            tag_key=settings.tag_key, include=tuple(settings.include), exclude=tuple(settings.exclude),
            prefix=settings.prefix, include_warning=settings.include_warning)
        token = resolve_token(token_file=settings.consul_token_file)
        cert = (settings.consul_client_cert, settings.consul_client_key) if settings.consul_client_cert else None
        verify = settings.consul_ca_path or settings.consul_validate_certs
        self.transport = KeepAliveTransport(verify=verify, cert=cert)
        self.client = ConsulClient(settings.consul_url, self.transport, token=token,
                                   datacenter=settings.consul_datacenter, timeout=settings.consul_timeout,
                                   object_hook=mapping.slim_object)
        self.watch_client = ConsulClient(settings.consul_url, self.transport, token=token,
                                         datacenter=settings.consul_datacenter, timeout=settings.consul_timeout,
                                         stale=settings.consul_stale, object_hook=mapping.slim_object)
        self.entries = {}        # service -> {(node, service_id): compact instance (see _compact)}
        self.checks = {}         # (node, service_id) -> ((check id, status), ...); node checks under (node, "")
        self.snapshot = None     # the checks not passing, as the health poll last answered (CheckSnapshot)
        self.node_services = {}  # node -> {service names with an instance there}
        self.catalog = None      # service -> sorted tags, from /v1/catalog/services
        self.results = {}        # service -> mapping result of that service alone
        self.lock = threading.Lock()
        self.catalog_index = None
        self.read_by_node = True  # full reads by node when that is fewer requests (see _fetch_by_node)
        self.after_full_read = None  # called after each full read (the daemon's memory.settle)
        self.threads = []
        self.stop_event = threading.Event()
        self.failure = None

    # -- reading -----------------------------------------------------------------------------------
    def _fetch_service(self, name):
        """(name, compacted instances) of ``/v1/health/service/NAME``, compacted in the fetching thread
        so that the parsed answer is freed at once."""
        answer = self.client.health_service(name)
        return name, _compact_entries(answer.data)

    def _store_service(self, name, health_entries):
        """Cache one service from a ``/v1/health/service/NAME`` answer (see _compact_entries)."""
        self._store_compacted(name, _compact_entries(health_entries))

    def _store_compacted(self, name, compacted):
        """Cache one service's instances and their checks, as _compact_entries gives them. A service
        whose instances and checks did not change keeps its cached mapping (not mapped again)."""
        instances, checks = compacted
        if (name in self.results and self.entries.get(name) == instances
                and all(self.checks.get(key) == pairs for key, pairs in checks.items())):
            return
        self.checks.update(checks)
        for node, _service_id in instances:
            if node:
                self.node_services.setdefault(node, set()).add(name)
        for key in set(self.entries.get(name, {})) - set(instances):
            self.checks.pop(key, None)
        if instances:
            self.entries[name] = instances
        else:
            self.entries.pop(name, None)
        self._remap(name)

    def _remap(self, name):
        instances = self.entries.get(name)
        if not instances:
            self.results.pop(name, None)
            return
        entries = []
        for key, instance in sorted(instances.items()):
            if isinstance(instance, dict):  # malformed: as Consul sent it
                entries.append(instance)
                continue
            node, node_address, service_id, address, port, tags, meta = instance
            statuses = self.checks.get((node, ""), ()) + self.checks.get(key, ())
            entries.append({
                "Node": {"Node": node, "Address": node_address},
                "Service": {"ID": service_id, "Service": name, "Address": address, "Port": port, "Tags": tags,
                            "Meta": meta},
                "Checks": [{"CheckID": check_id, "Status": status} for check_id, status in statuses],
            })
        result = mapping.map_services({name: entries}, self.options)
        result.instances = []  # not needed here (merge_results copes), and the largest part of a result
        self.results[name] = result

    def _snapshot_of_cache(self):
        """The checks the cache knows as not passing, as the filtered health poll would answer them."""
        states = {}
        for name, instances in self.entries.items():
            for key in instances:
                for check_key, owner in ((key, name), ((key[0], ""), "")):
                    pairs = self.checks.get(check_key, ())
                    if any(status != "passing" for _id, status in pairs):
                        states[check_key] = (owner, tuple(pair for pair in pairs if pair[1] != "passing"))
        return mapping.CheckSnapshot(states=states, checks={})

    def _fetch_many(self, names):
        names = sorted(names)
        if len(names) <= 1:
            return [self._fetch_service(name) for name in names]
        with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(names)), thread_name_prefix="consul-fetch") as pool:
            return list(pool.map(self._fetch_service, names))

    def _fetch_by_node(self, names):
        """Every service in ``names`` as ``/v1/health/service/NAME`` would answer it, built from
        ``/v1/catalog/nodes``, ``/v1/catalog/node-services/NODE`` per node and one
        ``/v1/health/state/any``: 2 + nodes requests instead of one per service. None when that is
        not fewer requests, or when this Consul has no node-services endpoint (before 1.7).

        Instances are read before checks: an instance registered meanwhile is simply absent (the
        catalog poll reports it), never present without its checks and so taken for passing.
        """
        nodes = self.client.catalog_nodes().data
        node_names = sorted({node.get("Node") for node in nodes if isinstance(node.get("Node"), str)})
        if len(node_names) + 2 >= len(names):
            return None
        instances = {name: {} for name in names}
        # Answers are compacted as they come and then dropped. Few nodes with many services each make
        # big answers: fewer are fetched at once, so that about BY_NODE_IN_FLIGHT services' worth of
        # parsed JSON is alive at a time (the peak, not the cache, sets the watcher's RSS).
        window = max(1, min(FETCH_THREADS, BY_NODE_IN_FLIGHT * len(node_names) // len(names)))

        def fetch(node):
            return self.client.catalog_node_services(node).data

        try:
            if window == 1:
                for node in node_names:
                    _compact_node(fetch(node), instances, self.entries)
            else:
                with ThreadPoolExecutor(max_workers=window, thread_name_prefix="consul-fetch") as pool:
                    for answer in pool.map(fetch, node_names):
                        _compact_node(answer, instances, self.entries)
        except ConsulBadAnswer as exc:
            if exc.status == 404:
                log.info("this Consul has no /v1/catalog/node-services (before 1.7): reading service by service")
                self.read_by_node = False
                return None
            raise
        checks = {}
        for check in self.client.health_state_any().data:
            node, service_id = check.get("Node"), check.get("ServiceID") or ""
            if isinstance(node, str) and isinstance(service_id, str):  # else no instance would list it
                checks.setdefault((node, service_id), []).append(check)
        pairs = {key: _pairs(found) for key, found in checks.items()}
        del checks
        result = []
        for name, found in instances.items():
            service_checks = {}
            for node, service_id in found:
                if node:  # not a malformed one (those the mapping skips, checks or not)
                    for key in ((node, service_id), (node, "")):
                        now, known = pairs.get(key, ()), self.checks.get(key)
                        service_checks[key] = known if known == now else now  # an equal old value is kept
            result.append((name, (found, service_checks)))
        return result

    def refresh_all(self):
        """Read every selected service from Consul; raises ConsulError and changes nothing then."""
        started = time.monotonic()
        answer = self.client.catalog_services()
        catalog = answer.data
        if not isinstance(catalog, dict):
            raise ConsulBadAnswer("/v1/catalog/services did not answer a JSON object", url=self.settings.consul_url)
        selected = sorted(name for name in catalog if self.options.selects(name))
        fetched = self._fetch_by_node(selected) if self.read_by_node and len(selected) > 3 else None
        if fetched is None:
            fetched = self._fetch_many(selected)
        with self.lock:
            self.catalog = {name: sorted(tags or []) for name, tags in catalog.items()}
            self.catalog_index = answer.index
            for name in set(self.entries) - set(selected):
                self._store_service(name, [])
            for name, compacted in fetched:
                self._store_compacted(name, compacted)
            self.snapshot = self._snapshot_of_cache()
        self._recovered()
        log.debug("read %d services from Consul in %.3fs", len(selected), time.monotonic() - started)
        if self.after_full_read is not None:
            self.after_full_read()

    def _recovered(self):
        self.metrics.set(consul_up=1)
        if self.failure is not None:
            log.warning("Consul answers again after %s; state resynced", self.failure)
            self.failure = None

    def note_failure(self, kind, exc):
        """Log a Consul failure once per kind of failure, not once per retry."""
        self.metrics.set(consul_up=0)
        if self.failure != kind:
            log.error("Consul unavailable (%s), keeping the last good state and retrying: %s", kind, exc)
            self.failure = kind

    # -- events ------------------------------------------------------------------------------------
    def apply_events(self, batch):
        """Fold a batch of watch events into the cache; True when a sync is needed."""
        health = catalog = catalog_index = None
        if any(event[0] == "resync" for event in batch):
            self.refresh_all()
            return True
        for event in batch:
            if event[0] == "health":
                health = event[1]
            elif event[0] == "catalog" and event[2] != self.catalog_index:
                catalog, catalog_index = event[1], event[2]
            elif event[0] == "consul_error":
                self.note_failure(event[1], event[2])
        if health is None and catalog is None:
            return False
        refetch = set()
        touched = set()
        with self.lock:
            if health is not None:
                self._fold_health(health, touched, refetch)
            if catalog is not None:
                current = {name: sorted(tags or []) for name, tags in catalog.items()}
                previous = self.catalog or {}
                moved = {name for name in set(current) | set(previous) if current.get(name) != previous.get(name)}
                self.catalog = current
                self.catalog_index = catalog_index
                refetch.update(name for name in moved if self.options.selects(name))
                if not refetch and not touched:
                    self._explain_catalog_change(current, touched, refetch)
                for name in set(self.entries) - set(current):
                    self._store_service(name, [])
                    refetch.discard(name)
            for name in touched - refetch:
                self._remap(name)
        if refetch:
            fetched = self._fetch_many(refetch)
            with self.lock:
                for name, compacted in fetched:
                    self._store_compacted(name, compacted)
        return bool(touched or refetch or catalog is not None)

    def _fold_health(self, failing, touched, refetch):
        """Apply a ``/v1/health/state/any?filter=Status != "passing"`` answer: every check not passing.

        The answer is small while the fleet is healthy, whatever the number of services, so a flip
        costs little to read. An instance whose checks got worse (or changed) is updated in place:
        taking a server out early is always safe. One that is no longer listed either recovered or
        was deregistered: its service is read again to tell which, rather than assumed healthy.
        Checks the cache does not know (a new instance, a new check) also make the service be read.
        """
        snapshot = mapping.index_checks(failing)
        change = mapping.diff_snapshots(self.snapshot, snapshot)
        was_failing = set(self.snapshot.states) if self.snapshot else set()
        self.snapshot = mapping.CheckSnapshot(states=snapshot.states, checks={})
        states = snapshot.states
        for node in change.nodes:
            key = (node, "")
            if key in states and _updatable(self.checks.get(key, ()), states[key][1]):
                self.checks[key] = _updated(self.checks.get(key, ()), states[key][1])
                touched.update(self.node_services.get(node, ()))
            else:  # recovered, gone, or a check not seen before: read its services again
                refetch.update(self.node_services.get(node, ()))
        affected = {name for name in change.services if self.options.selects(name)}
        keys_of = {name: set() for name in affected}
        for key, (name, _pairs_) in states.items():
            if key[1] and name in keys_of:
                keys_of[name].add(key)
        for name in affected:
            instances = self.entries.get(name, {})
            recovered = {key for key in instances if key in was_failing and key not in states}
            failing_now = keys_of[name]
            if recovered or any(key not in instances or not _updatable(self.checks.get(key, ()), states[key][1])
                                for key in failing_now):
                refetch.add(name)
                continue
            for key in failing_now:
                self.checks[key] = _updated(self.checks.get(key, ()), states[key][1])
            touched.add(name)

    def _reconcile(self, health, touched, refetch):
        """Compare a full ``/v1/health/state/any`` answer (every check) with the cache: services whose
        instances with checks came or went are read again; statuses are taken as they are."""
        full = mapping.index_checks(health).states
        by_service = {}
        for key, (name, _pairs_) in full.items():
            if key[1]:
                by_service.setdefault(name, set()).add(key)
        for name, instances in self.entries.items():
            cached = {key for key in instances if self.checks.get(key)}
            if cached != by_service.get(name, set()):
                refetch.add(name)
        for name in set(by_service) - set(self.entries):
            if self.options.selects(name):
                refetch.add(name)
        for key, (name, pairs) in full.items():
            if key in self.checks and self.checks[key] != pairs and name not in refetch:
                self.checks[key] = pairs
                if key[1]:
                    touched.add(name)
                else:
                    touched.update(self.node_services.get(key[0], ()))
        self.snapshot = _failing_snapshot(full)

    def _explain_catalog_change(self, catalog, touched, refetch):
        """The catalog moved, but no service was added, removed or retagged.

        Usually a new instance of an existing service: one plain read of ``/v1/health/state/any``
        (every check) finds the services whose instances came or went. If that explains nothing (an
        instance without checks, a changed port or Meta), every service is read again.
        """
        self._reconcile(self.client.health_state_any().data, touched, refetch)
        release_free_memory()  # the answer lists every check: megabytes that are garbage now
        if not touched and not refetch:
            refetch.update(name for name in catalog if self.options.selects(name))

    def mapping(self):
        with self.lock:
            return mapping.merge_results(result for _name, result in sorted(self.results.items()))

    # -- watching ----------------------------------------------------------------------------------
    def start_watching(self, events):
        """Start the two long polls; their events go to ``events`` until ``stop()``."""
        for kind, path, params in (("health", "/v1/health/state/any", {"filter": FAILING_FILTER}),
                                   ("catalog", "/v1/catalog/services", None)):
            thread = threading.Thread(target=self._watch, args=(kind, path, params, events), name=f"consul-{kind}",
                                      daemon=True)
            thread.start()
            self.threads.append(thread)

    def _watch(self, kind, path, params, events):
        query = BlockingQuery(self.watch_client, path, params=params, wait=self.settings.consul_wait,
                              sleep=self.stop_event.wait)
        backoff = Backoff(self.settings.retry_initial, self.settings.retry_max)
        failed = False
        while not self.stop_event.is_set():
            try:
                result = query.poll()
            except ConsulError as exc:
                failed = True
                events.put(("consul_error", consul_error_kind(exc), exc))
                self.stop_event.wait(backoff.next())
                continue
            backoff.reset()
            if failed:
                failed = False
                events.put(("resync", kind, None))
            self.metrics.set_index(kind, result.index)
            if result.changed and not self.stop_event.is_set():
                events.put((kind, result.data, result.index))

    def stop(self, join_timeout=2.0):
        """Stop the long polls: a poll in flight ends at once (its connection is shut down) and its
        thread exits; waits up to ``join_timeout`` seconds for them."""
        self.stop_event.set()
        self.transport.close()
        deadline = time.monotonic() + join_timeout
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.threads = [thread for thread in self.threads if thread.is_alive()]
