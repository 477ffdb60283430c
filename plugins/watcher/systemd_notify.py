# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""systemd's notify protocol (``Type=notify``, ``WatchdogSec``), standard library only.

systemd gives a service started with ``Type=notify`` a datagram socket in ``$NOTIFY_SOCKET`` (a path,
or ``@name`` for the abstract namespace) and, with ``WatchdogSec``, the interval in ``$WATCHDOG_USEC``
(and the process meant in ``$WATCHDOG_PID``). The watcher sends:

- ``READY=1`` once its first sync ran (or its first attempt failed: Consul down at boot must not make
  the start time out; the watcher keeps retrying and serving the file's state);
- ``WATCHDOG=1`` every quarter of the interval, but only while it is alive: the main loop came round to
  its heartbeat within half the interval (it is woken every quarter, so a healthy loop always does) and
  every long poll thread runs. A loop stuck for half the interval, or a dead long poll, stops the pings
  and systemd restarts the service ``WatchdogSec`` after the last one;
- ``STOPPING=1`` when it stops.

Without ``$NOTIFY_SOCKET`` (supervisor, a terminal, the tests) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Callable, Mapping, Optional

log = logging.getLogger("swallowkeeper.watcher")


def notify_address(environ: Mapping[str, str]) -> Optional[str]:
    """The socket address in ``$NOTIFY_SOCKET`` (``@`` -> a leading NUL: the abstract namespace)."""
    address = environ.get("NOTIFY_SOCKET", "")
    if not address or not (address.startswith("/") or address.startswith("@")):
        return None  # unset, or a vsock address (not used by services)
    return "\0" + address[1:] if address.startswith("@") else address


def watchdog_interval(environ: Mapping[str, str], pid: Optional[int] = None) -> Optional[float]:
    """Seconds of ``$WATCHDOG_USEC`` when it is meant for this process (``$WATCHDOG_PID`` unset or ours)."""
    usec = environ.get("WATCHDOG_USEC", "")
    meant_for = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if meant_for and meant_for != str(os.getpid() if pid is None else pid):
        return None
    return int(usec) / 1e6


def send(address: Optional[str], *states: str) -> bool:
    """Send ``states`` (``READY=1``...) to the notify socket; False when there is none or it failed."""
    if not address:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(states).encode("utf-8"), address)
        return True
    except OSError as exc:
        log.warning("systemd notify socket: %s", exc)
        return False


class Supervision:
    """READY=1 once, WATCHDOG=1 while alive, STOPPING=1 at the end (see the module docstring).

    ``heartbeat()``: when the main loop last came round (Metrics.loop_heartbeat, ``clock``'s time);
    ``polls_alive()``: whether every long poll thread runs; ``wake()``: make the loop come round."""

    def __init__(self, heartbeat: Callable[[], float], polls_alive: Callable[[], bool], wake: Callable[[], None],
                 environ: Optional[Mapping[str, str]] = None, clock: Callable[[], float] = time.time) -> None:
        environ = os.environ if environ is None else environ
        self.address = notify_address(environ)
        self.interval = watchdog_interval(environ) if self.address else None
        self.heartbeat = heartbeat
        self.polls_alive = polls_alive
        self.wake = wake
        self.clock = clock
        self.is_ready = False
        self.stopping = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def start(self) -> Supervision:
        if self.interval:
            self.thread = threading.Thread(target=self._watchdog, name="systemd-watchdog", daemon=True)
            self.thread.start()
        return self

    def ready(self) -> None:
        """Called by the loop after each round; sends READY=1 the first time."""
        if not self.is_ready:
            self.is_ready = True
            send(self.address, "READY=1", "STATUS=first sync done; watching Consul")

    def alive(self) -> bool:
        """The loop came round within half the watchdog interval (it is woken every quarter), and
        every long poll runs."""
        return self.clock() - self.heartbeat() < (self.interval or 0) / 2 and self.polls_alive()

    def beat(self) -> bool:
        """One watchdog step: WATCHDOG=1 if alive (returns whether it was sent), then wake the loop."""
        if self.alive():
            sent = send(self.address, "WATCHDOG=1")
        else:
            sent = False
            log.error("watchdog: %s; not telling systemd that the watcher is alive",
                      "a long poll thread has stopped" if not self.polls_alive() else
                      f"the main loop has not come round for {self.clock() - self.heartbeat():.0f}s")
        self.wake()
        return sent

    def _watchdog(self) -> None:
        while not self.stopping.wait((self.interval or 0) / 4):
            self.beat()

    def stop(self) -> None:
        self.stopping.set()
        send(self.address, "STOPPING=1")
