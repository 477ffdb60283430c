# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The event loop: Consul events in, coalesced, synced; retries, drift repair and signals.

Threads: two Consul long polls (consul_source.py) put events on a queue; this loop takes them,
waits until Consul has been quiet for ``quiescence_min`` (but never longer than
``quiescence_max`` from the first event), then syncs once. The loop also wakes for retries of
failed pushes (capped exponential backoff with jitter), for the periodic drift repair and the
periodic full Consul read, and for signals:

- SIGTERM / SIGINT: finish the current step, stop the long polls, exit 0;
- SIGHUP: read the config file again and resync everything;
- SIGUSR1: release a change held by the removal guard.

Fail-static: when Consul cannot be read, nothing is changed; when dyups cannot be reached, the file
keeps the desired state and pushes are retried. The loop never exits on such errors.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from typing import Any, Callable, Mapping

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import DyupsError
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as settings_mod
from ansible_collections.swallowkeeper.dyups.plugins.watcher import memory
from ansible_collections.swallowkeeper.dyups.plugins.watcher.backoff import Backoff
from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import ConsulSource, consul_error_kind
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics, StampedQueue, start_listeners
from ansible_collections.swallowkeeper.dyups.plugins.watcher.sync import Syncer, dyups_error_kind
from ansible_collections.swallowkeeper.dyups.plugins.watcher.systemd_notify import Supervision
from ansible_collections.swallowkeeper.dyups.plugins.watcher.transport import KeepAliveTransport

log = logging.getLogger("swallowkeeper.watcher")


