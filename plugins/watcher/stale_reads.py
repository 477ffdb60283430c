# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the watcher says when a long poll's answer was too stale (``consul_max_stale``).

The long polls read with ``stale`` (any Consul server answers). ConsulClient re-reads an answer from
the leader when its server last heard from the leader more than ``consul_max_stale`` seconds before
(``X-Consul-LastContact``) or knew no leader, and calls ``StaleReads`` first: it counts the re-read
(``swallowkeeper_watcher_consul_stale_rereads_total``), keeps its LastContact
(``swallowkeeper_watcher_consul_stale_reread_last_contact_seconds``: also when the re-read fails) and logs a warning naming the URL and how
stale the server was, at most one line per ``every`` seconds (with the number of re-reads since the
last line), so a server that stays behind does not flood the log. How stale each poll's last answer
was is the gauge ``swallowkeeper_watcher_consul_last_contact_seconds`` (Metrics.set_index).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from ansible_collections.swallowkeeper.dyups.plugins.watcher.metrics import Metrics

log = logging.getLogger("swallowkeeper.watcher")


class StaleReads:
    """``on_too_stale`` of the watcher's ConsulClient (called from the poll threads)."""

    def __init__(self, metrics: Metrics, bound: float, every: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.bound = bound
        self.every = every
        self.clock = clock
        self.lock = threading.Lock()
        self.unlogged = 0
        self.logged_at: Optional[float] = None

    def __call__(self, url: str, last_contact: float) -> None:
        self.metrics.count("consul_stale_rereads")
        self.metrics.set(consul_stale_reread_last_contact_seconds=last_contact)
        with self.lock:
            self.unlogged += 1
            now = self.clock()
            if self.logged_at is not None and now - self.logged_at < self.every:
                return
            count, self.unlogged, self.logged_at = self.unlogged, 0, now
        heard = ("knew no leader" if last_contact == float("inf") else
                 f"last heard from the Consul leader {last_contact:.1f}s before")
        more = f" ({count} such answers since the last line)" if count > 1 else ""
        log.warning("GET %s was answered by a server that %s, above consul_max_stale %gs: read again from the "
                    "leader%s", url, heard, self.bound, more)
