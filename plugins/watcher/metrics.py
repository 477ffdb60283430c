# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The watcher's counters and gauges, and the loopback endpoint that shows them.

``GET /metrics``  Prometheus text format (version 0.0.4)
``GET /status``   the same facts as JSON, plus what is held and why
``GET /healthz``  200 while the sync loop is alive
``POST /release`` let a change held by the removal guard through (same as SIGUSR1); with the interface's
                  shared secret (``dyups_secret_file``, the role's default) only with its X-Dyups-Secret header

Both listeners serve a bounded number of connections, each within a deadline (bounded_http.py).

An opt-in second listener (``metrics_listen``, any address) answers ``GET /metrics`` only, and only to
clients in ``metrics_allow``; the others' connections are closed unanswered (MetricsServer).

Besides the ``swallowkeeper_watcher_*`` counters and gauges: the histogram of Consul answer -> change
applied (ChangeLatency) and the ``process_*`` metrics of Prometheus client libraries, read from /proc.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import queue
import resource
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any, Callable, Iterable, Sequence, TypeVar

try:  # hmac.compare_digest's own fallback: importing ``hmac`` loads OpenSSL's libcrypto (3.8 MB of RSS) for it
    from _operator import _compare_digest as compare_digest
except ImportError:  # pragma: no cover  (another interpreter)
    from hmac import compare_digest  # type: ignore[no-redef]

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_options import secret_headers
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import SECRET_HEADER
from ansible_collections.swallowkeeper.dyups.plugins.watcher.bounded_http import (
    BoundedHandler, BoundedServer, UnixBoundedServer)

PREFIX = "swallowkeeper_watcher"
ERROR_KINDS = (
    "consul_unavailable", "consul_forbidden", "consul_rate_limited", "consul_server_error", "consul_bad_answer",
    "consul_service_read",
    "dyups_unavailable", "dyups_rejected", "dyups_protocol", "file_write", "file_validate", "config_reload",
)

# Consul answer -> POST/DELETE answered: 1 ms .. 30 s (a flip takes milliseconds; a burst waits up to
# quiescence_max; a retry after an nginx or Consul outage takes seconds)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LATENCY_METRIC = "consul_to_applied_seconds"
_L = TypeVar("_L", bound="_Listener")
log = logging.getLogger("swallowkeeper.watcher")


class Histogram:
    """Cumulative buckets, sum and count, as Prometheus histograms are exposed (not thread-safe alone:
    Metrics holds its lock around it)."""

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * len(self.bounds)  # observations <= bound, per bound (not cumulative)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.total += 1
        self.sum += value
        for position, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[position] += 1
                break

    def samples(self) -> list[tuple[str, dict[str, str], Any]]:
        """(suffix, labels, value) of every line: _bucket per bound then +Inf, _sum, _count."""
        lines: list[tuple[str, dict[str, str], Any]] = []
        running = 0
        for bound, count in zip(self.bounds, self.counts):
            running += count
            lines.append(("_bucket", {"le": repr(float(bound))}, running))
        lines.append(("_bucket", {"le": "+Inf"}, self.total))
        lines.append(("_sum", {}, round(self.sum, 6)))
        lines.append(("_count", {}, self.total))
        return lines


class StampedQueue(queue.Queue):
    """The loop's event queue, remembering when each event was put (the moment a long poll read its
    Consul answer). ``claim()``: the earliest such moment of the events taken since the last claim;
    ``taken_at``: when the last event taken (a wake-up aside) was put, for the loop's quiescence window."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.clock = clock
        self._earliest: float | None = None
        self.taken_at: float | None = None

    def _put(self, item: Any) -> None:
        self.queue.append((self.clock(), item))

    def _get(self) -> Any:
        stamp, item = self.queue.popleft()
        if item[0] != "wake":
            self.taken_at = stamp
        if item[0] not in ("wake", "consul_error") and (self._earliest is None or stamp < self._earliest):
            self._earliest = stamp
        return item

    def claim(self) -> float | None:
        with self.mutex:
            earliest, self._earliest = self._earliest, None
            return earliest


class ChangeLatency:
    """Which upstream changes wait for the interface since when (the moment the Consul answer that
    caused them was read), observed into the histogram when their POST or DELETE is answered.

    The daemon tells it: ``folded(t)`` (a batch read at t changed the mapping), ``taken(names)`` (a sync
    starts on those names; None: a full read, whose changes are not timed), ``settle(waiting)`` (after
    the sync: names not left waiting for the interface had nothing to send or are held, and are
    forgotten). The syncer calls ``Metrics.change_applied(name)`` for each answered POST/DELETE."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.folded_at: float | None = None
        self.waiting: dict[str, float] = {}

    def folded(self, seen_at: float | None) -> None:
        if seen_at is not None and (self.folded_at is None or seen_at < self.folded_at):
            self.folded_at = seen_at

    def taken(self, names: Iterable[str] | None) -> None:
        seen_at, self.folded_at = self.folded_at, None
        if seen_at is None or names is None:
            return
        for name in names:
            self.waiting.setdefault(name, seen_at)

    def settle(self, still_waiting: Iterable[str] | None) -> None:
        """``still_waiting``: the names whose POST/DELETE is still to be sent; None: all (the file
        could not be written, the sync is retried whole)."""
        if still_waiting is not None:
            keep = set(still_waiting)
            self.waiting = {name: seen for name, seen in self.waiting.items() if name in keep}

    def applied(self, name: str) -> float | None:
        seen_at = self.waiting.pop(name, None)
        return None if seen_at is None else max(0.0, self.clock() - seen_at)


def _process_samples() -> list[tuple[str, str, str, Any]]:
    """(name, type, help, value) of the ``process_*`` metrics Prometheus client libraries export, read
    from /proc (Linux); empty where /proc is missing."""
    try:
        with open("/proc/self/stat", encoding="ascii") as handle:
            stat = handle.read()
        fds = len(os.listdir("/proc/self/fd"))
        with open("/proc/stat", encoding="ascii") as handle:
            boot = next(float(line.split()[1]) for line in handle if line.startswith("btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return []
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": field 3 (state) is fields[0]
    ticks = os.sysconf("SC_CLK_TCK")
    soft_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return [
        ("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
         round((int(fields[11]) + int(fields[12])) / ticks, 3)),
        ("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.",
         int(fields[21]) * resource.getpagesize()),
        ("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", int(fields[20])),
        ("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
         round(boot + int(fields[19]) / ticks, 2)),
        ("process_open_fds", "gauge", "Number of open file descriptors.", fds - 1),  # less listdir's own
        ("process_max_fds", "gauge", "Maximum number of open file descriptors.",
         soft_limit if soft_limit != resource.RLIM_INFINITY else -1),
        ("process_threads", "gauge", "Number of OS threads in the process.", int(fields[17])),
    ]


class Metrics:
    """Thread-safe counters and gauges; the sync loop writes, the HTTP thread reads."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.started = clock()
        self.counters: dict[str, int] = {"changes_applied": 0, "syncs": 0, "repairs": 0, "consul_events": 0,
                                         "nginx_generations": 0, "check_budget_refusals": 0,
                                         "consul_stale_rereads": 0, "zone_refusals": 0, "zone_waits": 0, "dict_refusals": 0,
                                         "stray_answers": 0, "consul_outdated_answers": 0, "fleet_fallbacks": 0,
                                         "fleet_refused_values": 0, "fleet_publishes": 0, "fleet_publish_failures": 0,
                                         "fleet_full_reads": 0, "consul_health_catchup_reads": 0}
        self.errors = {kind: 0 for kind in ERROR_KINDS}
        self.gauges: dict[str, float] = {
            "last_sync_timestamp_seconds": 0.0, "last_sync_success": 0, "last_sync_duration_seconds": 0.0,
            "upstreams": 0, "servers": 0, "held_changes": 0, "held_removals": 0, "pending_upstreams": 0,
            "consul_up": 0, "dyups_up": 0, "skipped_instances": 0, "unread_services": 0,
            "dyups_free_bytes": -1, "config_reload_success": 1, "consul_stale_reread_last_contact_seconds": 0.0,
            "fleet_publisher": 0, "fleet_follower": 0, "fleet_fallback": 0, "fleet_journal_seq": 0,
            "fleet_publish_seconds": 0.0}
        self.consul_index: dict[str, int] = {}
        self.consul_answered: dict[str, float] = {}
        self.consul_last_contact: dict[str, float] = {}
        self.latency = ChangeLatency()
        self.latency_histogram = Histogram(LATENCY_BUCKETS)
        self.status: dict[str, Any] = {}
        self.loop_heartbeat = clock()

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self.counters[name] = self.counters.get(name, 0) + amount

    def error(self, kind: str) -> None:
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def set(self, **gauges: float) -> None:
        with self._lock:
            self.gauges.update(gauges)

    def set_index(self, query: str, index: int | None, last_contact: float | None = None) -> None:
        """A blocking query answered: its index, when, and how stale its server was (seconds since it
        heard from the leader, of the answer as it came, before any re-read; None: not said)."""
        with self._lock:
            self.consul_index[query] = index or 0
            self.consul_answered[query] = self._clock()
            if last_contact is not None:
                self.consul_last_contact[query] = last_contact

    def change_applied(self, name: str) -> float | None:
        """A POST or DELETE of upstream ``name`` was answered: counted, and timed when a Consul answer
        caused it (ChangeLatency). Returns that time in seconds (None: not caused by an answer)."""
        with self._lock:
            self.counters["changes_applied"] = self.counters.get("changes_applied", 0) + 1
            elapsed = self.latency.applied(name)
            if elapsed is not None:
                self.latency_histogram.observe(elapsed)
            return elapsed

    def set_status(self, **facts: Any) -> None:
        with self._lock:
            self.status.update(facts)

    def heartbeat(self) -> None:
        with self._lock:
            self.loop_heartbeat = self._clock()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uptime_seconds": round(self._clock() - self.started, 3),
                "counters": dict(self.counters),
                "errors": dict(self.errors),
                "gauges": dict(self.gauges),
                "consul_index": dict(self.consul_index),
                "consul_answered": dict(self.consul_answered),
                "consul_last_contact": dict(self.consul_last_contact),
                "latency": {"count": self.latency_histogram.total, "sum": round(self.latency_histogram.sum, 6),
                            "waiting": len(self.latency.waiting)},
                "status": json.loads(json.dumps(self.status, default=str)),
                "loop_heartbeat_age_seconds": round(self._clock() - self.loop_heartbeat, 3),
            }

    def prometheus(self) -> str:
        snap = self.snapshot()
        with self._lock:
            latency = self.latency_histogram.samples()
        lines = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], Any]],
                   full_name: str = "") -> None:
            full_name = full_name or f"{PREFIX}_{name}"
            lines.append(f"# HELP {full_name} {help_text}")
            lines.append(f"# TYPE {full_name} {kind}")
            for labels, value in samples:
                suffix = labels.pop("__suffix__", "") if labels else ""
                label_text = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
                lines.append(f"{full_name}{suffix}{label_text} {'+Inf' if value == float('inf') else value}")

        metric("changes_applied_total", "counter", "Upstream POSTs and DELETEs the interface accepted.",
               [({}, snap["counters"]["changes_applied"])])
        metric("syncs_total", "counter", "Syncs run (Consul state compared with what is applied).",
               [({}, snap["counters"]["syncs"])])
        metric("repairs_total", "counter", "Upstreams pushed again because the interface had drifted.",
               [({}, snap["counters"]["repairs"])])
        metric("consul_events_total", "counter", "Consul blocking queries that returned a changed index.",
               [({}, snap["counters"]["consul_events"])])
        metric("consul_outdated_answers_total", "counter", "Long-poll answers not applied because the cache "
               "already held a newer read of their endpoint (read before a full read or a SIGHUP, folded after).",
               [({}, snap["counters"]["consul_outdated_answers"])])
        metric("consul_health_catchup_reads_total", "counter", "Non-blocking reads of one health state (critical "
               "or warning) because the other state's poll showed a check leaving it at a newer index.",
               [({}, snap["counters"]["consul_health_catchup_reads"])])
        metric("nginx_generations_total", "counter", "Times nginx had new worker processes (a respawn, a reload, "
               "a restart) and every worker was checked (nginx_pid_file).",
               [({}, snap["counters"]["nginx_generations"])])
        metric("nginx_stray_answers_total", "counter", "nginx workers that answered a POST or DELETE and then "
               "stopped taking connections (the old workers of a reload); every worker was checked after each "
               "(nginx_pid_file).", [({}, snap["counters"]["stray_answers"])])
        metric("check_budget_refusals_total", "counter", "Changes skipped at a sync because they would bring the "
               "check peers above check_peer_budget.", [({}, snap["counters"]["check_budget_refusals"])])
        metric("zone_refusals_total", "counter", "Changes skipped at a sync because their body cannot fit "
               "dyups_shm_zone_size (Tengine would apply them on one worker only).",
               [({}, snap["counters"]["zone_refusals"])])
        metric("dict_refusals_total", "counter", "Changes skipped at a sync because their entry would not fit the "
               "Lua flavor's shared dict (its free space at the last answer).",
               [({}, snap["counters"]["dict_refusals"])])
        metric("zone_waits_total", "counter", "POSTs and DELETEs held back until every Tengine worker had read "
               "the changes sent before them, which could leave dyups_shm_zone_size no room for them.",
               [({}, snap["counters"]["zone_waits"])])
        for name, help_text in (
                ("fleet_fallbacks", "Times a follower of the fleet share went back to reading Consul itself "
                                    "(no lock holder, a journal older than fleet_stale_after, unusable or "
                                    "from other mapping settings)."),
                ("fleet_refused_values", "Values read from the fleet's KV (an upstream's, the journal) that broke "
                                         "a rule: not applied, the upstream keeps its last good state."),
                ("fleet_publishes", "Journal entries the publisher wrote with the upstreams that changed."),
                ("fleet_publish_failures", "Publishes that failed or that Consul refused (a deposed publisher, a "
                                           "journal written by another); the next one compares every upstream."),
                ("fleet_full_reads", "Reads of every upstream key of the fleet's KV (start, too far behind, a new "
                                     "publisher).")):
            metric(f"{name}_total", "counter", help_text, [({}, snap["counters"][name])])
        metric("errors_total", "counter", "Errors by kind.",
               [({"kind": kind}, value) for kind, value in sorted(snap["errors"].items())])
        metric("consul_index", "gauge", "Last X-Consul-Index seen per blocking query.",
               [({"query": query}, value) for query, value in sorted(snap["consul_index"].items())])
        metric("consul_answer_timestamp_seconds", "gauge", "Unix time of the last answer of each blocking query "
               "(one at least every consul_wait while Consul answers).",
               [({"query": query}, round(value, 3)) for query, value in sorted(snap["consul_answered"].items())])
        metric("consul_last_contact_seconds", "gauge", "Seconds since the Consul server that gave each blocking "
               "query's last answer had heard from the leader (X-Consul-LastContact; +Inf: it knew no leader).",
               [({"query": query}, value) for query, value in sorted(snap["consul_last_contact"].items())])
        metric("consul_stale_rereads_total", "counter", "Answers of servers that had not heard from the leader for "
               "more than consul_max_stale seconds, read again from the leader.",
               [({}, snap["counters"]["consul_stale_rereads"])])
        metric(LATENCY_METRIC, "histogram", "Seconds from reading the Consul answer that carried a change to "
               "the interface's answer to its POST or DELETE.",
               [(dict(labels, __suffix__=suffix), value) for suffix, labels, value in latency])
        gauge_help = {
            "last_sync_timestamp_seconds": "Unix time of the last sync that completed without error.",
            "last_sync_success": "1 when the last sync completed without error.",
            "last_sync_duration_seconds": "Duration of the last sync.",
            "upstreams": "Upstreams the watcher manages.",
            "servers": "Servers across those upstreams.",
            "held_changes": "1 while the removal guard holds a change back.",
            "held_removals": "Servers a held change would remove.",
            "pending_upstreams": "Upstreams whose push to the interface waits for a retry.",
            "consul_up": "1 when the last Consul request succeeded.",
            "dyups_up": "1 when the last dyups request succeeded.",
            "skipped_instances": "Consul instances the last mapping skipped (invalid name or server).",
            "unread_services": "Services whose last read failed: their last good state is kept, they are read again.",
            "dyups_free_bytes": "Free bytes of the Lua flavor's shared dict at the last drift check (nginx_pid_file "
                                "set); -1: not known (Tengine's zones cannot be read).",
            "config_reload_success": "0 when the last SIGHUP could not reload (the watcher goes on as it was).",
            "consul_stale_reread_last_contact_seconds": "LastContact of the last answer read again from the leader "
                                                        "(consul_max_stale; +Inf: its server knew no leader; 0: none).",
            "fleet_publisher": "1 while this watcher is the fleet share's publisher (fleet_share on).",
            "fleet_follower": "1 while this watcher follows the publisher's journal (fleet_share on).",
            "fleet_fallback": "1 while this watcher reads Consul itself without being the publisher (fleet_share on).",
            "fleet_journal_seq": "The journal sequence number last published (publisher) or applied (follower).",
            "fleet_publish_seconds": "Duration of the publisher's last publish (its /v1/txn writes).",
        }
        for name, help_text in gauge_help.items():
            metric(name, "gauge", help_text, [({}, snap["gauges"][name])])
        for name, kind, help_text, value in _process_samples():
            metric(name, kind, help_text, [({}, value)], full_name=name)
        return "\n".join(lines) + "\n"


class _Handler(BoundedHandler):
    server_version = "swallowkeeper-watcher"

    def log_message(self, *args: Any) -> None:  # the access log would drown the change log
        return

    def _send(self, status: int, body: str, content_type: str = "text/plain; charset=utf-8") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _Listener:
    """An HTTP server on its own thread: ``start()`` (returns itself), ``stop()``, ``address``."""

    server: BoundedServer
    thread: threading.Thread

    @property
    def address(self) -> Any:
        return self.server.server_address

    def start(self: _L) -> _L:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class StatusServer(_Listener):
    """The loopback HTTP endpoint; ``release`` is called for POST /release, which, given ``release_secret``,
    needs it in the ``X-Dyups-Secret`` header: a local user without the secret file cannot let a held
    removal through (the GETs, Prometheus' scrape among them, need nothing)."""

    def __init__(self, listen: str, metrics: Metrics, release: Callable[[], str], stale_after: float = 120.0,
                 release_secret: str | None = None) -> None:
        self.metrics = metrics
        self.release = release
        self.release_secret = release_secret
        self.stale_after = stale_after
        handler = self._handler()
        if listen.startswith("unix:"):
            self.server = UnixBoundedServer(listen[len("unix:"):], handler)
        else:
            host, _sep, port = listen.rpartition(":")
            self.server = BoundedServer((host.strip("[]"), int(port)), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="status-http", daemon=True)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(_Handler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, outer.metrics.prometheus(), "text/plain; version=0.0.4; charset=utf-8")
                elif self.path == "/status":
                    self._send(200, json.dumps(outer.metrics.snapshot(), indent=2, sort_keys=True) + "\n",
                               "application/json")
                elif self.path == "/healthz":
                    age = outer.metrics.snapshot()["loop_heartbeat_age_seconds"]
                    if age <= outer.stale_after:
                        self._send(200, "ok\n")
                    else:
                        self._send(503, f"sync loop silent for {age:.0f}s\n")
                else:
                    self._send(404, "not found; try /metrics, /status, /healthz\n")

            def do_POST(self) -> None:
                if self.path == "/release" and from_a_browser(self.headers):
                    self._send(403, "refused: a POST with an Origin header comes from a web page; use curl -X POST "
                                    "or SIGUSR1\n")
                elif self.path == "/release" and not outer.secret_matches(self.headers.get(SECRET_HEADER)):
                    self._send(403, "refused: POST /release needs the X-Dyups-Secret header (the watcher's "
                                    "dyups_secret_file), or SIGUSR1\n")
                elif self.path == "/release":
                    self._send(200, outer.release() + "\n")
                else:
                    self._send(404, "not found; POST /release lets a held change through\n")

        return Handler

    def secret_matches(self, given: str | None) -> bool:
        """True without a ``release_secret``, else whether ``given`` is it (compared in constant time)."""
        if not self.release_secret:
            return True
        return given is not None and compare_digest(given.encode("utf-8", "replace"), self.release_secret.encode("utf-8"))


def from_a_browser(headers: Any) -> bool:
    """Whether a POST comes from a web page: browsers add ``Origin`` to every POST (and ``Sec-Fetch-Site``),
    a page cannot take them off, and curl, the tests and operators send neither."""
    return headers.get("Origin") is not None or headers.get("Sec-Fetch-Site") is not None


def split_listen(listen: str) -> tuple[str, int]:
    """``ADDRESS:PORT`` (``[v6]:PORT`` for IPv6) -> (address, port); ValueError when it is not one."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected ADDRESS:PORT, got {listen!r}")
    ipaddress.ip_address(host)  # an IP literal: a host name could resolve to anything
    return host, int(port)


def allowed(client: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    """Whether ``client`` (an address as accept() gives it) is in one of ``networks``; an IPv4 client
    reaching an IPv6 socket (``::ffff:10.0.0.1``) counts as its IPv4 address."""
    try:
        address = ipaddress.ip_address(client.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class MetricsServer(_Listener):
    """The opt-in metrics listener (``metrics_listen``): ``GET /metrics`` only, to the clients in
    ``allow`` (CIDRs); a connection from anywhere else is closed before a byte of it is read. No
    /status (it names upstreams and servers), no /release: those stay on the loopback endpoint."""

    def __init__(self, listen: str, allow: Iterable[str], metrics: Metrics) -> None:
        host, port = split_listen(listen)
        networks = [ipaddress.ip_network(cidr) for cidr in allow]
        outer_metrics = metrics

        class Server(BoundedServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

            def verify_request(self, request: Any, client_address: Any) -> bool:
                return allowed(str(client_address[0]), networks)

        class Handler(_Handler):
            def do_GET(self) -> None:
                if self.path == "/metrics":
                    self._send(200, outer_metrics.prometheus(), "text/plain; version=0.0.4; charset=utf-8")
                else:
                    self._send(404, "not found: this listener serves GET /metrics only\n")

            def do_POST(self) -> None:
                self._send(405, "this listener serves GET /metrics only\n")

        self.server = Server((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)


def start_listeners(settings: Any, metrics: Metrics, release: Callable[[], str]) -> list[_Listener]:
    """The listeners the settings ask for, started: the loopback status endpoint (``status_listen``) and
    the metrics listener (``metrics_listen``). OSError naming the setting when one cannot listen (the
    ones already started are stopped)."""
    started: list[_Listener] = []
    release_secret = secret_headers(getattr(settings, "dyups_secret_file", None)).get(SECRET_HEADER)
    wanted = [("status_listen", lambda: StatusServer(settings.status_listen, metrics, release,
                                                     release_secret=release_secret)),
              ("metrics_listen", lambda: MetricsServer(settings.metrics_listen, settings.metrics_allow, metrics))]
    for name, make in wanted:
        if not getattr(settings, name):
            continue
        try:
            started.append(make().start())
        except OSError as exc:
            for listener in started:
                listener.stop()
            raise OSError(f"{name} {getattr(settings, name)}: {exc.strerror or exc}") from None
    for listener in started:
        if isinstance(listener.address, str):
            log.info("status and metrics on unix:%s", listener.address)
            continue
        host, port = listener.address[:2]
        what = ("status and metrics" if isinstance(listener, StatusServer)
                else f"metrics for {', '.join(settings.metrics_allow)}")
        log.info("%s on http://%s:%d/", what, f"[{host}]" if ":" in host else host, port)
    return started
