"""Fleet fan-out: what N watchers' blocking queries cost the Consul servers per health flip.

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
* ``per-service-cached`` (with ``--clients K``, to check the model above): the same queries with
  ``?cached`` instead of ``?stale``, to the client agents: the servers should see K blocking
  queries per routed service, not N.

For each strategy and each N (default 10, 100, 1000): every query is opened and answered once
(index 0), then re-issued as a blocking query; after a settle time (the servers must hold every
query before the flip) the server CPU is read while idle for IDLE seconds (the idle rate), then
FLIPS flips: one check of a routed service toggled passing <-> critical (a /v1/txn on a server),
and measured per flip:

* ``last_ms``: time from just before the flip's request to the moment the last of the queries that
  must wake (the N health queries of state-any; the N queries of the flipped service) has its whole
  answer in the load model;
* ``bytes``: the bytes (headers and body, as HTTP on the wire) of every answer in the flip's
  window, and ``answers``: how many answers (``woken``: of the queries that must wake, ``other``:
  any other, a spurious or unrelated wake-up);
* ``cpu_ms``: CPU time (user + system, /proc/PID/task/*/schedstat) of the three server processes
  from just before the flip until every woken query has been re-issued and a short settle has passed
  (so it includes the flip's Raft write, the wake-ups, the answers and the new blocking queries),
  and ``cpu_net_ms``: the same minus the idle rate times the window's length.

Reported per strategy and N: medians (and p90, max of last_ms) over the flips; one run, one machine
(docs/benchmarks.md, "Fleet fan-out"). ``--quick`` (CI's bench --short): 1,000 services, N = 10 and
100, 5 flips: under a minute. Limits raised: ``limits.http_max_conns_per_client`` (200 by default)
to what the run needs, on every agent; the load model checks that ``ulimit -n`` allows its sockets.
Every agent and its temporary directory are removed at the end, also on failure and on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
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

from ansible_collections.swallowkeeper.dyups.plugins.watcher.consul_source import FAILING_FILTER  # noqa: E402
from tests.resilience.loadgen import read_response_counted  # noqa: E402
from tests.support.consul_cluster import ConsulCluster, process_cpu_seconds  # noqa: E402

WAIT = "300s"                     # the watcher's default consul_wait
PER_NODE = 20                     # instances per external node
FAILING_EVERY = 50                # every 50th check critical: 2 %
STRATEGIES = ("state-any", "state-critical", "per-service", "per-service-cached")
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
    """[(path and query string without index/wait, routed service number or None)] of one watcher."""
    catalog = ("/v1/catalog/services?stale", None)
    if strategy == "state-any":
        return [("/v1/health/state/any?" + urlencode({"filter": FAILING_FILTER}) + "&stale", None), catalog]
    if strategy == "state-critical":
        return [("/v1/health/state/critical?stale", None), ("/v1/health/state/warning?stale", None), catalog]
    mode = "cached" if strategy == "per-service-cached" else "stale"
    return [(f"/v1/health/service/{quote(service_name(number))}?{mode}", number) for number in routed] + [catalog]


class Query:
    """One blocking query of one watcher, kept on its own connection."""

    __slots__ = ("port", "path", "service", "index", "sent", "answered_at", "wakes")

    def __init__(self, port, path, service):
        self.port, self.path, self.service = port, path, service
        self.index = 0
        self.sent = False         # a request is out and not answered
        self.answered_at = None   # perf_counter of its last answer
        self.wakes = False        # must wake on the current flip


class Window:
    """What the answers in one flip's window add up to."""

    def __init__(self, expected):
        self.expected = expected
        self.woken = 0
        self.other = 0
        self.bytes = 0
        self.last = None
        self.done = asyncio.Event()
        if expected == 0:
            self.done.set()


