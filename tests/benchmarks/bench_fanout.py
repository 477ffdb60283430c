"""Fleet fan-out: what N watchers cost the Consul servers per health flip and per registration.

    .venv/bin/python tests/benchmarks/bench_fanout.py [--quick] [--json FILE] [--markdown FILE]

A load model, not N watchers: one asyncio process holds the blocking queries that N watchers would
hold (raw HTTP/1.1, one kept-alive connection per query, no JSON parsing: each answer's bytes are
counted and its X-Consul-Index read), and re-issues each query from the index of its answer at once,
as a watcher does. Against a real cluster on loopback (tests/support/consul_cluster.py): three
Consul servers, asked directly: watcher w asks server w mod 3, with ``stale`` so that each server
answers from its own state, as the agents of a fleet spread their forwarded queries over the
servers. (A real watcher asks its host's client agent, which forwards the query over RPC; with
``--clients K`` the model asks K client agents instead. Through client agents at N = 1,000 on this
loaded 2-core machine, the single multiplexed RPC connection of an agent carrying ~670 queries hit
yamux keepalive timeouts and the servers lost their leader: an artefact of K agents standing in
for N, so the default is the servers directly. The servers then also do the JSON encoding that
client agents do in a real fleet: the same for every strategy.)

Population (set up once, through /v1/txn, one transaction per node): SERVICES services (default
5,000), one instance each, 20 instances per external node, each with one check ``service:ID``;
every 50th check critical (2 %). ROUTED services (default 10, all passing) are the ones the flips
toggle, and the ones the per-service strategy watches.

Strategies (the query string of every blocking query: ``stale``, ``index``, ``wait=300s``, as the
watcher's defaults send them):

* ``state-any`` (today's watcher, plugins/watcher/consul_source.py): per watcher
  ``/v1/health/state/any?filter=Status != "passing"`` and ``/v1/catalog/services``;
* ``state-critical``: ``/v1/health/state/critical`` and ``/v1/health/state/warning`` (what the
  filter selects, from the status index instead of a filter over every check) and
  ``/v1/catalog/services``;
* ``per-service``: ``/v1/health/service/NAME`` for each of the ROUTED services, and
  ``/v1/catalog/services``. This is what the servers see when every proxy's agent serves its
  watcher from the agent cache (``?cached``): the cache refreshes each service it was asked for with
  one blocking query of its own (stale), so N proxies cost N blocking queries per routed service,
  whatever the watcher does locally. The watcher's own requests to its agent's cache cost the
  servers nothing and are not modelled.
* ``per-service-include``: the same without ``/v1/catalog/services``: a watcher with an ``include``
  list knows the names it routes, and a service not registered yet answers an empty list, so it
  needs no catalog poll (and no follow-up read: each answer is its service's whole state).
* ``publisher`` (issue 20's de-duplicated design, sketched): one elected reader (the load model's
  watcher -1; election, session and failover not modelled) holds the queries of state-critical,
  reads after a wake what today's watcher reads, and writes, in one ``/v1/txn``, the compact
  result of the changed upstream (``swk/upstreams/NAME``: its passing servers) and a small change
  journal (``swk/journal``: a sequence number and the changed names). Each of the N followers holds
  one blocking ``?stale`` query on the journal key and, when it wakes, reads the keys of the
  upstreams it names (``?stale``, its own server).
* ``publisher-inline``: the same, but the journal entry carries the changed upstreams' compact
  results themselves (small changes: a few servers each), so a follower is informed by the
  journal's answer, with no second read.
* ``per-service-cached`` (with ``--clients K``, to check the model above): the same queries with
  ``?cached`` instead of ``?stale``, to the client agents: the servers should see K blocking
  queries per routed service, not N.

Events (``--events``, each ``--flips`` times): ``flip`` (a routed check toggled passing <->
critical), ``register`` (a second instance of a routed service, with a passing check, on the node
of its first: one ``/v1/txn``) and ``deregister`` (the same instance removed). A watcher is
*informed* when it holds what it needs to compute the new upstream, including the reads today's
watcher makes after a wake (plugins/watcher/consul_source.py), modelled as follow-up reads on kept
connections of their own (their bytes and the servers' CPU count with the event):

* state-any, state-critical, flip: informed by the health poll's answer when a check went critical
  (applied in place); a recovery is read again: ``/v1/health/service/NAME``;
* state-any, state-critical, (de)registration: the catalog poll wakes; today's watcher then compares
  every service by node: ``/v1/catalog/nodes`` and ``/v1/catalog/node-services/NODE`` for every node
  (FOLLOWUP_CONNECTIONS at a time; the watcher uses up to 8 threads), then reads the changed service;
  these reads are not stale: the agent forwards them to the leader, so the model sends them there;
* per-service (with or without the catalog): informed by the answer of the service's own query;
* publisher: the publisher's own reads as today's (once), its write, then each follower's journal
  answer and its read of the changed upstream's key.

For each strategy and each N (default 10, 100, 1000): every query is opened and answered once
(index 0), then re-issued as a blocking query; after a settle time (the servers must hold every
query before the first event) the server CPU is read while idle for IDLE seconds (the idle rate),
then the events, each a /v1/txn on the leader, measured one at a time:

* ``last_ms``: time from just before the event's request to the moment the last of the N watchers
  is informed (see above);
* ``bytes``: the bytes (headers and body, as HTTP on the wire) of every answer and follow-up read
  in the event's window, and ``answers``: how many answers of held queries (``woken``: those that
  inform a watcher, ``other``: any other, a spurious or unrelated wake-up), ``reads``: follow-up
  requests;
* ``cpu_ms``: CPU time (user + system, /proc/PID/task/*/schedstat) of the three server processes
  from just before the flip until every woken query has been re-issued and a short settle has passed
  (so it includes the flip's Raft write, the wake-ups, the answers and the new blocking queries),
  and ``cpu_net_ms``: the same minus the idle rate times the window's length. An event's window
  ends QUIET seconds after the last answer of a held query (a catalog answer that informs no one
  but arrives late is counted with its event).

Reported per strategy and N: medians (and p90, max of last_ms) over the flips; one run, one machine
(docs/benchmarks.md, "Fleet fan-out"). ``--quick``: 1,000 services, N = 10 and 100, 5 flips only
(no registrations unless ``--events`` says so): about a minute. Limits raised: ``limits.http_max_conns_per_client`` (200 by default)
to what the run needs, on every agent; the load model checks that ``ulimit -n`` allows its sockets.
Every agent and its temporary directory are removed at the end, also on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import resource
import signal
import statistics
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()

from tests.resilience.loadgen import read_response_counted  # noqa: E402
from tests.support.consul_cluster import ConsulCluster, process_cpu_seconds  # noqa: E402

WAIT = "300s"                     # the watcher's default consul_wait
FAILING_FILTER = 'Status != "passing"'  # the watcher's one health poll until twostate (now state/critical + warning)
PER_NODE = 20                     # instances per external node
FAILING_EVERY = 50                # every 50th check critical: 2 %
STRATEGIES = ("state-any", "state-critical", "per-service", "per-service-include", "publisher", "publisher-inline",
              "per-service-cached")
EVENTS = ("flip", "register", "deregister")
JOURNAL = "swk/journal"           # the publisher's change journal (one small key the followers block on)
UPSTREAM_KEYS = "swk/upstreams/"  # the publisher's compact result, one key per upstream
QUIET = 1.0                       # an event's window ends this many seconds after the last answer
FOLLOWUP_CONNECTIONS = 4          # parallel reads of one watcher's follow-up by node (the watcher: up to 8)
# Queries being opened (and first answered) at the same time: the first answers of 1,000 watchers (catalog
# ~20 ms, state/any ~8 ms of server CPU each) at once starve Raft's heartbeats on a loaded 2-core machine.
CONNECT_AT_ONCE = 16


def service_name(number):
    return f"svc-{number:05d}"


def check_of(number, status):
    return {"Node": f"node-{number // PER_NODE:04d}", "CheckID": f"service:{service_name(number)}-1",
            "Name": "ttl", "Status": status, "ServiceID": f"{service_name(number)}-1",
            "Output": "" if status == "passing" else "TTL expired"}


def populate(server, services):
    """Register ``services`` instances on external nodes, one /v1/txn per node (a Raft write each)."""
    def one_node(first):
        node = f"node-{first // PER_NODE:04d}"
        ops = [{"Node": {"Verb": "set", "Node": {"Node": node, "Address": f"10.{first // 65536 % 256}."
                                                 f"{first // 256 % 256}.{first % 256}"}}}]
        for number in range(first, min(first + PER_NODE, services)):
            ops.append({"Service": {"Verb": "set", "Node": node, "Service": {
                "ID": f"{service_name(number)}-1", "Service": service_name(number), "Port": 8000 + number % 1000,
                "Tags": ["dyups", "gray=a"], "Meta": {"dyups_weight": "1", "dyups_max_fails": "3"}}}})
            status = "critical" if number % FAILING_EVERY == 0 else "passing"
            ops.append({"Check": {"Verb": "set", "Check": check_of(number, status)}})
        txn(server, ops)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one_node, range(0, services, PER_NODE)))


def txn(server, ops, retry_for=0.0):
    """PUT /v1/txn; a 5xx answer (no leader, a timed-out Raft apply) is retried for ``retry_for``
    seconds. Returns the failed attempts' answers."""
    deadline, failures = time.monotonic() + retry_for, []
    while True:
        request = urllib.request.Request(server.url + "/v1/txn", data=json.dumps(ops).encode(), method="PUT")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                answer.read()
            return failures
        except urllib.error.HTTPError as exc:
            failures.append(f"{exc.code}: {exc.read()[:200]!r}")
            if exc.code < 500 or time.monotonic() > deadline:
                raise RuntimeError(f"/v1/txn failed: {failures}") from None
        time.sleep(0.5)


