# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: what to POST, what to DELETE and what the upstream file holds (no I/O).
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Idempotence: compare the desired upstreams with ``/detail`` and the upstream file, plan the requests.

Pure functions, no I/O: the caller reads ``/detail`` and the file, resolves host names (or not) and
passes the results in. The dyups_upstream module and the watcher use the same comparison.

Rules:

* servers are compared with ``/detail`` (``GET /upstream/NAME`` drops weights), order-insensitive;
* ``/detail`` shows addresses, not host names: with a ``resolve`` callable (host -> [address, ...],
  IPv4 first) a server written as ``app1:8080`` equals the line of its first address, which is what
  Tengine prints for it;
* ``/detail`` does not show upstream-level directives: they are compared through the upstream file
  when one is managed, and a POST is planned when the file's directives differ from the desired ones;
* so a change of directives alone that a failed run wrote to the file and never sent is not lost:
  the module records such names (``unsent``, kept beside the file) and the next plan POSTs them
  whatever ``/detail`` shows;
* ``exclusive`` removes only upstreams that the file holds and the desired set does not name (and,
  with ``owns``, only those ``owns`` accepts).
* names compare as the data plane compares them (``_names.name_key``: letter case ignored): an
  upstream the interface or the file holds as ``Web`` is the one a caller asks for as ``web``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import Detail, detail_line
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import same_names
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._resolve import Resolve
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server, sort_servers
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream, build_upstream

CREATE = "create"
UPDATE = "update"
DELETE = "delete"
NONE = "none"


def expand_servers(servers: Iterable[Server], resolve: Resolve | None = None) -> list[Server]:
    """Servers as ``/detail`` shows them: each host name replaced by the first address it resolves to.

    nginx keeps a server written with a host name as one server with all its addresses (IPv4 first)
    and Tengine's ``/detail`` prints the first one; ``resolve(host)`` returns canonical addresses in
    that order. A name that resolves to nothing disappears (Tengine would refuse it).
    """
    if resolve is None:
        return list(servers)
    expanded = []
    for server in servers:
        if server.kind == "hostname":
            addresses = resolve(server.host)
            if addresses:
                expanded.append(server.replace(host=addresses[0]))
        else:
            expanded.append(server)
    return expanded


def _servers_of(desired: Upstream | Iterable[Server]) -> tuple[Server, ...]:
    return desired.servers if isinstance(desired, Upstream) else tuple(desired)


def servers_equal(desired: Upstream | Iterable[Server], current_servers: Iterable[Server] | None,
                  resolve: Resolve | None = None) -> bool:
    """True when ``/detail``'s servers (``current_servers``) are the desired upstream's servers.

    ``desired`` is an Upstream (or a list of Server); ``current_servers`` the list ``/detail`` gives
    for it, or None when the interface does not hold it. The order does not matter. Host names are
    compared as written, and, with ``resolve``, by the addresses they resolve to.
    """
    if current_servers is None:
        return False
    current = Counter(current_servers)
    servers = _servers_of(desired)
    if Counter(servers) == current:
        return True
    if resolve is None or any(s.kind == "hostname" and not resolve(s.host) for s in servers):
        return False  # a name that resolves to nothing is never there: Tengine refuses it
    return Counter(expand_servers(servers, resolve)) == current


def desired_upstream(name: str, servers: Any, directives: Any = None,
                     file_upstreams: Mapping[str, Upstream] | None = None) -> Upstream:
    """Build the desired Upstream; ``directives=None`` keeps what the upstream file holds for it.

    A POST replaces the whole upstream, so a caller that names only servers must not silently drop
    the ``keepalive`` or ``check`` that the file holds. ``directives=[]`` removes them.
    """
    if directives is None and file_upstreams and name in file_upstreams:
        directives = file_upstreams[name].directives
    return build_upstream(name, servers, directives)


@dataclass(frozen=True)
class UpstreamChange:
    """One upstream's part of a plan.

    ``before``: the servers ``/detail`` shows (None when the interface does not hold it, or when it
    could not be read). ``after``: the desired Upstream (None: to be absent). ``expected``: the
    servers ``/detail`` should show afterwards (host names resolved when a resolver was given).
    ``post`` / ``delete``: the request to send. ``file_before`` / ``file_after``: the file's block.
    """

    name: str
    action: str
    before: tuple[Server, ...] | None = None
    after: Upstream | None = None
    expected: tuple[Server, ...] | None = None
    post: bool = False
    delete: bool = False
    file_before: Upstream | None = None
    file_after: Upstream | None = None

    @property
    def added(self) -> tuple[Server, ...]:
        """Servers in ``expected`` that ``before`` lacks (a changed parameter counts as removed + added)."""
        return tuple(sort_servers((Counter(self.expected or ()) - Counter(self.before or ())).elements()))

    @property
    def removed(self) -> tuple[Server, ...]:
        return tuple(sort_servers((Counter(self.before or ()) - Counter(self.expected or ())).elements()))

    def to_result(self) -> dict[str, Any]:
        """The module's per-upstream return value."""
        return {
            "action": self.action,
            "before": None if self.before is None else [s.spec() for s in sort_servers(self.before)],
            "after": None if self.after is None else [s.spec() for s in self.after.servers],
            "directives": None if self.after is None else [d.text for d in self.after.directives],
            "added": [s.spec() for s in self.added],
            "removed": [s.spec() for s in self.removed],
            "request": "POST" if self.post else "DELETE" if self.delete else None,
        }


