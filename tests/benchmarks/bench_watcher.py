"""Watcher benchmarks: Consul change -> every nginx worker serving the new set; resync, memory, CPU.

    .venv/bin/python tests/benchmarks/bench_watcher.py                 # the full run (docs/benchmarks.md)
    .venv/bin/python tests/benchmarks/bench_watcher.py --short         # CI: small sizes, few flips
    .venv/bin/python tests/benchmarks/bench_watcher.py --sizes 1000 --flips 200 --json out.json

    .venv/bin/python tests/benchmarks/bench_watcher.py --read-msg-timeouts 20ms,50ms,100ms,200ms   # Tengine only

Set-up, per size N (all on loopback, all started and stopped here): a Consul ``-dev`` agent; three
backend ports (tests/support/backends.py); then, one after the other on the same agent, each proxy
flavor of ``--flavors`` (default: ``lua`` and, when ``$TENGINE_BIN`` is set, ``tengine``): stock nginx
with the Lua flavor or a real Tengine (``dyups_read_msg_timeout``: the role's default), 2 workers; N services
``SvcI``, each with 3 instances on three catalog nodes (``bench-n1..3``, address 127.0.0.1), one per
backend port, each with a passing check. So every upstream is ``{P1, P2, P3}``.

Measured:

* propagation of a health flip: the check of ``SvcK``'s instance on P3 goes critical (a catalog
  register with the new status); the clock runs from just before that request until every worker
  serves ``{P1, P2}``. Requests go through the proxy on new connections (``/u/SvcK/``, the
  answering worker in ``X-Dyups-Worker``); a worker counts as switched at its third P3-free answer
  in the final P3-free streak (a stale worker returns P3 at least once in any 3 answers, smooth
  weighted round robin), and the flip is done when both workers have switched: an upper bound.
  The check goes back to passing (not measured) before the next flip. K is random.
* propagation of a registration (scale out): a fourth instance of ``SvcK`` on a fourth backend
  port; done when both workers have answered from it.
* the same two for the baseline: tests/benchmarks/original_approach.py (blocking on
  /v1/catalog/services with wait=180s; a health flip is expected never to arrive: counted as
  "not within TIMEOUT").
* a rolling-deploy step: a new instance registers and the check of an old one goes critical at
  once; done when every worker serves the new instance and none the old one;
* ``--before REV[,REV...]``: the same flips, scale-outs and rolling-deploy steps, full resync and
  RSS against the watcher of each earlier commit (a git worktree each), in the same run, on the
  same Consul and nginx, one after the other (keys ``before_<REV>_health_flip`` ...; with one REV
  also ``before_health_flip`` ... as before);
* ``--profile FILE``: this checkout's watcher runs under cProfile (stats written to FILE when it
  stops: ``python -m pstats FILE``);
* full resync: ``--once`` with an empty upstream file and an empty interface (read every
  service, write the file, POST every upstream), wall time of the process;
* watcher RSS (VmRSS) right after its first full sync and again after the flips and scale-outs
  (``ours_rss_synced_mb``, ``ours_rss_mb``), and its CPU use while idle and while 50 health flips a
  second arrive (from /proc/PID/stat over a fixed window).

Results carry the flavor in their keys: ``ours_health_flip`` etc. for the Lua flavor (as before),
``tengine_ours_health_flip``, ``tengine_original_scale_out`` ... for Tengine.

``--read-msg-timeouts``: Tengine only, at ``--sweep-size`` upstreams (5000): for each value, Tengine
starts with the upstream file the watcher wrote (every upstream included), the watcher runs, and
``--sweep-flips`` health flips are measured as above, then as many POSTs straight to the interface
(Tengine's own part: POST -> every worker serves the new set, the same rule); then the CPU time of Tengine's workers (user +
system, /proc/PID/stat) over ``--idle-seconds`` (60) with nothing changing, as a share of one core.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()

from tests.support.backends import Backends  # noqa: E402
from tests.support.consul import ConsulAgent  # noqa: E402
from tests.support.nginx_lua import NginxLua  # noqa: E402
from tests.support.tengine import Tengine, tengine_binary  # noqa: E402
from tests.support.watcher import WatcherProcess, run_once  # noqa: E402

NODES = ("bench-n1", "bench-n2", "bench-n3")
TIMEOUT = 5.0


class CatalogWriter:
    """PUT /v1/catalog/register on keep-alive connections, one per thread."""

    def __init__(self, port):
        self.port = port
        self.local = threading.local()

    def _connection(self):
        connection = getattr(self.local, "connection", None)
        if connection is None:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            self.local.connection = connection
        return connection

    def register(self, node, service, instance_id, port, status="passing"):
        self._put("/v1/catalog/register", {
            "Node": node, "Address": "127.0.0.1", "SkipNodeUpdate": True,
            "Service": {"ID": instance_id, "Service": service, "Port": port},
            "Check": {"Node": node, "CheckID": f"check:{instance_id}", "Name": "bench", "Status": status,
                      "ServiceID": instance_id},
        })

    def set_check(self, node, instance_id, status):
        """Only the check's status changes (as a TTL check update does); the service is not written."""
        self._put("/v1/catalog/register", {
            "Node": node, "Address": "127.0.0.1", "SkipNodeUpdate": True,
            "Check": {"Node": node, "CheckID": f"check:{instance_id}", "Name": "bench", "Status": status,
                      "ServiceID": instance_id},
        })

    def _put(self, path, payload):
        body = json.dumps(payload)
        for attempt in range(3):
            connection = self._connection()
            try:
                connection.request("PUT", path, body=body)
                response = connection.getresponse()
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"catalog register answered {response.status}")
                return
            except (OSError, http.client.HTTPException):
                connection.close()
                self.local.connection = None
                if attempt == 2:
                    raise

    def deregister(self, node, instance_id):
        connection = self._connection()
        connection.request("PUT", "/v1/catalog/deregister", body=json.dumps({"Node": node, "ServiceID": instance_id}))
        response = connection.getresponse()
        response.read()


