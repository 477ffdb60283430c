"""POSTs answered 200 around a Tengine reload, lost (Tengine #1114), reproduced with the watcher's own
upstream file (outside CI; figures in docs/resilience.md, "The reload race").

    .venv/bin/python tests/resilience/reload_race.py [--rounds 8] [--services 20] [--flavor tengine|lua]
                                                     [--old-watcher DIR/plugins/watcher] [--quiescence-max S]

Tengine (2 workers; ``--flavor lua``: stock nginx with the Lua flavor, which keeps every upstream in a
shared dict that a reload keeps, for comparison) includes the watcher's upstream file, as on a role-made host. Per round: for 0.4 s
a thread moves services between two backends in Consul, one every ~20 ms (each a change the watcher
writes to the file and POSTs); 0.2 s into it nginx is reloaded (SIGHUP). A POST that an old worker
answers after the master read the file reaches no new worker: the new workers have the file as the
master read it, and the old worker's message goes to the old generation's shared zone. After the last
move, ``/detail`` is read from every worker until every worker holds every service's last backend:
the time that took (``converged_after``), or ``null`` after ``--wait`` seconds (a lost change);
``file_written_after``: until the watcher's file held them (what the watcher applied, after Consul's
answer and the watcher's quiescence), and ``workers_behind_the_file`` the difference: how long the
workers lagged behind what the watcher applied.
Per round also: ``repairs``, the watcher's "dyups differs" warnings (a worker lacked what was applied, found
by a check of every worker), ``stray_checks`` (a worker that answered a push stopped taking connections) and
the repairs after the first of those (changes an old worker took, which only that check found).
``--old-watcher`` runs another watcher (``git archive`` of an earlier commit, extracted), with
``nginx_pid_file`` when it has plugins/watcher/nginx_processes.py (940f60b has not).
Printed as JSON lines, one per round, then a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.collection import ensure_importable  # noqa: E402

ensure_importable()

from tests.support.backends import Backends  # noqa: E402
from tests.support.consul import ConsulAgent  # noqa: E402
from tests.resilience.data_plane import make_watcher  # noqa: E402
from tests.support.tengine import flavor_class  # noqa: E402

from ansible_collections.swallowkeeper.dyups.plugins.module_utils import _upstream_file  # noqa: E402

BURST = 0.4
RELOAD_AT = 0.2
REPAIR = "dyups differs from the upstream file"   # the watcher's log: a worker lacked what was applied
STRAY = "no longer take connections"   # ... a worker that answered a push stopped taking connections


def every_worker_detail(nginx, tries=40):
    """{worker pid: {upstream: set of server ports}} of every current worker (new connections)."""
    workers, seen = set(nginx.worker_pids()), {}
    for _unused in range(tries):
        status, text, headers = nginx.api("GET", "/detail", timeout=10)
        if status not in (200, 204) or "x-dyups-worker" not in headers:
            continue
        upstreams, name = {}, None
        for line in text.splitlines():
            if line.startswith("server "):
                upstreams.setdefault(name, set()).add(int(line.split()[1].rsplit(":", 1)[1]))
            elif line.strip():
                name = line.strip()
        seen[int(headers["x-dyups-worker"])] = upstreams
        if set(seen) >= workers:
            return seen
    return None


def converged(nginx, expected):
    seen = every_worker_detail(nginx)
    return seen is not None and all(all(upstreams.get(name) == {port} for name, port in expected.items())
                                    for upstreams in seen.values())


def file_holds(path, expected):
    """True when the upstream file (the watcher's applied state) holds every service's last backend."""
    try:
        upstreams = _upstream_file.read(str(path))
    except (OSError, ValueError):
        return False
    return all(name in upstreams and [server.port for server in upstreams[name].servers] == [port]
               for name, port in expected.items())


def run(rounds, services, wait, old_watcher=None, flavor="tengine", quiescence_max=None):
    results = []
    with tempfile.TemporaryDirectory(prefix="reload-race-") as tmp, ConsulAgent() as agent, \
            Backends(count=2) as backends:
        tmp_path = Path(tmp)
        upstream_file = tmp_path / "upstreams.conf"
        nginx = flavor_class(flavor)(workers=2, upstream_file=str(upstream_file))
        nginx.start()
        names = [f"Svc{i}" for i in range(services)]
        where = {}
        for i, name in enumerate(names):
            where[name] = backends.ports[i % 2]
            agent.register(name, f"{name}-1", port=where[name], check=False)
        extra = {}
        if quiescence_max is not None:   # a sync every quiescence_max at least while the moves go on
            extra.update(quiescence_max=quiescence_max, quiescence_min=min(0.02, quiescence_max))
        if old_watcher and (Path(old_watcher) / "nginx_processes.py").exists():
            extra["nginx_pid_file"] = str(nginx.prefix / "nginx.pid")
        watcher = make_watcher(tmp_path, agent, nginx, upstream_file, old_watcher, drift_interval=300, **extra)
        try:
            watcher.start()
            deadline = time.monotonic() + 20
            while not converged(nginx, where):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the first sync did not reach every worker:\n{watcher.log_text()[-2000:]}")
                time.sleep(0.1)
            pick = random.Random(25)
            for number in range(rounds):
                moves = []

                def burst():
                    ends = time.monotonic() + BURST
                    while time.monotonic() < ends:
                        name = pick.choice(names)
                        where[name] = backends.ports[0] if where[name] == backends.ports[1] else backends.ports[1]
                        agent.register(name, f"{name}-1", port=where[name], check=False, wait=False)
                        moves.append(name)
                        time.sleep(0.02)
                log_mark = len(watcher.log_text())
                mover = threading.Thread(target=burst)
                mover.start()
                time.sleep(RELOAD_AT)
                os.kill(nginx.master_pid(), signal.SIGHUP)
                mover.join()
                last_move = time.monotonic()
                took = applied = None
                while time.monotonic() - last_move < wait:
                    if applied is None and file_holds(upstream_file, where):
                        applied = round(time.monotonic() - last_move, 3)
                    if applied is not None and converged(nginx, where):
                        took = round(time.monotonic() - last_move, 3)
                        break
                    time.sleep(0.02)
                lines = watcher.log_text()[log_mark:].splitlines()
                strays = [i for i, line in enumerate(lines) if STRAY in line]
                results.append({"round": number, "moves": len(moves), "file_written_after": applied,
                                "converged_after": took,
                                "workers_behind_the_file": None if took is None else round(took - applied, 3),
                                "repairs": sum(REPAIR in line for line in lines), "stray_checks": len(strays),
                                "repairs_after_a_stray_check": sum(REPAIR in line for line in lines[strays[0]:])
                                if strays else 0})
                if took is None or took > 1:   # what the watcher did meanwhile, for the reader
                    results[-1]["watcher_log"] = [line[24:200] for line in watcher.log_text()[log_mark:].splitlines()
                                                  ][-40:]
                print(json.dumps(results[-1]), flush=True)
                if took is None:   # put it right before the next round (a restart of the watcher reads everything)
                    watcher.stop()
                    watcher.start()
                    while not converged(nginx, where):
                        time.sleep(0.1)
                time.sleep(1.0)
        finally:
            watcher.stop()
            nginx.stop()
    times = sorted(r["converged_after"] for r in results if r["converged_after"] is not None)
    behind = sorted(r["workers_behind_the_file"] for r in results if r["converged_after"] is not None)
    return {"watcher": old_watcher or "this", "flavor": flavor, "quiescence_max": quiescence_max, "rounds": len(results),
            "lost_rounds": sum(r["converged_after"] is None for r in results),
            "converged_after_max": times[-1] if times else None,
            "converged_after_median": times[len(times) // 2] if times else None,
            "workers_behind_the_file_max": behind[-1] if behind else None,
            "rounds_with_repairs": sum(bool(r["repairs"]) for r in results),
            "rounds_repaired_after_a_stray_check": sum(bool(r["repairs_after_a_stray_check"]) for r in results),
            "load_average": os.getloadavg()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--wait", type=float, default=5.0, help="seconds after the last move before a round counts as lost")
    parser.add_argument("--flavor", choices=["tengine", "lua"], default="tengine")
    parser.add_argument("--quiescence-max", type=float,
                        help="the watcher's quiescence_max (default: its own, 0.25 s); lower, more POSTs fall around the reload")
    parser.add_argument("--old-watcher", help="DIR/plugins/watcher of another watcher (with nginx_pid_file when it "
                                              "has nginx_processes.py)")
    args = parser.parse_args()
    print(json.dumps(run(args.rounds, args.services, args.wait, args.old_watcher, args.flavor, args.quiescence_max)),
          flush=True)


if __name__ == "__main__":
    main()
