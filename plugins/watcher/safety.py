# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two guards between what Consul says and what nginx gets: pure functions of upstream maps, and the
removal hold's state machine (``RemovalHold``), which takes the caller's clock.

Zero passing instances (``zero_instances``): a service whose instances all fail their checks is more
often a Consul or network problem than a fleet that died at once, so by default (``keep``) its
upstream keeps its last servers; ``down`` keeps them marked ``down`` (nginx answers 502 at once
instead of trying dead peers); ``delete`` removes the upstream. A service that is deregistered
entirely is not "zero instances": it is gone, and its upstream goes (subject to the hold below).

Mass removal (``removal_guard_share``, ``removal_guard_min``, ``removal_hold_seconds``,
``removal_guard_window``): a change that would take away more than the given share of all servers
(an empty answer from Consul included) is held: servers that would go are kept, additions and other
changes go through. What counts is the servers the change would remove plus those the watcher
lost in the last ``removal_guard_window`` seconds (``RemovalWindow``: the largest number of servers
applied in that time minus the number applied now, so servers that came back or were replaced by
new ones do not count), against that largest number; with a window of 0, the change alone against
the servers applied now. So a slow mass deregistration, each sync under the share, is held once the
window's sum goes over it, while a rolling replacement is not. The hold ends when the change no
longer removes that much (also when earlier losses leave the window), when Consul has confirmed it
for ``removal_hold_seconds`` (0: never by itself; time in which Consul did not answer does not
count), or when an operator releases it (which starts the window afresh). While a change is held,
servers added beside it do not make it smaller: it is measured against the servers applied when it
began, and the window records nothing new until it ends.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Deque, Iterable, Mapping, Optional, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream, build_upstream

log = logging.getLogger("swallowkeeper.watcher")


def apply_zero_instance_policy(desired: Mapping[str, Upstream], empty: Iterable[str],
                               applied: Mapping[str, Upstream], policy: str) -> dict[str, Upstream]:
    """``desired`` plus, for names in ``empty`` (instances exist, none passing), what the policy keeps."""
    result = dict(desired)
    if policy == "delete":
        return result
    for name in empty:
        if name in result or name not in applied:
            continue
        previous = applied[name]
        if policy == "keep":
            result[name] = previous
        else:
            result[name] = build_upstream(name, [server.replace(down=True) for server in previous.servers],
                                          previous.directives)
    return result


@dataclass(frozen=True)
class Removal:
    """What a change would take away: {upstream: [address, ...]} and the totals."""

    by_upstream: dict[str, list[str]]
    removed: int
    total: int
    earlier: int = 0   # servers lost in the guard's window before this change (RemovalWindow.widen)

    @property
    def counted(self) -> int:
        """What the guard weighs: this change's removals and the window's earlier ones."""
        return self.removed + self.earlier

    @property
    def share(self) -> float:
        return self.counted / self.total if self.total else 0.0


def removals(applied: Mapping[str, Upstream], desired: Mapping[str, Upstream | None]) -> Removal:
    by_upstream: dict[str, list[str]] = {}
    total = 0
    for name, upstream in applied.items():
        total += len(upstream.servers)
        wanted = desired.get(name)
        if wanted is upstream:
            continue
        kept = {server.address for server in wanted.servers} if wanted is not None else set()
        gone = sorted(server.address for server in upstream.servers if server.address not in kept)
        if gone:
            by_upstream[name] = gone
    return Removal(by_upstream=by_upstream, removed=sum(len(v) for v in by_upstream.values()), total=total)


def exceeds_guard(removal: Removal, share: float, minimum: int) -> bool:
    """True when the change removes something and, with the window's earlier removals, at least
    ``minimum`` servers and more than ``share`` of the total."""
    return removal.removed > 0 and removal.counted >= max(minimum, 1) and removal.share > share