class LoadModel:
    def __init__(self, ports, strategy, watchers, routed):
        self.queries = []
        for watcher in range(watchers):
            port = ports[watcher % len(ports)]
            self.queries += [Query(port, path, service) for path, service in queries_of(strategy, routed)]
        self.window = None
        self.errors = []  # error answers (retried)
        self.fatal = []   # broken connections
        self.tasks = []

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
        """Send the query from its index, read the answer, count it."""
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
            if query.wakes and new != query.index:
                query.wakes = False
                window.woken += 1
                window.last = now
                if window.woken == window.expected:
                    window.done.set()
            else:
                window.other += 1
        query.index, query.answered_at = new, now

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


def median(values):
    return statistics.median(values) if values else float("nan")


def p90(values):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))] if ordered else float("nan")


async def measure(cluster, strategy, watchers, routed, flips, idle, state):
    """Open the queries of ``watchers`` watchers, then ``flips`` flips; a dict of figures."""
    targets = cluster.clients or cluster.servers
    model = LoadModel([agent.http_port for agent in targets], strategy, watchers, routed)
    loop = asyncio.get_running_loop()
    settle = 0.5 + len(model.queries) / 5000
    results = []
    try:
        started = time.perf_counter()
        leader = cluster.leader(timeout=120)
        for number in state:  # what the routed checks are now (a flip of an aborted case may have been applied)
            state[number] = leader.get(f"/v1/health/checks/{service_name(number)}")[0]["Status"]
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
            for flip in range(flips):
                number = routed[flip % len(routed)]
                status = "critical" if state[number] == "passing" else "passing"
                wakers = [query for query in model.queries
                          if (query.service == number if strategy.startswith("per-service") else
                              query.service is None and "/catalog/" not in query.path)]
                if strategy == "state-critical":  # the one of critical/warning whose set changes
                    wakers = [query for query in wakers if "/critical" in query.path]
                for query in wakers:
                    query.wakes = True
                window = model.window = Window(len(wakers))
                cpu_start, start = cluster.server_cpu_seconds(), time.perf_counter()
                failed_writes = await loop.run_in_executor(
                    None, txn, leader, [{"Check": {"Verb": "set", "Check": check_of(number, status)}}], 60.0)
                written = time.perf_counter()
                state[number] = status
                try:
                    await asyncio.wait_for(window.done.wait(), timeout=60)
                except asyncio.TimeoutError:
                    raise TimeoutError(f"{strategy} N={watchers} flip {flip}: {window.woken} of {window.expected} "
                                       "queries woke within 60 s") from None
                await model.until(lambda: all(query.sent for query in model.queries), 60, "every query re-issued")
                await asyncio.sleep(0.3 + len(wakers) / 2000)  # the servers take in the re-issued queries
                end = time.perf_counter()
                cpu = cluster.server_cpu_seconds() - cpu_start
                model.window = None
                results.append({"errors": len(model.errors), "last_ms": (window.last - start) * 1000,
                                "write_ms": (written - start) * 1000, "failed_writes": failed_writes,
                                "bytes": window.bytes,
                                "woken": window.woken, "other": window.other, "cpu_ms": cpu * 1000,
                                "cpu_net_ms": (cpu - idle_rate * (end - start)) * 1000, "window_s": end - start})
                await asyncio.sleep(0.1)
        except (RuntimeError, TimeoutError) as exc:  # the cluster gave up (no leader): keep the flips measured
            aborted = f"flip {len(results)}: {exc}"
    finally:
        await model.close()
    last = [flip["last_ms"] for flip in results] or [float("nan")]
    return {
        "strategy": strategy, "watchers": watchers, "queries": len(model.queries), "flips": len(results),
        "aborted": aborted,
        "open_s": round(open_seconds, 2), "idle_cpu_ms_per_s": round(idle_rate * 1000, 2),
        "idle_answers": idle_answers, "settle_s": settle,
        "write_ms_median": median([flip["write_ms"] for flip in results]),
        "last_ms_median": median(last), "last_ms_p90": p90(last), "last_ms_max": max(last),
        "bytes_median": median([flip["bytes"] for flip in results]),
        "answers_median": median([flip["woken"] + flip["other"] for flip in results]),
        "other_answers_max": max((flip["other"] for flip in results), default=0),
        "cpu_ms_median": median([flip["cpu_ms"] for flip in results]),
        "cpu_net_ms_median": median([flip["cpu_net_ms"] for flip in results]),
        "failed_writes": sum(len(flip["failed_writes"]) for flip in results),
        "errors": len(model.errors), "first_error": model.errors[0] if model.errors else None,
        "flips_raw": results,
    }