class Daemon:
    def __init__(self, settings: settings_mod.Settings, dry_run: bool = False,
                 flag_values: Mapping[str, Any] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.flag_values = flag_values or {}
        self.dry_run = dry_run
        self.clock = clock
        self.metrics = Metrics()
        self.events = StampedQueue()  # (kind, ...) events; claim(): when they were read
        self.stopping = threading.Event()
        self.reload_requested = False
        self._skipped_seen: set[tuple[str, str]] = set()
        self._skipped_list: list[dict[str, Any]] | None = None  # the source's skip list last logged (replaced when it changes)
        self._syncer_skipped = False
        self._build()
        self.supervision = Supervision(lambda: self.metrics.loop_heartbeat, self._polls_alive,
                                       lambda: self.events.put(("wake", None)))

    def _build(self) -> None:
        settings = self.settings
        self.dyups_transport = KeepAliveTransport()
        self.client = DyupsClient(settings.dyups_url, self.dyups_transport, timeout=settings.dyups_timeout)
        self.syncer = Syncer(settings, self.client, self.metrics, clock=self.clock, dry_run=self.dry_run)
        self.source = ConsulSource(settings, self.metrics)
        self.source.after_full_read = memory.settle  # the large cache frozen out of gc scans, pages trimmed
        self.retry = Backoff(settings.retry_initial, settings.retry_max)
        self.consul_retry = Backoff(settings.retry_initial, settings.retry_max)

    # -- one-shot ----------------------------------------------------------------------------------
    def once(self) -> int:
        """One full sync; returns the exit status (0 ok, 1 failed, 3 a change is held)."""
        try:
            self.source.refresh_all()
        except Exception as exc:  # a ConsulError or a bad answer: report, change nothing
            kind = consul_error_kind(exc)
            self.metrics.error(kind)
            log.error("Consul could not be read (%s), nothing changed: %s", kind, exc)
            return 1
        result = self.source.mapping()
        report = self.syncer.sync(result.upstreams, result.empty)
        self._log_skipped([*result.skipped, *self.syncer.skipped])
        status = 0 if report.ok else 1
        if not self.dry_run and report.ok:
            try:
                repaired = self.syncer.repair()
                status = 0 if not repaired.failed else 1
            except DyupsError as exc:
                self.metrics.error(dyups_error_kind(exc))
                log.error("dyups could not be compared: %s", exc)
                status = 1
        if self.syncer.hold_since is not None and status == 0:
            status = 3
        return status

    # -- daemon ------------------------------------------------------------------------------------
    def request_stop(self, *_args: Any) -> None:
        self.stopping.set()
        self.events.put(("wake", None))

    def request_reload(self, *_args: Any) -> None:
        self.reload_requested = True
        self.events.put(("wake", None))

    def request_release(self, *_args: Any) -> str:
        message = self.syncer.release()
        log.warning("operator: %s", message)
        self.events.put(("wake", None))
        return message

    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self.request_stop)
        signal.signal(signal.SIGINT, self.request_stop)
        signal.signal(signal.SIGHUP, self.request_reload)
        signal.signal(signal.SIGUSR1, self.request_release)

    def run(self) -> int:
        try:
            listeners = start_listeners(self.settings, self.metrics, self.request_release)
        except OSError as exc:  # the message names the setting and the address
            log.error("cannot start: %s", exc)
            return 2
        self.supervision.start()
        log.info("watching Consul at %s; upstream file %s; dyups at %s%s", self.settings.consul_url,
                 self.settings.upstream_file, self.settings.dyups_url, " (dry run)" if self.dry_run else "")
        try:
            self._loop()
        finally:
            self.source.stop()
            self.dyups_transport.close()
            for listener in listeners:
                listener.stop()
            self.supervision.stop()
            log.info("stopped")
        return 0

    def _loop(self) -> None:
        now = self.clock()
        next_refresh = now
        next_drift = now
        next_retry = None
        need_sync = False
        watching = False
        while not self.stopping.is_set():
            self.metrics.heartbeat()
            now = self.clock()
            if self.reload_requested:
                self.reload_requested = False
                self._reload()
                next_refresh = next_drift = now
                watching = False
            if now >= next_refresh:
                if self._refresh():
                    need_sync = True
                    self.consul_retry.reset()
                    next_refresh = now + self.settings.consul_resync_interval
                    if not watching:
                        self.source.start_watching(self.events)
                        watching = True
                else:
                    next_refresh = now + self.consul_retry.next()
            if need_sync:
                need_sync = False
                self._sync()
            self.supervision.ready()  # once: after the first full read and sync, or their failure
            if self.syncer.has_pending and (next_retry is None or now >= next_retry):
                if next_retry is not None:
                    self.syncer.retry()
                next_retry = None if not self.syncer.has_pending else now + self.retry.next()
                if next_retry is None:
                    self.retry.reset()
            if now >= next_drift and not self.dry_run:
                next_drift = now + self.settings.drift_interval
                try:
                    self.syncer.repair()
                except DyupsError as exc:
                    self.metrics.error(dyups_error_kind(exc))
                    self.metrics.set(dyups_up=0)
                    log.error("drift check failed, will retry: %s", exc)
                    next_drift = now + min(self.settings.drift_interval, self.retry.next())
            deadlines = [next_refresh, next_drift] + ([next_retry] if next_retry else [])
            if self.syncer.hold_since is not None:
                deadlines.append(now + 1.0)
                need_sync = True
            timeout = max(0.0, min(deadlines) - self.clock())
            batch = self._collect(timeout)
            read_at = self.events.claim()
            if batch:
                try:
                    started = self.clock()
                    if self.source.apply_events(batch):
                        need_sync = True
                        self.metrics.latency.folded(read_at)
                    log.debug("%d event(s) folded in %.1f ms", len(batch), (self.clock() - started) * 1000)
                except Exception as exc:  # ConsulError while fetching changed services: full read later
                    kind = consul_error_kind(exc)
                    self.metrics.error(kind)
                    log.error("Consul read failed after an event (%s), keeping the current state: %s", kind, exc)
                    next_refresh = self.clock() + self.consul_retry.next()

    def _polls_alive(self) -> bool:
        source = self.source  # replaced by a SIGHUP reload
        return source is None or all(thread.is_alive() for thread in source.threads)

    def _collect(self, timeout: float) -> list[tuple[str, Any]]:
        """Events that arrived within ``timeout``, coalesced by the quiescence window."""
        try:
            first = self.events.get(timeout=timeout)
        except queue.Empty:
            return []
        batch = [first]
        if first[0] == "wake":
            return [event for event in batch if event[0] != "wake"]
        deadline = self.clock() + self.settings.quiescence_max
        while not self.stopping.is_set():
            remaining = min(self.settings.quiescence_min, deadline - self.clock())
            if remaining <= 0:
                break
            try:
                batch.append(self.events.get(timeout=remaining))
            except queue.Empty:
                break
        self.metrics.count("consul_events", sum(1 for event in batch if event[0] in ("health", "catalog")))
        return [event for event in batch if event[0] != "wake"]

    def _refresh(self) -> bool:
        try:
            self.source.refresh_all()
            return True
        except Exception as exc:  # ConsulError or a bad answer: keep serving, retry with backoff
            kind = consul_error_kind(exc)
            self.metrics.error(kind)
            self.source.note_failure(kind, exc)
            return False

    def _sync(self) -> None:
        """Sync what changed since the last sync: the source's merged mapping is kept current as
        events are folded in, and tells which upstream names changed (consul_source.take_changes)."""
        started = self.clock()
        upstreams, empty, changed = self.source.take_changes()
        self.metrics.latency.taken(changed)
        report = self.syncer.sync(upstreams, empty, changed=changed)
        self.metrics.latency.settle(None if self.syncer.unwritten else self.syncer.pending | self.syncer.gone)
        skipped = self.source.skipped()
        if skipped is not self._skipped_list or self.syncer.skipped or self._syncer_skipped:
            self._log_skipped(skipped + self.syncer.skipped)
            self._skipped_list, self._syncer_skipped = skipped, bool(self.syncer.skipped)
        log.debug("sync: %.1f ms for %s changed upstream(s), %d posted, %d deleted", (self.clock() - started) * 1000,
                  "all" if changed is None else len(changed), len(report.posted), len(report.deleted))

    def _log_skipped(self, skipped: list[dict[str, Any]]) -> None:
        self.metrics.set_status(skipped=skipped[:100])
        self.metrics.set(skipped_instances=len(skipped))
        new = {(item["what"], item["why"]) for item in skipped}
        for what, why in sorted(new - self._skipped_seen):
            log.warning("skipped %s: %s", what, why)
        self._skipped_seen = new

    def _reload(self) -> None:
        if not self.settings.config_file:
            log.info("SIGHUP: no config file to read again; resyncing")
            return
        try:
            file_values = settings_mod.load_file(self.settings.config_file)
            new = settings_mod.build(file_values, self.flag_values, config_file=self.settings.config_file)
        except settings_mod.SettingsError as exc:
            log.error("SIGHUP: config not reloaded, keeping the running settings: %s", exc)
            return
        log.info("SIGHUP: config reloaded from %s; resyncing", self.settings.config_file)
        self.source.stop()
        self.dyups_transport.close()
        self.settings = new
        self.source = self.syncer = None  # type: ignore[assignment]  # both rebuilt by _build() below
        memory.settle(freeze=False)  # the old cache (frozen by its last full read) is freed before the new read
        self._build()
