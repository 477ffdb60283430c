# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two guards between what Consul says and what nginx gets. Pure functions of upstream maps.

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
longer removes that much (also when earlier losses leave the window), when it has persisted
``removal_hold_seconds`` (0: never by itself), or when an operator releases it (which starts the
window afresh).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace
from typing import Deque, Iterable, Mapping, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream


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
            result[name] = replace(previous, servers=tuple(server.replace(down=True) for server in previous.servers))
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
    """``desired`` with every server ``removal`` would take away put back (and whole upstreams kept)."""
    result = dict(desired)
    for name, gone in removal.by_upstream.items():
        previous = applied[name]
        kept = [server for server in previous.servers if server.address in set(gone)]
        if name not in result:
            result[name] = previous
            continue
        current = result[name]
        result[name] = replace(current, servers=tuple(sorted(current.servers + tuple(kept), key=lambda s: s.sort_key())))
    return result
