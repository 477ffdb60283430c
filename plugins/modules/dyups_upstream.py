#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: dyups_upstream
short_description: Create, replace and delete nginx upstreams through the dyups interface, without a reload
version_added: 0.1.0
description:
  - Manages upstreams through the dyups REST interface of Tengine (or of stock nginx with the Lua flavor that copies
    it), one upstream with O(name) and O(servers), or many at once with O(upstreams).
  - Every input (upstream names, servers, directives) is checked before anything is sent or written. A name such
    as C(bad name) or C(x{y), a port 0 or 70000, C(weight=0) or an unknown parameter such as C(foo=1) fails the task
    with a message that names the value and the rule, and nothing changes. Tengine itself would store such a name
    and break the next reload, or answer 500.
  - Idempotent. The servers are compared with what C(GET /detail) shows (not C(GET /upstream/NAME), which drops
    weights), in any order. Host names are compared by the addresses they resolve to on the managed node, since
    the interface shows addresses. An upstream that already has the desired servers is not sent again.
  - dyups keeps what it is told in memory only; a reload or restart of nginx rebuilds upstreams from the
    configuration. With O(upstream_conf) the module writes the upstream file B(first), atomically, and calls the
    interface after, so that the change survives the next reload.
  - A POST replaces the whole upstream. Directives that the upstream file holds for an upstream (C(keepalive),
    C(check) ...) are therefore sent with its servers unless O(directives) says otherwise.
requirements:
  - Python 3.8 or later on the managed host (the standard library and ansible-core's own module_utils; nothing to
    install).
author:
  - swallowkeeper.dyups contributors (!UNKNOWN)
extends_documentation_fragment:
  - swallowkeeper.dyups._dyups
  - swallowkeeper.dyups._reserved
  - swallowkeeper.dyups._server_policy
attributes:
  check_mode:
    support: full
    description: Reads C(/detail) and the upstream file, sends nothing, writes nothing, and reports what would change.
  diff_mode:
    support: full
    description:
      - The C(/detail) lines of every upstream to be sent or deleted, before and after.
      - With O(upstream_conf), the upstream file's text before and after.
options:
  name:
    description:
      - Name of the one upstream to manage.
      - 1 to 128 characters from C(A-Z a-z 0-9 _ . -), starting with a letter, a digit or C(_).
      - Mutually exclusive with O(upstreams); one of the two is required.
    type: str
  servers:
    description:
      - Servers of the upstream O(name), required with O(state=present).
      - Each one a string in nginx's syntax without C(server) and C(;), like V(10.0.0.1:8080 weight=2 max_fails=3
        fail_timeout=5s backup), or a dict with C(address) (or C(host) and C(port)) and the parameters C(weight),
        C(max_fails), C(fail_timeout), C(max_conns), C(backup), C(down).
      - A host is a dotted IPv4 address, an IPv6 address in brackets (V([2001:db8::1]:8080)) or a host name; the port
        is 1-65535 (default 80). C(weight) is 1-10000, C(max_fails) 0-10000, C(fail_timeout) whole seconds
        (V(10), V(10s), V(2m)), C(max_conns) 0-1000000.
      - On the command line, V(servers=10.0.0.1:8080,10.0.0.2:8080) is a list of two servers.
    type: list
    elements: raw
  directives:
    description:
      - Upstream-level directives of O(name), one per entry, like V(keepalive 32), V(least_conn),
        V(check interval=3000 rise=2 fall=5 timeout=1000 type=http).
      - Known directives are C(ip_hash), C(least_conn), C(hash), C(keepalive), C(keepalive_timeout),
        C(keepalive_requests), C(check), C(check_http_send), C(check_http_expect_alive), C(check_keepalive_requests).
      - When not set, the directives that O(upstream_conf) holds for the upstream are kept (and sent, since a POST
        replaces the whole upstream). V([]) removes them.
      - C(/detail) does not show directives. Without O(upstream_conf) a change of directives alone is only sent
        with O(force=true).
    type: list
    elements: str
  state:
    description:
      - V(present) creates or replaces the upstream(s); V(absent) deletes them.
      - With O(state=absent) and O(upstreams), every key of O(upstreams) is deleted (the values are ignored).
    type: str
    choices: [present, absent]
    default: present
  upstreams:
    description:
      - Bulk form, instead of O(name), O(servers) and O(directives). Each key is an upstream name, each value its
        list of servers (as in O(servers)), or a dict with the keys C(servers) and C(directives) (as in
        O(directives)).
      - Every upstream is checked before anything is sent; one bad entry fails the task and changes nothing.
      - The RV(swallowkeeper.dyups.consul_services#module:upstreams) value of M(swallowkeeper.dyups.consul_services)
        and the RV(swallowkeeper.dyups.dyups_upstream_info#module:upstreams) value of
        M(swallowkeeper.dyups.dyups_upstream_info) have this form.
    type: dict
  exclusive:
    description:
      - With O(upstreams) and O(upstream_conf), also delete the upstreams that the upstream file holds and
        O(upstreams) does not name, from the file and from the interface.
      - Upstreams that the file does not hold (defined in C(nginx.conf), or added by someone else) are never deleted.
      - O(exclusive_select) narrows it to the upstreams that a Consul service selected by some filters maps to.
    type: bool
    default: false
  exclusive_select:
    description:
      - With O(exclusive=true), delete only the upstreams that a Consul service these filters select can map
        to (the service's name, or that name, C(_) and a tag), as
        M(swallowkeeper.dyups.consul_services) selects services. C(playbooks/sync.yml) passes its own filters, so
        a sync of C(web*) never deletes C(api).
    type: dict
    suboptions:
      prefix:
        description: Only services whose name starts with this.
        type: str
        default: ""
      include:
        description: Only these services (all when empty).
        type: list
        elements: str
        default: []
      exclude:
        description: Never these services.
        type: list
        elements: str
        default: [consul]
  upstream_conf:
    description:
      - Path of the upstream file on the managed node (C(upstream NAME { server ...; }) blocks, C(include)d by
        nginx, or read through C(dyups_upstream_conf) by Tengine 2.1).
      - When set, the file is updated first (temporary file in the same directory, C(fsync), O(validate), rename;
        mode and owner kept), then the interface. If the interface then fails, the file already holds the change
        and the task fails saying so.
      - The file holds only upstreams written by this module (or the swallowkeeper watcher), one block each.
      - One writer at a time. The module holds C(flock) on C(.NAME.lock) beside the file from reading it to its
        last request, and the watcher does the same while it writes and pushes; a run that waits for the lock more
        than 60 s fails and changes nothing.
      - The file of a B(running watcher) is refused (check mode included), with a message naming the watcher's pid.
        The watcher writes the file from Consul and would undo the change. Stop the watcher first, or change
        Consul.
      - The names written to the file and not (yet) sent are recorded in C(.NAME.unsent) beside it. After a failed
        run, the next run on the file POSTs them whatever C(/detail) shows, so that a change of directives alone
        is not lost. A body the interface refuses goes back out of the file.
    type: path
  backup:
    description:
      - Keep a time-stamped copy of O(upstream_conf) before replacing it. Its path is returned in RV(backup_file).
    type: bool
    default: false
  validate:
    description:
      - Command run on the new upstream file before it replaces the old one; C(%s) is replaced by the new file's path.
        When it fails, the old file stays and nothing is sent.
      - The command runs without a shell; use C(/bin/sh -c '...') for one. The EXAMPLES show a check of the new file
        with C(nginx -t) and a minimal configuration that includes only it.
    type: str
  validate_config:
    description:
      - Check the new upstream file with C(nginx -t) of O(nginx_conf) (run with O(nginx_binary)), the new file in
        place of O(upstream_conf), before it replaces the old one; when it fails, the old file stays and nothing is
        sent. A private copy of the main configuration reads the new file; the real path never holds an unchecked
        file. This catches what a check of the file alone cannot (an upstream that C(nginx.conf) defines too).
      - Needs O(nginx_conf) and O(upstream_conf), and a user that may run C(nginx -t) (it opens the pid and log
        files).
    type: bool
    default: false
  resolve_check:
    description:
      - Check that every host name in the servers resolves on the managed node before anything is sent or written.
        Tengine answers 500 to a name that it cannot resolve, which may leave nginx needing a reload.
    type: bool
    default: true
  force:
    description:
      - Send every upstream with O(state=present) even when C(/detail) already shows its servers.
      - Needed to push a change of directives alone when there is no O(upstream_conf) (C(/detail) shows no directives).
    type: bool
    default: false
notes:
  - Run the task on the nginx host; the interface usually listens on loopback only.
  - C(proxy_pass) must name the upstream through a variable (C(set $ups NAME; proxy_pass http://$ups;)) for dyups
    changes to take effect.
  - Tengine applies a change in the worker that received it at once and in the others after
    C(dyups_read_msg_timeout).
seealso:
  - module: swallowkeeper.dyups.dyups_upstream_info
  - module: swallowkeeper.dyups.consul_services
"""

EXAMPLES = r"""
# The tengine_dyups role's interface refuses (403) every request without its shared secret: give the file
# the role wrote (root's, the watcher's group's), here or once for a play with module_defaults (last example).
- name: One upstream with two servers
  swallowkeeper.dyups.dyups_upstream:
    name: WebappReadonly_b
    servers:
      - 10.117.17.21:8180
      - 10.117.17.22:8180 weight=2
    api_secret_file: /etc/swallowkeeper-dyups/dyups.secret

- name: The same with dicts, kept in the upstream file first so that it survives a reload
  swallowkeeper.dyups.dyups_upstream:
    name: WebappReadonly_b
    servers:
      - address: 10.117.17.21:8180
      - address: 10.117.17.22:8180
        weight: 2
    directives:
      - keepalive 32
    upstream_conf: /var/lib/swallowkeeper-dyups/upstreams.conf
    backup: true
    validate: >-
      /bin/sh -c 'printf "events {}\nhttp { include %s; }\n" > /tmp/dyups-check.conf
      && /usr/sbin/nginx -t -q -c /tmp/dyups-check.conf'

- name: All upstreams the file manages, at once; those no longer listed are deleted
  swallowkeeper.dyups.dyups_upstream:
    upstreams:
      WebappReadonly:
        - 10.117.17.11:8180
        - 10.117.17.12:8180
      WebappReadonly_b:
        servers:
          - 10.117.17.21:8180
          - 10.117.17.22:8180 backup
        directives:
          - keepalive 16
    exclusive: true
    upstream_conf: /var/lib/swallowkeeper-dyups/upstreams.conf

- name: Delete an upstream
  swallowkeeper.dyups.dyups_upstream:
    name: WebappReadonly_b
    state: absent
    upstream_conf: /var/lib/swallowkeeper-dyups/upstreams.conf

- name: Point every dyups task of a play at another interface, with its secret
  module_defaults:
    group/swallowkeeper.dyups.dyups:
      api_url: http://127.0.0.1:18883
      api_secret_file: /etc/swallowkeeper-dyups/dyups.secret
      timeout: 3
  block:
    - name: Mark one server down
      swallowkeeper.dyups.dyups_upstream:
        name: WebappReadonly_b
        servers:
          - 10.117.17.21:8180 down
          - 10.117.17.22:8180
"""

RETURN = r"""
upstreams:
  description:
    - Per upstream, what was (or, in check mode, would be) done.
    - C(action) is V(create), V(update), V(delete) or V(none); C(request) the request sent (V(POST), V(DELETE) or
      null; in check mode the one that would be sent; null for an upstream that a run stopped by a failure did not
      reach); C(before) the servers C(/detail) showed (null when the interface did not hold the upstream);
      C(after) the desired servers (null for a deletion); C(directives) the desired directives; C(added) and
      C(removed) the servers (as C(/detail) shows them) that appear and disappear; a changed parameter counts as
      removed and added.
  returned: always
  type: dict
  sample:
    WebappReadonly_b:
      action: update
      request: POST
      before: ["10.117.17.21:8180"]
      after: ["10.117.17.21:8180", "10.117.17.22:8180 weight=2"]
      directives: []
      added: ["10.117.17.22:8180 weight=2"]
      removed: []
requests:
  description: The requests that were sent, in order (none in check mode).
  returned: always
  type: list
  elements: str
  sample: ["POST /upstream/WebappReadonly_b"]
unsent:
  description:
    - When a run with O(upstream_conf) fails after writing the file, the upstreams the file holds and the run did
      not send. The next run on the file sends them.
  returned: on failure after the file was written
  type: list
  elements: str
  sample: ["WebappReadonly_b"]
file_changed:
  description: Whether O(upstream_conf) was (or, in check mode, would be) replaced.
  returned: always
  type: bool
  sample: true
backup_file:
  description: Path of the copy of O(upstream_conf) made before it was replaced.
  returned: when O(backup=true) and the file was replaced
  type: str
  sample: /var/lib/swallowkeeper-dyups/upstreams.conf.1234.2024-05-01@12:00:00~
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_mapping import DEFAULT_EXCLUDE, MappingOptions
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_options import (
    dyups_argument_spec, dyups_client_from_params)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import (
    DyupsError, DyupsRejected, ValidationError)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_keepalive import join_url
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import same_names, unique_names, validate_name
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._plan import (
    desired_upstream, interface_text, plan)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._reserved import (
    Reserved, ReservedNamesUnknown, reserved_argument_spec, reserved_from_params)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._resolve import check_resolvable, make_resolver
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._server_policy import (
    network_argument_spec, operator_policy)
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import spec_parts
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._validate_config import ConfigCheckFailed, check_config


def argument_spec():
    spec = dyups_argument_spec()
    spec.update(
        name=dict(type="str"),
        servers=dict(type="list", elements="raw"),
        directives=dict(type="list", elements="str"),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        upstreams=dict(type="dict"),
        exclusive=dict(type="bool", default=False),
        upstream_conf=dict(type="path"),
        backup=dict(type="bool", default=False),
        validate=dict(type="str"),
        validate_config=dict(type="bool", default=False),
        resolve_check=dict(type="bool", default=True),
        force=dict(type="bool", default=False),
        **reserved_argument_spec(),
        **network_argument_spec(),
        exclusive_select=dict(type="dict", options=dict(
            prefix=dict(type="str", default=""),
            include=dict(type="list", elements="str", default=[]),
            exclude=dict(type="list", elements="str", default=["consul"]),
        )),
    )
    return spec


def requested(params, file_upstreams=None, reserved=None):
    """The desired upstreams, {name: Upstream} or {name: None} to delete, each built (so validated) once.

    An upstream whose directives are not given keeps those that ``file_upstreams`` (the upstream file's
    {name: Upstream}) holds for it. Raises ValidationError for the first bad option, name, server or directive.
    """
    absent = params["state"] == "absent"
    if params["exclusive"] and absent:
        raise ValidationError("exclusive", True, "applies to state=present only")
    if params.get("exclusive_select") and not params["exclusive"]:
        raise ValidationError("exclusive_select", params["exclusive_select"], "applies with exclusive=true only")
    if params["validate"] and "%s" not in params["validate"]:
        raise ValidationError("validate command", params["validate"], "must contain %s, replaced by the new file's path")
    if params["name"] is not None:
        if absent and (params["servers"] or params["directives"]):
            raise ValidationError("state", "absent", "takes no servers or directives")
        specs = {params["name"]: None if absent else {"servers": params["servers"], "directives": params["directives"]}}
    else:
        specs = {name: None if absent else spec for name, spec in params["upstreams"].items()}
    unique_names(specs, "upstreams")
    file_upstreams = same_names(file_upstreams, specs)  # the file's Web is the task's web
    try:
        policy = operator_policy(params.get("allowed_networks"), params.get("denied_networks"))
    except ValueError as exc:
        raise ValidationError("option", exc.args[0].split(":")[0], str(exc)) from None
    wanted = {}
    for name, spec in specs.items():
        validate_name(name)
        (reserved or Reserved()).check(name)
        if spec is None:
            wanted[name] = None
            continue
        servers, directives = spec_parts(name, spec)
        wanted[name] = desired_upstream(name, servers, directives, file_upstreams)
        for server in wanted[name].servers:
            refused = policy.problem(server)
            if refused is not None:
                raise ValidationError("server", server.spec(), f"{refused} (upstream {name})", "server.network")
    return wanted


def exclusive_scope(select):
    """With O(exclusive_select): name -> whether a service those filters select may map to it; else None."""
    if not select:
        return None
    try:
        options = MappingOptions(prefix=select.get("prefix") or "", include=select.get("include") or (),
                                 exclude=select.get("exclude") if select.get("exclude") is not None else DEFAULT_EXCLUDE)
    except ValueError as exc:
        raise ValidationError("exclusive_select", select, str(exc)) from None
    return options.may_map_to


class Runner:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.path = self.params["upstream_conf"]
        self.result = dict(changed=False, upstreams={}, requests=[], file_changed=False)
        self.file_written = False
        self.recorded = set()  # the names .unsent holds (read at the start, kept in step)

    def fail(self, msg, **extra):
        self.result.update(extra)
        self.module.fail_json(msg=msg, **self.result)

    def file_note(self):
        if self.file_written:
            return (f" The upstream file {self.path} was written before the request and already holds the desired "
                    "state, so a reload of nginx applies it; the next run sends what was not sent.")
        if self.path:
            return f" The upstream file {self.path} holds the desired state."
        return ""

    def run(self):
        """Under the upstream file's lock (one writer at a time), unless no file is managed or in check mode."""
        if not self.path:
            return self.plan_and_apply()
        self.check_input()
        self.refuse_a_watched_file()  # at once, not after waiting for the lock a busy watcher holds
        if self.module.check_mode:
            return self.plan_and_apply()
        try:
            lock = _upstream_file.WriterLock(self.path).__enter__()
        except OSError as exc:
            self.fail(f"cannot lock the upstream file {self.path}: {exc.strerror or exc}. Nothing was sent or written.")
        try:
            self.refuse_a_watched_file()  # again, under the lock: a watcher starting later reads the file after it
            return self.plan_and_apply()
        finally:
            lock.__exit__(None, None, None)

    def check_input(self):
        """Everything that does not depend on the file, checked before its lock is taken (or created)."""
        try:
            desired = requested(self.params)
            exclusive_scope(self.params["exclusive_select"])
            dyups_client_from_params(self.params)
            if self.params["resolve_check"]:
                check_resolvable(desired, make_resolver())
        except ValidationError as exc:
            self.fail(f"{exc}. Nothing was sent or written.")

    def refuse_a_watched_file(self):
        owner = _upstream_file.watcher_owner(self.path)
        if owner:
            self.fail(f"the upstream file {self.path} belongs to a running watcher ({owner}): it writes the file from "
                      "Consul and would undo or lose this change. Change the services in Consul, or stop the watcher "
                      "first (it owns the file again at its next start). Nothing was sent or written.")

    def plan_and_apply(self):
        resolve = make_resolver()
        file_text, file_upstreams, owns = None, None, None
        try:
            if self.path:
                file_text, file_upstreams = _upstream_file.read_text(self.path)
                self.recorded = _upstream_file.read_unsent(self.path)
            reserved = reserved_from_params(self.params, [self.path])
            desired = requested(self.params, file_upstreams, reserved)
            owns = exclusive_scope(self.params["exclusive_select"])
            client = dyups_client_from_params(self.params)
            if self.params["resolve_check"]:
                check_resolvable(desired, resolve)
        except ValidationError as exc:
            self.fail(f"{exc}. Nothing was sent or written.")
        except OSError as exc:
            self.fail(f"cannot read the upstream file {self.path}: {exc.strerror or exc}. Nothing was sent or written.")
        except ReservedNamesUnknown as exc:
            self.fail(f"{exc}. Nothing was sent or written.")

        detail_error = None
        try:
            detail = client.detail()
        except DyupsError as exc:
            if self.module.check_mode or not self.path:
                self.fail(f"{exc}. Nothing was sent or written.")
            detail, detail_error = None, exc

        the_plan = plan(desired, detail, file_upstreams, exclusive=self.params["exclusive"],
                        force=self.params["force"], resolve=resolve, unsent=self.recorded, owns=owns)
        new_text = _upstream_file.render(the_plan.file_after.values()) if the_plan.file_changed else file_text
        self.result.update(
            changed=the_plan.changed,
            upstreams={change.name: change.to_result() for change in the_plan.changes},
            file_changed=the_plan.file_changed,
        )
        if self.module._diff:
            self.result["diff"] = self.diff(the_plan, client.api_url, file_text, new_text)
        if self.module.check_mode:
            self.module.exit_json(**self.result)

        for change in self.result["upstreams"].values():
            change["request"] = None  # until it is sent
        sending = {change.name for change in the_plan.changes if change.post or change.delete}
        if self.path:
            self.record(self.recorded | sending, must=True)
        if the_plan.file_changed:
            self.write_file(new_text)
        if detail_error is not None:
            self.fail(f"{detail_error}. Nothing was sent to the interface.{self.file_note()}",
                      unsent=sorted(self.recorded))
        self.apply(client, the_plan, sending)
        self.module.exit_json(**self.result)

    def record(self, names, must=False):
        """Keep ``.unsent`` (the names the file holds and the interface may not) equal to ``names``.

        The record written before the file is a superset of what stays unsent, so only that write
        must succeed (``must``); a later one that fails costs the next run a POST it did not need."""
        names = set(names)
        if names == self.recorded:
            return
        try:
            _upstream_file.write_unsent(self.path, names)
        except OSError as exc:
            if must:
                self.fail(f"cannot write {_upstream_file.side_path(self.path, 'unsent')}: {exc.strerror or exc}. "
                          "Nothing was sent or written.")
            return
        self.recorded = names

    def write_file(self, text):
        try:
            check = None
            if self.params["validate_config"]:
                def check(candidate):
                    check_config(self.params["nginx_binary"], self.params["nginx_conf"], self.path, candidate)
            backup_file = _upstream_file.replace_file(self.path, text, backup=self.params["backup"],
                                                      validate=self.params["validate"], check=check)
        except (_upstream_file.ValidateCommandFailed, ConfigCheckFailed) as exc:
            self.fail(f"{exc}. The upstream file {self.path} was not changed and nothing was sent.",
                      changed=False, file_changed=False)
        except OSError as exc:
            self.fail(f"cannot write the upstream file {self.path}: {exc.strerror or exc}. "
                      "It was not changed and nothing was sent.", changed=False, file_changed=False)
        self.file_written = True
        if backup_file:
            self.result["backup_file"] = backup_file

    def apply(self, client, the_plan, sending):
        """POST, then DELETE; the first failure stops, says what was sent and what was not, and leaves
        the names not sent recorded for the next run. A body the interface refused (Tengine's 500)
        does not stay in the file: its block goes back to what the file held before."""
        steps = [("POST", upstream.name, client.update, upstream) for upstream in the_plan.posts]
        steps += [("DELETE", name, client.delete, name) for name in the_plan.deletes]
        requests = self.result["requests"]
        sent = set()
        for method, name, send, argument in steps:
            try:
                send(argument)
            except DyupsError as exc:
                note = self.file_note()
                if method == "POST" and isinstance(exc, DyupsRejected) and self.path and self.file_written:
                    note = self.restore_block(the_plan, name)
                if self.path:
                    self.record(sending - sent)
                self.fail(f"upstream {name}: {exc}.{note}", changed=bool(requests) or self.file_written,
                          unsent=sorted(sending - sent))
            requests.append(f"{method} /upstream/{name}")
            self.result["upstreams"][name]["request"] = method
            sent.add(name)
        if self.path:
            self.record(set())

    def restore_block(self, the_plan, name):
        """Put back the file's block for ``name`` (the interface refused the new one); the file then
        holds, for it, what the interface held before. Returns the note for the failure message."""
        blocks = dict(the_plan.file_after)
        before = (the_plan.file_before or {}).get(name)
        if before is None:
            blocks.pop(name, None)
        else:
            blocks[name] = before
        try:
            _upstream_file.replace_file(self.path, _upstream_file.render(blocks.values()),
                                        validate=self.params["validate"])
        except (OSError, _upstream_file.ValidateCommandFailed) as exc:
            return (f" The upstream file {self.path} was written before the request and still holds the refused "
                    f"upstream: putting back its old block failed ({exc}).")
        return (f" The interface refused it, so the upstream file {self.path} holds its old block again (it was "
                "written before the request); the upstreams not sent are sent by the next run.")

    def diff(self, the_plan, api_url, file_text, new_text):
        header = f"dyups {join_url(api_url, '/detail')}"
        diffs = [dict(before_header=header, after_header=header,
                      before=interface_text(the_plan.changes, "before"),
                      after=interface_text(the_plan.changes, "after"))]
        if self.path:
            diffs.append(dict(before_header=self.path, after_header=self.path,
                              before=file_text or "", after=new_text or ""))
        return diffs


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
        mutually_exclusive=[("name", "upstreams"), ("servers", "upstreams"), ("directives", "upstreams")],
        required_one_of=[("name", "upstreams")],
        required_by={"validate": ("upstream_conf",)},
        required_if=[("exclusive", True, ("upstreams", "upstream_conf")),
                     ("backup", True, ("upstream_conf",)),
                     ("validate_config", True, ("nginx_conf", "upstream_conf"))],
    )
    Runner(module).run()


if __name__ == "__main__":
    main()
