# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The event loop: Consul events in, coalesced, synced; retries, drift repair and signals.

Threads: two Consul long polls (consul_source.py) put events on a queue; this loop takes them,
applies an event that comes after a quiet spell at once (leading edge), and batches what comes within
``quiescence_min`` of another until Consul has been quiet for ``quiescence_min`` (but never longer
than ``quiescence_max`` from the first event), then syncs once. The loop also wakes for retries of
failed pushes (capped exponential backoff with jitter), for the periodic drift repair and the
periodic full Consul read, and for signals:

- SIGTERM / SIGINT: finish the current step, stop the long polls, exit 0;
- SIGHUP: read the config file again and resync everything (a reload that fails keeps the running
  watcher as it was: its settings, its connections, its state);
- SIGUSR1: release a change held by the removal guard.

Fail-static: when Consul cannot be read, nothing is changed; when dyups cannot be reached, the file
keeps the desired state and pushes are retried. The loop never exits on such errors.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import threading
import time
from typing import Any, Callable, Mapping

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_options import secret_headers
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import DyupsError
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as settings_mod
from ansible_collections.swallowkeeper.dyups.plugins.watcher import dict_fit, fleet, memory, nginx_processes
from ansible_collections.swallowkeeper.dyups.plugins.watcher.backoff import Backoff
from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import (
    HEALTH_POLLS, ConsulSource, consul_error_kind)
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics, StampedQueue, start_listeners
from ansible_collections.swallowkeeper.dyups.plugins.watcher.pushes import dyups_error_kind
from ansible_collections.swallowkeeper.dyups.plugins.watcher.sync import Syncer
from ansible_collections.swallowkeeper.dyups.plugins.watcher.systemd_notify import Supervision
from ansible_collections.swallowkeeper.dyups.plugins.watcher.transport import KeepAliveTransport

log = logging.getLogger("swallowkeeper.watcher")
# The leading edge's grace: the other health poll's answer to the same change (both state polls wake on a
# flip; measured 2.0-2.4 ms each at 5 000 services) joins the batch instead of opening the quiescence window.
LEADING_GRACE = 0.005
HEALTH_KINDS = frozenset(kind for kind, _state in HEALTH_POLLS)
CONSUL_EVENT_KINDS = HEALTH_KINDS | {"catalog"}   # counted in consul_events


