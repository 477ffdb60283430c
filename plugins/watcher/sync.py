# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Desired upstreams -> the upstream file first -> the dyups interface, for changed upstreams only.

The Syncer owns exactly the upstreams in its upstream file (it reads them at start). Upstreams that
nginx.conf defines, or that anyone else added through the interface, are never posted or deleted.

Order of every sync:

1. desired = the Consul mapping (directives already attached by the mapping, which builds every
   upstream with ``build_upstream``), servers whose host name does not resolve left out, after the
   zero-instance policy and the mass-removal hold (safety.py). A sync is told which upstream names
   changed since the last one (``changed``): only those are examined again (host names: every time);
2. if it differs from what is applied: the file is replaced atomically (and validated, when a
   command is configured), written whole from blocks rendered once per upstream. If that fails, nothing is sent: the interface keeps the last good state,
   the file stays whole, and the sync is retried;
3. POST every upstream whose body changed (the whole upstream: servers and directives), DELETE every
   owned upstream that disappeared. A failed request leaves the upstream pending; it is retried.

``repair`` compares ``/detail`` with what is applied and pushes what differs: a POST lost in an
nginx reload, or an nginx restart that left only the file's state.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Set, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    DyupsError, DyupsRejected, DyupsUnavailable, ValidationError)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._plan import servers_equal
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._resolve import Resolve, make_resolver
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import safety
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics
from ansible_collections.swallowkeeper.dyups.plugins.watcher.settings import Settings

log = logging.getLogger("swallowkeeper.watcher")


def dyups_error_kind(exc: BaseException) -> str:
    if isinstance(exc, DyupsUnavailable):
        return "dyups_unavailable"
    if isinstance(exc, DyupsRejected):
        return "dyups_rejected"
    return "dyups_protocol"


def describe_change(before: Optional[Upstream], after: Optional[Upstream]) -> str:
    """``+10.0.0.3:8080 -10.0.0.1:8080 ~10.0.0.2:8080(weight=3)``, for the one log line per change."""
    old = {server.address: server for server in (before.servers if before else ())}
    new = {server.address: server for server in (after.servers if after else ())}
    words = [f"+{address}" for address in sorted(set(new) - set(old))]
    words += [f"-{address}" for address in sorted(set(old) - set(new))]
    words += [f"~{new[a].spec()}" for a in sorted(set(old) & set(new)) if old[a] != new[a]]
    if before and after and before.directives != after.directives:
        words.append("directives: " + ("; ".join(after.directive_lines()) or "none"))
    return " ".join(words) or "unchanged servers"


@dataclass
class SyncReport:
    posted: List[str] = field(default_factory=list)
    deleted: List[str] = field(default_factory=list)
    failed: List[Tuple[str, DyupsError]] = field(default_factory=list)
    file_changed: bool = False
    file_error: Optional[str] = None
    held: Optional[float] = None
    planned: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.file_error


