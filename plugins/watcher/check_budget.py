# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The check-peer budget: Tengine's upstream check module keeps a peer table in ``check_shm_size``
with room for the configured check peers plus 4 096 dynamic ones. Past what the zone holds a worker
crashes on the next POST with ``check`` (issue 25: at 3 280 check peers with the default 1m), and
past the table a server silently gets no health check. So the watcher never sends a change that would
bring the check peers (servers of upstreams with a ``check`` directive) above ``check_peer_budget``:
such a change is skipped with its reason (``/status``, the log) and counted
(``swallowkeeper_watcher_check_budget_refusals_total``); the upstream keeps what it had (a new one
is not created) and is examined again at every sync, so it goes through once there is room.
"""

from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Set, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream


def check_peers(upstream: Optional[Upstream]) -> int:
    """The check peers an upstream makes: its servers when it has a ``check`` directive, else 0."""
    if upstream is None or not any(directive.name == "check" for directive in upstream.directives):
        return 0
    return len(upstream.servers)


def limit(desired: Mapping[str, Optional[Upstream]], applied: Mapping[str, Upstream],
          budget: int) -> Tuple[Dict[str, Optional[Upstream]], List[dict], Set[str]]:
    """``(desired, skipped, refused)``: ``desired`` ({name: Upstream or None} for the names that may
    change) with every change that adds check peers beyond ``budget`` replaced by what is applied
    (``applied``: every upstream applied). Changes are taken in name order; ``budget`` 0: no limit.
    All applied upstreams are counted only when the changes add check peers."""
    out = dict(desired)
    growth = sum(check_peers(upstream) - check_peers(applied.get(name)) for name, upstream in desired.items())
    if budget <= 0 or growth <= 0:
        return out, [], set()
    total = sum(check_peers(upstream) for upstream in applied.values()) + growth
    skipped: List[dict] = []
    refused: Set[str] = set()
    for name in sorted(desired):
        if total <= budget:
            break
        growth = check_peers(desired[name]) - check_peers(applied.get(name))
        if growth <= 0:
            continue
        out[name] = applied.get(name)
        total -= growth
        refused.add(name)
        skipped.append({"what": f"upstream {name}",
                        "why": f"adds {growth} check peer(s) beyond check_peer_budget {budget} (Tengine's "
                               "check_shm_size and its peer table); kept as it is"})
    return out, skipped, refused
