#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: dyups_upstream_info
short_description: Read the upstreams of a dyups interface, with every server parameter
version_added: 0.1.0
description:
  - Reads C(GET /detail) from Tengine's dyups interface (or the stock nginx Lua flavor) and returns every upstream,
    or only those named in O(names), with its servers and all their parameters as structured data.
  - Read-only.
  - The interface shows addresses, not host names; a server added as a host name appears once per address it
    resolved to.
requirements:
  - Python 3.8 or later on the managed host (the standard library and ansible-core's own module_utils; nothing to
    install).
author:
  - swallowkeeper.dyups contributors (!UNKNOWN)
extends_documentation_fragment:
  - swallowkeeper.dyups._dyups
attributes:
  check_mode:
    support: full
    description: The module never changes anything; it reads the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
options:
  names:
    description:
      - Return only these upstreams. Names that the interface does not hold are listed in RV(missing).
      - Default is every upstream.
    type: list
    elements: str
seealso:
  - module: swallowkeeper.dyups.dyups_upstream
"""

EXAMPLES = r"""
# The tengine_dyups role's interface refuses (403) every request without its shared secret: the file the role
# wrote (root's, the watcher's group's) goes in api_secret_file.
- name: Read every upstream
  swallowkeeper.dyups.dyups_upstream_info:
    api_secret_file: /etc/swallowkeeper-dyups/dyups.secret
  register: dyups

- name: Show the addresses of one upstream
  ansible.builtin.debug:
    msg: "{{ dyups.upstreams['WebappReadonly_b'] | default([]) | map(attribute='address') | list }}"

- name: Read two upstreams from another interface
  swallowkeeper.dyups.dyups_upstream_info:
    api_url: http://127.0.0.1:18883
    api_secret_file: /etc/swallowkeeper-dyups/dyups.secret
    names:
      - WebappReadonly
      - WebappReadonly_b
  register: two

- name: Put them back later, exactly as they were (the same form as the upstreams option)
  swallowkeeper.dyups.dyups_upstream:
    api_url: http://127.0.0.1:18883
    api_secret_file: /etc/swallowkeeper-dyups/dyups.secret
    upstreams: "{{ two.upstreams }}"
"""

RETURN = r"""
upstreams:
  description:
    - Upstream name to its servers, each a dict with every parameter the interface reports. C(fail_timeout) is in
      seconds.
    - The same form as the O(swallowkeeper.dyups.dyups_upstream#module:upstreams) option of
      M(swallowkeeper.dyups.dyups_upstream), so it can be given back to it.
  returned: success
  type: dict
  sample:
    WebappReadonly_b:
      - address: 10.117.17.21:8180
        host: 10.117.17.21
        port: 8180
        weight: 1
        max_fails: 1
        fail_timeout: 10
        max_conns: 0
        backup: false
        down: false
names:
  description: Names of the returned upstreams, sorted.
  returned: success
  type: list
  elements: str
  sample: [WebappReadonly, WebappReadonly_b]
missing:
  description: Names from O(names) that the interface does not hold.
  returned: success
  type: list
  elements: str
  sample: []
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_options import (
    dyups_argument_spec, dyups_client_from_params)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import DyupsError, ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import sort_servers


def select(detail, names=None):
    """(upstreams, names, missing) for the module's result, from ``/detail``'s {name: [Server]}."""
    wanted = sorted(detail) if names is None else sorted(set(names) & set(detail))
    upstreams = {name: [server.to_dict() for server in sort_servers(detail[name])] for name in wanted}
    missing = [] if names is None else sorted(set(names) - set(detail))
    return upstreams, wanted, missing


def main():
    spec = dyups_argument_spec()
    spec.update(names=dict(type="list", elements="str"))
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True)
    try:
        client = dyups_client_from_params(module.params)
        detail = client.detail()
    except (ValidationError, DyupsError) as exc:
        module.fail_json(msg=str(exc))
    upstreams, names, missing = select(detail, module.params["names"])
    module.exit_json(changed=False, upstreams=upstreams, names=names, missing=missing)


if __name__ == "__main__":
    main()
