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
- the module keeps its context (32 bytes) and one status (16 bytes) per worker; each change is a
  message of 72 bytes, a PID per worker (4 bytes each), the name and the body. A piece of at most
  2 KiB takes a slot of the next power of two (at least 8 bytes) in a page of slots of that size;
  a bigger piece takes whole contiguous pages (``message_pages``).

Checked on Tengine 3.2.0 with zones of 32k, 40k, 64k, 128k and 1m and 1, 2, 4, 8 and 16 workers: the
biggest body it took in an empty zone was the one this model predicts, to the page
(tests/integration/test_watcher_zone_fit.py checks one). The worker count is not known to the watcher,
so the smaller pieces are counted as if each took a page of its own (six pages with a body of
pages): a body up to two pages (8 KiB) below the zone's limit may be refused although it would fit. Messages wait in the
zone until every worker has read them (``dyups_read_msg_timeout``, and up to a second for a worker
just started); a body that fits an empty zone can still find it full for that while, and gets the
same 500 then: the watcher sends it again (the change counts as not applied), and a later attempt
finds the room. The role sizes the zone so every upstream's message can wait at once
(roles/tengine_dyups/README.md, "Shared memory").
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Set, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._dyups_wire import post_body
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream

PAGE = 4096
SLOT_MAX = PAGE // 2          # ngx_slab_max_size: bigger pieces take whole pages
POOL_HEADER = 256             # sizeof(ngx_slab_pool_t) is about 200 bytes on x86_64; rounded up
SLOT_HEADS = 9 * (24 + 32)    # ngx_slab_page_t + ngx_slab_stat_t per slot size, 8 B to 2 KiB
PAGE_DESCRIPTOR = 24          # ngx_slab_page_t
FIXED_PIECES = 4              # the context, the statuses, a message, its PIDs: a page each at most
_SIZE_RE = re.compile(r"([0-9]+)([kKmM]?)\Z")


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


def piece_pages(length: int) -> int:
    """Pages a piece of ``length`` bytes takes: whole pages past 2 KiB, else (at most) a page of slots."""
    return 1 if length <= SLOT_MAX else -(-length // PAGE)


def message_pages(name: str, body: str) -> int:
    """Pages a change of ``name`` with ``body`` needs in an empty zone, each small piece counted as a page."""
    return FIXED_PIECES + piece_pages(len(name.encode("utf-8"))) + piece_pages(len(body.encode("utf-8")))


def largest_body(zone_bytes: int, name: str = "") -> int:
    """The longest body (bytes) of an upstream ``name`` that ``fits`` (0: none does)."""
    pages = zone_pages(zone_bytes) - FIXED_PIECES - piece_pages(len(name.encode("utf-8")))
    return max(pages, 0) * PAGE


def fits(name: str, body: str, zone_bytes: int) -> bool:
    """True when a change of ``name`` with ``body`` fits an empty zone of ``zone_bytes``."""
    return message_pages(name, body) <= zone_pages(zone_bytes)


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