@dataclass(frozen=True)
class Plan:
    changes: tuple[UpstreamChange, ...]
    file_before: dict[str, Upstream] | None = None
    file_after: dict[str, Upstream] | None = None

    @property
    def posts(self) -> list[Upstream]:
        """Upstreams to POST, by name."""
        return [change.after for change in self.changes if change.post and change.after is not None]

    @property
    def deletes(self) -> list[str]:
        """Names to DELETE."""
        return [change.name for change in self.changes if change.delete]

    @property
    def file_changed(self) -> bool:
        return self.file_after is not None and self.file_after != self.file_before

    @property
    def changed(self) -> bool:
        return self.file_changed or any(change.post or change.delete for change in self.changes)


def _plan_present(name: str, upstream: Upstream, detail: Detail | None, file_upstreams: Mapping[str, Upstream] | None,
                  force: bool, resolve: Resolve | None) -> UpstreamChange:
    """``force``: POST even when ``/detail`` shows the servers (asked for, or a name left unsent)."""
    current = None if detail is None else detail.get(name)
    expected = tuple(sort_servers(expand_servers(upstream.servers, resolve)))
    file_before = None if file_upstreams is None else file_upstreams.get(name)
    if detail is None:
        post, action = True, UPDATE
    elif current is None:
        post, action = True, CREATE
    else:
        directives_differ = file_upstreams is not None and set(
            file_before.directives if file_before else ()) != set(upstream.directives)
        post = force or directives_differ or not servers_equal(upstream, current, resolve)
        action = UPDATE if post else NONE
    if action == NONE and file_upstreams is not None and file_before != upstream:
        action = UPDATE
    return UpstreamChange(name=name, action=action, before=None if current is None else tuple(current),
                          after=upstream, expected=expected, post=post,
                          file_before=file_before, file_after=None if file_upstreams is None else upstream)


def _plan_absent(name: str, detail: Detail | None, file_upstreams: Mapping[str, Upstream] | None) -> UpstreamChange:
    current = None if detail is None else detail.get(name)
    file_before = None if file_upstreams is None else file_upstreams.get(name)
    delete = detail is None or current is not None
    action = DELETE if delete or file_before is not None else NONE
    return UpstreamChange(name=name, action=action, before=None if current is None else tuple(current),
                          expected=(), delete=delete, file_before=file_before)


def plan(desired: Mapping[str, Upstream | None], detail: Detail | None,
         file_upstreams: Mapping[str, Upstream] | None = None, exclusive: bool = False, force: bool = False,
         resolve: Resolve | None = None, unsent: Iterable[str] = (),
         owns: Callable[[str], bool] | None = None) -> Plan:
    """Plan the requests and the file's new content.

    ``desired``: {name: Upstream} to be present, or {name: None} to be absent. ``detail``: what
    ``/detail`` gave ({name: [Server]}), or None when it could not be read (then every present
    upstream is POSTed and every absent one DELETEd). ``file_upstreams``: the upstream file's
    {name: Upstream}, or None when no file is managed. ``exclusive``: upstreams the file holds and
    ``desired`` does not name are removed (from the file, and from the interface when it holds
    them); upstreams the file does not hold are never touched, nor, with ``owns`` (name -> bool),
    those it refuses. ``force``: POST even when equal. ``unsent``: names an earlier run wrote to the
    file and did not send: each is POSTed (the file's block, unless ``desired`` names it) whatever
    ``/detail`` shows, or, when the file no longer holds it, DELETEd if ``/detail`` still shows it.
    ``detail`` and ``file_upstreams`` are looked up by name key: their ``Web`` is ``desired``'s ``web``
    (the file's block is then written under ``desired``'s spelling).
    """
    detail = same_names(detail, desired)
    file_upstreams = same_names(file_upstreams, desired)
    wanted = dict(desired)
    if exclusive and file_upstreams:
        for name in file_upstreams:
            if owns is None or owns(name):
                wanted.setdefault(name, None)
    unsent = set(unsent)
    for name in unsent:
        wanted.setdefault(name, None if file_upstreams is None else file_upstreams.get(name))
    changes = []
    for name in sorted(wanted):
        upstream = wanted[name]
        if upstream is None:
            changes.append(_plan_absent(name, detail, file_upstreams))
        else:
            changes.append(_plan_present(name, upstream, detail, file_upstreams, force or name in unsent, resolve))
    file_after = None
    if file_upstreams is not None:
        file_after = dict(file_upstreams)
        for change in changes:
            if change.after is None:
                file_after.pop(change.name, None)
            else:
                file_after[change.name] = change.after
    return Plan(changes=tuple(changes), file_before=None if file_upstreams is None else dict(file_upstreams),
                file_after=file_after)


def interface_text(changes: Iterable[UpstreamChange], side: str) -> str:
    """``upstream NAME`` then its ``/detail`` lines, for the upstreams to POST or DELETE: one side of a diff.

    Only servers: ``/detail`` does not show directives (the upstream file's diff does).

    ``side`` is ``"before"`` (what ``/detail`` showed) or ``"after"`` (what it should show).
    """
    blocks = []
    for change in changes:
        if not (change.post or change.delete):
            continue
        servers = change.before if side == "before" else (change.expected if change.after is not None else None)
        if servers is None:
            continue
        lines = [f"upstream {change.name}"] + [f"    {detail_line(s)}" for s in sort_servers(servers)]
        blocks.append("\n".join(lines) + "\n")
    return "".join(blocks)
