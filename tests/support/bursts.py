"""Bursts of Consul operations against a real agent, and an oracle of what the watcher must apply.

Used by tests/integration/test_watcher_bursts.py (see its docstring for the property). Everything here
is written for the test, independently of the collection's code: operations are sent to the agent's
own API, the oracle reads Consul with plain requests and applies the mapping rules as the README and
docs/consul.md state them, and the upstream file and the interface's ``/detail`` are parsed with the
test's own regular expressions.

A run is a list of bursts; a burst is a list of operations (JSON-friendly lists, so a failing run can
be written to a file and replayed exactly):

    ["register", service, slot, address, port_variant, tags, meta, status]
    ["deregister", service, slot]
    ["check", service, slot, "pass" | "warn" | "fail"]
    ["node", "pass" | "warn" | "fail"]         a node-level TTL check: every instance on the agent's node
    ["gap", seconds]                            a pause inside a burst (0 to 50 ms)
"""

from __future__ import annotations

import re
import time
from urllib.parse import quote

SERVICES = ("Web", "Api", "Pay", "bad name")   # "bad name" breaks the name rule: the watcher skips it
SLOTS = 4                                      # instance IDs per service: Web-0 .. Web-3
ADDRESSES = ("127.0.0.1", "127.0.0.2", "")     # "" leaves Service.Address empty: the node's address applies
TAGS = ([], [], ["gray=b"], ["gray=default"], ["gray=x y"], ["other"])   # gray=x y: a name the rule refuses
METAS = ({}, {}, {"dyups_weight": "2"}, {"dyups_weight": "abc"}, {"dyups_backup": "true"}, {"version": "7"})
STATUSES = ("passing", "passing", "warning", "critical")
NODE_CHECK = "bursts-node"
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")


def port_of(service, slot, variant):
    """A port unique to (service, slot, variant): no two instances ever share an address."""
    return 21000 + SERVICES.index(service) * 100 + slot * 10 + variant


def instance_id(service, slot):
    return f"{service.replace(' ', '-')}-{slot}"


# -- generating ----------------------------------------------------------------------------------------
def random_op(rng):
    service = rng.choice(SERVICES[:3]) if rng.random() < 0.9 else SERVICES[3]
    slot = rng.randrange(SLOTS)
    roll = rng.random()
    if roll < 0.35:
        return ["register", service, slot, rng.choice(ADDRESSES), rng.randrange(2), rng.choice(TAGS),
                rng.choice(METAS), rng.choice(STATUSES)]
    if roll < 0.50:
        return ["deregister", service, slot]
    if roll < 0.96:
        return ["check", service, slot, rng.choice(("pass", "pass", "warn", "fail"))]
    return ["node", rng.choice(("pass", "pass", "warn", "fail"))]


def random_burst(rng, max_ops=12):
    burst = []
    for _unused in range(rng.randint(1, max_ops)):
        burst.append(random_op(rng))
        if rng.random() < 0.7:
            burst.append(["gap", round(rng.uniform(0, 0.05), 4)])
    return burst


def operation_count(bursts):
    return sum(1 for burst in bursts for op in burst if op[0] != "gap")


# -- sending -------------------------------------------------------------------------------------------
def send(agent, op):
    """Send one operation to the agent without waiting for it to show (a burst is as fast as it gets).
    An operation on an instance that is not registered is refused by the agent; that is part of a burst."""
    kind = op[0]
    if kind == "gap":
        time.sleep(op[1])
        return
    if kind == "register":
        _kind, service, slot, address, variant, tags, meta, status = op
        body = {"Name": service, "ID": instance_id(service, slot), "Port": port_of(service, slot, variant),
                "Tags": list(tags), "Meta": dict(meta), "Check": {"TTL": "3600s", "Status": status}}
        if address:
            body["Address"] = address
        agent.request("PUT", "/v1/agent/service/register", body)
    elif kind == "deregister":
        agent.request("PUT", f"/v1/agent/service/deregister/{quote(instance_id(op[1], op[2]))}")
    elif kind == "check":
        agent.request("PUT", f"/v1/agent/check/{op[3]}/service:{quote(instance_id(op[1], op[2]))}")
    elif kind == "node":
        agent.request("PUT", f"/v1/agent/check/{op[1]}/{NODE_CHECK}")


