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

and the faults of issue 18:

    ["fail", service]                           the watcher's reads of that service answer 500 until the
                                                burst ends (tests/support/consul_fault_proxy.py)
    ["odd", name, "register" | "deregister"]    a service Consul accepts that no URL path reads (x//y ...)
    ["oddnode", "register" | "deregister"]      an instance of Web on node n//1 (read by service only)
    ["ext", "register" | "readdress", address]  an instance of Api on node bursts-ext without a
                                                Service.Address; "readdress" re-registers the node alone
    ["ext", "deregister"]                       the node and its instance go

Case variants of names (``web`` beside ``Web``) are left out here: which of the two names the upstream
is the mapping's rule, which this oracle does not restate; the reads they need are tested in
tests/integration/test_watcher_full_read.py and the property test.
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
ODD_NAMES = ("x//y", "a/../b", "..")           # Consul accepts them; /v1/health/service/<name> answers 301
ODD_NODE, ODD_NODE_PORT = "n//1", 21800         # /v1/catalog/node-services/<node> answers 301
EXT_NODE, EXT_PORT = "bursts-ext", 21900
EXT_ADDRESSES = ("127.0.0.3", "127.0.0.4")
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")


def port_of(service, slot, variant):
    """A port unique to (service, slot, variant): no two instances ever share an address."""
    return 21000 + SERVICES.index(service) * 100 + slot * 10 + variant


def instance_id(service, slot):
    return f"{service.replace(' ', '-')}-{slot}"


# -- generating ----------------------------------------------------------------------------------------
def random_fault(rng):
    roll = rng.random()
    if roll < 0.4:
        return ["fail", rng.choice(SERVICES[:3])]
    if roll < 0.55:
        return ["odd", rng.choice(ODD_NAMES), rng.choice(("register", "deregister"))]
    if roll < 0.7:
        return ["oddnode", rng.choice(("register", "register", "deregister"))]
    if roll < 0.95:
        return ["ext", rng.choice(("register", "readdress", "readdress")), rng.choice(EXT_ADDRESSES)]
    return ["ext", "deregister"]


def random_op(rng, faults=0.0):
    if rng.random() < faults:
        return random_fault(rng)
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


def random_burst(rng, max_ops=12, faults=0.0):
    """A burst of 1 to ``max_ops`` operations; each is a fault (above) with probability ``faults``."""
    burst = []
    for _unused in range(rng.randint(1, max_ops)):
        burst.append(random_op(rng, faults))
        if rng.random() < 0.7:
            burst.append(["gap", round(rng.uniform(0, 0.05), 4)])
    return burst


def operation_count(bursts):
    return sum(1 for burst in bursts for op in burst if op[0] != "gap")


# -- sending -------------------------------------------------------------------------------------------
def _catalog_instance(node, address, service, service_id, port):
    return {"Node": node, "Address": address,
            "Service": {"Service": service, "ID": service_id, "Port": port, "Address": ""},
            "Check": {"Node": node, "CheckID": f"service:{service_id}", "Name": "bursts", "Status": "passing",
                      "ServiceID": service_id}}


def send(agent, op, proxy=None):
    """Send one operation to the agent without waiting for it to show (a burst is as fast as it gets).
    An operation on an instance that is not registered is refused by the agent; that is part of a burst.
    ``proxy``: the FaultProxy between the watcher and the agent (the "fail" operations)."""
    kind = op[0]
    if kind == "gap":
        time.sleep(op[1])
        return
    if kind == "fail":
        if proxy is not None:
            proxy.fail(f"/v1/health/service/{quote(op[1], safe='')}")
        return
    if kind == "odd":
        service_id = f"odd-{ODD_NAMES.index(op[1])}"
        if op[2] == "register":
            port = 21700 + ODD_NAMES.index(op[1])
            agent.request("PUT", "/v1/catalog/register",
                          _catalog_instance("bursts-odd", "127.0.0.5", op[1], service_id, port))
        else:
            agent.request("PUT", "/v1/catalog/deregister", {"Node": "bursts-odd", "ServiceID": service_id})
        return
    if kind == "oddnode":
        if op[1] == "register":
            agent.request("PUT", "/v1/catalog/register",
                          _catalog_instance(ODD_NODE, "127.0.0.6", "Web", "Web-oddnode", ODD_NODE_PORT))
        else:
            agent.request("PUT", "/v1/catalog/deregister", {"Node": ODD_NODE})
        return
    if kind == "ext":
        if op[1] == "register":
            agent.request("PUT", "/v1/catalog/register", _catalog_instance(EXT_NODE, op[2], "Api", "Api-ext", EXT_PORT))
        elif op[1] == "readdress":   # the node alone (when it is not registered: a node without services)
            agent.request("PUT", "/v1/catalog/register", {"Node": EXT_NODE, "Address": op[2]})
        else:
            agent.request("PUT", "/v1/catalog/deregister", {"Node": EXT_NODE})
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
    for node in ("bursts-odd", ODD_NODE, EXT_NODE):
        agent.request("PUT", "/v1/catalog/deregister", {"Node": node})
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
            if data["Service"] != service:   # Consul matches the name ignoring case: another service's
                continue
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
