# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the fleet share (fleet.py) puts in Consul KV and reads back: the keys, the values' encoding, and
the gate every value read from KV passes before it can reach the upstream file or dyups.

Keys, under ``P = fleet_kv_prefix/fleet_group``:

- ``P/leader``: the lock; its Session is the publisher's (value: who, for people reading KV);
- ``P/journal``: ``{"format": 1, "session", "seq", "heartbeat" (unix time), "digest", "entries":
  [{"seq", "names": [...]} or {"seq", "all": true}], "inline": {"seq", "values": {name: value or null}}}``:
  the last ``fleet_journal_entries`` changes, the results of the newest one inline when they are small;
- ``P/upstreams/NAME``: one upstream's result: ``{"servers": ["host:port weight=2", ...]}``, or
  ``{"empty": true}`` (no serving instance: the zero-instance policy applies on each proxy); no key: no
  such upstream.

Any KV writer may be hostile, so a value read from KV is a registrant's claim, not a fact: ``decode``
gives it the rules Consul's own data gets (the name rule, the reserved names, this watcher's filters, the
server rules through ``build_upstream`` with this watcher's own directives, and this watcher's server
policy), and bounds its size. A value that fails any of them is refused whole (the caller keeps that
upstream's last good state and says so).
"""

from __future__ import annotations

import json
from typing import Any, Optional, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _consul_mapping as mapping
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._consul_client import blake2b
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import ValidationError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_problem
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream, build_upstream

FORMAT = 1
MAX_SERVERS = 10000  # per upstream value: far above any real upstream, far below what would hurt


class Refused(ValueError):
    """A value from KV that must not be used; the message says why."""


def digest_of(options: mapping.MappingOptions) -> str:
    """What a follower must share with its publisher to take its results as its own: the settings that
    shape the mapping (filters, tag key, passing states, directives, the server policy's operator
    settings). Not the reserved names nor this host's own addresses: each follower checks those itself."""
    policy = options.policy
    shape = {
        "tag_key": options.tag_key, "include": sorted(options.include), "exclude": sorted(options.exclude),
        "prefix": options.prefix, "passing": sorted(options.passing_states),
        "directives": [directive.text for directive in options.directives],
        "upstream_directives": {name: [directive.text for directive in values]
                                for name, values in sorted(options.upstream_directives.items())},
        "allowed": [str(network) for network in policy.allowed], "denied": [str(network) for network in policy.denied],
        "allow_host_names": policy.allow_host_names, "max_weight": policy.max_weight,
        "allow_zero_max_fails": policy.allow_zero_max_fails,
    }
    text = json.dumps(shape, sort_keys=True, separators=(",", ":"))
    # tells settings apart; not a secret (BLAKE2 built into CPython: hashlib would load libcrypto)
    return blake2b(text.encode(), digest_size=8).hexdigest()


def encode(upstream: Optional[Upstream], empty: bool) -> Optional[dict]:
    """The value of one upstream (None: no such upstream, its key is deleted)."""
    if upstream is not None:
        return {"servers": [server.spec() for server in upstream.servers]}
    return {"empty": True} if empty else None


def dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def decode(name: str, value: Any, options: mapping.MappingOptions, value_max: int) -> Tuple[str, Optional[Upstream]]:
    """("upstream", Upstream) or ("empty", None) for a value read from KV (bytes, or an object taken
    from the journal); raises Refused saying why it must not be used (module docstring)."""
    problem = name_problem(name)
    if problem:
        raise Refused(f"the name {problem}")
    reserved = options.reserved.problem(name)
    if reserved:
        raise Refused(f"the name is reserved: {reserved}")
    if not options.may_map_to(name):
        raise Refused("this watcher's include/exclude/prefix map no service to this upstream")
    if isinstance(value, (bytes, bytearray)):
        if len(value) > value_max:
            raise Refused(f"the value is {len(value)} bytes, above fleet_value_max {value_max}")
        try:
            value = json.loads(value)
        except ValueError:
            raise Refused("the value is not JSON") from None
    if value == {"empty": True}:
        return "empty", None
    if not isinstance(value, dict) or set(value) != {"servers"} or not isinstance(value["servers"], list):
        raise Refused('the value is neither {"servers": [...]} nor {"empty": true}')
    servers = value["servers"]
    if len(servers) > MAX_SERVERS or not all(isinstance(server, str) and len(server) <= 512 for server in servers):
        raise Refused(f"the servers are not a list of at most {MAX_SERVERS} server strings")
    try:
        upstream = build_upstream(name, servers, options.directives_for(name))
    except ValidationError as exc:
        raise Refused(f"it breaks a rule: {exc}") from None
    for server in upstream.servers:
        why = options.policy.problem(server)
        if why is not None:
            raise Refused(f"server {server.spec()}: {why}")
    return "upstream", upstream


def check_journal(journal: Any, value_max: int) -> dict:
    """The journal as an object whose fields have the types fleet.py reads; raises Refused."""
    if not isinstance(journal, dict) or journal.get("format") != FORMAT:
        raise Refused(f"the journal is not a format-{FORMAT} object")
    for key, kind in (("session", str), ("seq", int), ("digest", str), ("entries", list), ("heartbeat", (int, float))):
        if not isinstance(journal.get(key), kind) or isinstance(journal.get(key), bool):
            raise Refused(f"the journal's {key} is missing or not a {getattr(kind, '__name__', 'number')}")
    for entry in journal["entries"]:
        if not (isinstance(entry, dict) and isinstance(entry.get("seq"), int) and
                (entry.get("all") is True or (isinstance(entry.get("names"), list)
                                              and all(isinstance(name, str) for name in entry["names"])))):
            raise Refused("a journal entry is not {seq, names} or {seq, all}")
    inline = journal.get("inline")
    if inline is not None and not (isinstance(inline, dict) and isinstance(inline.get("seq"), int)
                                   and isinstance(inline.get("values"), dict)):
        raise Refused("the journal's inline results are not {seq, values}")
    if len(dumps(journal)) > value_max:
        raise Refused(f"the journal is above fleet_value_max {value_max} bytes")
    return journal