class RemovalWindow:
    """The server counts applied in the last ``seconds``, for the guard's window.

    ``applied(total, now)`` records the count after each applied change. ``widen(removal, now)``
    measures a change against the largest count since the window's start (the count at its start
    included): the servers lost since that count (it minus the count now) are the window's earlier
    removals, added to the change's. So servers that come back, or new servers that take the place
    of removed ones (a rolling deploy), no longer count, and the result is never below the change's
    own share of the servers applied now (``seconds`` <= 0: that share alone). Times come from the
    caller's clock, so tests drive it.
    """

    def __init__(self, seconds: float, total: int) -> None:
        self.seconds = float(seconds)
        self._totals: Deque[Tuple[float, int]] = deque([(float("-inf"), total)])  # (since, count), oldest first

    def restart(self, total: int) -> None:
        """Start afresh from ``total`` (an operator's release, a hold that ran out): nothing before counts."""
        self._totals = deque([(float("-inf"), total)])

    @property
    def totals(self) -> Tuple[Tuple[float, int], ...]:
        """((since, count), ...), oldest first (the first since is -inf): what ``restore`` takes back."""
        return tuple(self._totals)

    def restore(self, totals: Iterable[Tuple[float, int]]) -> None:
        """The counts of ``totals`` (from ``totals`` of an earlier run), if any."""
        kept = list(totals)
        if kept:
            self._totals = deque(kept)

    def applied(self, total: int, now: float) -> None:
        if self.seconds <= 0:
            return
        if total != self._totals[-1][1]:
            self._totals.append((now, total))
        self._prune(now)

    def _prune(self, now: float) -> None:
        # the newest count from before the window's start is the count at its start: kept
        cutoff = now - self.seconds
        while len(self._totals) > 1 and self._totals[1][0] <= cutoff:
            self._totals.popleft()

    def widen(self, removal: Removal, now: float) -> Removal:
        """``removal`` (its total: the servers applied now) measured against the window's largest count."""
        if self.seconds <= 0:
            return removal
        self._prune(now)
        largest = max(max(count for _since, count in self._totals), removal.total)
        return replace(removal, earlier=largest - removal.total, total=largest)


def hold_removals(applied: Mapping[str, Upstream], desired: Mapping[str, Upstream],
                  removal: Removal) -> dict[str, Upstream]:
    """``desired`` with every server ``removal`` would take away put back (and whole upstreams kept).
    An upstream whose new directives refuse a server put back (``ip_hash`` and a backup server) is
    kept whole as applied: its whole change waits with the hold."""
    result = dict(desired)
    for name, gone in removal.by_upstream.items():
        previous = applied[name]
        if name not in result:
            result[name] = previous
            continue
        current = result[name]
        kept = [server for server in previous.servers if server.address in set(gone)]
        try:
            result[name] = build_upstream(name, list(current.servers) + kept, current.directives)
        except ValidationError:
            result[name] = previous
    return result


@dataclass(frozen=True)
class GuardSettings:
    share: float
    minimum: int
    hold_seconds: float   # 0: released only by an operator
    window: float


