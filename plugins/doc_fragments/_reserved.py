# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the documentation of the reserved-name options (_reserved.py).
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  nginx_conf:
    description:
      - Main configuration file of the running nginx or Tengine. When set, every run learns the upstreams it
        defines statically (C(upstream NAME {) blocks of C(nginx -T), outside the upstream file) and reserves
        them; a POST of such a name replaces the static upstream at run time on Tengine, and a second block of
        it in the upstream file makes every later reload fail.
      - C(nginx -T) must be able to read the whole configuration (certificates too); where it cannot, leave
        this unset and list the static names in O(reserved_names). The task fails when C(nginx -T) fails.
    type: path
  nginx_binary:
    description:
      - The nginx or Tengine binary that runs O(nginx_conf) (C(-T) is run with it).
    type: path
    default: nginx
  reserved_names:
    description:
      - Upstream names never created, replaced or deleted, besides those learnt from O(nginx_conf) and the Lua
        flavor's own C(DYUPS_BALANCER), which is always reserved. Compared ignoring letter case.
    type: list
    elements: str
    default: []
"""
