# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Push bookkeeping: what the dyups interface has not confirmed yet, and sending it.

``pending``: upstreams to POST (their applied state); ``gone``: owned upstreams to DELETE (removed from
the file; owned until the interface confirms, see owned_state.py); ``pushed``: what the interface was
last sent, for the one log line per change. A request that fails leaves its name where it was, for
the next retry or drift check; one that succeeds takes it out. POSTs go before DELETEs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, List, Mapping, Optional, Set, Tuple, Union

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import post_body
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    DyupsError, DyupsRejected, DyupsUnavailable)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_key
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import zone_fit
from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics

log = logging.getLogger("swallowkeeper.watcher")
PIPELINED_FROM = 16   # changes in one send from which they go pipelined (a lone flip's POST is not held back)


def dyups_error_kind(exc: BaseException) -> str:
    if isinstance(exc, DyupsUnavailable):
        return "dyups_unavailable"
    if isinstance(exc, DyupsRejected):
        return "dyups_rejected"
    return "dyups_protocol"


def since_answer(elapsed: Optional[float]) -> str:
    """The end of a change's log line: how long after the Consul answer that caused it the interface
    answered (the latency histogram's sample; docs/monitoring.md), or nothing when no answer caused it."""
    return "" if elapsed is None else f", {elapsed * 1000:.1f} ms after Consul's answer"


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


class Pushes:
    def __init__(self, client: DyupsClient, metrics: Metrics, pushed: Mapping[str, Upstream],
                 gone: Iterable[str] = (), pacer: Optional[zone_fit.Pacer] = None) -> None:
        self.client = client
        self.metrics = metrics
        # Tengine's zone: no POST or DELETE while the messages sent before may leave it no room (zone_fit.py)
        self.pacer = pacer or zone_fit.Pacer(0, metrics)
        self.pushed = dict(pushed)
        self.pending: Set[str] = set()
        self.gone: Set[str] = set(gone)
        # upstreams this watcher deleted and has not posted since: nginx_processes.py deletes them again on a
        # respawned Tengine worker that holds them (it has what its master read at start); a new master
        # (which read the file without them) clears it (forget_deleted)
        self.deleted: Set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.pending or self.gone)

    def __len__(self) -> int:
        return len(self.pending) + len(self.gone)

    def changed(self, posted: Iterable[str], removed: Iterable[str]) -> None:
        """A change was applied: ``posted`` names to POST, ``removed`` names to DELETE."""
        posted, removed = set(posted), set(removed)
        self.pending |= posted
        self.pending -= removed
        self.gone |= removed
        self.gone -= posted

    def send(self, applied: Mapping[str, Upstream], report: SyncReport) -> None:
        """POST the pending upstreams (as ``applied`` holds them), DELETE the gone ones; what fails stays.
        ``PIPELINED_FROM`` changes or more go pipelined (DyupsClient.apply_many: a full resync), unless
        Tengine's zone paces the pushes (zone_fit.Pacer); fewer go one at a time, as a flip's one POST."""
        posts: List[Tuple[str, Optional[Upstream]]] = []
        for name in sorted(self.pending):
            upstream = applied.get(name)
            if upstream is None:
                self.pending.discard(name)
                continue
            posts.append((name, upstream))
        live = {name_key(name) for name in applied} if self.gone else set()
        deletes: List[Tuple[str, Optional[Upstream]]] = []
        for name in sorted(self.gone):
            if name_key(name) in live:
                # Web gone, web applied: one upstream for the data plane, which the POST of web replaced;
                # a DELETE of Web would remove what that POST just set
                self.gone.discard(name)
                self.pushed.pop(name, None)
                continue
            deletes.append((name, None))
        changes = posts + deletes   # POSTs before DELETEs
        if self.pacer.unread is None and len(changes) >= PIPELINED_FROM:
            for (name, upstream), answered in zip(changes, self.client.apply_many(changes)):
                self._done(report, name, upstream, answered)
        else:
            for name, upstream in changes:
                body = post_body(upstream) if upstream is not None and self.pacer.unread is not None else None
                self.pacer.before(name, body)
                outcome: Union[bool, DyupsError]
                try:
                    if upstream is None:
                        outcome = self.client.delete(name)
                    else:
                        self.client.update(upstream, body)
                        outcome = True
                except DyupsError as exc:
                    outcome = exc
                self.pacer.sent(name, upstream, body, answered=outcome is True)
                self._done(report, name, upstream, outcome)
        self.metrics.set(dyups_up=0 if any(isinstance(e, DyupsUnavailable) for _n, e in report.failed) else 1)

    def _done(self, report: SyncReport, name: str, upstream: Optional[Upstream],
              outcome: Union[bool, DyupsError]) -> None:
        """The bookkeeping of one request's ``outcome`` (DyupsClient.apply_many's)."""
        if isinstance(outcome, DyupsError):
            self._failed(report, name, outcome)
            return
        elapsed = self.metrics.change_applied(name)  # counted, and timed from the Consul answer
        if upstream is not None:
            log.info("upstream %s: %s (%d server(s))%s", name, describe_change(self.pushed.get(name), upstream),
                     len(upstream.servers), since_answer(elapsed))
            self.pushed[name] = upstream
            self.pending.discard(name)
            self.deleted.discard(name)
            report.posted.append(name)
            return
        log.info("upstream %s: deleted%s%s", name, "" if outcome else " (the interface did not hold it)",
                 since_answer(elapsed))
        self.pushed.pop(name, None)
        self.gone.discard(name)   # no longer owned: an upstream added under this name later is someone else's
        self.deleted.add(name)
        report.deleted.append(name)

    def forget_deleted(self) -> None:
        """A new nginx master read the upstream file, which no longer names what was deleted."""
        self.deleted.clear()

    def _failed(self, report: SyncReport, name: str, exc: DyupsError) -> None:
        report.failed.append((name, exc))
        self.metrics.error(dyups_error_kind(exc))
        if isinstance(exc, DyupsUnavailable) and len(report.failed) > 1:
            return
        log.error("upstream %s not applied, will retry: %s", name, exc)
