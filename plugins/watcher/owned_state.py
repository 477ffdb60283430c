# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the watcher owns beyond its upstream file, kept beside it so a restart or a SIGHUP loses nothing.

The upstream file says which upstreams the watcher owns and what they hold. Two facts it cannot say:

- the upstreams it removed from the file whose DELETE the interface has not confirmed yet (pending
  deletes: after a restart the file no longer names them, and the interface alone cannot tell them
  from an upstream someone else added);
- a removal hold in progress: the seconds for which Consul confirmed the held removal so far, the
  servers applied when it began, and the removal guard's window (server counts and when they were
  applied), so a restarted watcher neither releases a hold early nor starts its timer again.

They are written to ``.NAME.state.json`` beside the upstream file ``NAME`` (a hidden file, so an
``include`` glob never reads it), replaced atomically like the upstream file. Times are stored as
Unix times and turned into the reader's clock on load (the clock is monotonic, and does not survive
a reboot). A state file that cannot be read or parsed is logged and treated as empty: it can only
make the watcher forget, never make it delete or release something (pending deletes are checked
against the upstream file: a name the file holds is never deleted).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, FrozenSet, Optional, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file

log = logging.getLogger("swallowkeeper.watcher")
VERSION = 1


def path_for(upstream_file: str) -> str:
    directory, base = os.path.split(os.path.abspath(upstream_file))
    return os.path.join(directory, f".{base}.state.json")


@dataclass(frozen=True)
class HoldState:
    """A removal hold in progress: ``confirmed`` seconds of Consul confirming it, ``base`` servers
    applied when it began."""

    confirmed: float
    base: int


@dataclass(frozen=True)
class OwnedState:
    pending_deletes: FrozenSet[str] = frozenset()
    hold: Optional[HoldState] = None
    window: Tuple[Tuple[float, int], ...] = field(default=())  # (since, count) on the caller's clock


def _to_wall(since: float, clock_now: float, wall_now: float) -> Optional[float]:
    return None if since == float("-inf") else wall_now - (clock_now - since)


def _from_wall(stamp: Optional[float], clock_now: float, wall_now: float) -> float:
    return float("-inf") if stamp is None else clock_now - (wall_now - stamp)


def render(state: OwnedState, clock_now: float, wall_now: Optional[float] = None) -> str:
    wall_now = time.time() if wall_now is None else wall_now
    data: dict[str, Any] = {"version": VERSION, "pending_deletes": sorted(state.pending_deletes)}
    if state.hold is not None:
        data["hold"] = {"confirmed_seconds": round(state.hold.confirmed, 3), "base": state.hold.base}
    if state.window:
        data["window"] = [[_to_wall(since, clock_now, wall_now), count] for since, count in state.window]
    return json.dumps(data, sort_keys=True) + "\n"


def parse(text: str, clock_now: float, wall_now: Optional[float] = None) -> OwnedState:
    """The state in ``text``; raises ValueError (with the reason) when it is not one this code wrote."""
    wall_now = time.time() if wall_now is None else wall_now
    data = json.loads(text)
    if not isinstance(data, dict) or data.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} state")
    names = data.get("pending_deletes", [])
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        raise ValueError("pending_deletes is not a list of names")
    hold = None
    if data.get("hold") is not None:
        raw = data["hold"]
        hold = HoldState(confirmed=max(0.0, float(raw["confirmed_seconds"])), base=int(raw["base"]))
    window = tuple((_from_wall(None if stamp is None else float(stamp), clock_now, wall_now), int(count))
                   for stamp, count in data.get("window", []))
    return OwnedState(pending_deletes=frozenset(names), hold=hold, window=window)


def load(upstream_file: str, clock_now: float) -> OwnedState:
    path = path_for(upstream_file)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        return OwnedState()
    except OSError as exc:
        log.error("cannot read %s, starting without it (pending deletes and a hold in progress are "
                  "forgotten): %s", path, exc.strerror or exc)
        return OwnedState()
    try:
        return parse(text, clock_now)
    except (ValueError, KeyError, TypeError) as exc:
        log.error("ignoring %s, which this watcher did not write (%s): pending deletes and a hold in "
                  "progress are forgotten", path, exc)
        return OwnedState()


def save(upstream_file: str, text: str) -> None:
    """Replace the state file with ``text`` (from ``render``) atomically; raises OSError."""
    _upstream_file.replace_file(path_for(upstream_file), text, mode=0o600)
