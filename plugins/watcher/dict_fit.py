# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Does a change fit the Lua flavor's shared dict? Its interface answers every request with the dict's
free memory (``X-Dyups-Free-Space``: whole free 4 KiB pages, lua-nginx-module's ``free_space()``), and a
POST that does not fit is refused whole (500 "the shared dict ... is full", the stored upstream kept;
issue 25). So the watcher does not send such a change at all: it would be written to the upstream file
and then refused at every retry, and a reload would load the file into a dict that cannot hold it.
Like zone_fit.py, the change is skipped with its reason (``/status``, the log), counted
(``swallowkeeper_watcher_dict_refusals_total``), the upstream keeps what it had (a new one is not
created) and the change is examined again at every sync.

The model (lua-nginx-module's ngx_http_lua_shdict_set_helper on nginx's slab allocator): an upstream is
one entry, ``u:`` and its key, and the record as state.lua encodes it (a line ``N name``, one line
``S port weight max_conns max_fails fail_timeout backup down host addresses`` per server), after a node
of about ``NODE`` bytes. An entry past 2 KiB takes whole contiguous pages; a smaller one is counted as a
page (the free pages say nothing of the slots left in used pages). A replacement whose entry takes no
more pages than the stored one fits where that one was (the stored entry is freed first); any other
change must fit the free pages seen last, less what the changes before it in the same sync take. The
free pages come from the last answer of the interface (the pushes' own answers and the drift check's
reads); before the first answer, and on Tengine (no such header), nothing is checked. Servers written
as host names are counted with ``HOST_ADDRESSES`` addresses of the longest form. Checked on nginx 1.22
with the Lua flavor (2 workers, a 1m dict): upstreams of 100 to 1 000 servers took the pages this
model predicts, to the page (2 to 11); smaller ones took 0 or 1.
"""

from __future__ import annotations

import threading
from typing import Callable, Dict, List, Mapping, Optional, Set, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._names import name_key
from ansible_collections.swallowkeeper.dyups.plugins.module_utils._upstream import Upstream
from ansible_collections.swallowkeeper.dyups.plugins.watcher.zone_fit import PAGE, SLOT_MAX

FREE_HEADER = "x-dyups-free-space"
NODE = 80            # the rbtree node and the shdict node before the key: 70 bytes on x86_64, rounded up
HOST_ADDRESSES = 4   # addresses counted for a server written as a host name (resolved by the Lua code)
LONGEST_ADDRESS = 39  # an IPv6 address written out


def encoded_length(upstream: Upstream) -> int:
    """Bytes of ``upstream`` as state.lua stores it (upstream.lua, ``encode``)."""
    length = len(f"N {upstream.name}".encode("utf-8"))
    for server in upstream.servers:
        if server.kind == "hostname":
            addresses = HOST_ADDRESSES * (LONGEST_ADDRESS + 1) - 1
        else:
            addresses = len(server.host)
        line = (f"S {server.port} {server.weight} {server.max_conns} {server.max_fails} {server.fail_timeout} "
                f"{int(server.backup)} {int(server.down)} {server.host} ")
        length += 1 + len(line.encode("utf-8")) + addresses
    for directive in upstream.directive_lines():
        length += 1 + len(f"D {directive}".encode("utf-8"))
    return length


def entry_pages(upstream: Upstream) -> int:
    """Pages the entry of ``upstream`` takes at most."""
    size = NODE + len(f"u:{name_key(upstream.name)}".encode("utf-8")) + encoded_length(upstream)
    return 1 if size <= SLOT_MAX else -(-size // PAGE)


def free_bytes(headers: Mapping[str, str]) -> Optional[int]:
    """The dict's free bytes an answer's headers tell (None: they do not: Tengine, or no such header)."""
    free = headers.get(FREE_HEADER, "")
    return int(free) if free.isdigit() else None


class FreeSpace:
    """The dict's free bytes as the interface said last (None: not said), from any answer's headers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.bytes: Optional[int] = None

    def seen(self, headers: Mapping[str, str]) -> None:
        self.note(free_bytes(headers))

    def note(self, free: Optional[int]) -> None:
        """Keep ``free`` (bytes), unless None (nothing said)."""
        if free is not None:
            with self._lock:
                self.bytes = free

    def watching(self, transport: Callable[..., Tuple[int, bytes, Dict[str, str]]]) -> "Watched":
        """``transport`` (see plugins/watcher/transport.py) with each answer's free space kept here."""
        return Watched(transport, self)


class Watched:
    """A transport around another that gives every answer's headers to a FreeSpace; its ``many`` (when the
    inner transport has one: pipelined requests) too, the last answer's being the newest."""

    def __init__(self, transport: Callable[..., Tuple[int, bytes, Dict[str, str]]], space: FreeSpace) -> None:
        self.transport = transport
        self.space = space
        if hasattr(transport, "many"):
            self.many = self._many

    def __call__(self, *args: object, **kwargs: object) -> Tuple[int, bytes, Dict[str, str]]:
        answer = self.transport(*args, **kwargs)
        self.space.seen(answer[2])
        return answer

    def _many(self, *args: object, **kwargs: object) -> List[object]:
        answers = self.transport.many(*args, **kwargs)  # type: ignore[attr-defined]
        for answer in answers:
            if isinstance(answer, tuple):
                self.space.seen(answer[2])
        return answers


def limit(desired: Mapping[str, Optional[Upstream]], applied: Mapping[str, Upstream],
          free_bytes: Optional[int]) -> Tuple[Dict[str, Optional[Upstream]], List[dict], Set[str]]:
    """``(desired, skipped, refused)`` as zone_fit.limit: every upstream whose entry would not fit a dict
    with ``free_bytes`` free (None: not checked) keeps what is applied. A DELETE always fits."""
    out = dict(desired)
    skipped: List[dict] = []
    refused: Set[str] = set()
    if free_bytes is None:
        return out, skipped, refused
    free_pages = free_bytes // PAGE
    for name in sorted(desired):
        upstream = desired[name]
        if upstream is None or upstream == applied.get(name):
            continue
        needed = entry_pages(upstream)
        stored = applied.get(name)
        if stored is not None and needed <= entry_pages(stored):
            continue
        if needed <= free_pages:
            free_pages -= needed
            continue
        out[name] = stored
        refused.add(name)
        skipped.append({"what": f"upstream {name}",
                        "why": f"its entry ({needed} page(s) of 4 KiB, {len(upstream.servers)} server(s)) does "
                               f"not fit the Lua flavor's shared dict ({free_bytes} bytes free at the last "
                               "answer, less the changes before it), which would refuse it; kept as it is "
                               "(raise tengine_dyups_lua_shared_dict_size)"})
    return out, skipped, refused
