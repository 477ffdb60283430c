# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What nginx lost: its worker processes watched through the master's pid file and /proc, and the
interface read from every worker.

Tengine keeps the upstreams added through the dyups interface in each worker's memory. A worker that
the master starts again (after a crash, an OOM kill, ``kill -9``) or starts anew (a reload) begins with
the upstreams the master read from the configuration when it started, not with what was posted since
(docs/resilience.md, "The data plane under faults"). So the watcher notices every new worker process:

- ``ProcessWatcher`` reads the pid file (``nginx_pid_file``) and the master's children in /proc every
  ``nginx_poll_interval`` seconds; a new master or a child it has not seen is a new generation;
- ``WorkerReader`` then reads ``/detail`` from every worker, not from whichever answers: on a new
  connection each time (the interface listens with ``reuseport``, so the kernel spreads new
  connections over the workers), each answer naming its worker in the header ``X-Dyups-Worker``
  (``add_header X-Dyups-Worker $pid always;``, which the role puts on the interface). A GET also makes
  a Tengine worker read the changes other workers left in shared memory first, so a read right after
  the POSTs brings a new worker up to date at once instead of at its first timer (up to 1 s);
- the Syncer compares every worker's answer with what is applied and pushes what differs
  (``Syncer.repair``); when not every worker could be read (no header, no ``reuseport``), everything
  is pushed again (``Syncer.push_all``).

The periodic drift check reads every worker the same way when a pid file is set.

