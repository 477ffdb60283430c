# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Servers written as host names: resolved here at every sync, left out when they do not resolve.

Tengine answers 500 to a whole POST that names a host it cannot resolve, so such a server is left out
of what is sent (and of what the guard and the file see); an upstream left without servers, or with
backup servers only, counts as empty (the zero-instance policy applies). DNS changes on its own, so
the upstreams with host names are resolved again at every sync, whatever else changed; the others
only when they change. The upstreams left are built with ``build_upstream``, like every other.

Each lookup runs off the sync loop, and a sync waits ``resolve_timeout`` seconds in all for them
(lookup_threads.py); a host name that is late is left out like one that does not resolve, with that
reason. With ``hosts_file`` the names are read from that file, on the loop.

A name that resolves to an address the server policy refuses (``_server_policy.py``: loopback, this
host, ``denied_networks`` ...) is left out too, with the reason: a host name from Consul is only
accepted with ``allow_host_names``, and then what it resolves to is checked here at every sync (nginx
resolves it again when the upstream is posted: docs/security.md says what stays open).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Set, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._resolve import Resolve, make_resolver
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._server_policy import ServerPolicy
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream, build_upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as settings_mod
from ansible_collections.swallowkeeper.dyups.plugins.watcher.lookup_threads import LookupThreads


class HostNames:
    def __init__(self, hosts_file: Optional[str], timeout: float = settings_mod.default("resolve_timeout"),
                 lookups: Optional[LookupThreads] = None, policy: Optional[ServerPolicy] = None) -> None:
        self.hosts_file = hosts_file
        self.timeout = timeout
        self.lookups = lookups or LookupThreads()
        self._late: Set[str] = set()             # host names that did not answer in time at the last call
        self.policy = policy  # checks the addresses a name resolves to (None: none checked)
        self.resolve: Optional[Resolve] = None   # the last sync's resolver
        self._resolved: Optional[Dict[str, Upstream]] = None  # {name: Upstream} of the last call, host names resolved
        self._empty: Set[str] = set()            # left without servers that resolve
        self._skips: Dict[str, List[dict]] = {}  # name -> skip items: the upstreams with host names

    @property
    def names(self) -> Set[str]:
        """The upstreams written with host names (examined at every sync)."""
        return set(self._skips)

    def skipped(self) -> List[dict]:
        """``{"what", "why"}`` for every server left out at the last call."""
        return [item for items in self._skips.values() for item in items]

    def forget(self) -> None:
        """The next call resolves every upstream again (what it was given may not have been applied)."""
        self._resolved = None

    def resolver(self, hosts: Iterable[str] = ()) -> Resolve:
        """A fresh resolver (DNS changes): with ``hosts_file`` that file, else lookups off this thread that
        wait ``timeout`` seconds in all (``hosts`` started at once); the late hosts go to ``_late``."""
        if self.hosts_file:
            self._late = set()
            return make_resolver(hosts_file=self.hosts_file)
        lookup = self.lookups.timed(self.timeout)
        lookup.prefetch(hosts)
        self._late = lookup.late
        return make_resolver(getaddrinfo=lookup)

    def resolvable(self, upstreams: Mapping[str, Upstream], empty: Iterable[str],
                   changed: Optional[Iterable[str]] = None) -> Tuple[Dict[str, Upstream], Set[str]]:
        """({name: Upstream}, {empty names}) with host names resolved. ``changed``: the names that may
        differ from the last call's; None: all of them."""
        if changed is None or self._resolved is None:
            self._resolved, self._empty, self._skips = {}, set(), {}
            names = set(upstreams)
        else:
            names = set(changed) | set(self._skips)
        resolve = self.resolve = self.resolver(  # fresh each sync
            {server.host for name in names if name in upstreams for server in upstreams[name].servers
             if server.kind == "hostname"})
        for name in names:
            self._resolve_one(name, upstreams.get(name), resolve)
        return self._resolved, self._empty | set(empty)

    def _resolve_one(self, name: str, upstream: Optional[Upstream], resolve: Resolve) -> None:
        resolved = self._resolved
        if resolved is None:  # its only caller, resolvable(), sets it first
            raise AssertionError("resolvable() sets _resolved first")
        resolved.pop(name, None)
        self._empty.discard(name)
        self._skips.pop(name, None)
        if upstream is None:
            return
        if all(server.kind != "hostname" for server in upstream.servers):
            resolved[name] = upstream
            return
        why = {server: self._problem(server.host, resolve) for server in upstream.servers if server.kind == "hostname"}
        kept = [server for server in upstream.servers if why.get(server) is None]
        self._skips[name] = [{"what": f"server {server.spec()} of upstream {name}", "why": why[server]}
                             for server in upstream.servers if server not in kept]
        if kept and not all(server.backup for server in kept):
            resolved[name] = upstream if len(kept) == len(upstream.servers) else \
                build_upstream(name, kept, upstream.directives)
        else:
            self._empty.add(name)

    def _why(self, host: str) -> str:
        if host in self._late:
            return (f"the host name {host!r} did not resolve within {self.timeout:g}s (resolve_timeout); "
                    "it is asked again at the next sync")
        return f"the host name {host!r} does not resolve on this host"

    def _problem(self, host: str, resolve: Resolve) -> Optional[str]:
        """Why the server with host name ``host`` is left out, or None."""
        addresses = resolve(host)
        if not addresses:
            return self._why(host)
        if self.policy is not None:
            for address in addresses:
                refused = self.policy.problem_of_host(address)
                if refused is not None:
                    return f"the host name {host!r} resolves to {address}: {refused}"
        return None
