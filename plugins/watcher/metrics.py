# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The watcher's counters and gauges, and the loopback endpoint that shows them.

``GET /metrics``  Prometheus text format (version 0.0.4)
``GET /status``   the same facts as JSON, plus what is held and why
``GET /healthz``  200 while the sync loop is alive
``POST /release`` let a change held by the removal guard through (same as SIGUSR1)
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

PREFIX = "swallowkeeper_watcher"
ERROR_KINDS = (
    "consul_unavailable", "consul_forbidden", "consul_rate_limited", "consul_server_error", "consul_bad_answer",
    "consul_service_read",
    "dyups_unavailable", "dyups_rejected", "dyups_protocol", "file_write", "file_validate", "config_reload",
)


class Metrics:
    """Thread-safe counters and gauges; the sync loop writes, the HTTP thread reads."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.started = clock()
        self.counters: dict[str, int] = {"changes_applied": 0, "syncs": 0, "repairs": 0, "consul_events": 0,
                                         "nginx_generations": 0, "check_budget_refusals": 0}
        self.errors = {kind: 0 for kind in ERROR_KINDS}
        self.gauges: dict[str, float] = {
            "last_sync_timestamp_seconds": 0.0, "last_sync_success": 0, "last_sync_duration_seconds": 0.0,
            "upstreams": 0, "servers": 0, "held_changes": 0, "held_removals": 0, "pending_upstreams": 0,
            "consul_up": 0, "dyups_up": 0, "skipped_instances": 0, "unread_services": 0,
            "dyups_free_bytes": -1, "config_reload_success": 1}
        self.consul_index: dict[str, int] = {}
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

    def set_index(self, query: str, index: int | None) -> None:
        with self._lock:
            self.consul_index[query] = index or 0

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
                "status": json.loads(json.dumps(self.status, default=str)),
                "loop_heartbeat_age_seconds": round(self._clock() - self.loop_heartbeat, 3),
            }

    def prometheus(self) -> str:
        snap = self.snapshot()
        lines = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], Any]]) -> None:
            lines.append(f"# HELP {PREFIX}_{name} {help_text}")
            lines.append(f"# TYPE {PREFIX}_{name} {kind}")
            for labels, value in samples:
                label_text = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
                lines.append(f"{PREFIX}_{name}{label_text} {value}")

        metric("changes_applied_total", "counter", "Upstream POSTs and DELETEs the interface accepted.",
               [({}, snap["counters"]["changes_applied"])])
        metric("syncs_total", "counter", "Syncs run (Consul state compared with what is applied).",
               [({}, snap["counters"]["syncs"])])
        metric("repairs_total", "counter", "Upstreams pushed again because the interface had drifted.",
               [({}, snap["counters"]["repairs"])])
        metric("consul_events_total", "counter", "Consul blocking queries that returned a changed index.",
               [({}, snap["counters"]["consul_events"])])
        metric("nginx_generations_total", "counter", "Times nginx had new worker processes (a respawn, a reload, "
               "a restart) and every worker was checked (nginx_pid_file).",
               [({}, snap["counters"]["nginx_generations"])])
        metric("check_budget_refusals_total", "counter", "Changes skipped at a sync because they would bring the "
               "check peers above check_peer_budget.", [({}, snap["counters"]["check_budget_refusals"])])
        metric("errors_total", "counter", "Errors by kind.",
               [({"kind": kind}, value) for kind, value in sorted(snap["errors"].items())])
        metric("consul_index", "gauge", "Last X-Consul-Index seen per blocking query.",
               [({"query": query}, value) for query, value in sorted(snap["consul_index"].items())])
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
        }
        for name, help_text in gauge_help.items():
            metric(name, "gauge", help_text, [({}, snap["gauges"][name])])
        return "\n".join(lines) + "\n"


class StatusServer:
    """The loopback HTTP endpoint; ``release`` is called for POST /release."""

    def __init__(self, listen: str, metrics: Metrics, release: Callable[[], str], stale_after: float = 120.0) -> None:
        host, _sep, port = listen.rpartition(":")
        self.metrics = metrics
        self.release = release
        self.stale_after = stale_after
        handler = self._handler()
        self.server = ThreadingHTTPServer((host.strip("[]"), int(port)), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="status-http", daemon=True)

    @property
    def address(self) -> Any:
        return self.server.server_address

    def start(self) -> StatusServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
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
                if self.path == "/release":
                    self._send(200, outer.release() + "\n")
                else:
                    self._send(404, "not found; POST /release lets a held change through\n")

        return Handler