A change that an old worker answers around a reload is the one that new workers never see (Tengine
#1114): nginx starts the new workers, waits 100 ms, then tells the old ones to stop, so for that long
(longer on a busy machine) the old workers still take connections, and a kept-alive connection stays
with its worker. The old worker answers 200 and leaves the change in its own generation's shared zone
(Tengine names the zone by the configuration's generation); the new workers have the upstream file as
the master read it, maybe just before the watcher wrote the change. Such a POST can come after the
check of the new workers ended. So the Syncer's transport is wrapped (``AnsweringWorkers``): it keeps
the worker that answered each POST and DELETE, and at each poll a worker among them that no longer
takes connections (shutting down, gone, or not the current master's) makes every worker be checked
again at once, as a new generation does.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Set, Tuple
from urllib.parse import urlsplit

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_client import DyupsClient
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_options import secret_headers
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._errors import DyupsError, TransportError
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._http_keepalive import UnixHTTPConnection, split_unix
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._servers import Server
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher.dict_fit import free_bytes  # the Lua dict's (api.lua)

log = logging.getLogger("swallowkeeper.watcher")

WORKER_HEADER = "x-dyups-worker"  # add_header X-Dyups-Worker $pid always; on the interface's location
READS_PER_WORKER = 16  # new connections tried per worker before giving up on seeing them all
# After new workers, every current worker is read again (and what it lacks pushed) until all agree with
# what is applied, for at most this long: around a reload a POST can land on an old worker that is about
# to stop, and the new ones then never get it (Tengine #1114).
SETTLE_SECONDS = 3.0
SETTLE_PAUSE = 0.05
Detail = Dict[str, List[Server]]


@dataclass(frozen=True)
class Generation:
    """The nginx processes at one moment: the master's PID (None: no master) and its children's.
    ``new_master``: the ProcessWatcher saw another master before this one (this one read the upstream
    file when it started, so it holds nothing the watcher deleted before)."""
    master: Optional[int]
    children: FrozenSet[int]
    new_master: bool = False

    def is_new_after(self, before: "Generation") -> bool:
        """True when this generation has a process ``before`` did not: a new master, a respawned or
        reloaded worker. Processes that only went away (old workers ending after a reload) are not."""
        if self.master is None:
            return False
        return self.master != before.master or bool(self.children - before.children)


def read_pid_file(path: str) -> Optional[int]:
    """The master's PID from its pid file, or None (no file, no number, no such process)."""
    try:
        with open(path, encoding="ascii", errors="replace") as handle:
            text = handle.read(64).strip()
    except OSError:
        return None
    if not text.isdigit():
        return None
    pid = int(text)
    return pid if os.path.exists(f"/proc/{pid}") else None


def children(pid: int, proc: str = "/proc") -> FrozenSet[int]:
    """PIDs of the live (not zombie) children of ``pid``, from ``/proc/*/stat``."""
    found = set()
    try:
        entries = os.listdir(proc)
    except OSError:
        return frozenset()
    wanted = str(pid)
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/stat", "rb") as handle:
                stat = handle.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()  # after "pid (comm) ": state, ppid, ...
        if len(fields) > 1 and fields[1] == wanted and fields[0] != "Z":
            found.add(int(entry))
    return frozenset(found)


def accepting_workers(pids: FrozenSet[int], proc: str = "/proc") -> FrozenSet[int]:
    """The PIDs of ``pids`` that are nginx worker processes taking connections (title ``nginx: worker
    process``; not a worker shutting down after a reload, not the cache manager or loader)."""
    found = set()
    for pid in pids:
        try:
            with open(f"{proc}/{pid}/cmdline", "rb") as handle:
                title = handle.read().decode("utf-8", "replace")
        except OSError:
            continue
        if "worker process" in title and "shutting down" not in title:
            found.add(pid)
    return frozenset(found)


def generation(pid_file: str) -> Generation:
    master = read_pid_file(pid_file)
    return Generation(master, children(master) if master is not None else frozenset())


class AnsweringWorkers:
    """A transport (see plugins/watcher/transport.py) around another: it keeps the PIDs of the workers that
    answered a POST or a DELETE (``X-Dyups-Worker``) until ``strays`` finds they no longer take connections.
    The Syncer's pushes go through it; the process watcher's thread calls ``strays``."""

    def __init__(self, transport: Callable[..., Tuple[int, bytes, Dict[str, str]]]) -> None:
        self.transport = transport
        self._pids: Set[int] = set()
        self._lock = threading.Lock()
        if hasattr(transport, "many"):
            self.many = self._many

    def __call__(self, method: str, url: str, body: Optional[bytes], timeout: float,
                 extra_headers: Optional[Dict[str, str]] = None) -> Tuple[int, bytes, Dict[str, str]]:
        answer = self.transport(method, url, body, timeout, extra_headers)
        self._keep(method, answer)
        return answer

    def _keep(self, method: str, answer: object) -> None:
        """The worker that answered a POST or a DELETE (``answer``: (status, body, headers))."""
        worker = answer[2].get(WORKER_HEADER, "") if isinstance(answer, tuple) and method != "GET" else ""
        if worker.isdigit():
            with self._lock:
                self._pids.add(int(worker))

    def _many(self, requests: List[Tuple[str, str, Optional[bytes]]], *args: object,
              **kwargs: object) -> List[object]:
        """The inner transport's ``many`` (pipelined requests), the workers that answered kept likewise."""
        answers = self.transport.many(requests, *args, **kwargs)  # type: ignore[attr-defined]
        for (method, _url, _body), answer in zip(requests, answers):
            self._keep(method, answer)
        return answers

    def strays(self, now: Generation, proc: str = "/proc") -> FrozenSet[int]:
        """The workers that answered a POST or a DELETE and are no longer workers of ``now`` taking
        connections; forgotten once returned. The others are kept (an old worker of a reload still takes
        connections for a while): at most the current workers."""
        with self._lock:
            pids = frozenset(self._pids)
        if not pids:
            return frozenset()
        gone = pids - accepting_workers(pids & now.children, proc)
        if gone:
            with self._lock:
                self._pids -= gone
        return gone


class ProcessWatcher:
    """A thread that calls ``on_new(generation)`` when nginx has a process it did not have before
    (``generation.new_master``: a master other than the last one it saw, from its start on), and
    ``on_stray(pids)`` when workers that answered a POST or a DELETE (``answered``) no longer take
    connections."""

    def __init__(self, pid_file: str, interval: float, on_new: Callable[[Generation], None],
                 answered: Optional[AnsweringWorkers] = None,
                 on_stray: Optional[Callable[[FrozenSet[int]], None]] = None) -> None:
        self.pid_file = pid_file
        self.interval = interval
        self.on_new = on_new
        self.answered = answered
        self.on_stray = on_stray
        self.current = generation(pid_file)
        self.master = self.current.master  # the last master seen (None: none yet)
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> "ProcessWatcher":
        self._thread = threading.Thread(target=self._run, name="nginx-processes", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def poll(self) -> bool:
        """Read the processes once; True (and ``on_new`` or ``on_stray`` called) when a new one appeared or
        a worker that answered a push no longer takes connections."""
        now = generation(self.pid_file)
        before, self.current = self.current, now
        strays = self.answered.strays(now) if self.answered is not None and now.master is not None else frozenset()
        if now.is_new_after(before):
            if self.master is not None and now.master != self.master:
                now = replace(now, new_master=True)
            self.master = now.master
            log.warning("nginx has new worker processes (master %s, workers %s; before: master %s, %s): "
                        "checking every worker", now.master, sorted(now.children), before.master,
                        sorted(before.children))
            self.on_new(now)
            return True
        if strays and self.on_stray is not None:
            log.warning("nginx worker(s) %s answered a POST or DELETE and no longer take connections (the old "
                        "workers of a reload): what they took may not reach the current workers (Tengine #1114); "
                        "checking every worker", sorted(strays))
            self.on_stray(strays)
            return True
        return False

    def _run(self) -> None:
        while not self._stopping.wait(self.interval):
            try:
                self.poll()
            except Exception:  # pylint: disable=broad-except  # the watch must go on; log and continue
                log.exception("reading the nginx processes failed")


class FreshConnectionTransport:
    """A transport (see plugins/watcher/transport.py) that opens a new connection for every request,
    so that ``reuseport`` lets the kernel pick the worker; keeps the headers of the last answer. ``headers``
    go with every request (the interface's shared secret)."""

    def __init__(self, headers: Optional[Dict[str, str]] = None) -> None:
        self.last_headers: Dict[str, str] = {}
        self.headers = dict(headers or {})

    def __call__(self, method: str, url: str, body: Optional[bytes], timeout: float,
                 extra_headers: Optional[Dict[str, str]] = None) -> Tuple[int, bytes, Dict[str, str]]:
        parts = urlsplit(url)
        connection: http.client.HTTPConnection
        if parts.scheme == "unix":
            socket_path, target = split_unix(url)
            connection = UnixHTTPConnection(socket_path, timeout)
        else:
            target = parts.path or "/"
            connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=timeout)
        try:
            connection.request(method, target, body=body,
                               headers={"Connection": "close", **self.headers, **(extra_headers or {})})
            answer = connection.getresponse()
            data = answer.read()
        except (OSError, http.client.HTTPException) as exc:
            raise TransportError(str(exc) or type(exc).__name__) from None
        finally:
            connection.close()
        self.last_headers = {key.lower(): value for key, value in answer.getheaders()}
        return answer.status, data, self.last_headers


class WorkerReader:
    """``/detail`` of every worker of the nginx whose master's pid file is ``pid_file``."""

    def __init__(self, api_url: str, pid_file: str, timeout: float, headers: Optional[Dict[str, str]] = None) -> None:
        self.pid_file = pid_file
        self.transport = FreshConnectionTransport(headers)
        self.client = DyupsClient(api_url, self.transport, timeout=timeout)
        self._warned = False
        self.free_space: Optional[int] = None  # X-Dyups-Free-Space of the last answer (None: not given)
        self.complete = False  # the last details() read every worker that takes connections

    def details(self) -> Tuple[List[Detail], bool]:
        """``([detail, ...], named)``: the answers of the distinct workers that answered (every current
        worker, unless READS_PER_WORKER new connections per worker did not reach them all: an interface
        without ``reuseport``), and whether the answers name their worker (False: one answer, from
        whichever worker took the connection). Raises DyupsError when the interface does not answer."""
        master = read_pid_file(self.pid_file)
        wanted = accepting_workers(children(master)) if master is not None else frozenset()
        seen: Dict[int, Detail] = {}
        for _attempt in range(max(1, len(wanted)) * READS_PER_WORKER):
            detail = self.client.detail()
            self.free_space = free_bytes(self.transport.last_headers)
            worker = self.transport.last_headers.get(WORKER_HEADER, "")
            if not worker.isdigit():
                if not self._warned:
                    log.warning("the dyups interface does not name its worker (no %s header): the drift check "
                                "reads whichever worker answers, and everything is pushed again after a worker "
                                "change", WORKER_HEADER)
                    self._warned = True
                return [detail], False
            seen.setdefault(int(worker), detail)
            if wanted <= set(seen):
                break
        # only the workers that still take connections now: one that began shutting down meanwhile (a
        # reload) may have answered, and what it holds no longer serves anything
        current = accepting_workers(children(master)) if master is not None else frozenset()
        self.complete = bool(current) and current <= set(seen)
        if wanted - set(seen):
            log.debug("read %d of %d nginx workers (is the interface's listen without reuseport?)",
                      len(wanted & set(seen)), len(wanted))
        kept = [detail for worker, detail in seen.items() if worker in current]
        return (kept or list(seen.values())), True

    def read_everywhere(self, name: str, upstream: Optional[Upstream], check: bool) -> bool:
        """GET ``/upstream/NAME`` on new connections until every worker that takes connections answered:
        a Tengine worker reads the changes other workers left in the zone before it answers a GET
        (zone_fit.Pacer). ``check``: only an answer that holds what ``upstream`` holds counts (None: no
        such upstream), so a worker whose read was skipped (a busy zone lock) is asked again. False when
        not every worker answered so within READS_PER_WORKER connections each, or none names itself."""
        master = read_pid_file(self.pid_file)
        wanted = accepting_workers(children(master)) if master is not None else frozenset()
        expected = None if upstream is None else {(server.host, server.port) for server in upstream.servers}
        if upstream is not None and any(server.kind == "hostname" for server in upstream.servers):
            check = False  # Tengine holds the addresses a name resolved to
        read: Set[int] = set()
        for _attempt in range(len(wanted) * READS_PER_WORKER):
            try:
                answer = self.client.get(name)
            except DyupsError:
                return False
            worker = self.transport.last_headers.get(WORKER_HEADER, "")
            if not worker.isdigit():
                return False
            if not check or (None if answer is None else set(answer)) == expected:
                read.add(int(worker))
            if wanted <= read:
                return True
        return False

    def delete_from_holder(self, name: str, workers: int) -> bool:
        """DELETE ``name`` on new connections until a worker that holds it answers 200 (at most
        READS_PER_WORKER tries per worker): a worker that lacks it answers 404 and tells no other
        worker, so a DELETE that reaches it leaves the workers that hold it as they were."""
        for _attempt in range(max(1, workers) * READS_PER_WORKER):
            if self.client.delete(name):
                return True
        return False


class NginxProcesses:
    """The daemon's view of nginx's processes: ``start()``/``stop()`` the ProcessWatcher (which calls
    ``on_new`` from its thread), ``repair(syncer, new_workers)`` for the sync loop."""

    def __init__(self, settings: Any, on_new: Callable[[Generation], None], metrics: Any,
                 answered: Optional[AnsweringWorkers] = None,
                 on_stray: Optional[Callable[[FrozenSet[int]], None]] = None) -> None:
        self.watcher = ProcessWatcher(settings.nginx_pid_file, settings.nginx_poll_interval, on_new, answered, on_stray)
        self.reader = WorkerReader(settings.dyups_url, settings.nginx_pid_file, settings.dyups_timeout,
                                   secret_headers(settings.dyups_secret_file))
        self.metrics = metrics

    def start(self) -> "NginxProcesses":
        self.watcher.start()
        return self

    def stop(self) -> None:
        self.watcher.stop()

    def repair(self, syncer: Any, new_workers: bool = False) -> Any:
        """Every worker's ``/detail`` compared with what is applied, what differs pushed (everything, after
        new workers, when the answers do not name their worker); after new workers, every worker is read once
        more, which makes a Tengine worker apply the POSTs at once, and what still differs is pushed.
        Returns the last SyncReport; raises DyupsError when the interface does not answer."""
        details, named = self.reader.details()
        if new_workers and not named:
            syncer.push_all()
        report = syncer.repair(details)
        if new_workers or report.deleted:
            deadline = time.monotonic() + SETTLE_SECONDS
            while True:
                details, named = self.reader.details()
                if named and self._delete_from_holders(syncer, details):
                    details = self.reader.details()[0]
                report = syncer.repair(details)
                settled = not (report.posted or report.deleted or report.failed) and (self.reader.complete or not named)
                if settled or time.monotonic() >= deadline:
                    break
                time.sleep(SETTLE_PAUSE)
        free = self.reader.free_space
        self.metrics.set(dyups_free_bytes=-1 if free is None else free)
        syncer.dict_space.note(free)
        return report

    def _delete_from_holders(self, syncer: Any, details: List[Detail]) -> bool:
        """Upstreams the watcher deleted that some worker holds again (a respawned worker has what the
        master read at its start) deleted on that worker; True when there were any."""
        stale = sorted({name for detail in details for name in detail
                        if name in syncer.deleted_here and name not in syncer.applied})
        for name in stale:
            if self.reader.delete_from_holder(name, len(details)):
                log.info("upstream %s: deleted on the worker that held it again", name)
            else:
                log.warning("upstream %s: a worker holds it again and no DELETE reached that worker", name)
        return bool(stale)
