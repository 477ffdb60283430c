# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Desired upstreams -> the upstream file first -> the dyups interface, for changed upstreams only.

The Syncer drives three state machines, each in its own file and tested alone: host-name resolution
(host_names.py), the removal hold (safety.py's RemovalHold, with the rest of the guard) and push
bookkeeping (pushes.py); what it owns beyond the file is kept in owned_state.py.

The Syncer owns exactly the upstreams in its upstream file (it reads them at start), plus those it
removed from the file whose DELETE is not confirmed yet (kept beside the file with a hold in
progress: owned_state.py, so a restart or a SIGHUP loses neither). Upstreams that nginx.conf
defines, or that anyone else added through the interface, are never posted or deleted.

Order of every sync:

1. desired = the Consul mapping (directives already attached by the mapping, which builds every
   upstream with ``build_upstream``), servers whose host name does not resolve left out, after the
   zero-instance policy and the mass-removal hold (safety.py). A sync is told which upstream names
   changed since the last one (``changed``): only those are examined again (host names: every time);
2. if it differs from what is applied: the file is replaced atomically (and validated, when a
   command is configured), written whole from blocks rendered once per upstream, with one fsync (of
   its data, before the rename; not of the directory: ``_upstream_file.replace_file`` says why). If
   that fails, nothing is sent: the interface keeps the last good state, the file stays whole, and
   the sync is retried;
3. POST every upstream whose body changed (the whole upstream: servers and directives), DELETE every
   owned upstream that disappeared. A failed request leaves the upstream pending; it is retried.

``repair`` compares ``/detail`` with what is applied and pushes what differs: a POST lost in an
nginx reload, or an nginx restart that left only the file's state; and writes the upstream file
again when the one on disk is not what is applied (removed or edited behind the watcher's back).

One writer at a time (_upstream_file.py): the Syncer claims its file for its life (a module run then
refuses it, naming the watcher) and holds the writer lock across each sync, retry and repair. A file
changed under it (by hand, or by a module run while it was stopped) is read again before its next
sync, which then examines every name.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import same_names
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._plan import servers_equal
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._resolve import Resolve
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._validate_config import ConfigCheckFailed, check_config
from ansible_collections.swallowkeeper.dyups.plugins.watcher import check_budget, dict_fit, owned_state, safety, zone_fit
from ansible_collections.swallowkeeper.dyups.plugins.watcher.host_names import HostNames
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from ansible_collections.swallowkeeper.dyups.plugins.watcher.pushes import Pushes, SyncReport, describe_change
from ansible_collections.swallowkeeper.dyups.plugins.watcher.settings import Settings

log = logging.getLogger("swallowkeeper.watcher")


class Syncer:
    def __init__(self, settings: Settings, client: DyupsClient, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic, dry_run: bool = False,
                 dict_space: Optional[dict_fit.FreeSpace] = None) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.clock = clock
        self.dry_run = dry_run
        self._claim = None if dry_run else _upstream_file.WatcherClaim.claim(settings.upstream_file)
        self._lock = _upstream_file.WriterLock(settings.upstream_file)
        with self._writing():
            for leftover in _upstream_file.remove_stale_temp_files(settings.upstream_file):
                log.warning("removed %s, left by a writer that stopped mid-write", leftover)
            self.applied = _upstream_file.read(settings.upstream_file)
            self._identity = _upstream_file.file_identity(settings.upstream_file)
        self._server_count = sum(len(upstream.servers) for upstream in self.applied.values())
        self._file: Optional[_upstream_file.RenderedFile] = None  # the file's text as blocks per upstream (_upstream_file.RenderedFile)
        self._held_names: Set[str] = set()
        self._refused_names: Set[str] = set()  # changes over the check-peer budget, examined at every sync
        self._incomplete = False  # the last sync failed and what it left is not all sent yet
        self.unwritten: Optional[Tuple[Mapping[str, Upstream], Iterable[str]]] = None  # (upstreams, empty) of a sync whose file write failed; retried
        self.hold = safety.RemovalHold(safety.GuardSettings(
            share=settings.removal_guard_share, minimum=settings.removal_guard_min,
            hold_seconds=settings.removal_hold_seconds, window=settings.removal_guard_window), self._server_count)
        # what this watcher owns beyond the file (owned_state.py): DELETEs not confirmed yet, a hold
        owned = owned_state.load(settings.upstream_file, clock()) if not dry_run else owned_state.OwnedState()
        # Tengine's dyups_shm_zone_size in bytes (0: not checked); a body that cannot fit is never sent, and
        # none while the changes sent before it may leave it no room (zone_fit.py)
        self.zone_bytes = zone_fit.parse_size(settings.dyups_shm_zone_size) if settings.dyups_shm_zone_size else 0
        # owned, out of the file, DELETE pending
        self.pushes = Pushes(client, metrics, self.applied, set(owned.pending_deletes) - set(self.applied),
                             zone_fit.Pacer(self.zone_bytes, metrics))
        # the Lua flavor's shared dict: its free bytes as the interface said last (dict_fit.py; the daemon
        # passes the one its transport keeps from every answer)
        self.dict_space = dict_space or dict_fit.FreeSpace()
        if owned.hold is not None:
            self.hold.resume(owned.hold.confirmed, owned.hold.base, owned.window, clock())
            log.warning("a removal hold from before the restart goes on (Consul confirmed it for %.0fs so far)",
                        owned.hold.confirmed)
        if self.pushes.gone:
            log.warning("DELETE still pending from before the restart for %d upstream(s): %s",
                        len(self.pushes.gone), ", ".join(sorted(self.pushes.gone)[:10]))
        self._saved_state: Optional[tuple] = self._state_key()
        self._consul_confirmed = True  # the last sync's: Consul answered
        self.skipped: List[dict] = []
        self.hosts = HostNames(settings.hosts_file, settings.resolve_timeout, policy=settings.policy)  # servers written as host names
        self.resolve: Optional[Resolve] = None   # the drift check's resolver
        self._update_gauges()

    # -- desired state ---------------------------------------------------------------------------
    def desired_from(self, upstreams: Mapping[str, Upstream], empty: Iterable[str] = (),
                     changed: Optional[Iterable[str]] = None) -> Tuple[Dict[str, Optional[Upstream]], Set[str]]:
        """``({name: Upstream or None}, names)``: what the names that may change (``changed`` since the
        last sync, host names, and what a hold keeps; every name when ``changed`` is None) should hold
        after host resolution, the zero-instance policy and the removal guard. None: no upstream."""
        resolved, empty = self.hosts.resolvable(upstreams, empty, changed)
        self.skipped = self.hosts.skipped()
        if changed is None:
            names = set(resolved) | empty | set(self.applied)
        else:
            names = set(changed) | self.hosts.names | self._held_names | self._refused_names
        wanted = {name: resolved[name] for name in names if name in resolved}
        applied = {name: self.applied[name] for name in names if name in self.applied}
        wanted = safety.apply_zero_instance_policy(wanted, empty.intersection(names), applied,
                                                   self.settings.zero_instances)
        desired = self._guard(applied, wanted)
        limited, refused, self._refused_names = check_budget.limit(
            {name: desired.get(name) for name in names}, self.applied, self.settings.check_peer_budget)
        if refused:
            self.skipped.extend(refused)
            self.metrics.count("check_budget_refusals", len(refused))
        limited, too_big, unfit = zone_fit.limit(limited, self.applied, self.zone_bytes)
        if too_big:
            self.skipped.extend(too_big)
            self.metrics.count("zone_refusals", len(too_big))
            self._refused_names |= unfit
        limited, too_big, unfit = dict_fit.limit(limited, self.applied, self.dict_space.bytes)
        if too_big:
            self.skipped.extend(too_big)
            self.metrics.count("dict_refusals", len(too_big))
            self._refused_names |= unfit
        return limited, names

    def _guard(self, applied: Dict[str, Upstream], desired: Dict[str, Upstream]) -> Dict[str, Upstream]:
        """``desired`` (for the names of ``applied`` that may change), with the removals held when they
        take away too large a share of all the servers applied (safety.RemovalHold)."""
        now = self.clock()
        result = self.hold.evaluate(applied, desired, self._server_count, now, confirmed=self._consul_confirmed)
        removal = self.hold.removal if self.hold.active else None
        if removal is None or self.hold.since is None:
            self._held_names = set()
            self.metrics.set(held_changes=0, held_removals=0)
            self.metrics.set_status(held=None)
            return result
        self.metrics.set(held_changes=1, held_removals=removal.removed)
        self.metrics.set_status(held={"removed": removal.removed, "removed_earlier": removal.earlier,
                                      "total": removal.total, "upstreams": removal.by_upstream,
                                      "held_for_seconds": round(now - self.hold.since, 1),
                                      "confirmed_seconds": round(self.hold.confirmed, 1)})
        self._held_names = set(removal.by_upstream)   # examined again at every sync while held
        return result

    @property
    def hold_since(self) -> Optional[float]:
        """When this process began holding a change (None: nothing held)."""
        return self.hold.since if self.hold.active else None

    def release(self) -> str:
        if self.hold.release():
            return "release requested: a held change is applied at the next sync"
        return "nothing is held"

    # -- what the watcher owns beyond the file (owned_state.py) --------------------------------------
    def _state_key(self, gone: Optional[Iterable[str]] = None) -> tuple:
        hold = self.hold
        return (frozenset(self.pushes.gone if gone is None else gone), hold.base,
                int(hold.confirmed // 5) if hold.active else None, hold.window.totals if hold.active else None)

    def save_state(self, gone: Optional[Iterable[str]] = None, force: bool = False) -> None:
        """Write the pending deletes (``gone``, or those known) and the hold, when they changed (the
        hold's confirmed seconds: by 5 s steps unless ``force``). A failure is logged: the state
        then is what the file had, which never deletes or releases more."""
        if self.dry_run:
            return
        key = self._state_key(gone)
        if key == self._saved_state and not (force and self.hold.active):
            return
        hold = self.hold
        state = owned_state.OwnedState(
            pending_deletes=frozenset(self.pushes.gone if gone is None else gone),
            hold=owned_state.HoldState(confirmed=hold.confirmed, base=hold.base) if hold.base is not None else None,
            window=hold.window.totals if hold.active else ())
        try:
            owned_state.save(self.settings.upstream_file, owned_state.render(state, self.clock()))
        except OSError as exc:
            self.metrics.error("file_write")
            log.error("cannot write %s (pending deletes and the hold may be forgotten at a restart): %s",
                      owned_state.path_for(self.settings.upstream_file), exc.strerror or exc)
            return
        self._saved_state = key

    # -- one writer at a time -----------------------------------------------------------------
    def _writing(self) -> "contextlib.AbstractContextManager[object]":
        return contextlib.nullcontext() if self.dry_run else self._lock

    def _picked_up(self) -> bool:
        """Read the file again when it changed since this Syncer last read or wrote it; True if it did."""
        identity = _upstream_file.file_identity(self.settings.upstream_file)
        if identity == self._identity:
            return False
        self._identity = identity
        try:
            found = _upstream_file.read(self.settings.upstream_file)
        except (OSError, ValidationError) as exc:
            log.error("%s changed under the watcher and cannot be read (%s); it is written whole at the next change",
                      self.settings.upstream_file, exc)
            return False
        log.warning("%s changed under the watcher: read again (%d upstream(s)); every upstream is compared",
                    self.settings.upstream_file, len(found))
        self._apply({**{name: None for name in self.applied if name not in found}, **found})
        self._file = None
        return True

    # -- applying --------------------------------------------------------------------------------
    def sync(self, upstreams: Mapping[str, Upstream], empty: Iterable[str] = (),
             changed: Optional[Iterable[str]] = None, consul_confirmed: bool = True) -> SyncReport:
        """The sync below under the writer lock, after reading again a file changed under the watcher."""
        with self._writing():
            return self._sync(upstreams, empty, None if self._picked_up() else changed, consul_confirmed)

    def _sync(self, upstreams: Mapping[str, Upstream], empty: Iterable[str] = (),
              changed: Optional[Iterable[str]] = None, consul_confirmed: bool = True) -> SyncReport:
        """Bring file and interface to the desired state for ``upstreams`` ({name: Upstream}, with their
        directives) and ``empty`` (names whose instances all fail). ``changed``: the names whose entry
        may differ from the previous call's (None: any); the work done is for those names, except
        writing the file, which is written whole from blocks rendered once per upstream. When the
        file cannot be written, nothing is sent and the sync is remembered for retry().
        ``consul_confirmed``: Consul answers (its last request succeeded): only then does a held change's
        time count, and only then can it run out."""
        started = self.clock()
        report = SyncReport()
        self.unwritten = None
        self._consul_confirmed = consul_confirmed
        hold_before = self.hold.snapshot()
        desired, names = self.desired_from(upstreams, empty, changed)
        report.held = self.hold_since
        changes: Dict[str, Optional[Upstream]] = {}
        for name in sorted(names):
            upstream, before = desired[name], self.applied.get(name)
            if upstream is None:
                if before is not None:
                    changes[name] = None
            elif before is not upstream and before != upstream:
                changes[name] = upstream
        changed_names = [name for name, upstream in changes.items() if upstream is not None]
        removed = [name for name, upstream in changes.items() if upstream is None]
        if changes:
            if self.dry_run:
                report.planned = [f"POST {name}: {describe_change(self.applied.get(name), desired[name])}"
                                  for name in changed_names] + [f"DELETE {name}" for name in removed]
                for line in report.planned:
                    log.info("dry run: would %s", line)
                self._apply(changes)
                self._finish(report, started)
                return report
            try:
                if removed:   # the pending deletes are on disk before the file stops naming them
                    self.save_state(self.pushes.gone | set(removed))
                if self._file is None:
                    self._file = _upstream_file.RenderedFile(self.applied.values())
                self._file.update(changes)
                _upstream_file.replace_file(self.settings.upstream_file, self._file.text(),
                                            validate=self.settings.validate_command, check=self._check_config(),
                                            sync_directory=False)   # one fsync per batch (replace_file says why)
                self._identity = _upstream_file.file_identity(self.settings.upstream_file)
                report.file_changed = True
            except (_upstream_file.ValidateCommandFailed, ConfigCheckFailed) as exc:
                return self._file_failed(report, started, "file_validate", str(exc), upstreams, empty, hold_before)
            except OSError as exc:
                return self._file_failed(report, started, "file_write",
                                         f"cannot write {self.settings.upstream_file}: {exc.strerror or exc}",
                                         upstreams, empty, hold_before)
            except ValidationError as exc:
                return self._file_failed(report, started, "file_validate", str(exc), upstreams, empty, hold_before)
            self._apply(changes)
            self.pushes.changed(changed_names, removed)
        self.save_state()
        self.push(report)
        self._finish(report, started)
        return report

    def _check_config(self) -> Optional[Callable[[str], None]]:
        """With ``validate_config``: nginx -t of the whole configuration, the candidate file in place."""
        settings = self.settings
        if not settings.validate_config:
            return None
        return lambda candidate: check_config(settings.nginx_binary, settings.nginx_conf, settings.upstream_file,
                                              candidate)

    def _apply(self, changes: Mapping[str, Optional[Upstream]]) -> None:
        """Make ``changes`` ({name: Upstream or None}) the applied state, keeping the server count and
        the removal guard's window."""
        for name, upstream in changes.items():
            before = self.applied.pop(name, None)
            self._server_count -= len(before.servers) if before is not None else 0
            if upstream is not None:
                self.applied[name] = upstream
                self._server_count += len(upstream.servers)
        self.hold.applied(self._server_count, self.clock())

    def _file_failed(self, report: SyncReport, started: float, kind: str, message: str,
                     upstreams: Mapping[str, Upstream], empty: Iterable[str], hold_before: tuple) -> SyncReport:
        self.unwritten = (upstreams, empty)
        if self.hold.releasing:   # a release that was not applied stays to be applied (not a new hold)
            self.hold.restore(hold_before)
        self._file = None   # rendered again from what is applied at the next write
        self.hosts.forget()
        report.file_error = message
        self.metrics.error(kind)
        log.error("upstream file not replaced, nothing sent to dyups (the last good state keeps serving): %s", message)
        self._finish(report, started)
        return report

    def retry(self) -> SyncReport:
        """The retry step: a sync whose file write failed is tried again (a full disk freed, a
        validation fixed), else the pending POSTs and DELETEs are sent again."""
        if self.unwritten is not None:
            return self.sync(*self.unwritten, consul_confirmed=self._consul_confirmed)
        with self._writing():
            report = self.push()
        self._update_gauges()
        return report

    def push(self, report: Optional[SyncReport] = None) -> SyncReport:
        """POST pending upstreams, DELETE gone ones; failures stay pending for the next retry."""
        report = report or SyncReport()
        if self.dry_run:
            return report
        self.pushes.send(self.applied, report)
        if report.deleted:
            self.save_state()
        if self._incomplete and report.ok and not self.has_pending:
            # what a failed sync left pending is sent now (by the retry or by the drift repair, whichever
            # came first): that sync is complete, say so (else last_sync_success stays 0 until the next
            # Consul change, as after a start where nginx came up after the watcher)
            self._record_success()
        return report

    def repair(self, details: Optional[List[Mapping[str, List[Server]]]] = None) -> SyncReport:
        """Compare ``/detail`` (``details``: the answers of several workers, see nginx_processes.py; else
        one read) with the applied state; push what differs in any; write the file again when it differs
        from what is applied. Returns the names repaired. The interface's ``Web`` is the applied ``web``
        (names compared as the data plane compares them)."""
        readings = [same_names(detail, self.applied)
                    for detail in (details if details is not None else [self.client.detail()])]
        self.resolve = self.hosts.resolver({server.host for upstream in self.applied.values()
                                            for server in upstream.servers if server.kind == "hostname"})
        drifted = []
        for name, upstream in self.applied.items():
            if name in self.pushes.pending:
                continue
            if any(not servers_equal(upstream, detail.get(name), resolve=self.resolve) for detail in readings):
                drifted.append(name)
        if drifted:
            log.warning("dyups differs from the upstream file for %d upstream(s)%s; pushing them again",
                        len(drifted), ": " + ", ".join(drifted[:10]))
        self.pushes.pending.update(drifted)
        self.metrics.count("repairs", len(drifted))
        with self._writing():
            self._repair_file()
            report = self.push()
        self._update_gauges()
        return report

    def push_all(self) -> SyncReport:
        """POST every applied upstream again (nginx started workers whose state is unknown)."""
        self.pushes.pending.update(self.applied)
        report = self.push()
        self._update_gauges()
        return report

    @property
    def deleted_here(self) -> Set[str]:
        """Upstreams this watcher deleted (nginx_processes.py deletes them again on a respawned worker that
        holds them; Pushes.deleted says when a name leaves the set)."""
        return self.pushes.deleted

    def _repair_file(self) -> None:
        """Write the upstream file again when what is on disk is not what is applied (removed, edited,
        truncated): a reload or a restart of nginx loads that file. Not while a failed write waits for
        its retry (that retry writes it)."""
        if self.dry_run or self.unwritten is not None:
            return
        if self._file is None:
            self._file = _upstream_file.RenderedFile(self.applied.values())
        wanted = self._file.text()
        try:
            with open(self.settings.upstream_file, encoding="utf-8") as handle:
                on_disk: Optional[str] = handle.read()
        except FileNotFoundError:
            on_disk = None
        except (OSError, UnicodeDecodeError):
            on_disk = ""
        if on_disk == wanted:
            return
        log.warning("the upstream file %s %s; writing it again", self.settings.upstream_file,
                    "is missing" if on_disk is None else "differs from what the watcher applied")
        try:
            _upstream_file.replace_file(self.settings.upstream_file, wanted, validate=self.settings.validate_command,
                                        check=self._check_config(), sync_directory=False)
            self._identity = _upstream_file.file_identity(self.settings.upstream_file)
        except (OSError, _upstream_file.ValidateCommandFailed, ConfigCheckFailed, ValidationError) as exc:
            self.metrics.error("file_validate" if not isinstance(exc, OSError) else "file_write")
            log.error("upstream file not written again, retried at the next drift check: %s",
                      getattr(exc, "strerror", None) or exc)
            return
        self.metrics.count("repairs")

    def _finish(self, report: SyncReport, started: float) -> None:
        duration = self.clock() - started
        self.metrics.count("syncs")
        self.metrics.set(last_sync_duration_seconds=round(duration, 6))
        if report.ok:
            self._record_success()
        else:
            self._incomplete = True
            self.metrics.set(last_sync_success=0)
        self._update_gauges()

    def _record_success(self) -> None:
        """A sync completed without error (at once, or through a later push of what it left pending)."""
        self._incomplete = False
        self.metrics.set(last_sync_success=1, last_sync_timestamp_seconds=time.time())

    def _update_gauges(self) -> None:
        self.metrics.set(upstreams=len(self.applied), servers=self._server_count,
                         pending_upstreams=len(self.pushes))

    @property
    def has_pending(self) -> bool:
        return bool(self.pushes) or self.unwritten is not None
