# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Two guards between what Consul says and what nginx gets. Pure functions of upstream maps.

Zero passing instances (``zero_instances``): a service whose instances all fail their checks is more
often a Consul or network problem than a fleet that died at once, so by default (``keep``) its
upstream keeps its last servers; ``down`` keeps them marked ``down`` (nginx answers 502 at once
instead of trying dead peers); ``delete`` removes the upstream. A service that is deregistered
entirely is not "zero instances": it is gone, and its upstream goes (subject to the hold below).

Mass removal (``removal_guard_share``, ``removal_guard_min``, ``removal_hold_seconds``): a change
that would take away more than the given share of all servers at once (an empty answer from Consul
included) is held: servers that would go are kept, additions and other changes go through. The
hold ends when the change no longer removes that much, when it has persisted
``removal_hold_seconds`` (0: never by itself), or when an operator releases it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Mapping

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

    @property
    def share(self) -> float:
        return self.removed / self.total if self.total else 0.0


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
    return removal.removed >= max(minimum, 1) and removal.share > share


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
