# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: host names in servers, resolved as Tengine will resolve them.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host names in servers: Tengine resolves a name once, when the upstream is posted, and answers 500
to a name it cannot resolve; ``/detail`` then shows the addresses, not the name. Shared by the
dyups_upstream module and the watcher (resolve first, never send what Tengine would refuse; compare
``/detail`` by address).
"""

from __future__ import annotations

import socket
from typing import Any, Callable, List, Mapping, Sequence, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import parse_host
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream

# (family, type, proto, canonname, sockaddr) as socket.getaddrinfo gives them
AddrInfo = Tuple[int, int, int, str, Tuple[Any, ...]]
GetAddrInfo = Callable[..., Sequence[AddrInfo]]
# host -> the canonical addresses it resolves to, IPv4 first
Resolve = Callable[[str], List[str]]


def hosts_file_lookup(path: str) -> GetAddrInfo:
    """A ``getaddrinfo`` stand-in that reads one hosts file (the /etc/hosts format) and never asks DNS.

    For sites (and tests) that want no DNS dependency; the Lua flavor's ``hosts_file`` option does the
    same on the nginx side.
    """
    def getaddrinfo(host: str, _port: object, _family: int = 0, _type: int = 0) -> list[AddrInfo]:
        found: list[AddrInfo] = []
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                words = line.split("#", 1)[0].split()
                if len(words) >= 2 and host.lower() in (word.lower() for word in words[1:]):
                    family = socket.AF_INET6 if ":" in words[0] else socket.AF_INET
                    found.append((family, socket.SOCK_STREAM, 0, "", (words[0], 0)))
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, f"{host} is not in {path}")
        return found

    return getaddrinfo


def make_resolver(getaddrinfo: GetAddrInfo = socket.getaddrinfo, hosts_file: str | None = None) -> Resolve:
    """host -> canonical addresses it resolves to on this node, IPv4 first as nginx orders them (cached;
    [] when it does not resolve).

    With ``hosts_file`` names are looked up in that file only (hosts_file_lookup).
    """
    if hosts_file:
        getaddrinfo = hosts_file_lookup(hosts_file)
    cache: dict[str, list[str]] = {}

    def resolve(host: str) -> list[str]:
        if host not in cache:
            try:
                infos = getaddrinfo(host, None, 0, socket.SOCK_STREAM)
            except (OSError, UnicodeError):
                infos = []
            ipv4: list[str] = []
            ipv6: list[str] = []
            for family, _type, _proto, _name, sockaddr in infos:
                if family in (socket.AF_INET, socket.AF_INET6):
                    found = ipv4 if family == socket.AF_INET else ipv6
                    address = parse_host(sockaddr[0].split("%")[0])
                    if address not in found:
                        found.append(address)
            cache[host] = ipv4 + ipv6  # nginx's order: IPv4 first, each in the resolver's order
        return cache[host]

    return resolve


def check_resolvable(desired: Mapping[str, Upstream | None], resolve: Resolve) -> None:
    for upstream in desired.values():
        if upstream is None:
            continue
        for server in upstream.servers:
            if server.kind == "hostname" and not resolve(server.host):
                raise ValidationError(
                    "server", server.spec(),
                    f"the host name {server.host!r} (upstream {upstream.name}) does not resolve on this host, and "
                    "Tengine answers 500 to a name it cannot resolve; fix the name or set resolve_check=false")
