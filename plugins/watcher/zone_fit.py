# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Does a change fit Tengine's ``dyups_shm_zone_size``? A worker that takes a POST applies it, then
copies the name and the body into the zone for the other workers; when that copy does not fit, the
answer is 500 "update success but not sync to other process" and the upstream is changed on that
worker only (issue 25: traffic split 33 x 200 / 27 x 502; a retry does the same again). So the
watcher never sends a body that cannot fit the zone: the change is skipped with its reason
(``/status``, the log), counted (``swallowkeeper_watcher_zone_refusals_total``), the upstream keeps
what it had (a new one is not created) and the change is examined again at every sync.

The zone is an nginx slab pool (src/core/ngx_slab.c, Tengine 3.2.0's ngx_http_dyups_module.c):

- the pool's header, 9 slot heads and 9 statistics come first, then one 24-byte page descriptor per
  4 KiB page; the pages start at the next page boundary (``zone_pages``);
- the module keeps its context (32 bytes) and one status (16 bytes) per worker (``CONTEXT_PAGES``);
  each change is a message of 72 bytes, a PID per worker (4 bytes each), the name and the body
  (``message_pieces``). A piece of at most 2 KiB takes a slot of the next power of two (at least 8
  bytes) in a page of slots of that size, which later pieces of that size share; a bigger piece
  takes whole contiguous pages (``Unread.pages``).

Checked on Tengine 3.2.0 with zones of 32k, 40k, 64k, 128k and 1m and 1, 2, 4, 8 and 16 workers: the
biggest body it took in an empty zone was the one this model predicts, to the page
(tests/integration/test_watcher_zone_fit.py checks one). The worker count is not known to the watcher,
so the PIDs are counted as 64 workers' and the pieces of each slot size as pages of their own: a body
up to two pages (8 KiB) below the zone's limit may be refused although it would fit.

Messages wait in the zone until every worker has read them, and a bit longer: a worker reads at its
``dyups_read_msg_timeout`` timer (20 ms in the role; later on a busy machine) and before it takes a
POST, DELETE or GET on the interface; a message that every worker has read is freed at the next read
by any worker (ngx_http_dyups_read_msg_locked). A burst of POSTs on one connection, each of which fits
alone, can so fill the zone before the other workers read: the POST that finds it full answers 500
"update success but not sync to other process" and was applied on that worker only (measured: a 32k
zone took two 2-page bodies sent 2 ms apart and refused the third). So ``Pacer`` counts what this
watcher sent since the zone was last known empty (``Unread``: no credit for what Tengine frees
meanwhile, so the count is an upper bound whatever the timers did) and, before a change that would not
fit with them, waits until every worker has read them: a GET of the last change on new connections
until every worker (the interface listens with ``reuseport``; nginx_processes.WorkerReader) answered
it as sent. Those messages are then freed by the next POST's own read before it allocates, and the
count starts again. Without the workers' PIDs (no ``nginx_pid_file``) or when a worker does not answer
as expected, the Pacer waits ``UNCONFIRMED_WAIT`` (two of Tengine's default 1 s read intervals)
instead. Each wait is counted (``swallowkeeper_watcher_zone_waits_total``) and logged. The role sizes
the zone so that a whole push rarely waits (roles/tengine_dyups/README.md, "Shared memory").
"""

from __future__ import annotations

import logging
import re
import time
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import post_body
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream

PAGE = 4096
SLOT_MAX = PAGE // 2          # ngx_slab_max_size: bigger pieces take whole pages
POOL_HEADER = 256             # sizeof(ngx_slab_pool_t) is about 200 bytes on x86_64; rounded up
SLOT_HEADS = 9 * (24 + 32)    # ngx_slab_page_t + ngx_slab_stat_t per slot size, 8 B to 2 KiB
PAGE_DESCRIPTOR = 24          # ngx_slab_page_t
SLOT_MIN = 8                  # pool->min_shift 3
SLOT_EXACT = 64               # ngx_slab_exact_size: smaller slots keep their bitmap in the page itself
CONTEXT_PAGES = 2             # the module's context and the workers' statuses: a page each at most
MESSAGE = 72                  # sizeof(ngx_dyups_msg_t)
PIDS = 4 * 64                 # the message's PIDs, counted for up to 64 workers
UNCONFIRMED_WAIT = 2.0        # seconds: two of Tengine's default dyups_read_msg_timeout (1 s)
_SIZE_RE = re.compile(r"([0-9]+)([kKmM]?)\Z")
log = logging.getLogger("swallowkeeper.watcher")


def parse_size(text: str) -> int:
    """Bytes of an nginx size (``2m``, ``512k``, ``1048576``); ValueError otherwise."""
    found = _SIZE_RE.match(str(text).strip())
    if not found:
        raise ValueError(f"expected an nginx size such as 2m, 512k or a number of bytes, got {text!r}")
    number, unit = int(found.group(1)), found.group(2).lower()
    return number * {"": 1, "k": 1024, "m": 1024 * 1024}[unit]


def zone_pages(zone_bytes: int) -> int:
    """The 4 KiB pages a slab pool of ``zone_bytes`` hands out (ngx_slab_init)."""
    size = zone_bytes - POOL_HEADER - SLOT_HEADS
    pages = max(size // (PAGE + PAGE_DESCRIPTOR), 0)
    start = POOL_HEADER + SLOT_HEADS + pages * PAGE_DESCRIPTOR
    start = -(-start // PAGE) * PAGE
    return max(min(pages, (zone_bytes - start) // PAGE), 0)


def slot_size(length: int) -> int:
    """The slot a piece of at most SLOT_MAX bytes takes: the next power of two, at least SLOT_MIN."""
    return SLOT_MIN if length <= SLOT_MIN else 1 << (length - 1).bit_length()


def slots_per_page(size: int) -> int:
    """Slots of ``size`` bytes in one page; below SLOT_EXACT the page's first slots hold its bitmap."""
    count = PAGE // size
    if size < SLOT_EXACT:
        count -= -(-(count // 8) // size)
    return count


SLOTS_PER_PAGE = {1 << shift: slots_per_page(1 << shift) for shift in range(3, 12)}


def _length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def message_pieces(name: str, body: Optional[str]) -> List[int]:
    """Bytes of each piece a change puts in the zone (ngx_http_dyups_send_msg): ``body`` None is a DELETE."""
    pieces = [MESSAGE, PIDS, _length(name)]
    if body:
        pieces.append(_length(body))
    return pieces


class Unread:
    """The messages that may be in a zone of ``zone_bytes``: the pages they take at most, counted with
    no credit for what Tengine frees meanwhile, from an empty zone on (``clear``)."""

    def __init__(self, zone_bytes: int) -> None:
        self.zone_pages = zone_pages(zone_bytes)
        self.slots: Dict[int, int] = {}   # slot size: pieces
        self.messages = 0
        self.taken = CONTEXT_PAGES        # pages: the context's, whole pages of big pieces, pages of slots

    def _more(self, pieces: List[int]) -> Tuple[int, Dict[int, int]]:
        """(pages, {slot size: pieces}) that ``pieces`` add to what is counted."""
        pages = 0
        added: Dict[int, int] = {}
        for length in pieces:
            if length > SLOT_MAX:
                pages += -(-length // PAGE)
            else:
                size = slot_size(length)
                added[size] = added.get(size, 0) + 1
        for size, count in added.items():
            per_page, before = SLOTS_PER_PAGE[size], self.slots.get(size, 0)
            pages += -(-(before + count) // per_page) - -(-before // per_page)
        return pages, added

    def more(self, name: str, body: Optional[str]) -> Tuple[int, Dict[int, int]]:
        """What a change of ``name`` (and ``body``) adds to what is counted now: for ``add``."""
        return self._more(message_pieces(name, body))

    def pages(self, name: Optional[str] = None, body: Optional[str] = None) -> int:
        """Pages taken, with a change of ``name`` (and ``body``) more when given."""
        return self.taken + (self.more(name, body)[0] if name is not None else 0)

    def room(self, name: str, body: Optional[str]) -> bool:
        return self.pages(name, body) <= self.zone_pages

    def add(self, name: str, body: Optional[str], more: Optional[Tuple[int, Dict[int, int]]] = None) -> None:
        """Count a change; ``more``: ``more(name, body)`` made since the last change counted."""
        pages, added = more if more is not None else self.more(name, body)
        self.taken += pages
        for size, count in added.items():
            self.slots[size] = self.slots.get(size, 0) + count
        self.messages += 1

    def clear(self) -> None:
        self.slots.clear()
        self.messages, self.taken = 0, CONTEXT_PAGES


def largest_body(zone_bytes: int, name: str = "") -> int:
    """The longest body (bytes) of an upstream ``name`` that ``fits`` (0: none does)."""
    pages = zone_pages(zone_bytes) - Unread(zone_bytes).pages(name, None)
    return max(pages, 0) * PAGE


def fits(name: str, body: str, zone_bytes: int) -> bool:
    """True when a change of ``name`` with ``body`` fits an empty zone of ``zone_bytes``."""
    return Unread(zone_bytes).room(name, body)


# drain(name, upstream, check): True once every worker has answered a GET of ``name`` (which makes it read
# the messages first); ``check``: each as ``upstream`` holds it (None: a DELETE, no such upstream)
Drain = Callable[[str, Optional[Upstream], bool], bool]


class Pacer:
    """Holds back the next POST or DELETE while the messages this watcher sent may leave the zone too
    little room for it (see the module's text). ``before(name, body)`` before each request,
    ``sent(name, upstream, body, answered)`` after it; ``zone_bytes`` 0: never waits."""

    def __init__(self, zone_bytes: int, metrics: object, drain: Optional[Drain] = None,
                 sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> None:
        self.zone_bytes = zone_bytes
        self.unread = Unread(zone_bytes) if zone_bytes > 0 else None
        self.metrics = metrics
        self.drain = drain
        self.sleep = sleep
        self.clock = clock
        self.last: Optional[Tuple[str, Optional[Upstream], bool]] = None  # the last change; answered 200
        self._ahead: Optional[Tuple[str, Optional[str], Tuple[int, Dict[int, int]]]] = None  # before()'s count

    def before(self, name: str, body: Optional[str]) -> None:
        if self.unread is None:
            return
        more = self.unread.more(name, body)
        self._ahead = (name, body, more)
        if self.unread.messages == 0 or self.unread.taken + more[0] <= self.unread.zone_pages:
            return
        self._ahead = None
        started = self.clock()
        pages, messages = self.unread.pages(), self.unread.messages
        confirmed = False
        if self.drain is not None and self.last is not None:
            confirmed = self.drain(*self.last)
        if not confirmed:
            self.sleep(UNCONFIRMED_WAIT)
        self.unread.clear()
        self.last = None
        waited = self.clock() - started
        self.metrics.count("zone_waits")  # type: ignore[attr-defined]
        log.info("dyups_shm_zone_size: %d change(s) sent may still take %d of %d pages; upstream %s waited "
                 "%.1f ms until %s", messages, pages, self.unread.zone_pages, name, waited * 1000,
                 "every worker had read them" if confirmed else f"{UNCONFIRMED_WAIT:.0f} s had passed")

    def sent(self, name: str, upstream: Optional[Upstream], body: Optional[str], answered: bool) -> None:
        """A POST (``upstream``) or DELETE (None) of ``name`` was sent; ``answered``: with 200."""
        if self.unread is None:
            return
        ahead, self._ahead = self._ahead, None
        more = ahead[2] if ahead is not None and ahead[0] == name and ahead[1] is body else None
        self.unread.add(name, body, more)  # also when it failed: an unknown outcome may have left a message
        self.last = (name, upstream, answered)


def limit(desired: Mapping[str, Optional[Upstream]], applied: Mapping[str, Upstream],
          zone_bytes: int) -> Tuple[Dict[str, Optional[Upstream]], List[dict], Set[str]]:
    """``(desired, skipped, refused)``: ``desired`` ({name: Upstream or None} for the names that may
    change) with every upstream whose POST body cannot fit a zone of ``zone_bytes`` replaced by what
    is applied (``applied``). A DELETE (None) always fits; ``zone_bytes`` 0: not checked."""
    out = dict(desired)
    skipped: List[dict] = []
    refused: Set[str] = set()
    if zone_bytes <= 0:
        return out, skipped, refused
    for name in sorted(desired):
        upstream = desired[name]
        if upstream is None or upstream == applied.get(name):
            continue
        body = post_body(upstream)
        if fits(name, body, zone_bytes):
            continue
        out[name] = applied.get(name)
        refused.add(name)
        skipped.append({"what": f"upstream {name}",
                        "why": f"its body ({len(body.encode('utf-8'))} bytes, {len(upstream.servers)} server(s)) "
                               f"does not fit dyups_shm_zone_size ({zone_bytes} bytes: at most "
                               f"{largest_body(zone_bytes, name)}), so Tengine would apply it on one worker "
                               "only; kept as it is"})
    return out, skipped, refused