def populate(writer, size, ports):
    jobs = [(NODES[j], f"Svc{i}", f"Svc{i}-{j}", ports[j]) for i in range(size) for j in range(3)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda job: writer.register(*job), jobs))


def proxy_get(port, name):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", f"/u/{name}/", headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.read().decode().strip(), response.getheader("X-Dyups-Worker")
    finally:
        connection.close()


def wait_switched(proxy_port, name, started, gone=None, new=None, workers=2, timeout=TIMEOUT):
    """Seconds from ``started`` until every worker serves the new set (see the module docstring)."""
    streak = {}
    seen_new = {}
    while time.perf_counter() - started < timeout:
        status, body, pid = proxy_get(proxy_port, name)
        now = time.perf_counter()
        if gone is not None:
            if status == 200 and body != gone:
                streak.setdefault(pid, []).append(now)
            else:
                streak = {}
            done = [times[2] for times in streak.values() if len(times) >= 3]
            if len(done) >= workers:
                return max(done) - started
        else:
            if body == new:
                seen_new.setdefault(pid, now)
            if len(seen_new) >= workers:
                return max(seen_new.values()) - started
    return None


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


def summary(values, attempts):
    done = [v for v in values if v is not None]
    result = {"attempts": attempts, "propagated": len(done), "not_within_timeout": attempts - len(done)}
    if done:
        result.update({"p50_ms": round(statistics.median(done) * 1000, 1),
                       "p99_ms": round(percentile(done, 0.99) * 1000, 1),
                       "max_ms": round(max(done) * 1000, 1),
                       # every propagated one, for tests/benchmarks/plot_cdf.py
                       "samples_ms": sorted(round(v * 1000, 1) for v in done)})
    return result


def flips(writer, proxy_port, size, ports, count, rng):
    results = []
    for _unused in range(count):
        k = rng.randrange(size)
        name, instance = f"Svc{k}", f"Svc{k}-2"
        started = time.perf_counter()
        writer.set_check(NODES[2], instance, "critical")
        results.append(wait_switched(proxy_port, name, started, gone=str(ports[2])))
        writer.set_check(NODES[2], instance, "passing")
        wait_switched(proxy_port, name, time.perf_counter(), new=str(ports[2]), timeout=TIMEOUT)
    return results