def routed_services(count):
    """The first ``count`` passing services (the flips toggle them; per-service watches them)."""
    return [number for number in range(1, count * 2 + 2) if number % FAILING_EVERY][:count]


def queries_of(strategy, routed):
    """[(path and query string without index/wait, routed service number or None)] of one watcher
    (for ``publisher``: of one follower; the publisher's own are those of state-critical)."""
    catalog = ("/v1/catalog/services?stale", None)
    if strategy == "state-any":
        return [("/v1/health/state/any?" + urlencode({"filter": FAILING_FILTER}) + "&stale", None), catalog]
    if strategy == "state-critical":
        return [("/v1/health/state/critical?stale", None), ("/v1/health/state/warning?stale", None), catalog]
    if strategy.startswith("publisher"):
        return [(f"/v1/kv/{JOURNAL}?stale", None)]
    mode = "cached" if strategy == "per-service-cached" else "stale"
    services = [(f"/v1/health/service/{quote(service_name(number))}?{mode}", number) for number in routed]
    return services if strategy == "per-service-include" else services + [catalog]


def instance_ops(number, register):
    """/v1/txn operations that register (or deregister) a second instance of service ``number``, on the
    node of its first, with a passing check."""
    node, service_id = f"node-{number // PER_NODE:04d}", f"{service_name(number)}-2"
    check = {"Node": node, "CheckID": f"service:{service_id}", "Name": "ttl", "Status": "passing",
             "ServiceID": service_id, "Output": ""}
    if not register:
        return [{"Check": {"Verb": "delete", "Check": {"Node": node, "CheckID": check["CheckID"]}}},
                {"Service": {"Verb": "delete", "Node": node, "Service": {"ID": service_id, "Service": service_name(number)}}}]
    return [{"Service": {"Verb": "set", "Node": node, "Service": {
        "ID": service_id, "Service": service_name(number), "Port": 9000 + number % 1000,
        "Tags": ["dyups", "gray=a"], "Meta": {"dyups_weight": "1", "dyups_max_fails": "3"}}}},
        {"Check": {"Verb": "set", "Check": check}}]