def register_node_check(agent):
    status, data, _headers = agent.request("PUT", "/v1/agent/check/register",
                                           {"Name": NODE_CHECK, "ID": NODE_CHECK, "TTL": "3600s", "Status": "passing"})
    if status != 200:
        raise RuntimeError(f"could not register the node check: {status} {data!r}")


def reset(agent):
    """Deregister every instance a run may have made, and pass the node check (a clean start)."""
    for service in SERVICES:
        for slot in range(SLOTS):
            agent.request("PUT", f"/v1/agent/service/deregister/{quote(instance_id(service, slot))}")
    agent.request("PUT", f"/v1/agent/check/pass/{NODE_CHECK}")


# -- the oracle ----------------------------------------------------------------------------------------
def oracle(agent, known=None):
    """What Consul says now, by the documented rules: ({upstream: {address: (weight, backup)}}, {empty
    upstreams}), from /v1/catalog/services and /v1/health/service/NAME read plainly. ``known``, a
    dict, also gets {upstream: every address an instance maps to, serving or not}."""
    catalog = agent.get("/v1/catalog/services")
    upstreams, candidates = {}, {}
    for service in sorted(catalog):
        if service == "consul" or not NAME_RE.match(service):
            continue
        for entry in agent.get(f"/v1/health/service/{quote(service)}"):
            data = entry["Service"]
            grays = sorted({tag[5:] for tag in data.get("Tags") or [] if tag.startswith("gray=")})
            gray = grays[0] if grays else "default"
            name = service if gray == "default" else f"{service}_{gray}"
            if not NAME_RE.match(name):
                continue
            meta = data.get("Meta") or {}
            weight = meta.get("dyups_weight", "1")
            if not weight.isdigit():
                continue
            backup = meta.get("dyups_backup") == "true"
            address = f"{data.get('Address') or entry['Node']['Address']}:{data['Port']}"
            serving = all(check["Status"] == "passing" for check in entry["Checks"])
            candidates.setdefault(name, [])
            if known is not None:
                known.setdefault(name, set()).add(address)
            if serving:
                upstreams.setdefault(name, {})[address] = (int(weight), backup)
    refused = {name for name, servers in upstreams.items() if all(backup for _weight, backup in servers.values())}
    for name in refused:   # backup servers only: refused as a whole (Tengine answers 500), so skipped, not empty
        del upstreams[name]
    empty = {name for name in candidates if name not in upstreams and name not in refused}
    return upstreams, empty


# -- what is applied -----------------------------------------------------------------------------------
_FILE_UPSTREAM = re.compile(r"^upstream (\S+) \{$")
_FILE_SERVER = re.compile(r"^\s+server (\S+)((?: \S+)*);$")


def read_file(path):
    """{upstream: {address: (weight, backup, down)}} of an upstream file, parsed by the test."""
    result, current = {}, None
    try:
        text = open(path, encoding="utf-8").read()
    except FileNotFoundError:
        return {}
    for line in text.splitlines():
        match = _FILE_UPSTREAM.match(line)
        if match:
            current = result.setdefault(match.group(1), {})
            continue
        match = _FILE_SERVER.match(line)
        if match and current is not None:
            params = match.group(2).split()
            weight = next((int(p[7:]) for p in params if p.startswith("weight=")), 1)
            current[match.group(1)] = (weight, "backup" in params, "down" in params)
    return result


def read_detail(interface):
    """{upstream: {address: (weight, backup, down)}} of the interface's /detail (the wire contract's lines)."""
    status, text, _headers = interface.api("GET", "/detail")
    if status == 204:
        return {}
    if status != 200:
        raise RuntimeError(f"GET /detail answered {status}: {text!r}")
    result, current = {}, None
    for line in text.splitlines():
        if not line.strip():
            current = None
        elif line.startswith("server "):
            words = line.split()
            params = dict(word.split("=", 1) for word in words[2:] if "=" in word)
            current[words[1]] = (int(params.get("weight", 1)), params.get("backup") == "1", params.get("down") == "1")
        else:
            current = result.setdefault(line.strip(), {})
    return result


def expected_servers(upstreams):
    """The oracle's upstreams in the shape read_file and read_detail give (no server is down)."""
    return {name: {address: (weight, backup, False) for address, (weight, backup) in servers.items()}
            for name, servers in upstreams.items()}