def scale_outs(writer, proxy_port, size, extra_port, count, rng):
    results = []
    for i in range(count):
        k = rng.randrange(size)
        name, instance = f"Svc{k}", f"Svc{k}-extra{i}"
        started = time.perf_counter()
        writer.register("bench-n4", name, instance, extra_port)
        results.append(wait_switched(proxy_port, name, started, new=str(extra_port)))
        writer.deregister("bench-n4", instance)
        time.sleep(0.2)
    return results


def rolling_deploys(writer, proxy_port, size, ports, count, rng):
    """A new instance of ``SvcK`` registers and, at once, the check of its instance on P3 goes critical
    (one step of a rolling deploy: two changes that reach Consul together). Done when every worker
    serves the new instance and none serves P3 any more."""
    results = []
    for i in range(count):
        k = rng.randrange(size)
        name, instance = f"Svc{k}", f"Svc{k}-roll{i}"
        started = time.perf_counter()
        writer.register("bench-n4", name, instance, ports[3])
        writer.set_check(NODES[2], f"Svc{k}-2", "critical")
        joined = wait_switched(proxy_port, name, started, new=str(ports[3]))
        left = wait_switched(proxy_port, name, started, gone=str(ports[2]),
                             timeout=TIMEOUT) if joined is not None else None
        results.append(None if joined is None or left is None else max(joined, left))
        writer.deregister("bench-n4", instance)
        writer.set_check(NODES[2], f"Svc{k}-2", "passing")
        wait_switched(proxy_port, name, time.perf_counter(), new=str(ports[2]), timeout=TIMEOUT)
        time.sleep(0.2)
    return results


def before_worktree(rev, workdir):
    """A checkout of ``rev`` (git worktree) whose watcher runs beside this one's; removed by the caller."""
    path = Path(workdir) / f"before-{rev}"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True,
                   capture_output=True)
    return path


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return None


def cpu_share(pid, seconds, load=None):
    before = cpu_seconds(pid)
    started = time.perf_counter()
    if load:
        load(seconds)
    else:
        time.sleep(seconds)
    return round(100 * (cpu_seconds(pid) - before) / (time.perf_counter() - started), 1)


def flip_load(writer, size, ports, rate, rng):
    def run(seconds):
        end = time.perf_counter() + seconds
        state = {}
        next_at = time.perf_counter()
        while time.perf_counter() < end:
            k = rng.randrange(size)
            status = "passing" if state.get(k) == "critical" else "critical"
            state[k] = status
            writer.set_check(NODES[2], f"Svc{k}-2", status)
            next_at += 1.0 / rate
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        for k, status in state.items():
            if status == "critical":
                writer.set_check(NODES[2], f"Svc{k}-2", "passing")
    return run


def empty_interface(nginx, size):
    """DELETE every benchmark upstream, so that the next ``--once`` POSTs all of them (each full resync,
    ours and every ``--before`` one, starts from an empty interface and an empty file)."""
    for i in range(size):
        nginx.api("DELETE", f"/upstream/Svc{i}")


def bench_before(before_root, common, writer, nginx, size, ports, flip_count, rng, workdir, out, prefix="before",
                 measure_resources=False):
    """The same flips, scale-outs and rolling deploys (and full resync, RSS) against the watcher of an
    earlier commit; keys start with ``prefix``."""
    entry = before_root / "plugins" / "watcher"
    proxy_port = int(nginx.proxy_url.rsplit(":", 1)[1])
    empty_interface(nginx, size)
    started = time.perf_counter()
    once = run_once(workdir, upstream_file=str(workdir / f"resync-{size}.conf"), timeout=600, entry=entry, **common)
    out[f"{prefix}_full_resync_seconds"] = round(time.perf_counter() - started, 2) if once.returncode == 0 else None
    watcher = WatcherProcess(workdir / f"before-w{size}", entry=entry,
                             upstream_file=str(workdir / f"before-{size}.conf"), **common).start()
    try:
        watcher.wait_for(lambda: watcher.metrics()["swallowkeeper_watcher_upstreams"] == size, "watcher synced",
                         timeout=120)
        time.sleep(1.0)
        if measure_resources:
            out[f"{prefix}_rss_synced_mb"] = rss_mb(watcher.pid)
        out[f"{prefix}_health_flip"] = summary(flips(writer, proxy_port, size, ports, flip_count, rng), flip_count)
        out[f"{prefix}_scale_out"] = summary(scale_outs(writer, proxy_port, size, ports[3], min(20, flip_count), rng),
                                             min(20, flip_count))
        out[f"{prefix}_rolling_deploy"] = summary(rolling_deploys(writer, proxy_port, size, ports,
                                                                  min(20, flip_count), rng), min(20, flip_count))
        if measure_resources:
            time.sleep(2.0)
            out[f"{prefix}_rss_mb"] = rss_mb(watcher.pid)   # after the flips and scale-outs
    finally:
        watcher.stop()


