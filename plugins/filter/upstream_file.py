# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filter ``upstream_file``: upstreams -> the upstream file's text, through the collection's own rules."""

from __future__ import annotations

DOCUMENTATION = r"""
name: upstream_file
author: swallowkeeper.dyups contributors
version_added: 0.1.0
short_description: Render upstreams as the text of an upstream file
description:
  - Turns a mapping of upstream names to servers into the text of an upstream file
    (C(upstream NAME { server ...; }) blocks), exactly as the P(swallowkeeper.dyups.dyups_upstream#module)
    module and the watcher write it.
  - Every name, server and directive passes the collection's validation first; a value that breaks a
    rule fails the template with a message that names it, so nothing nginx would refuse is ever written.
  - The role P(swallowkeeper.dyups.tengine_dyups#role) uses it for the initial upstream file.
options:
  _input:
    description:
      - Upstream name -> list of servers (C(10.0.0.1:8080 weight=2) strings or dicts with C(host),
        C(port), C(weight) ...), or name -> dict with C(servers) and C(directives).
    type: dict
    required: true
  header:
    description:
      - Comment text put at the top of the file; each line gets a C(# ) prefix. Empty for the default header.
    type: str
    default: ""
"""

EXAMPLES = r"""
- name: Write the initial upstream file (only when it does not exist yet)
  ansible.builtin.copy:
    content: "{{ {'web': ['10.0.0.1:8080', '10.0.0.2:8080 weight=2'],
                  'api': {'servers': ['10.0.0.3:9000'], 'directives': ['keepalive 16']}}
                 | swallowkeeper.dyups.upstream_file }}"
    dest: /var/lib/swallowkeeper-dyups/upstreams.conf
    force: false
    mode: "0644"
"""

RETURN = r"""
_value:
  description: The file's text, upstreams sorted by name.
  type: str
"""

from ansible.errors import AnsibleFilterError

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import upstream_from_spec


def upstream_file(upstreams, header=""):
    if not isinstance(upstreams, dict):
        raise AnsibleFilterError(f"upstream_file expects a mapping of upstream names, got {type(upstreams).__name__}")
    try:
        built = [upstream_from_spec(str(name), spec) for name, spec in upstreams.items()]
    except ValidationError as exc:
        raise AnsibleFilterError(f"upstream_file: {exc}") from None
    if header:
        text = "".join(f"# {line}".rstrip() + "\n" for line in str(header).splitlines())
        return _upstream_file.render(built, header=text)
    return _upstream_file.render(built)


class FilterModule:
    def filters(self):
        return {"upstream_file": upstream_file}