class RemovalHold:
    """The removal guard's state: the window, and a change held back, from the moment a change goes
    over the limit until it no longer does, Consul has confirmed it for ``hold_seconds``, or an
    operator releases it.

    ``evaluate`` is called at every sync with what is applied, what Consul wants, the servers applied
    now and whether Consul answers (``confirmed``): only time between two evaluations that both had
    Consul answering counts towards ``hold_seconds``, and a hold never runs out at an evaluation
    without it. While a change is held it is measured against ``base``, the servers applied when it
    began (additions beside it do not make it smaller, with or without a window), and the window
    records no new count. ``applied`` is called after each change is applied.
    """

    def __init__(self, settings: GuardSettings, total: int) -> None:
        self.settings = settings
        self.window = RemovalWindow(settings.window, total)
        self.since: Optional[float] = None    # when this process first held the change (for held_for_seconds)
        self.base: Optional[int] = None       # servers applied when the hold began; None: nothing held
        self.confirmed = 0.0                  # seconds Consul confirmed the held change
        self.release_requested = False
        self.releasing = False                # the last evaluation let a held change through
        self._tick: Optional[float] = None    # the last evaluation that had Consul answering
        self.removal: Optional[Removal] = None  # what the last evaluation held

    @property
    def active(self) -> bool:
        return self.base is not None

    @property
    def due(self) -> bool:
        """The hold has been confirmed for ``hold_seconds``: it runs out at the next confirmed evaluation."""
        return self.active and bool(self.settings.hold_seconds) and self.confirmed >= self.settings.hold_seconds

    def runs_out_at(self, now: float) -> bool:
        """An evaluation at ``now`` with Consul answering would let the held change through by time (the
        daemon reads Consul again first, so that answer is fresh)."""
        if not self.active or not self.settings.hold_seconds or self._tick is None:
            return False
        return self.confirmed + (now - self._tick) >= self.settings.hold_seconds

    def resume(self, confirmed: float, base: int, totals: Iterable[Tuple[float, int]], now: float) -> None:
        """Take up a hold an earlier run left (owned_state.py): its confirmed seconds, base and window."""
        self.since, self.base, self.confirmed, self._tick = now, base, confirmed, None
        self.window.restore(totals)

    def release(self) -> bool:
        """An operator's release: True when something is held (applied at the next evaluation)."""
        if not self.active:
            return False
        self.release_requested = True
        return True

    def snapshot(self) -> tuple:
        return (self.since, self.base, self.confirmed, self.release_requested, self._tick)

    def restore(self, snapshot: tuple) -> None:
        """Back to ``snapshot`` (taken before an evaluation whose result could not be applied)."""
        self.since, self.base, self.confirmed, self.release_requested, self._tick = snapshot
        self.releasing = False

    def end(self) -> None:
        self.since = self.base = self._tick = self.removal = None
        self.confirmed = 0.0
        self.release_requested = False

    def applied(self, total: int, now: float) -> None:
        """A change was applied, leaving ``total`` servers."""
        if self.releasing:
            self.window.restart(total)
            self.releasing = False
        elif not self.active:
            self.window.applied(total, now)

    def evaluate(self, applied: Mapping[str, Upstream], desired: Mapping[str, Upstream],
                 total: int, now: float, confirmed: bool = True) -> dict[str, Upstream]:
        """``desired`` (for the names of ``applied`` that may change) with the removals held when they take
        away too large a share of the ``total`` servers applied (see the module's docstring)."""
        settings = self.settings
        current = total if self.base is None else min(total, self.base)
        removal = self.window.widen(replace(removals(applied, desired), total=current), now)
        self.releasing = False
        if not exceeds_guard(removal, settings.share, settings.minimum):
            if self.active:
                log.warning("removal hold cleared: the change no longer removes more than %.0f%% of servers",
                            settings.share * 100)
            self.end()
            return dict(desired)
        if not self.active:
            self.since, self.base, self.confirmed = now, current, 0.0
            earlier = (f" ({removal.counted} with the {removal.earlier} lost in the last "
                       f"{settings.window:.0f}s)" if removal.earlier else "")
            log.error("HOLDING a change that would remove %d of %d servers%s (%.0f%%, limit %.0f%%) across %d "
                      "upstream(s): %s. Additions still apply. It is applied after %s, or now with "
                      "POST /release on the status endpoint or SIGUSR1.",
                      removal.removed, removal.total, earlier, removal.share * 100, settings.share * 100,
                      len(removal.by_upstream), ", ".join(sorted(removal.by_upstream)[:10]),
                      f"Consul confirmed it for {settings.hold_seconds:.0f}s" if settings.hold_seconds
                      else "an operator's release only")
        elif confirmed and self._tick is not None:
            self.confirmed += now - self._tick
        self._tick = now if confirmed else None
        if self.release_requested or (confirmed and self.due):
            log.warning("releasing the held change (%s): removing %d server(s)",
                        "operator" if self.release_requested else
                        "Consul confirmed it for removal_hold_seconds", removal.removed)
            self.end()
            self.releasing = True
            return dict(desired)
        self.removal = removal
        return hold_removals(applied, desired, removal)