def make_proxy(flavor, workdir, upstream_file):
    if flavor == "tengine":
        return Tengine(workers=2, upstream_file=str(upstream_file))
    return NginxLua(workers=2, dict_size="128m", upstream_file=str(upstream_file))


def bench_flavor(flavor, agent, writer, size, ports, flip_count, baseline_flips, measure_resources, rng, workdir,
                 before_roots=None, profile=None):
    """One flavor's figures at this size; keys as in the module docstring (prefixed for Tengine)."""
    out = {}
    with make_proxy(flavor, workdir, workdir / f"ours-{flavor}.conf") as nginx:
        proxy_port = int(nginx.proxy_url.rsplit(":", 1)[1])
        common = {"consul_url": agent.url, "dyups_url": nginx.api_url, "log_level": "info",
                  "drift_interval": 3600, "consul_resync_interval": 3600, "removal_guard_min": 10 ** 6}

        resync_file = workdir / f"resync-{flavor}-{size}.conf"
        started = time.perf_counter()
        once = run_once(workdir, upstream_file=str(resync_file), timeout=600, **common)
        out["full_resync_seconds"] = round(time.perf_counter() - started, 2)
        if once.returncode != 0:
            raise RuntimeError(f"--once failed:\n{once.stdout[-2000:]}\n{once.stderr[-2000:]}")

        python_args = ("-m", "cProfile", "-o", f"{profile}.{flavor}.{size}") if profile else ()
        watcher = WatcherProcess(workdir / f"w{flavor}{size}", upstream_file=str(workdir / f"ours-{flavor}.conf"),
                                 python_args=python_args,
                                 entry=ROOT / "plugins" / "watcher" / ("__main__.py" if profile else ""), **common).start()
        try:
            watcher.wait_for(lambda: watcher.metrics()["swallowkeeper_watcher_upstreams"] == size, "watcher synced",
                             timeout=120)
            time.sleep(1.0)
            if measure_resources:
                out["ours_rss_synced_mb"] = rss_mb(watcher.pid)
            out["ours_health_flip"] = summary(flips(writer, proxy_port, size, ports, flip_count, rng), flip_count)
            out["ours_scale_out"] = summary(scale_outs(writer, proxy_port, size, ports[3], min(20, flip_count), rng),
                                            min(20, flip_count))
            out["ours_rolling_deploy"] = summary(rolling_deploys(writer, proxy_port, size, ports, min(20, flip_count),
                                                                 rng), min(20, flip_count))
            if measure_resources:
                time.sleep(2.0)
                out["ours_rss_mb"] = rss_mb(watcher.pid)   # after the flips and scale-outs
                out["ours_cpu_idle_percent"] = cpu_share(watcher.pid, 20)
                out["ours_cpu_50_flips_per_s_percent"] = cpu_share(
                    watcher.pid, 20, flip_load(writer, size, ports, 50, rng))
                out["ours_rss_after_load_mb"] = rss_mb(watcher.pid)
        finally:
            watcher.stop()
        for rev, before_root in (before_roots or {}).items():
            before_dir = workdir / f"before-{rev}-{flavor}"
            before_dir.mkdir(exist_ok=True)
            bench_before(before_root, common, writer, nginx, size, ports, flip_count, rng, before_dir, out,
                         prefix=f"before_{rev}", measure_resources=measure_resources)
            if len(before_roots) == 1:   # the keys of a run with one --before, as before
                out.update({"before" + key[len(f"before_{rev}"):]: value for key, value in list(out.items())
                            if key.startswith(f"before_{rev}_")})

        if baseline_flips:
            empty_interface(nginx, size)  # the baseline starts from an interface it filled itself
            log_path = workdir / f"original-{flavor}-{size}.log"
            log = open(log_path, "wb")
            original = subprocess.Popen(
                [sys.executable, str(ROOT / "tests" / "benchmarks" / "original_approach.py"), "--consul", agent.url,
                 "--dyups", nginx.api_url, "--file", str(workdir / f"original-{flavor}-{size}.conf")],
                stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 300
                while time.monotonic() < deadline and b"synced index" not in log_path.read_bytes():
                    time.sleep(0.2)
                time.sleep(1.0)
                out["original_health_flip"] = summary(flips(writer, proxy_port, size, ports, baseline_flips, rng),
                                                      baseline_flips)
                out["original_scale_out"] = summary(
                    scale_outs(writer, proxy_port, size, ports[3], baseline_flips, rng), baseline_flips)
                if measure_resources:
                    out["original_rss_mb"] = rss_mb(original.pid)
            finally:
                original.terminate()
                original.wait(timeout=10)
                log.close()
    prefix = "" if flavor == "lua" else f"{flavor}_"
    return {prefix + key: value for key, value in out.items()}


def bench_size(size, flip_count, baseline_flips, measure_resources, rng, workdir, flavors=("lua",),
               baseline_flavors=("lua", "tengine"), before_roots=None, profile=None):
    out = {"upstreams": size, "instances": size * 3, "flavors": list(flavors)}
    with ConsulAgent() as agent, Backends(count=4) as backends:
        ports = backends.ports
        writer = CatalogWriter(int(agent.url.rsplit(":", 1)[1]))
        started = time.perf_counter()
        populate(writer, size, ports)
        out["populate_seconds"] = round(time.perf_counter() - started, 1)
        for flavor in flavors:
            out.update(bench_flavor(flavor, agent, writer, size, ports, flip_count,
                                    baseline_flips if flavor in baseline_flavors else 0, measure_resources, rng,
                                    workdir, before_roots, profile))
    return out


def workers_cpu_seconds(nginx):
    total = 0.0
    for pid in nginx.worker_pids():
        try:
            total += cpu_seconds(pid)
        except OSError:
            pass
    return total


def direct_posts(nginx, proxy_port, size, ports, count, rng):
    """Tengine's own part of a flip: a POST without P3 straight to the interface -> every worker serves
    {P1, P2} (same rule as a flip); then the upstream is put back (not measured)."""
    results = []
    for _unused in range(count):
        name = f"Svc{rng.randrange(size)}"
        started = time.perf_counter()
        status = nginx.api("POST", f"/upstream/{name}", f"server 127.0.0.1:{ports[0]};server 127.0.0.1:{ports[1]};")[0]
        results.append(wait_switched(proxy_port, name, started, gone=str(ports[2])) if status == 200 else None)
        body = "".join(f"server 127.0.0.1:{port};" for port in ports[:3])
        nginx.api("POST", f"/upstream/{name}", body)
        wait_switched(proxy_port, name, time.perf_counter(), new=str(ports[2]))
    return results


def sweep_read_msg_timeout(values, size, flip_count, idle_seconds, rng, workdir):
    """Tengine's dyups_read_msg_timeout: flip propagation against the workers' idle CPU (module docstring)."""
    rows = []
    with ConsulAgent() as agent, Backends(count=4) as backends:
        ports = backends.ports
        writer = CatalogWriter(int(agent.url.rsplit(":", 1)[1]))
        populate(writer, size, ports)
        upstream_file = workdir / f"sweep-{size}.conf"
        for value in values:
            with Tengine(workers=2, upstream_file=str(upstream_file), read_msg_timeout=value) as nginx:
                proxy_port = int(nginx.proxy_url.rsplit(":", 1)[1])
                common = {"consul_url": agent.url, "dyups_url": nginx.api_url, "log_level": "info",
                          "drift_interval": 3600, "consul_resync_interval": 3600, "removal_guard_min": 10 ** 6}
                watcher = WatcherProcess(workdir / f"sweep-{value}", upstream_file=str(upstream_file), **common).start()
                try:
                    watcher.wait_for(lambda: watcher.metrics()["swallowkeeper_watcher_upstreams"] == size,
                                     "watcher synced", timeout=300)
                    time.sleep(2.0)
                    row = {"read_msg_timeout": value, "upstreams": size,
                           "health_flip": summary(flips(writer, proxy_port, size, ports, flip_count, rng), flip_count),
                           "post_to_every_worker": summary(direct_posts(nginx, proxy_port, size, ports, flip_count,
                                                                        rng), flip_count)}
                    time.sleep(2.0)
                    before = workers_cpu_seconds(nginx)
                    started = time.perf_counter()
                    time.sleep(idle_seconds)
                    elapsed = time.perf_counter() - started
                    row["workers_idle_cpu_percent_of_a_core"] = round(
                        100 * (workers_cpu_seconds(nginx) - before) / elapsed, 2)
                    row["idle_seconds"] = round(elapsed, 1)
                finally:
                    watcher.stop()
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--short", action="store_true",
                        help="CI: size 200, 10 flips, no resource run, the original approach on Lua only")
    parser.add_argument("--sizes", default="10,1000,5000")
    parser.add_argument("--flips", type=int, default=120)
    parser.add_argument("--baseline-flips", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--flavors", default=None,
                        help="lua,tengine (default: lua, plus tengine when $TENGINE_BIN is set)")
    parser.add_argument("--read-msg-timeouts", default=None,
                        help="Tengine only: the dyups_read_msg_timeout sweep instead of the sizes (e.g. 20ms,50ms)")
    parser.add_argument("--sweep-size", type=int, default=5000)
    parser.add_argument("--sweep-flips", type=int, default=100)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--before", metavar="REV[,REV...]",
                        help="also measure the watcher of these commits (a git worktree each), one after the other")
    parser.add_argument("--profile", metavar="FILE",
                        help="run this checkout's watcher under cProfile; stats in FILE.<flavor>.<size>")
    args = parser.parse_args(argv)
    if args.short:
        args.sizes, args.flips, args.baseline_flips = "200", 10, 3
    if args.flavors is None:
        args.flavors = "lua,tengine" if tengine_binary() else "lua"
        if not tengine_binary():
            print("bench_watcher: no Tengine ($TENGINE_BIN unset): the Tengine figures are NOT measured", flush=True)
    flavors = [f for f in args.flavors.split(",") if f]
    if ("tengine" in flavors or args.read_msg_timeouts) and not tengine_binary():
        parser.error("Tengine asked for but $TENGINE_BIN is not set (tests/tools/get-tengine.sh builds one)")
    signal.signal(signal.SIGTERM, lambda *_unused: sys.exit(143))  # stop what was started (finally blocks)
    rng = random.Random(args.seed)
    results = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": f"{os.cpu_count()} cores, "
               f"{os.uname().sysname} {os.uname().release}", "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
               "timeout_s": TIMEOUT, "sizes": []}
    with tempfile.TemporaryDirectory(prefix="bench-watcher-") as tmp:
        if args.read_msg_timeouts:
            results["read_msg_timeout"] = sweep_read_msg_timeout(
                [v for v in args.read_msg_timeouts.split(",") if v], args.sweep_size, args.sweep_flips,
                args.idle_seconds, rng, Path(tmp))
            del results["sizes"]
        before_roots = {rev: before_worktree(rev, tmp) for rev in (args.before or "").split(",") if rev}
        if before_roots:
            results["before"] = list(before_roots)
        try:
            for size in [] if args.read_msg_timeouts else [int(s) for s in args.sizes.split(",")]:
                measure = not args.short and size == max(int(s) for s in args.sizes.split(","))
                # --short (CI): the original approach on the Lua flavor only (its flips wait out the timeout)
                result = bench_size(size, args.flips, args.baseline_flips, measure, rng, Path(tmp), flavors,
                                    ("lua",) if args.short else ("lua", "tengine"), before_roots,
                                    args.profile and str(Path(args.profile).resolve()))
                results["sizes"].append(result)
                print(json.dumps(result), flush=True)
        finally:
            for before_root in before_roots.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before_root)],
                               check=False, capture_output=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
