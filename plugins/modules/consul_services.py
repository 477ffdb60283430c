#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: consul_services
short_description: Read services and their health from Consul and map them to nginx upstreams
version_added: 0.1.0
description:
  - Reads the service catalog and the health of every instance from a Consul agent and maps them to upstreams
    the way the swallowkeeper watcher does (one shared mapping).
  - An instance goes to upstream C(SERVICE), or C(SERVICE_TAG) when it carries the tag C(KEY=TAG) (O(tag_key));
    C(KEY=default) or no such tag means no suffix.
  - The server address is the service's C(Address), else its node's; server parameters come from the service
    C(Meta) keys C(dyups_weight), C(dyups_max_fails), C(dyups_fail_timeout), C(dyups_max_conns), C(dyups_backup)
    and C(dyups_down).
  - Only instances whose checks (node and service checks) are all in O(passing_states) serve.
  - Anything that breaks the upstream name or server rules (a service C(a b), a tag C(gray=x y), a weight
    C(abc), an unknown C(dyups_*) Meta key) is left out, counted by reason in RV(skipped_reasons) and listed, the first
    O(skipped_shown) in full, in RV(skipped_items); a few warnings are shown. Nothing invalid is ever returned in
    RV(upstreams). A service whose name cannot name an upstream is not read at all.
  - An instance that points where a registrant must not make nginx go (loopback, this host, link-local, outside
    O(allowed_networks) ...) or whose Meta is out of bounds (O(max_weight), O(allow_zero_max_fails)) is skipped the
    same way, with the reason (docs/security.md).
  - One connection to the agent per fetch thread, reused for every request. When the selected services outnumber
    the nodes, they are read node by node (C(/v1/catalog/nodes), C(/v1/catalog/node-services/NODE) per node, one
    C(/v1/health/state/any), a few requests, not one per service); when the catalog changes during that read, or a
    node cannot be read by name, or the token may not read nodes, they are read service by service
    (C(/v1/health/service/NAME)). Both give the same result.
  - Read-only. RV(upstreams) is ready for the O(swallowkeeper.dyups.dyups_upstream#module:upstreams) option of
    M(swallowkeeper.dyups.dyups_upstream).
requirements:
  - Python 3.8 or later on the managed host (the standard library and ansible-core's own module_utils; nothing to
    install).
author:
  - swallowkeeper.dyups contributors (!UNKNOWN)
extends_documentation_fragment:
  - swallowkeeper.dyups._consul
  - swallowkeeper.dyups._reserved
  - swallowkeeper.dyups._server_policy
attributes:
  check_mode:
    support: full
    description: The module never changes anything; it reads the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  action_group:
    support: full
    description: Use C(group/swallowkeeper.dyups.consul) in C(module_defaults) to set the connection options once.
    membership:
      - swallowkeeper.dyups.consul
options:
  tag_key:
    description:
      - Key of the C(KEY=TAG) tag that selects the upstream C(SERVICE_TAG).
      - An instance with two different C(KEY=) tags, or an empty C(KEY=), is skipped.
    type: str
    default: gray
  services:
    description:
      - Read only these services (still subject to O(include), O(exclude) and O(prefix)).
      - Default is every service in the catalog. A listed service that is not registered is reported in
        RV(skipped_items).
    type: list
    elements: str
  include:
    description:
      - When not empty, only these services.
    type: list
    elements: str
    default: []
  exclude:
    description:
      - Never these services.
    type: list
    elements: str
    default: [consul]
  prefix:
    description:
      - Only services whose name starts with this.
    type: str
    default: ""
  passing_states:
    description:
      - Check states that count as passing. An instance serves when every one of its checks is in this list.
    type: list
    elements: str
    choices: [passing, warning, critical]
    default: [passing]
  report_instances:
    description:
      - Return RV(instances). V(false) leaves it empty, which a large catalog reads much faster (the result of 5 000
        services x 3 instances is about 4 MB with it; C(playbooks/sync.yml) does without).
    type: bool
    default: true
  skipped_shown:
    description:
      - How many of the items left out RV(skipped_items) lists in full (RV(skipped_count) and RV(skipped_reasons)
        count them all); V(0) lists them all.
    type: int
    default: 50
  include_warning:
    description:
      - Count C(warning) as passing (the same as adding C(warning) to O(passing_states)).
    type: bool
    default: false
  upstream_conf:
    description:
      - The upstream file the result is written to (by M(swallowkeeper.dyups.dyups_upstream)); with O(nginx_conf),
        its blocks are not reserved. Required with O(nginx_conf).
    type: path
  allow_host_names:
    description:
      - Accept instances whose address is a host name. Off by default - nginx resolves a name when the upstream is
        posted, after any check, and a registrant may control what it resolves to; such instances are skipped
        with the reason. A name the C library reads as an IPv4 address (C(0x7f000001)) is refused always.
    type: bool
    default: false
  max_weight:
    description:
      - The highest weight Meta C(dyups_weight) may set (1-10000); an instance above it is skipped with the
        reason, so that one registrant cannot take a service's traffic.
    type: int
    default: 100
  allow_zero_max_fails:
    description:
      - Accept Meta C(dyups_max_fails=0), with which nginx never takes a failing server out of rotation.
        Off by default - such instances are skipped with the reason.
    type: bool
    default: false
notes:
  - With ACLs enabled Consul does not refuse what a token may not read, it hides it. A catalog that lists no service
    at all (every datacenter has at least C(consul)) therefore fails the task as a missing or insufficient token,
    and a service the catalog lists but whose instances cannot be read is reported in RV(skipped_items).
  - The mapping from Consul to upstreams, the name and tag rules and the least-privilege ACL policy are described in
    C(docs/consul.md) of the installed collection (C(ansible_collections/swallowkeeper/dyups/docs/consul.md)).
seealso:
  - module: swallowkeeper.dyups.dyups_upstream
"""

EXAMPLES = r"""
- name: Read every service from the local agent
  swallowkeeper.dyups.consul_services:
  register: consul

- name: Read the webapp services through an ACL token kept in a file, counting warning as passing
  swallowkeeper.dyups.consul_services:
    consul_url: http://127.0.0.1:8500
    token_file: /etc/consul.d/read.token
    prefix: webapp
    include_warning: true
  register: webapps

- name: Push them to nginx through dyups and keep the upstream file in step
  swallowkeeper.dyups.dyups_upstream:
    upstreams: "{{ webapps.upstream_servers }}"
    exclusive: true
    exclusive_select:        # delete only what a webapp* service may have made
      prefix: webapp
    upstream_conf: /var/lib/swallowkeeper-dyups/upstreams.conf

- name: Show what was left out and why
  ansible.builtin.debug:
    msg: "{{ item.what }}: {{ item.why }}"
  loop: "{{ webapps.skipped_items }}"
"""

RETURN = r"""
upstreams:
  description:
    - Upstream name to its servers (nginx syntax, sorted) and directives (always empty here), for every upstream
      with at least one serving instance. The form that M(swallowkeeper.dyups.dyups_upstream) takes in
      O(swallowkeeper.dyups.dyups_upstream#module:upstreams).
  returned: success
  type: dict
  sample:
    WebappReadonly:
      servers: ["10.0.0.11:8080", "10.0.0.12:8080 weight=2"]
      directives: []
    WebappReadonly_b:
      servers: ["10.0.0.13:8080 backup"]
      directives: []
upstream_servers:
  description:
    - The same upstreams as RV(upstreams), each with its list of servers only.
    - Given to O(swallowkeeper.dyups.dyups_upstream#module:upstreams) in this form,
      M(swallowkeeper.dyups.dyups_upstream) keeps the directives that its upstream file holds for each upstream
      (a C(keepalive) added by hand, say), where RV(upstreams) (with C(directives) set to V([])) would remove them.
  returned: success
  type: dict
  sample:
    WebappReadonly: ["10.0.0.11:8080", "10.0.0.12:8080 weight=2"]
    WebappReadonly_b: ["10.0.0.13:8080 backup"]
empty:
  description:
    - Upstreams that have instances, none of them serving. They are not in RV(upstreams); decide yourself whether
      to keep, mark down or remove them.
  returned: success
  type: list
  elements: str
  sample: [WebappWrite]
instances:
  description: Every instance that maps to an upstream, serving or not, sorted by service, node and ID.
  returned: success (empty with O(report_instances=false))
  type: list
  elements: dict
  contains:
    service:
      description: Consul service name.
      type: str
      sample: WebappReadonly
    id:
      description: Service instance ID.
      type: str
      sample: webapp-ro-1
    node:
      description: Consul node name.
      type: str
      sample: web-01
    address:
      description: Host the server uses (the service address, else the node address).
      type: str
      sample: 10.0.0.11
    port:
      description: Port.
      type: int
      sample: 8080
    server:
      description: The server in nginx syntax, with parameters from Meta.
      type: str
      sample: 10.0.0.12:8080 weight=2
    tags:
      description: The instance's tags.
      type: list
      elements: str
      sample: ["gray=b"]
    meta:
      description: The instance's service Meta.
      type: dict
      sample: {dyups_weight: "2"}
    status:
      description: Worst status of the instance's checks (V(passing), V(warning) or V(critical)).
      type: str
      sample: passing
    serving:
      description: Whether all its checks are in O(passing_states), so that it is in RV(upstreams).
      type: bool
      sample: true
    upstream:
      description: Upstream the instance maps to.
      type: str
      sample: WebappReadonly_b
skipped_count:
  description: How many items were left out because they break a rule.
  returned: success
  type: int
  sample: 500
skipped_reasons:
  description:
    - How many items were left out for each reason (the reason with the values in it replaced by C(…)), most
      frequent first.
  returned: success
  type: dict
  sample: {"the service name contains whitespace, so it cannot name an upstream (its instances skipped)": 500}
skipped_items:
  description:
    - What was left out because it breaks a rule, and why; the first O(skipped_shown) of RV(skipped_count). The
      first 20 are also shown as warnings.
    - Not called C(skipped), because Ansible reads a true C(skipped) in a result as "this task was skipped".
  returned: success
  type: list
  elements: dict
  contains:
    what:
      description: The service or instance.
      type: str
      sample: instance 'w5' of service 'web' on node 'n2'
    why:
      description: The rule it breaks.
      type: str
      sample: "its server breaks the server rules: weight='abc' is not a whole number"
    service:
      description: Service name.
      type: str
    node:
      description: Node name, for an instance.
      type: str
    id:
      description: Instance ID, for an instance.
      type: str
catalog_index:
  description: X-Consul-Index of the catalog read.
  returned: success
  type: int
  sample: 4711
"""

import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_answers import slim_object
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import (
    UNREADABLE_NAME, path_segment_safe)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_instance import (
    health_index, node_registrations, parse_health_answer)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_mapping import (
    MappingOptions, MappingResult, map_instances, merge_results, skipped_service)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_options import (
    CONSUL_REQUIRED_BY, consul_argument_spec, consul_client_from_params)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    ConsulBadAnswer, ConsulError, ConsulForbidden, ValidationError)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_problem
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._reserved import (
    ReservedNamesUnknown, reserved_argument_spec, reserved_from_params)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._server_policy import (
    consul_argument_spec as policy_argument_spec, consul_policy_from_params)

FETCH_THREADS = 4
WARNINGS_SHOWN = 20
_VALUES = re.compile(r"'[^']*'|\"[^\"]*\"|\d+")


# The fields of a check that health_index reads (its Output, Notes and Definition are most of a large answer).
CHECK_FIELDS = ("Node", "CheckID", "Status", "ServiceID", "ServiceName")
# json.loads' object_hook for /v1/health/state/any: a check keeps only CHECK_FIELDS (_consul_answers.py).
check_fields = partial(slim_object, check_fields=CHECK_FIELDS)


def read_by_node(client, names, options, report, catalog_index):
    """{service: MappingResult} of ``names`` read node by node, as the watcher's full read: the two stores of
    every service built from /v1/catalog/nodes, /v1/catalog/node-services/NODE per node and one
    /v1/health/state/any (instances before checks), 3 + nodes requests instead of one per service. None
    when that is not fewer requests, a node name is no clean URL path, this Consul has no node-services
    (before 1.7) or the token may not read them, or the catalog's index moved while reading (an instance
    came or went between the reads): the caller then reads service by service, each service's instances
    and checks of one moment. A service found on no node is left out (read by service: that read tells an
    empty service from a token that may not read nodes)."""
    nodes = client.catalog_nodes().data
    node_names = sorted({node["Node"] for node in nodes if isinstance(node, dict) and isinstance(node.get("Node"), str)})
    if not node_names or len(node_names) + 3 >= len(names) or not all(path_segment_safe(node) for node in node_names):
        return None
    registrations = {name: {} for name in names}

    def node_read(node):
        return node_registrations(node, client.catalog_node_services(node).data, options.tag_key, keep_meta=report,
                                  wanted=registrations)

    try:
        with ThreadPoolExecutor(max_workers=min(FETCH_THREADS, len(node_names))) as pool:
            for found in pool.map(node_read, node_names):
                for name, key, instance in found:
                    registrations[name][key] = instance
        health = health_index(client.health_state_any(object_hook=check_fields).data)
        if client.catalog_services().index != catalog_index:
            return None
    except ConsulForbidden:
        return None
    except ConsulBadAnswer as exc:
        if exc.status == 404:
            return None
        raise
    return {name: map_instances(name, found, health, options, report=report)
            for name, found in registrations.items() if found}


def read_and_map(client, names, options, report=True, catalog_index=None):
    """The MappingResult of ``names``: read node by node when that is fewer requests (see read_by_node;
    ``catalog_index``: the index of the catalog the names come from), else service by service, each service
    mapped as its answer arrives (the raw answers are not all kept at once), a few requests at a time; a name
    that cannot name an upstream is not read. ``report``: list the instances too."""
    def unread(name):
        if not path_segment_safe(name):  # names Consul accepts that no URL path reads (docs/watcher.md)
            return skipped_service(name, UNREADABLE_NAME)
        return map_instances(name, None, {}, options, report=report)

    def one(name):
        entries = client.health_service(name).data
        registrations, health = parse_health_answer(name, entries, options.tag_key, keep_meta=report) or (None, {})
        return map_instances(name, registrations, health, options, report=report)

    names = sorted(names)
    results = [unread(name) for name in names if not path_segment_safe(name) or name_problem(name)]
    readable = [name for name in names if path_segment_safe(name) and not name_problem(name)]
    by_node = read_by_node(client, readable, options, report, catalog_index) if catalog_index is not None else None
    if by_node is not None:
        results.extend(by_node.values())
        readable = [name for name in readable if name not in by_node]
    if len(readable) <= 1:
        results.extend(one(name) for name in readable)
    else:
        with ThreadPoolExecutor(max_workers=FETCH_THREADS) as pool:
            results.extend(pool.map(one, readable))
    return merge_results(results)


def reason_of(why):
    """A skip reason with its values (quoted texts, numbers) taken out, to count alike reasons together."""
    return _VALUES.sub("…", why)


def run(module):
    params = module.params
    if params["skipped_shown"] < 0:
        module.fail_json(msg=f"skipped_shown must be 0 (all) or more, not {params['skipped_shown']}")
    try:
        options = MappingOptions(tag_key=params["tag_key"], include=tuple(params["include"] or ()),
                                 exclude=tuple(params["exclude"] or ()), prefix=params["prefix"] or "",
                                 include_warning=params["include_warning"],
                                 passing_states=tuple(params["passing_states"] or ()),
                                 reserved=reserved_from_params(params, [params["upstream_conf"]]),
                                 policy=consul_policy_from_params(params))
    except (ValueError, ReservedNamesUnknown) as exc:
        module.fail_json(msg=str(exc))
    try:
        client = consul_client_from_params(params)
    except ValidationError as exc:
        module.fail_json(msg=str(exc))
    cleartext = client.cleartext_token_warning()
    if cleartext:
        module.warn(cleartext)
    if options.policy.own_unread:
        module.warn(options.policy.own_unread)
    try:
        catalog = client.catalog_services()
        wanted = set(params["services"]) if params["services"] is not None else set(catalog.data)
        selected = {name for name in wanted if name in catalog.data and options.selects(name)}
        result = read_and_map(client, selected, options, report=params["report_instances"], catalog_index=catalog.index)
    except ConsulError as exc:
        module.fail_json(msg=str(exc), url=exc.url, status=exc.status)
    missing = sorted(name for name in wanted - set(catalog.data) if options.selects(name))
    if missing:
        extra = MappingResult(skipped=[{"what": f"service {name!r}", "why": "it is not registered in Consul",
                                       "service": name, "node": None, "id": None} for name in missing])
        result = merge_results([result, extra])
    skipped = list(result.skipped)
    for item in skipped[:WARNINGS_SHOWN]:
        module.warn(f"skipped {item['what']}: {item['why']}")
    if len(skipped) > WARNINGS_SHOWN:
        module.warn(f"... and {len(skipped) - WARNINGS_SHOWN} more skipped (see skipped_reasons and skipped_items)")
    output = result.to_dict()
    del output["skipped"]  # "skipped" is reserved: Ansible shows a result with a true "skipped" as a skipped task.
    shown = params["skipped_shown"]
    output.update(skipped_count=len(skipped),
                  skipped_reasons=dict(Counter(reason_of(item["why"]) for item in skipped).most_common()),
                  skipped_items=skipped[:shown] if shown else skipped)
    output["upstream_servers"] = {name: spec["servers"] for name, spec in output["upstreams"].items()}
    module.exit_json(changed=False, catalog_index=catalog.index, **output)


def main():
    argument_spec = consul_argument_spec()
    argument_spec.update(
        tag_key=dict(type="str", default="gray", no_log=False),
        services=dict(type="list", elements="str"),
        include=dict(type="list", elements="str", default=[]),
        exclude=dict(type="list", elements="str", default=["consul"]),
        prefix=dict(type="str", default=""),
        passing_states=dict(type="list", elements="str", choices=["passing", "warning", "critical"],
                            default=["passing"]),
        include_warning=dict(type="bool", default=False),
        upstream_conf=dict(type="path"),
        **reserved_argument_spec(),
        **policy_argument_spec(),
        skipped_shown=dict(type="int", default=50),
        report_instances=dict(type="bool", default=True),
    )
    module = AnsibleModule(argument_spec=argument_spec, supports_check_mode=True,
                           required_by=dict(CONSUL_REQUIRED_BY, nginx_conf=("upstream_conf",)))
    run(module)


if __name__ == "__main__":
    main()