def compact_upstream(body):
    """The publisher's value for one upstream: its passing servers, from a /v1/health/service/NAME answer."""
    servers = sorted(f"{entry['Service']['Address'] or entry['Node']['Address']}:{entry['Service']['Port']}"
                     for entry in json.loads(body)
                     if all(check["Status"] == "passing" for check in entry["Checks"]))
    return json.dumps({"servers": servers}, separators=(",", ":"))


def kv_set(key, value):
    return {"KV": {"Verb": "set", "Key": key, "Value": base64.b64encode(value.encode()).decode()}}


def triggers(strategy, event):
    """The role of the query whose wake carries an event to a watcher (see Query.role)."""
    if strategy.startswith("publisher"):
        return "journal"
    if strategy.startswith("per-service"):
        return "service"
    if event == "flip":
        return "failing"
    return "catalog"


def role_of(path):
    """What a held query is for: ``failing`` (the health poll: state/any or state/critical), ``warning``,
    ``catalog``, ``service`` (one service's instances), ``journal`` (the publisher's change journal)."""
    if path.startswith("/v1/catalog/services"):
        return "catalog"
    if path.startswith("/v1/health/state/warning"):
        return "warning"
    if path.startswith("/v1/health/state/"):
        return "failing"
    if path.startswith("/v1/kv/"):
        return "journal"
    return "service"


