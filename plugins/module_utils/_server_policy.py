# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: where a server may point, and the Meta bounds of servers from Consul.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a server may be, beyond the server rules of ``_servers.py``: the one place of the address policy.

A Consul registrant chooses the address nginx proxies to. Pointed at the proxy host itself (its dyups
interface, the watcher's endpoint, the Consul agent) or at a cloud's metadata address, a public vhost
becomes a way in (issue 19 finding 1). ``ServerPolicy.problem(server)`` gives the reason a server must
not be used, or None. Rules, in this order (docs/security.md says why):

1. ``denied_networks`` (CIDRs): an address inside one is refused.
2. ``allowed_networks`` (CIDRs): an address inside one is allowed; when the list is not empty, an
   address outside all of them is refused.
3. The built-in classes (``builtin=True``, the default for servers from Consul): loopback, unspecified
   (``0.0.0.0/8``, ``::``), link-local (``169.254.0.0/16``, ``fe80::/10``), multicast, broadcast, and
   every address of this host (``own``: ``host_networks()``) are refused. An allowed network lifts a
   class only when it lies inside that class (``127.0.0.0/8`` lifts loopback; ``0.0.0.0/0`` lifts none;
   an address of this host is lifted only by itself, ``/32`` or ``/128``).
4. An IPv4-mapped IPv6 address (``::ffff:127.0.0.1``) is checked as the IPv4 address it carries; so a
   network of ``allowed_networks``/``denied_networks`` inside ``::ffff:0:0/96`` is taken as the IPv4
   network it maps (``::ffff:10.0.0.0/104`` is ``10.0.0.0/8``).
5. Host names: refused unless ``allow_host_names`` (nginx resolves a name when the upstream is posted, after
   any check made here, and a registrant may control what the name resolves to). A name that the C
   library reads as an IPv4 address (``0x7f000001``, ``0x7f.0.0.0x1``) is refused always. With ``allow_host_names``, the
   watcher checks what each name resolves to at every sync (``problem_of_address``).
6. Meta bounds (servers from Consul): ``weight`` above ``max_weight`` (default 100), and
   ``max_fails=0`` (nginx never marks such a server failed) unless ``allow_zero_max_fails``.

Short IPv4 spellings (``127.1``, ``0``, ``2130706433``, octal ``0177.0.0.1``) never get here: the server
rules refuse them (``_servers.parse_host``).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any, Iterable, List, Optional, Tuple, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

DEFAULT_MAX_WEIGHT = 100
BUILTIN_CLASSES: Tuple[Tuple[str, str], ...] = (
    ("0.0.0.0/8", "unspecified (this host)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata services live here)"),
    ("224.0.0.0/4", "multicast"),
    ("255.255.255.255/32", "broadcast"),
    ("::/128", "unspecified (this host)"),
    ("::1/128", "loopback"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
)
_CLASSES = tuple((ipaddress.ip_network(cidr), what) for cidr, what in BUILTIN_CLASSES)
_CACHE_SIZE = 65536  # verdicts kept per policy (addresses come from untrusted registrants: bounded)
_OPT_IN = "to use it, list that network or a part of it in allowed_networks"
_OWN = "an address of this host"
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")  # IPv4-mapped addresses (rule 4)


def parse_networks(values: Any, what: str) -> Tuple[Network, ...]:
    """CIDRs (or single addresses) as networks; ValueError naming ``what`` and the value. A network inside
    ``::ffff:0:0/96`` is the IPv4 network it maps (rule 4: such addresses are checked as IPv4)."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = [values]
    networks = []
    for value in values:
        try:
            network = ipaddress.ip_network(str(value).strip(), strict=False)
        except ValueError:
            raise ValueError(f"{what}: {value!r} is not a network in CIDR form (10.0.0.0/8, fd00::/8)") from None
        if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
            network = ipaddress.IPv4Network((int(network.network_address) - int(_MAPPED.network_address),
                                             network.prefixlen - 96))
        networks.append(network)
    return tuple(networks)


def host_networks(proc: str = "/proc/net") -> Tuple[Network, ...]:
    """The addresses of this host (its network namespace), as the kernel's local routes list them
    (``fib_trie``: ``host LOCAL``; ``if_inet6``). Empty where /proc does not hold them."""
    return read_host_networks(proc)[0]


def read_host_networks(proc: str = "/proc/net") -> Tuple[Tuple[Network, ...], Optional[str]]:
    """``host_networks(proc)`` and, when the kernel's lists could not be read, the warning to give (None
    when they were): a policy without them does not refuse this host's addresses outside the built-in
    classes. No ``if_inet6`` at all is a kernel without IPv6 (no IPv6 address to miss), not a failure."""
    found: List[Network] = []
    unread: List[str] = []
    try:
        with open(f"{proc}/fib_trie", encoding="ascii") as handle:
            previous = ""
            for line in handle:
                words = line.split()
                if words[-2:] == ["host", "LOCAL"] and words[0].startswith("/") and previous:
                    found.append(ipaddress.ip_network(f"{previous}{words[0]}", strict=False))
                previous = words[1] if len(words) == 2 and words[0] in ("|--", "+--") else ""
    except (OSError, ValueError) as exc:
        unread.append(f"{proc}/fib_trie: {_why(exc)}")
    try:
        with open(f"{proc}/if_inet6", encoding="ascii") as handle:
            for line in handle:
                hexed = line.split()[0] if line.split() else ""
                if len(hexed) == 32:
                    found.append(ipaddress.ip_network(ipaddress.IPv6Address(int(hexed, 16))))
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as exc:
        unread.append(f"{proc}/if_inet6: {_why(exc)}")
    warning = None
    if unread:
        warning = (f"this host's own addresses could not be read ({'; '.join(unread)}): a server from Consul "
                   "that points at one of them outside loopback is not refused (servers from Consul are "
                   "checked without them); list them in denied_networks")
    return tuple(sorted(set(found), key=lambda net: (net.version, net))), warning


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return f"not the kernel's format ({exc})"


def _bounds(networks: Iterable[Network]) -> Tuple[Tuple[int, int, int], ...]:
    """(version, first, last address as integers) of each network: compared as integers, a check costs a
    few microseconds per address (``address in network`` and hashing networks cost several times more)."""
    return tuple((network.version, int(network.network_address), int(network.broadcast_address))
                 for network in networks)


def _numeric_name(host: str) -> bool:
    """True when the C library (inet_aton, as getaddrinfo) reads ``host`` as an IPv4 address."""
    try:
        socket.inet_aton(host)
    except (OSError, ValueError):
        return False
    return True


class ServerPolicy:
    """See the module docstring. ``builtin``: refuse the built-in classes and ``own`` (servers from
    Consul); False for the operator's own input (dyups_upstream: ``operator_policy``), where only the two
    lists apply. ``max_weight`` None: no bound beyond the server rules'."""

    def __init__(self, allowed_networks: Any = (), denied_networks: Any = (), builtin: bool = True,
                 own: Iterable[Network] = (), allow_host_names: bool = False, max_weight: Optional[int] = DEFAULT_MAX_WEIGHT,
                 allow_zero_max_fails: bool = False, own_unread: Optional[str] = None) -> None:
        self.allowed = parse_networks(allowed_networks, "allowed_networks")
        self.denied = parse_networks(denied_networks, "denied_networks")
        self.builtin = builtin
        # this host's addresses outside the classes (127.0.0.1/32 is loopback already: 127.0.0.0/8 lifts it)
        self.own = tuple(net for net in own if not any(
            net.version == cls.version and net.subnet_of(cls) for cls, _what in _CLASSES))  # type: ignore[arg-type]
        self.own_unread = own_unread  # the warning when this host's addresses could not be read (read_host_networks)
        self.allow_host_names = allow_host_names
        if max_weight is not None and (isinstance(max_weight, bool) or not isinstance(max_weight, int)
                                       or not 1 <= max_weight <= 10000):
            raise ValueError(f"max_weight: expected a whole number 1-10000, not {max_weight!r}")
        self.max_weight = max_weight
        self.allow_zero_max_fails = allow_zero_max_fails
        self._verdicts: dict = {}
        self._classes = _CLASSES + tuple((network, _OWN) for network in self.own)
        self._denied_bounds, self._allowed_bounds = _bounds(self.denied), _bounds(self.allowed)
        self._class_bounds = _bounds(network for network, _what in self._classes)

    def _key(self) -> tuple:
        return (self.allowed, self.denied, self.builtin, self.own, self.allow_host_names, self.max_weight,
                self.allow_zero_max_fails)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ServerPolicy) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"ServerPolicy(allowed={[str(n) for n in self.allowed]}, denied={[str(n) for n in self.denied]}, "
                f"builtin={self.builtin}, allow_host_names={self.allow_host_names}, max_weight={self.max_weight}, "
                f"allow_zero_max_fails={self.allow_zero_max_fails})")

    def problem(self, server: Any) -> Optional[str]:
        """Why ``server`` (a ``_servers.Server``) must not be used, or None."""
        why = self.problem_of_host(server.host)
        if why is None and self.max_weight is not None and server.weight > self.max_weight:
            why = f"its weight {server.weight} is above max_weight {self.max_weight} (one instance would take the service's traffic)"
        if why is None and server.max_fails == 0 and not self.allow_zero_max_fails:
            why = "its max_fails=0 means nginx never takes it out of rotation when it fails (allowed with allow_zero_max_fails)"
        return why

    def problem_of_host(self, host: str) -> Optional[str]:
        """Why a canonical host (``_servers.parse_host``'s form) must not be used, or None."""
        if host in self._verdicts:
            return self._verdicts[host]
        try:
            address: Optional[Address] = ipaddress.ip_address(host)
        except ValueError:
            address = None
        if address is not None:
            why = self.problem_of_address(address)
        elif (self.builtin or self.allowed or self.denied) and _numeric_name(host):
            why = f"the host {host!r} is an IPv4 address in a spelling nginx's resolver reads as one; write a.b.c.d"
        elif self.builtin and not self.allow_host_names:
            why = (f"the host name {host!r} would be resolved by nginx after any check (allowed with allow_host_names; "
                   "write the address)")
        else:
            why = None
        if len(self._verdicts) >= _CACHE_SIZE:
            self._verdicts.clear()
        self._verdicts[host] = why
        return why

    def problem_of_address(self, address: Address) -> Optional[str]:
        """Why an IP address must not be used, or None (rules 1-4)."""
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            mapped = self.problem_of_address(address.ipv4_mapped)
            return None if mapped is None else f"{address} is IPv4-mapped: {mapped}"
        version, number = address.version, int(address)
        for network, (net_version, first, last) in zip(self.denied, self._denied_bounds):
            if net_version == version and first <= number <= last:
                return f"{address} is in denied_networks ({network})"
        inside = [network for network, (net_version, first, last) in zip(self.allowed, self._allowed_bounds)
                  if net_version == version and first <= number <= last]
        if self.allowed and not inside:
            return f"{address} is outside allowed_networks"
        if not self.builtin:
            return None
        for (network, what), (net_version, first, last) in zip(self._classes, self._class_bounds):
            if net_version != version or not first <= number <= last:
                continue
            lifted = any(net.version == network.version and net.subnet_of(network)  # type: ignore[arg-type]
                         for net in inside)
            if not lifted:
                return f"{address} is {what}: a registrant must not point nginx at it; {_OPT_IN} ({network})"
        return None


