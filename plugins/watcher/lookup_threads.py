# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host-name lookups off the sync loop, with a timeout.

``getaddrinfo`` has no timeout of its own, and a slow DNS server held the sync loop for as long as the
system resolver kept trying, for every host name of every sync. Here each lookup runs on a daemon
thread (``LookupThreads``, kept for the watcher's life): one thread per host at a time, at most
``max_threads`` in all (a lookup still running from an earlier sync is waited for again, not started
twice). ``timed(timeout)`` gives one sync's ``getaddrinfo``: every lookup it is asked for waits only
until one deadline, ``timeout`` seconds after its first call (``prefetch`` starts the lookups of a
sync at once, so they run side by side). A host that did not answer by then, or that found every
thread busy, is one that does not resolve at this sync (``gaierror`` EAI_AGAIN, the reason says which);
the next sync asks again.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Optional, Set

MAX_THREADS = 16


class _Lookup:
    def __init__(self) -> None:
        self.done = threading.Event()
        self.infos: List[Any] = []
        self.error: Optional[BaseException] = None


class LookupThreads:
    def __init__(self, getaddrinfo: Callable[..., Any] = socket.getaddrinfo, max_threads: int = MAX_THREADS) -> None:
        self.getaddrinfo = getaddrinfo
        self.max_threads = max_threads
        self._running: Dict[str, _Lookup] = {}
        self._lock = threading.Lock()

    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def start(self, host: str) -> Optional[_Lookup]:
        """The lookup of ``host`` running now, started if it was not; None when every thread is busy."""
        with self._lock:
            lookup = self._running.get(host)
            if lookup is not None:
                return lookup
            if len(self._running) >= self.max_threads:
                return None
            lookup = self._running[host] = _Lookup()
        threading.Thread(target=self._run, args=(host, lookup), name="host-lookup", daemon=True).start()
        return lookup

    def _run(self, host: str, lookup: _Lookup) -> None:
        try:
            lookup.infos = list(self.getaddrinfo(host, None, 0, socket.SOCK_STREAM))
        except BaseException as exc:  # pylint: disable=broad-except  # handed to the waiting caller
            lookup.error = exc
        finally:
            with self._lock:
                self._running.pop(host, None)
            lookup.done.set()

    def timed(self, timeout: float) -> "TimedLookup":
        return TimedLookup(self, timeout)


class TimedLookup:
    """One sync's ``getaddrinfo(host, port, family, type)``: every call waits until the same deadline."""

    def __init__(self, threads: LookupThreads, timeout: float) -> None:
        self.threads = threads
        self.timeout = timeout
        self.deadline: Optional[float] = None
        self.late: Set[str] = set()   # hosts that did not answer in time (or found no free thread)

    def prefetch(self, hosts: Iterable[str]) -> None:
        for host in hosts:
            self._start(host)

    def _start(self, host: str) -> Optional[_Lookup]:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.timeout
        return self.threads.start(host)

    def __call__(self, host: str, _port: object = None, _family: int = 0, _type: int = 0) -> List[Any]:
        lookup = self._start(host)
        if lookup is None:
            self.late.add(host)
            raise socket.gaierror(socket.EAI_AGAIN, f"{host}: every lookup thread is busy")
        if not lookup.done.wait(max(0.0, (self.deadline or 0.0) - time.monotonic())):
            self.late.add(host)
            raise socket.gaierror(socket.EAI_AGAIN, f"{host}: no answer within {self.timeout:g}s")
        if lookup.error is not None:
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: {lookup.error}")
        return lookup.infos
