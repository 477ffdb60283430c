# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the documentation of the network options (_server_policy.py).
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  allowed_networks:
    description:
      - Networks (CIDR, such as C(10.0.0.0/8) or C(fd00::/8)) servers may point into. When not empty, a server
        outside all of them is refused.
      - Servers from Consul (M(swallowkeeper.dyups.consul_services), the watcher) never point at loopback,
        unspecified (C(0.0.0.0), C(::)), link-local (C(169.254.0.0/16), C(fe80::/10)), multicast or broadcast
        addresses, nor at an address of this host, IPv4-mapped forms included. A network listed here that lies
        inside one of those lifts the refusal for itself (C(127.0.0.0/8) for test backends on loopback; an
        address of this host only as C(/32) or C(/128)); C(0.0.0.0/0) lifts none.
      - M(swallowkeeper.dyups.dyups_upstream) (the operator's own servers) refuses only what these two lists say.
      - An address in IPv4-mapped form (C(::ffff:10.1.2.3)) is checked as the IPv4 address it holds, so a network
        of either list inside C(::ffff:0:0/96) is taken as the IPv4 network it maps (C(::ffff:10.0.0.0/104) is
        C(10.0.0.0/8)).
    type: list
    elements: str
    default: []
  denied_networks:
    description:
      - Networks (CIDR) servers never point into, whatever O(allowed_networks) says.
    type: list
    elements: str
    default: []
"""