def answer_costs(server, routed, repeat=20):
    """{query: (bytes of one answer, server CPU ms per answer)}: each query read ``repeat`` times in a
    row (plain reads, one at a time) from one server, its CPU time divided by ``repeat``."""
    costs = {}
    paths = [path for strategy in STRATEGIES[:3] for path, _service in queries_of(strategy, routed[:1])]
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
    lines = ["| N | strategy | held queries | answers / flip | KiB / flip | server CPU ms / flip (net of idle) "
             "| idle server CPU ms/s | flip write ms | last answer ms: median / p90 / max |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in report["results"]:
        name = row["strategy"] + (f" (aborted after {row['flips']} flips)" if row["aborted"] else "")
        lines.append(f"| {row['watchers']} | {name} | {row['queries']} | {row['answers_median']:g} "
                     f"| {row['bytes_median'] / 1024:.1f} | {row['cpu_ms_median']:.1f} "
                     f"({row['cpu_net_ms_median']:.1f}) | {row['idle_cpu_ms_per_s']:.1f} "
                     f"| {row['write_ms_median']:.1f} "
                     f"| {row['last_ms_median']:.1f} / {row['last_ms_p90']:.1f} / {row['last_ms_max']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--quick", action="store_true", help="1,000 services, N = 10 and 100, 5 flips (CI)")
    parser.add_argument("--services", type=int)
    parser.add_argument("--watchers", type=int, nargs="+")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES[:3]))
    parser.add_argument("--flips", type=int)
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
    idle = args.idle or (1.0 if args.quick else 2.0)
    routed = routed_services(args.routed)
    if "per-service-cached" in args.strategies and not args.clients:
        parser.error("per-service-cached asks the client agents' cache: give --clients 1 or more")
    most = max(watchers) * (len(routed) + 1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < most + 1000:
        if hard < most + 1000:
            parser.error(f"{most} connections need ulimit -n of at least {most + 1000} (hard limit {hard})")
        resource.setrlimit(resource.RLIMIT_NOFILE, (most + 1000, hard))  # the agents inherit it too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the cluster on SIGTERM as on Ctrl-C

    report = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "services": services,
              "failing": len(range(0, services, FAILING_EVERY)), "routed": len(routed), "clients": args.clients,
              "flips": flips, "wait": WAIT, "http_max_conns_per_client": most + 100, "results": [],
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
                row = asyncio.run(measure(cluster, strategy, count, routed, flips, idle, state))
                row["loadavg"] = loadavg()
                report["results"].append(row)
                if args.json:  # after every case: a run that fails later keeps what it measured
                    write_json(args.json, report)
                print(f"N={count} {strategy}: {row['queries']} queries, answers/flip {row['answers_median']:g}, "
                      f"{row['bytes_median'] / 1024:.1f} KB/flip, server CPU {row['cpu_ms_median']:.1f} ms/flip "
                      f"(net {row['cpu_net_ms_median']:.1f}), idle {row['idle_cpu_ms_per_s']:.1f} ms/s, "
                      f"write {row['write_ms_median']:.1f} ms, last answer "
                      f"{row['last_ms_median']:.1f} ms (p90 {row['last_ms_p90']:.1f}, max {row['last_ms_max']:.1f}), "
                      f"errors {row['errors']}, failed flip writes {row['failed_writes']}, opened in "
                      f"{row['open_s']} s, load {' '.join(row['loadavg'])}"
                      + (f", ABORTED at {row['aborted']}" if row["aborted"] else ""), flush=True)
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