class Query:
    """One blocking query of one watcher (watcher -1: the publisher), kept on its own connection."""

    __slots__ = ("watcher", "port", "path", "service", "role", "index", "sent", "answered_at")

    def __init__(self, watcher, port, path, service):
        self.watcher, self.port, self.path, self.service = watcher, port, path, service
        self.role = role_of(path)
        self.index = 0
        self.sent = False         # a request is out and not answered
        self.answered_at = None   # perf_counter of its last answer


class Window:
    """What one event's answers and reads add up to; done when ``expected`` watchers are informed."""

    def __init__(self, expected, event=None, number=None, status=None):
        self.expected, self.event, self.number, self.status = expected, event, number, status
        self.informed = set()
        self.handled = set()      # watchers whose trigger woke (each is informed once)
        self.woken = 0            # trigger answers
        self.other = 0            # any other answer of a held query (a spurious or unrelated wake-up)
        self.reads = 0            # follow-up requests (reads after a wake, the publisher's write)
        self.bytes = 0
        self.last = None
        self.published = None    # the publisher's write done (perf_counter)
        self.done = asyncio.Event()
        if expected == 0:
            self.done.set()

    def inform(self, watcher, now):
        if watcher not in self.informed:
            self.informed.add(watcher)
            self.last = now
            if len(self.informed) == self.expected:
                self.done.set()


