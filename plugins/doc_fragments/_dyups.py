# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: the documentation of the dyups connection options (_dyups_options.py).
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
attributes:
  action_group:
    support: full
    description: Use C(group/swallowkeeper.dyups.dyups) in C(module_defaults) to set O(api_url) and O(timeout) once.
    membership:
      - swallowkeeper.dyups.dyups
options:
  api_url:
    description:
      - Base URL of the dyups interface (Tengine's C(dyups_interface), or the stock nginx Lua flavor), as seen
        from the managed node.
      - The interface usually listens on loopback only, so the task runs on the nginx host itself.
      - Set it for every dyups module at once with C(module_defaults) and the group
        C(group/swallowkeeper.dyups.dyups).
      - C(unix:/PATH) reaches an interface on a unix socket (the role's C(tengine_dyups_api_listen) C(unix:PATH)).
    type: str
    default: http://127.0.0.1:18882
  api_secret_file:
    description:
      - File on the managed node holding the interface's shared secret, sent as the C(X-Dyups-Secret) header.
        Read from a file only, never given as an argument, never in the task's output.
      - The tengine_dyups role's interface requires it by default - the role writes the file
        C(/etc/swallowkeeper-dyups/dyups.secret) (generated on the host, or C(tengine_dyups_api_secret)), readable
        by root and the watcher's group, so run the task as root (C(become)). Without it the interface refuses
        (403) every request and the task fails.
    type: path
  timeout:
    description:
      - Seconds to wait for each answer from the interface.
      - A 409 answer (busy, C(dyups_trylock on)) is sent again up to six times, with pauses that double from 0.05
        to 1 second (about 2.5 seconds in all).
    type: float
    default: 5.0
"""