def _one_health_poll(batch: list[tuple[str, Any]]) -> bool:
    """True when ``batch`` holds an answer of one health poll and none of the other (see LEADING_GRACE)."""
    return len(HEALTH_KINDS & {event[0] for event in batch}) == 1


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
        self.stop_signalled = False      # set by the signal handlers, which take no lock (install_signals)
        self.release_signalled = False
        self.reload_requested = False
        self.nginx_changed = threading.Event()  # set by the nginx process watch (nginx_processes.py)
        self.nginx_new_master = threading.Event()  # ... when the master itself is new (Generation.new_master)
        self._last_event_at: float | None = None   # when the last event of the last batch was read (_collect)
        self._skipped_seen: set[tuple[str, str]] = set()
        self._skipped_list: list[dict[str, Any]] | None = None  # the source's skip list last logged (replaced when it changes)
        self._syncer_skipped = False
        self._build()
        self.supervision = Supervision(lambda: self.metrics.loop_heartbeat, self._polls_alive,
                                       lambda: self.events.put(("wake", None)))

    def _build(self) -> None:
        """Make the connections, the Syncer and the Consul source for ``self.settings``; raises (a token
        file that cannot be read, an upstream file that does not parse) and then changes nothing."""
        settings = self.settings
        source = (fleet.FleetSource(settings, self.metrics) if settings.fleet_share
                  else ConsulSource(settings, self.metrics))
        dyups_transport = KeepAliveTransport(secret_headers(settings.dyups_secret_file))
        # the Lua flavor's shared dict: the free space each answer tells is kept (dict_fit.py)
        dict_space = dict_fit.FreeSpace()
        # with nginx_pid_file: the workers that answer the pushes are kept (nginx_processes.AnsweringWorkers)
        watched = dict_space.watching(dyups_transport)
        answered = nginx_processes.AnsweringWorkers(watched) if settings.nginx_pid_file else None
        client = DyupsClient(settings.dyups_url, answered or watched, timeout=settings.dyups_timeout)
        try:
            syncer = Syncer(settings, client, self.metrics, clock=self.clock, dry_run=self.dry_run,
                            dict_space=dict_space)
        except BaseException:
            dyups_transport.close()
            raise
        self.source, self.dyups_transport, self.client, self.syncer = source, dyups_transport, client, syncer
        self.source.after_full_read = memory.settle  # the large cache frozen out of gc scans, pages trimmed
        self.retry = Backoff(settings.retry_initial, settings.retry_max)
        self.consul_retry = Backoff(settings.retry_initial, settings.retry_max)
        self.nginx = (nginx_processes.NginxProcesses(settings, self._on_new_nginx, self.metrics, answered,
                                                     self._on_stray_answers)
                      if settings.nginx_pid_file else None)
        if self.nginx is not None:  # a zone-paced push waits until every worker has read what was sent (zone_fit.py)
            syncer.pushes.pacer.drain = self.nginx.reader.read_everywhere

    def _on_new_nginx(self, generation: nginx_processes.Generation) -> None:
        if generation.new_master:
            self.nginx_new_master.set()   # it read the upstream file, which names nothing deleted before
        self.metrics.count("nginx_generations")
        self.nginx_changed.set()
        self.events.put(("wake", None))

    def _on_stray_answers(self, workers: frozenset[int]) -> None:
        """Workers that answered a push no longer take connections (a reload's old workers): every worker
        is checked at once, as after a new generation."""
        self.metrics.count("stray_answers", len(workers))
        self.nginx_changed.set()
        self.events.put(("wake", None))

    def _repair(self) -> None:
        """The drift check: every worker read when nginx's processes are watched (nginx_processes.py)."""
        new_workers = self.nginx_changed.is_set()
        self.nginx_changed.clear()
        if self.nginx_new_master.is_set():
            self.nginx_new_master.clear()
            self.syncer.pushes.forget_deleted()
        if self.nginx is None:
            self.syncer.repair()
        else:
            self.nginx.repair(self.syncer, new_workers)

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
        """The handlers only set a flag. A handler runs in the main thread between two bytecodes, maybe
        while that thread holds the event queue's lock inside ``get``: a handler that put a wake-up on
        the queue (as before) deadlocked the watcher for good, SIGTERM and SIGHUP ignored. Python writes
        each signal's number to a pipe (``signal.set_wakeup_fd``); a thread reading it wakes the loop."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(write_fd, False)
        signal.set_wakeup_fd(write_fd)
        threading.Thread(target=self._wake_on_signals, args=(read_fd,), name="signal-wake", daemon=True).start()
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_reload_signal)
        signal.signal(signal.SIGUSR1, self._on_release_signal)

    def _on_stop_signal(self, *_args: Any) -> None:
        self.stop_signalled = True

    def _on_reload_signal(self, *_args: Any) -> None:
        self.reload_requested = True

    def _on_release_signal(self, *_args: Any) -> None:
        self.release_signalled = True

    def _wake_on_signals(self, read_fd: int) -> None:
        while True:
            try:
                if not os.read(read_fd, 64):
                    return
            except OSError:
                return
            self.events.put(("wake", None))

    def _stop_wanted(self) -> bool:
        return self.stop_signalled or self.stopping.is_set()

    def run(self) -> int:
        try:
            listeners = start_listeners(self.settings, self.metrics, self.request_release)
        except OSError as exc:  # the message names the setting and the address
            log.error("cannot start: %s", exc)
            return 2
        self.supervision.start()
        if self.nginx is not None:
            self.nginx.start()
        log.info("watching Consul at %s; upstream file %s; dyups at %s%s", self.settings.consul_url,
                 self.settings.upstream_file, self.settings.dyups_url, " (dry run)" if self.dry_run else "")
        try:
            self._loop()
        finally:
            self.syncer.save_state(force=True)   # the hold's confirmed seconds, to the second
            self.source.stop()
            self.dyups_transport.close()
            if self.nginx is not None:
                self.nginx.stop()
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
        while not self._stop_wanted():
            self.metrics.heartbeat()
            now = self.clock()
            if self.release_signalled:   # SIGUSR1
                self.release_signalled = False
                self.request_release()
            if self.reload_requested:
                self.reload_requested = False
                if self._reload():
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
                if not self._sync():   # the read that had to confirm a hold failed: Consul read again soon
                    next_refresh = min(next_refresh, self.clock() + self.consul_retry.next())
            self.supervision.ready()  # once: after the first full read and sync, or their failure
            if self.syncer.has_pending and (next_retry is None or now >= next_retry):
                if next_retry is not None:
                    self.syncer.retry()
                next_retry = None if not self.syncer.has_pending else now + self.retry.next()
                if next_retry is None:
                    self.retry.reset()
            if (now >= next_drift or self.nginx_changed.is_set()) and not self.dry_run:
                next_drift = now + self.settings.drift_interval
                try:
                    self._repair()
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
        """Events that arrived within ``timeout``, coalesced by the quiescence window.

        Leading edge: an event that comes after ``quiescence_min`` of quiet (a lone health flip) is
        taken at once, with what is already queued beside it; when that is one health poll's answer
        without the other's, the other's is waited for up to LEADING_GRACE (a flip wakes both health
        polls, whose answers come a millisecond or two apart: without the grace the second one opened
        the window and the flip waited ``quiescence_min``; nothing else extends a leading batch, so a
        burst of registrations is batched as before). An event that
        comes within ``quiescence_min`` of the one before it (a burst, or what arrived while the loop
        applied the last batch) opens the window as before: further events are taken until none has
        arrived for ``quiescence_min``, never beyond ``quiescence_max`` from the first. The times are
        those at which the long polls read the answers (StampedQueue), not when the loop took them: a
        batch that waited in the queue during a long sync has been quiet for that long already."""
        try:
            first = self.events.get(timeout=timeout)
        except queue.Empty:
            return []
        if first[0] == "wake":
            return []
        batch = [first]
        quiet, longest = self.settings.quiescence_min, self.settings.quiescence_max
        first_at = last_at = self.events.taken_at or self.events.clock()
        leading = self._last_event_at is None or first_at - self._last_event_at >= quiet
        deadline = first_at + longest
        while not self._stop_wanted():
            try:
                if leading:   # what is there, and the other health poll's answer within the grace
                    remaining = first_at + LEADING_GRACE - self.events.clock()
                    if remaining > 0 and _one_health_poll(batch):
                        event = self.events.get(timeout=remaining)
                    else:
                        event = self.events.get_nowait()
                else:
                    remaining = min(last_at + quiet, deadline) - self.events.clock()
                    if remaining <= 0:
                        break
                    event = self.events.get(timeout=remaining)
            except queue.Empty:
                break
            batch.append(event)
            if event[0] != "wake":
                last_at = self.events.taken_at or last_at
        self._last_event_at = last_at
        self.metrics.count("consul_events", sum(1 for event in batch if event[0] in CONSUL_EVENT_KINDS))
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

    def _sync(self) -> bool:
        """Sync what changed since the last sync: the source's merged mapping is kept current as
        events are folded in, and tells which upstream names changed (consul_source.take_changes).
        False when a hold would have run out but Consul could not be read to confirm it."""
        started = self.clock()
        confirmed = self.source.failure is None   # Consul answers: a held change's time counts
        read_failed = False
        if confirmed and self.syncer.hold.runs_out_at(self.clock()):
            # a hold runs out only on a fresh answer: read Consul again first (a failure: it waits)
            confirmed = self._refresh()
            read_failed = not confirmed
        upstreams, empty, changed = self.source.take_changes()
        self.metrics.latency.taken(changed)
        report = self.syncer.sync(upstreams, empty, changed=changed, consul_confirmed=confirmed)
        self.metrics.latency.settle(None if self.syncer.unwritten
                                    else self.syncer.pushes.pending | self.syncer.pushes.gone)
        skipped = self.source.skipped()
        if skipped is not self._skipped_list or self.syncer.skipped or self._syncer_skipped:
            self._log_skipped(skipped + self.syncer.skipped)
            self._skipped_list, self._syncer_skipped = skipped, bool(self.syncer.skipped)
        log.debug("sync: %.1f ms for %s changed upstream(s), %d posted, %d deleted", (self.clock() - started) * 1000,
                  "all" if changed is None else len(changed), len(report.posted), len(report.deleted))
        return not read_failed

    def _log_skipped(self, skipped: list[dict[str, Any]]) -> None:
        self.metrics.set_status(skipped=skipped[:100])
        self.metrics.set(skipped_instances=len(skipped))
        new = {(item["what"], item["why"]) for item in skipped}
        for what, why in sorted(new - self._skipped_seen):
            log.warning("skipped %s: %s", what, why)
        self._skipped_seen = new

    def _reload(self) -> bool:
        """SIGHUP: the config file read again and everything rebuilt from it. What the Syncer owns
        beyond the file (pending deletes, a hold) is saved first and read back by the new one. A reload
        that fails (bad settings, a token file that is empty or cannot be read, an upstream file that
        does not parse) keeps the running watcher as it was, logs why, counts a ``config_reload``
        error and sets ``config_reload_success`` 0; the next SIGHUP tries again."""
        if not self.settings.config_file:
            log.info("SIGHUP: no config file to read again; resyncing")
            return True
        old = (self.settings, self.source, self.dyups_transport, self.client, self.syncer, self.nginx)
        try:
            file_values = settings_mod.load_file(self.settings.config_file)
            self.settings = settings_mod.build(file_values, self.flag_values, config_file=self.settings.config_file)
            self.syncer.save_state(force=True)
            self._build()
        except Exception as exc:  # whatever it is, the running watcher must go on as it was
            self.settings = old[0]
            self.metrics.error("config_reload")
            self.metrics.set(config_reload_success=0)
            log.error("SIGHUP: config NOT reloaded, the watcher goes on with the settings it had (fix the "
                      "cause, then send SIGHUP again): %s", exc)
            return False
        self.metrics.set(config_reload_success=1)
        log.info("SIGHUP: config reloaded from %s; resyncing", self.settings.config_file)
        if isinstance(self.source, fleet.FleetSource) and isinstance(old[1], fleet.FleetSource):
            self.source.adopt_session(old[1])   # the publisher stays the publisher (its stop ends no session)
        old[1].stop()
        old[2].close()
        if old[5] is not None:
            old[5].stop()
        if self.nginx is not None:
            self.nginx.start()
        memory.settle(freeze=False)  # the old cache (frozen by its last full read) is freed
        return True