class LoadModel:
    def __init__(self, ports, strategy, watchers, routed, leader_port=None):
        self.strategy = strategy
        self.leader_port = leader_port or ports[0]
        self.queries = []
        for watcher in range(watchers):
            port = ports[watcher % len(ports)]
            self.queries += [Query(watcher, port, path, service) for path, service in queries_of(strategy, routed)]
        if strategy.startswith("publisher"):  # the one elected reader holds the cheapest of today's queries
            self.queries += [Query(-1, ports[0], path, service) for path, service in queries_of("state-critical", [])]
        self.window = None
        self.errors = []  # error answers (retried)
        self.fatal = []   # broken connections, failed follow-up reads
        self.tasks = []
        self.connections = {}  # (watcher, port, slot) -> (reader, writer) of follow-up reads
        self.journal_seq = 0
        self.last_answer = 0.0  # perf_counter of the last answer of a held query

    async def _run(self, query, gate):
        async with gate:
            reader, writer = await asyncio.open_connection("127.0.0.1", query.port)
            try:
                await self._answer(query, reader, writer)  # the first (index 0) answer, not many at once
            except Exception as exc:  # noqa: BLE001 - counted; the loop below retries
                self.errors.append(f"{query.path}: {exc!r}")
        try:
            while True:
                try:
                    await self._answer(query, reader, writer)
                except asyncio.CancelledError:
                    raise
                except (RuntimeError, ValueError, KeyError) as exc:  # an error answer: retry after 1 s
                    self.errors.append(f"{query.path}: {exc!r}")
                    await asyncio.sleep(1.0)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - a broken connection: reported, and it ends the run
            self.fatal.append(f"{query.path}: {exc!r}")
        finally:
            writer.close()

    async def _answer(self, query, reader, writer):
        """Send the query from its index, read the answer, count it; a trigger starts what the watcher
        does next (see _after_wake)."""
        target = query.path + (f"&index={query.index}&wait={WAIT}" if query.index else "")
        writer.write(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        query.sent = True
        status, headers, size, body = await read_response_counted(reader)
        now = time.perf_counter()
        query.sent = False
        if status != 200:
            raise RuntimeError(f"GET {target} answered {status}: {body[:300]!r}")
        new = int(headers["x-consul-index"])
        window = self.window
        if window is not None:
            window.bytes += size
            if new != query.index and self._is_trigger(query, window):
                window.handled.add(query.watcher)
                window.woken += 1
                self._spawn(self._after_wake(query, window, now))
            else:
                window.other += 1
        query.index, query.answered_at = new, now
        self.last_answer = now

    def _is_trigger(self, query, window):
        if query.watcher in window.handled:
            return False
        if query.watcher == -1:  # the publisher: its health poll for a flip, its catalog poll for the others
            return query.role == ("failing" if window.event == "flip" else "catalog")
        if query.role != triggers(self.strategy, window.event):
            return False
        return query.role != "service" or query.service == window.number

    def _spawn(self, coroutine):
        async def guarded():
            try:
                await coroutine
            except Exception as exc:  # noqa: BLE001 - it ends the case (the event is never complete)
                self.fatal.append(f"follow-up: {exc!r}")
        self.tasks.append(asyncio.create_task(guarded()))

    async def _request(self, window, key, port, target, method="GET", body=b""):
        """One follow-up request on a kept connection of its own; counted in the window; the body."""
        if key not in self.connections:
            self.connections[key] = await asyncio.open_connection("127.0.0.1", port)
        reader, writer = self.connections[key]
        writer.write(f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n\r\n"
                     .encode() + body)
        status, _headers, size, data = await read_response_counted(reader)
        window.reads += 1
        window.bytes += size
        if status != 200:
            raise RuntimeError(f"{method} {target} answered {status}: {data[:300]!r}")
        return data

    async def _by_node(self, window, watcher):
        """What today's watcher reads after its catalog poll woke: /v1/catalog/nodes, then every node's
        services (consul_source._instances_by_node), not stale: the agent forwards them to the leader."""
        nodes = json.loads(await self._request(window, (watcher, "leader", 0), self.leader_port, "/v1/catalog/nodes"))
        names = sorted(node["Node"] for node in nodes)

        async def reader(slot):
            while names:
                name = names.pop()
                await self._request(window, (watcher, "leader", slot), self.leader_port,
                                    f"/v1/catalog/node-services/{quote(name)}")
        await asyncio.gather(*(reader(slot) for slot in range(FOLLOWUP_CONNECTIONS)))

    async def _after_wake(self, query, window, woke_at):
        """What a watcher does between its trigger's answer and knowing the new upstream."""
        name = service_name(window.number)
        if query.watcher == -1:  # the publisher: read as today's watcher, then write the result and the journal
            if window.event != "flip":
                await self._by_node(window, -1)
            body = await self._request(window, (-1, "leader", 0), self.leader_port, f"/v1/health/service/{name}")
            self.journal_seq += 1
            value = compact_upstream(body)
            changed = {name: json.loads(value)} if self.strategy == "publisher-inline" else [name]
            ops = [kv_set(UPSTREAM_KEYS + name, value),
                   kv_set(JOURNAL, json.dumps({"seq": self.journal_seq, "changed": changed}))]
            await self._request(window, (-1, "leader", 0), self.leader_port, "/v1/txn", "PUT", json.dumps(ops).encode())
            window.published = time.perf_counter()
            return
        if query.role == "journal" and self.strategy == "publisher":  # a follower: read the upstreams it names
            await self._request(window, (query.watcher, query.port, 0), query.port,
                                f"/v1/kv/{UPSTREAM_KEYS}{name}?stale")
        elif query.role == "catalog":  # today: compare every service by node, read the one that changed
            await self._by_node(window, query.watcher)
            await self._request(window, (query.watcher, "leader", 0), self.leader_port, f"/v1/health/service/{name}")
        elif query.role == "failing" and window.status == "passing":  # today: a recovery is read again
            await self._request(window, (query.watcher, "leader", 0), self.leader_port, f"/v1/health/service/{name}")
        else:  # the answer itself carries the change (a check went bad; a service's own instances)
            window.inform(query.watcher, woke_at)
            return
        window.inform(query.watcher, time.perf_counter())

    async def open(self, timeout):
        gate = asyncio.Semaphore(CONNECT_AT_ONCE)
        self.tasks = [asyncio.create_task(self._run(query, gate)) for query in self.queries]
        await self.until(lambda: all(query.index and query.sent for query in self.queries), timeout,
                         "every query blocks")

    async def until(self, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.fatal:
                raise RuntimeError(f"{len(self.fatal)} connections failed, first: {self.fatal[0]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"not within {timeout}s: {what}")
            await asyncio.sleep(0.01)

    async def close(self):
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for _reader, writer in self.connections.values():
            writer.close()


def median(values):
    return statistics.median(values) if values else float("nan")


def p90(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))] if ordered else float("nan")


def event_plan(events, count, routed, state):
    """[(event, service number, /v1/txn operations, new check status or None)] in the order they run:
    ``count`` flips; ``count`` registrations of a second instance of a routed service; their
    deregistrations (each of a different routed service while there are enough)."""
    plan = []
    for event in events:
        for position in range(count):
            number = routed[position % len(routed)]
            if event == "flip":
                status = "critical" if state[number] == "passing" else "passing"
                state[number] = status
                plan.append((event, number, [{"Check": {"Verb": "set", "Check": check_of(number, status)}}], status))
            elif position < len(routed):
                plan.append((event, number, instance_ops(number, event == "register"), None))
    return plan


def summary(strategy, watchers, queries, event, results):
    last = [one["last_ms"] for one in results] or [float("nan")]
    return {
        "strategy": strategy, "watchers": watchers, "queries": queries, "event": event, "events": len(results),
        "write_ms_median": median([one["write_ms"] for one in results]),
        "last_ms_median": median(last), "last_ms_p90": p90(last), "last_ms_max": max(last),
        "published_ms_median": median([one["published_ms"] for one in results if one["published_ms"] is not None]),
        "bytes_median": median([one["bytes"] for one in results]),
        "answers_median": median([one["woken"] + one["other"] for one in results]),
        "reads_median": median([one["reads"] for one in results]),
        "other_answers_max": max((one["other"] for one in results), default=0),
        "cpu_ms_median": median([one["cpu_ms"] for one in results]),
        "cpu_net_ms_median": median([one["cpu_net_ms"] for one in results]),
        "failed_writes": sum(len(one["failed_writes"]) for one in results),
        "events_raw": results,
    }


async def measure(cluster, strategy, watchers, routed, count, idle, state, events=("flip",)):
    """Open the queries of ``watchers`` watchers, then run ``count`` events of each kind in ``events``;
    a list of dicts of figures, one per kind of event."""
    targets = cluster.clients or cluster.servers
    leader = cluster.leader(timeout=120)
    for number in state:  # what the routed checks are now (a flip of an aborted case may have been applied)
        state[number] = leader.get(f"/v1/health/checks/{service_name(number)}")[0]["Status"]
    for number in routed:  # no second instance left by an aborted case
        txn(leader, instance_ops(number, False), 30.0)
    if strategy.startswith("publisher"):  # what the publisher has published before the followers start
        ops = [kv_set(JOURNAL, json.dumps({"seq": 0, "changed": []}))]
        for number in routed:
            body = json.dumps(leader.get(f"/v1/health/service/{service_name(number)}")).encode()
            ops.append(kv_set(UPSTREAM_KEYS + service_name(number), compact_upstream(body)))
        txn(leader, ops, 30.0)
        for agent in targets:  # the followers' first reads are stale reads: every server must have the journal
            deadline = time.monotonic() + 30
            while True:
                try:
                    agent.get(f"/v1/kv/{JOURNAL}?stale")
                    break
                except urllib.error.HTTPError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
    model = LoadModel([agent.http_port for agent in targets], strategy, watchers, routed, leader.http_port)
    loop = asyncio.get_running_loop()
    settle = 0.5 + len(model.queries) / 5000
    results = {event: [] for event in events}
    try:
        started = time.perf_counter()
        await model.open(timeout=120 + len(model.queries) / 10)  # first answers are slow on a loaded machine
        open_seconds = time.perf_counter() - started
        leader = cluster.leader()
        await asyncio.sleep(settle)
        cpu0, t0 = cluster.server_cpu_seconds(), time.perf_counter()
        model.window = Window(0)
        await asyncio.sleep(idle)
        idle_rate = (cluster.server_cpu_seconds() - cpu0) / (time.perf_counter() - t0)
        idle_answers = model.window.other
        aborted = None
        try:
            for event, number, ops, status in event_plan(events, count, routed, state):
                expected = watchers
                window = model.window = Window(expected, event, number, status)
                cpu_start, start = cluster.server_cpu_seconds(), time.perf_counter()
                failed_writes = await loop.run_in_executor(None, txn, leader, ops, 60.0)
                written = time.perf_counter()
                try:
                    await asyncio.wait_for(window.done.wait(), timeout=120)
                except asyncio.TimeoutError:
                    raise TimeoutError(f"{strategy} N={watchers} {event} {len(results[event])}: "
                                       f"{len(window.informed)} of {expected} watchers informed within 120 s") from None
                await model.until(lambda: all(query.sent for query in model.queries), 60, "every query re-issued")
                # late answers (a catalog answer that wakes on a registration but informs no one) count with
                # the event: it ends after QUIET seconds without an answer
                await model.until(lambda: time.perf_counter() - model.last_answer > QUIET, 60, "no answer for a while")
                await asyncio.sleep(0.3 + expected / 2000)  # the servers take in the re-issued queries
                end = time.perf_counter()
                cpu = cluster.server_cpu_seconds() - cpu_start
                model.window = None
                results[event].append({
                    "errors": len(model.errors), "last_ms": (window.last - start) * 1000,
                    "write_ms": (written - start) * 1000, "failed_writes": failed_writes, "bytes": window.bytes,
                    "woken": window.woken, "other": window.other, "reads": window.reads, "cpu_ms": cpu * 1000,
                    "published_ms": None if window.published is None else (window.published - start) * 1000,
                    "cpu_net_ms": (cpu - idle_rate * (end - start)) * 1000, "window_s": end - start})
                await asyncio.sleep(0.1)
        except (RuntimeError, TimeoutError) as exc:  # the cluster gave up (no leader): keep what was measured
            aborted = f"after {sum(len(done) for done in results.values())} events: {exc}"
    finally:
        await model.close()
    rows = []
    for event, done in results.items():
        row = summary(strategy, watchers, len(model.queries), event, done)
        row.update({"aborted": aborted, "open_s": round(open_seconds, 2), "idle_cpu_ms_per_s": round(idle_rate * 1000, 2),
                    "idle_answers": idle_answers, "settle_s": settle, "errors": len(model.errors),
                    "first_error": model.errors[0] if model.errors else None})
        rows.append(row)
    return rows


def answer_costs(server, routed, repeat=20):
    """{query: (bytes of one answer, server CPU ms per answer)}: each query read ``repeat`` times in a
    row (plain reads, one at a time) from one server, its CPU time divided by ``repeat``."""
    costs = {}
    paths = [path for strategy in STRATEGIES[:3] for path, _service in queries_of(strategy, routed[:1])]
    paths += ["/v1/catalog/nodes", "/v1/catalog/node-services/node-0000"]  # today's follow-up by node
    for path in dict.fromkeys(paths):
        before = process_cpu_seconds(server.process.pid)
        for _round in range(repeat):
            with urllib.request.urlopen(server.url + path, timeout=30) as answer:
                size = len(answer.read())
        costs[path] = (size, round((process_cpu_seconds(server.process.pid) - before) * 1000 / repeat, 2))
    return costs


def write_json(path, report):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".tmp").write_text(json.dumps(report, indent=1) + "\n")
    path.with_suffix(".tmp").replace(path)


