# -*- coding: utf-8 -*-
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Keeping the watcher's RSS near what it really holds, on glibc (elsewhere these do nothing).

The watcher parses Consul answers of megabytes (a full ``/v1/health/state/any`` at thousands of
services; a misbehaving agent or proxy may send far more) that are garbage a moment later, in
several threads. Left to glibc's defaults, each thread's malloc arena keeps the pages of such a
buffer, and the dynamic mmap threshold moves large buffers from mmap (returned when freed) into
those arenas after the first one is freed: RSS ratchets up towards arenas x largest answer (the
resilience fuzz measured 300 MB after 500 cases). So:

* ``tune_allocator()`` (at start): buffers of 256 kB and more always come from mmap, and so go back
  to the system when freed; at most 2 malloc arenas;
* ``release_free_memory()``: ``malloc_trim(0)`` gives the free pages inside the heap back too;
* ``settle(freeze)`` (the daemon, after each full read of Consul and at a SIGHUP): collects cyclic
  garbage, then (``freeze``) moves what survives, mostly the long-lived cache, out of the cyclic
  collector's later scans, and trims. Process-wide, so it belongs to the daemon, not to the code that
  reads Consul (tests and tools that read Consul thousands of times in a row would pay it each time).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_MMAP_THRESHOLD = -3   # glibc's mallopt parameter numbers (malloc.h)
M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 256 * 1024
ARENAS = 2


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None
    except OSError:
        return None


_LIBC = _libc()


def tune_allocator() -> bool:
    """True when glibc took the settings (see the module docstring)."""
    if _LIBC is None:
        return False
    return bool(_LIBC.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(_LIBC.mallopt(M_ARENA_MAX, ARENAS))


def release_free_memory() -> None:
    """Give the C heap's free pages back to the system (malloc_trim)."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def settle(freeze: bool = True) -> None:
    """Unfreeze (what became cyclic garbage since the last freeze, such as a ConsulSource left by
    SIGHUP with its threads and bound methods, is collected, not kept frozen for ever), collect,
    freeze the survivors when ``freeze`` (the cache holds no reference cycles; reference counting
    still frees what is replaced), and give the freed pages back."""
    gc.unfreeze()
    gc.collect()
    if freeze:
        gc.freeze()
    release_free_memory()