class Syncer:
    def __init__(self, settings: Settings, client: DyupsClient, metrics: Metrics,
                 clock: Callable[[], float] = time.monotonic, dry_run: bool = False) -> None:
        self.settings = settings
        self.client = client
        self.metrics = metrics
        self.clock = clock
        self.dry_run = dry_run
        for leftover in _upstream_file.remove_stale_temp_files(settings.upstream_file):
            log.warning("removed %s, left by a writer that stopped mid-write", leftover)
        self.applied = _upstream_file.read(settings.upstream_file)
        self._server_count = sum(len(upstream.servers) for upstream in self.applied.values())
        self._file: Optional[_upstream_file.RenderedFile] = None  # the file's text as blocks per upstream (_upstream_file.RenderedFile)
        self._held_names: Set[str] = set()
        self.pushed = dict(self.applied)
        self.pending: Set[str] = set()
        self.gone: Set[str] = set()
        self._incomplete = False  # the last sync failed and what it left is not all sent yet
        self.unwritten: Optional[Tuple[Mapping[str, Upstream], Iterable[str]]] = None  # (upstreams, empty) of a sync whose file write failed; retried
        self.deleted_here: Set[str] = set()
        self.hold_since: Optional[float] = None
        self.hold_total: Optional[int] = None  # servers applied when the hold began: the share is measured against it
        self.release_requested = False
        self.window = safety.RemovalWindow(settings.removal_guard_window, self._server_count)
        self._restart_window = False  # a released change is being applied: the window starts afresh after it
        self.skipped: List[dict] = []
        self._resolved: Optional[Dict[str, Upstream]] = None  # {name: Upstream} of the last sync's upstreams, host names resolved
        self._resolved_empty: Set[str] = set()
        self._hostnames: Dict[str, List[dict]] = {}  # name -> skip items: upstreams with host names, examined at every sync
        self.resolve: Optional[Resolve] = None
        self._update_gauges()

    # -- desired state ---------------------------------------------------------------------------
    def _resolve_one(self, name: str, upstream: Optional[Upstream], resolve: Resolve) -> None:
        """Servers written as host names that resolve here; the others are skipped (Tengine would answer
        500 to the whole POST). An upstream left without servers (or with backups only) counts as empty."""
        if self._resolved is None:  # its only caller, resolvable(), sets it first
            raise AssertionError("resolvable() sets _resolved first")
        self._resolved.pop(name, None)
        self._resolved_empty.discard(name)
        self._hostnames.pop(name, None)
        if upstream is None:
            return
        if all(server.kind != "hostname" for server in upstream.servers):
            self._resolved[name] = upstream
            return
        kept = [server for server in upstream.servers if server.kind != "hostname" or resolve(server.host)]
        self._hostnames[name] = [{"what": f"server {server.spec()} of upstream {name}",
                                  "why": f"the host name {server.host!r} does not resolve on this host"}
                                 for server in upstream.servers if server not in kept]
        if kept and not all(server.backup for server in kept):
            self._resolved[name] = replace(upstream, servers=tuple(kept))
        else:
            self._resolved_empty.add(name)

    def resolvable(self, upstreams: Mapping[str, Upstream], empty: Iterable[str],
                   changed: Optional[Iterable[str]] = None) -> Tuple[Dict[str, Upstream], Set[str]]:
        """({name: Upstream}, {empty names}) with host names resolved (see _resolve_one). ``changed``:
        the names that may differ from the last call's; None: all of them. Upstreams with host names
        are resolved again every time (DNS changes on its own)."""
        resolve = self.resolve = make_resolver(hosts_file=self.settings.hosts_file)  # fresh each sync
        if changed is None or self._resolved is None:
            self._resolved, self._resolved_empty, self._hostnames = {}, set(), {}
            names = set(upstreams)
        else:
            names = set(changed) | set(self._hostnames)
        for name in names:
            self._resolve_one(name, upstreams.get(name), resolve)
        for items in self._hostnames.values():
            self.skipped.extend(items)
        return self._resolved, self._resolved_empty | set(empty)

    def desired_from(self, upstreams: Mapping[str, Upstream], empty: Iterable[str] = (),
                     changed: Optional[Iterable[str]] = None) -> Tuple[Dict[str, Optional[Upstream]], Set[str]]:
        """``({name: Upstream or None}, names)``: what the names that may change (``changed`` since the
        last sync, host names, and what a hold keeps; every name when ``changed`` is None) should hold
        after host resolution, the zero-instance policy and the removal guard. None: no upstream."""
        self.skipped = []
        resolved, empty = self.resolvable(upstreams, empty, changed)
        if changed is None:
            names = set(resolved) | empty | set(self.applied)
        else:
            names = set(changed) | set(self._hostnames) | self._held_names
        wanted = {name: resolved[name] for name in names if name in resolved}
        applied = {name: self.applied[name] for name in names if name in self.applied}
        wanted = safety.apply_zero_instance_policy(wanted, empty.intersection(names), applied,
                                                   self.settings.zero_instances)
        desired = self._guard(applied, wanted)
        return {name: desired.get(name) for name in names}, names

    def _guard(self, applied: Dict[str, Upstream], desired: Dict[str, Upstream]) -> Dict[str, Upstream]:
        """``desired`` (for the names of ``applied`` that may change), with the removals held when they
        take away too large a share of all the servers applied (see safety.py)."""
        now = self.clock()
        removal = self.window.widen(replace(safety.removals(applied, desired), total=self._server_count), now)
        if self.hold_since is not None and self.hold_total is not None and removal.total > self.hold_total:
            # servers added beside a held removal do not make it smaller: measured against the hold's start
            removal = replace(removal, total=self.hold_total)
        self._held_names = set()
        self._restart_window = False
        if not safety.exceeds_guard(removal, self.settings.removal_guard_share, self.settings.removal_guard_min):
            if self.hold_since is not None:
                log.warning("removal hold cleared: the change no longer removes more than %.0f%% of servers",
                            self.settings.removal_guard_share * 100)
            self._end_hold()
            return desired
        if self.hold_since is None:
            self.hold_since = now
            self.hold_total = removal.total
            earlier = (f" ({removal.counted} with the {removal.earlier} lost in the last "
                       f"{self.settings.removal_guard_window:.0f}s)" if removal.earlier else "")
            log.error("HOLDING a change that would remove %d of %d servers%s (%.0f%%, limit %.0f%%) across %d "
                      "upstream(s): %s. Additions still apply. It is applied after %s, or now with "
                      "POST /release on the status endpoint or SIGUSR1.",
                      removal.removed, removal.total, earlier, removal.share * 100,
                      self.settings.removal_guard_share * 100,
                      len(removal.by_upstream), ", ".join(sorted(removal.by_upstream)[:10]),
                      f"{self.settings.removal_hold_seconds:.0f}s" if self.settings.removal_hold_seconds
                      else "an operator's release only")
        hold_over = self.settings.removal_hold_seconds and now - self.hold_since >= self.settings.removal_hold_seconds
        if self.release_requested or hold_over:
            log.warning("releasing the held change (%s): removing %d server(s)",
                        "operator" if self.release_requested else "held past removal_hold_seconds", removal.removed)
            self._end_hold()
            self._restart_window = True
            return desired
        self.metrics.set(held_changes=1, held_removals=removal.removed)
        self.metrics.set_status(held={"removed": removal.removed, "removed_earlier": removal.earlier,
                                      "total": removal.total,
                                      "upstreams": removal.by_upstream, "held_for_seconds": round(now - self.hold_since, 1)})
        self._held_names = set(removal.by_upstream)   # examined again at every sync while held
        return safety.hold_removals(applied, desired, removal)

    def _end_hold(self) -> None:
        """No change is held (any more): the hold's state and its gauges cleared."""
        self.hold_since = self.hold_total = None
        self.release_requested = False
        self.metrics.set(held_changes=0, held_removals=0)
        self.metrics.set_status(held=None)

    def release(self) -> str:
        self.release_requested = True
        return "release requested: a held change is applied at the next sync" if self.hold_since is not None \
            else "nothing is held"

    # -- applying --------------------------------------------------------------------------------
    def sync(self, upstreams: Mapping[str, Upstream], empty: Iterable[str] = (),
             changed: Optional[Iterable[str]] = None) -> SyncReport:
        """Bring file and interface to the desired state for ``upstreams`` ({name: Upstream}, with their
        directives) and ``empty`` (names whose instances all fail). ``changed``: the names whose entry
        may differ from the previous call's (None: any); the work done is for those names, except
        writing the file, which is written whole from blocks rendered once per upstream. When the
        file cannot be written, nothing is sent and the sync is remembered for retry()."""
        started = self.clock()
        report = SyncReport()
        self.unwritten = None
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
                if self._file is None:
                    self._file = _upstream_file.RenderedFile(self.applied.values())
                self._file.update(changes)
                _upstream_file.replace_file(self.settings.upstream_file, self._file.text(),
                                            validate=self.settings.validate_command)
                report.file_changed = True
            except _upstream_file.ValidateCommandFailed as exc:
                return self._file_failed(report, started, "file_validate", str(exc), upstreams, empty)
            except OSError as exc:
                return self._file_failed(report, started, "file_write",
                                         f"cannot write {self.settings.upstream_file}: {exc.strerror or exc}",
                                         upstreams, empty)
            except ValidationError as exc:
                return self._file_failed(report, started, "file_validate", str(exc), upstreams, empty)
            self._apply(changes)
            self.pending.update(changed_names)
            self.pending.difference_update(removed)
            self.gone.update(removed)
            self.gone.difference_update(changed_names)
        self.push(report)
        self._finish(report, started)
        return report

    def _apply(self, changes: Mapping[str, Optional[Upstream]]) -> None:
        """Make ``changes`` ({name: Upstream or None}) the applied state, keeping the server count and
        the removal guard's window."""
        for name, upstream in changes.items():
            before = self.applied.pop(name, None)
            self._server_count -= len(before.servers) if before is not None else 0
            if upstream is not None:
                self.applied[name] = upstream
                self._server_count += len(upstream.servers)
        if self._restart_window:
            self.window.restart(self._server_count)
            self._restart_window = False
        else:
            self.window.applied(self._server_count, self.clock())

    def _file_failed(self, report: SyncReport, started: float, kind: str, message: str,
                     upstreams: Mapping[str, Upstream], empty: Iterable[str]) -> SyncReport:
        self.unwritten = (upstreams, empty)
        self._file = None   # rendered again from what is applied at the next write
        self._resolved = None
        report.file_error = message
        self.metrics.error(kind)
        log.error("upstream file not replaced, nothing sent to dyups (the last good state keeps serving): %s", message)
        self._finish(report, started)
        return report

    def retry(self) -> SyncReport:
        """The retry step: a sync whose file write failed is tried again (a full disk freed, a
        validation fixed), else the pending POSTs and DELETEs are sent again."""
        if self.unwritten is not None:
            return self.sync(*self.unwritten)
        report = self.push()
        self._update_gauges()
        return report

    def push(self, report: Optional[SyncReport] = None) -> SyncReport:
        """POST pending upstreams, DELETE gone ones; failures stay pending for the next retry."""
        report = report or SyncReport()
        if self.dry_run:
            return report
        for name in sorted(self.pending):
            upstream = self.applied.get(name)
            if upstream is None:
                self.pending.discard(name)
                continue
            try:
                self.client.update(upstream)
            except DyupsError as exc:
                self._push_failed(report, name, exc)
                continue
            log.info("upstream %s: %s (%d server(s))", name, describe_change(self.pushed.get(name), upstream),
                     len(upstream.servers))
            self.pushed[name] = upstream
            self.pending.discard(name)
            report.posted.append(name)
            self.metrics.change_applied(name)  # counted, and timed from the Consul answer
        for name in sorted(self.gone):
            try:
                existed = self.client.delete(name)
            except DyupsError as exc:
                self._push_failed(report, name, exc)
                continue
            log.info("upstream %s: deleted%s", name, "" if existed else " (the interface did not hold it)")
            self.pushed.pop(name, None)
            self.gone.discard(name)
            self.deleted_here.add(name)
            report.deleted.append(name)
            self.metrics.change_applied(name)
        self.metrics.set(dyups_up=0 if any(isinstance(e, DyupsUnavailable) for _n, e in report.failed) else 1)
        if self._incomplete and report.ok and not self.has_pending:
            # what a failed sync left pending is sent now (by the retry or by the drift repair, whichever
            # came first): that sync is complete, say so (else last_sync_success stays 0 until the next
            # Consul change, as after a start where nginx came up after the watcher)
            self._record_success()
        return report

    def _push_failed(self, report: SyncReport, name: str, exc: DyupsError) -> None:
        report.failed.append((name, exc))
        self.metrics.error(dyups_error_kind(exc))
        if isinstance(exc, DyupsUnavailable) and len(report.failed) > 1:
            return
        log.error("upstream %s not applied, will retry: %s", name, exc)

    def repair(self) -> SyncReport:
        """Compare ``/detail`` with the applied state; push what differs. Returns the names repaired."""
        detail = self.client.detail()
        self.resolve = make_resolver(hosts_file=self.settings.hosts_file)
        drifted = []
        for name, upstream in self.applied.items():
            if name in self.pending:
                continue
            if not servers_equal(upstream, detail.get(name), resolve=self.resolve):
                drifted.append(name)
        stale = sorted((self.deleted_here & set(detail)) - set(self.applied))
        if drifted or stale:
            log.warning("dyups differs from the upstream file for %d upstream(s)%s; pushing them again",
                        len(drifted) + len(stale), ": " + ", ".join((drifted + stale)[:10]))
        self.pending.update(drifted)
        self.gone.update(stale)
        self.metrics.count("repairs", len(drifted) + len(stale))
        report = self.push()
        self._update_gauges()
        return report

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
                         pending_upstreams=len(self.pending) + len(self.gone))

    @property
    def has_pending(self) -> bool:
        return bool(self.pending or self.gone or self.unwritten is not None)