def loadavg():
    return Path("/proc/loadavg").read_text().split()[:3]


def markdown(report):
    lines = ["| N | strategy | event | held queries | answers + reads / event | KiB / event "
             "| server CPU ms / event (net of idle) | idle server CPU ms/s | write ms "
             "| last watcher informed ms: median / p90 / max | load |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["results"]:
        name = row["strategy"] + (f" (aborted {row['aborted'][:40]})" if row["aborted"] else "")
        lines.append(f"| {row['watchers']} | {name} | {row['event']} ({row['events']}) | {row['queries']} "
                     f"| {row['answers_median']:g} + {row['reads_median']:g} "
                     f"| {row['bytes_median'] / 1024:.1f} | {row['cpu_ms_median']:.1f} "
                     f"({row['cpu_net_ms_median']:.1f}) | {row['idle_cpu_ms_per_s']:.1f} "
                     f"| {row['write_ms_median']:.1f} "
                     f"| {row['last_ms_median']:.1f} / {row['last_ms_p90']:.1f} / {row['last_ms_max']:.1f} "
                     f"| {row['loadavg'][0]} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 services, N = 10 and 100, 5 flips (CI)")
    parser.add_argument("--services", type=int)
    parser.add_argument("--watchers", type=int, nargs="+")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES[:6]))
    parser.add_argument("--events", nargs="+", choices=EVENTS, default=["flip", "register", "deregister"],
                        help="kinds of event measured (--quick: flip)")
    parser.add_argument("--flips", type=int, help="events of each kind (20; --quick: 5)")
    parser.add_argument("--routed", type=int, default=10, help="services each watcher routes (per-service)")
    parser.add_argument("--clients", type=int, default=0,
                        help="client agents the watchers are spread over (0: the watchers ask the servers directly)")
    parser.add_argument("--idle", type=float, help="seconds of idle CPU measured per case (2; --quick: 1)")
    parser.add_argument("--json", help="write the figures (and every flip's) to this file")
    parser.add_argument("--markdown", help="write the table to this file")
    args = parser.parse_args(argv)
    services = args.services or (1000 if args.quick else 5000)
    watchers = args.watchers or ([10, 100] if args.quick else [10, 100, 1000])
    flips = args.flips or (5 if args.quick else 20)
    events = ["flip"] if args.quick and "--events" not in (argv or sys.argv) else args.events
    idle = args.idle or (1.0 if args.quick else 2.0)
    routed = routed_services(args.routed)
    if "per-service-cached" in args.strategies and not args.clients:
        parser.error("per-service-cached asks the client agents' cache: give --clients 1 or more")
    most = max(watchers) * (len(routed) + 2 + FOLLOWUP_CONNECTIONS)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < most + 1000:
        if hard < most + 1000:
            parser.error(f"{most} connections need ulimit -n of at least {most + 1000} (hard limit {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (most + 1000, hard))  # the agents inherit it too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the cluster on SIGTERM as on Ctrl-C

    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "services": services,
              "failing": len(range(0, services, FAILING_EVERY)), "routed": len(routed), "clients": args.clients,
              "flips": flips, "events": events, "wait": WAIT, "http_max_conns_per_client": most + 100, "results": [],
              "loadavg_before": loadavg()}
    started = time.perf_counter()
    with ConsulCluster(servers=3, clients=args.clients, http_max_conns_per_client=most + 100) as cluster:
        report["cluster_start_s"] = round(time.perf_counter() - started, 1)
        begin = time.perf_counter()
        populate(cluster.servers[0], services)
        report["populate_s"] = round(time.perf_counter() - begin, 1)
        print(f"cluster up in {report['cluster_start_s']} s, {services} services registered in "
              f"{report['populate_s']} s", flush=True)
        report["answer_costs"] = answer_costs(cluster.servers[1], routed)
        for path, (size, cpu) in report["answer_costs"].items():
            print(f"one answer of {path}: {size} bytes, {cpu} ms of server CPU", flush=True)
        state = {number: "passing" for number in routed}
        for count in watchers:
            for strategy in args.strategies:
                rows = asyncio.run(measure(cluster, strategy, count, routed, flips, idle, state, events))
                for row in rows:
                    row["loadavg"] = loadavg()
                    report["results"].append(row)
                    print(f"N={count} {strategy} {row['event']}: {row['queries']} queries, "
                          f"answers/event {row['answers_median']:g} + reads {row['reads_median']:g}, "
                          f"{row['bytes_median'] / 1024:.1f} KB/event, server CPU {row['cpu_ms_median']:.1f} ms/event "
                          f"(net {row['cpu_net_ms_median']:.1f}), idle {row['idle_cpu_ms_per_s']:.1f} ms/s, "
                          f"write {row['write_ms_median']:.1f} ms, last informed "
                          f"{row['last_ms_median']:.1f} ms (p90 {row['last_ms_p90']:.1f}, max {row['last_ms_max']:.1f}), "
                          f"errors {row['errors']}, failed writes {row['failed_writes']}, opened in "
                          f"{row['open_s']} s, load {' '.join(row['loadavg'])}"
                          + (f", ABORTED {row['aborted']}" if row["aborted"] else ""), flush=True)
                if args.json:  # after every case: a run that fails later keeps what it measured
                    write_json(args.json, report)
        if cluster.clients:
            report["client_agents_cpu_s"] = round(sum(process_cpu_seconds(client.process.pid)
                                                      for client in cluster.clients), 2)
    report["total_s"] = round(time.perf_counter() - started, 1)
    table = markdown(report)
    print(table)
    print(f"total {report['total_s']} s")
    if args.json:
        write_json(args.json, report)
    if args.markdown:
        Path(args.markdown).write_text(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
