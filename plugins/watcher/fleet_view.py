# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a follower of the fleet share applies (plugins/watcher/fleet.py): the upstreams decoded from the
fleet's KV, kept as the ConsulSource keeps its merged mapping, and the values it refused."""

from __future__ import annotations

from typing import Dict, List, Optional, Set, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_key
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream


class FollowerView:
    """What the follower applies: the upstreams decoded from KV, kept as the ConsulSource keeps its
    merged mapping (take_changes: the live dicts and the names changed since the last call)."""

    def __init__(self) -> None:
        self.upstreams: Dict[str, Upstream] = {}
        self.empty: Set[str] = set()
        self.keys: Dict[str, str] = {}   # name_key -> the name held (one upstream whatever its letter case)
        self.changed: Optional[Set[str]] = None   # None: every name (the first take)
        self.refused: Dict[str, str] = {}   # name -> why its last value from KV was refused
        self._skipped: List[dict] = []
        self.version = 0   # counts the changes applied

    def holds(self, name: str) -> bool:
        return name in self.upstreams or name in self.empty

    def _note(self, name: str) -> None:
        self.version += 1
        if self.changed is not None:
            self.changed.add(name)

    def put(self, name: str, kind: Optional[str], upstream: Optional[Upstream]) -> Optional[str]:
        """Apply one decoded value (kind None: the key is gone); why it was refused, or None."""
        held = self.keys.get(name_key(name))
        if held is not None and held != name:
            return None if kind is None else f"upstream {held} holds this name but for letter case"
        if self.refused.pop(name, None) is not None:
            self._skipped = []
        if kind is None:
            if self.holds(name):
                self.upstreams.pop(name, None)
                self.empty.discard(name)
                del self.keys[name_key(name)]
                self._note(name)
            return None
        self.keys[name_key(name)] = name
        if kind == "empty":
            if name not in self.empty:
                self.upstreams.pop(name, None)
                self.empty.add(name)
                self._note(name)
        elif self.upstreams.get(name) != upstream:
            self.empty.discard(name)
            self.upstreams[name] = upstream  # type: ignore[assignment]
            self._note(name)
        return None

    def refuse(self, name: str, why: str) -> bool:
        """Remember a refused value (its upstream keeps its last good state); True when it is news."""
        if self.refused.get(name) == why:
            return False
        self.refused[name] = why
        self._skipped = []
        return True

    def skipped(self) -> List[dict]:
        if not self._skipped and self.refused:
            self._skipped = [{"what": f"upstream {name} from the fleet's KV", "why": why, "service": None,
                              "node": None, "id": None} for name, why in sorted(self.refused.items())]
        return self._skipped

    def take_changes(self) -> Tuple[Dict[str, Upstream], Set[str], Optional[Set[str]]]:
        changed, self.changed = self.changed, set()
        return self.upstreams, self.empty, changed