def operator_policy(allowed_networks: Any = (), denied_networks: Any = ()) -> ServerPolicy:
    """The policy of the operator's own servers (dyups_upstream): the two lists only; loopback, host
    names and every Meta value the server rules accept stay allowed."""
    return ServerPolicy(allowed_networks, denied_networks, builtin=False, allow_host_names=True, max_weight=None,
                        allow_zero_max_fails=True)


def network_argument_spec() -> dict:
    """The modules' network options (doc fragment ``_server_policy``; the watcher's settings have the same names)."""
    return {"allowed_networks": {"type": "list", "elements": "str", "default": []},
            "denied_networks": {"type": "list", "elements": "str", "default": []}}


def consul_argument_spec() -> dict:
    """consul_services' options: the networks and the bounds of what a registrant may set."""
    spec = network_argument_spec()
    spec.update(allow_host_names={"type": "bool", "default": False},
                max_weight={"type": "int", "default": DEFAULT_MAX_WEIGHT},
                allow_zero_max_fails={"type": "bool", "default": False})
    return spec


def consul_policy_from_params(params: dict) -> ServerPolicy:
    """The policy of servers from Consul, from consul_services' options and this host's addresses (ValueError;
    ``own_unread``: the warning to give when those could not be read)."""
    own, own_unread = read_host_networks()
    return ServerPolicy(params["allowed_networks"], params["denied_networks"], own=own,
                        allow_host_names=params["allow_host_names"], max_weight=params["max_weight"],
                        allow_zero_max_fails=params["allow_zero_max_fails"], own_unread=own_unread)
