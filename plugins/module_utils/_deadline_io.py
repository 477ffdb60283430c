# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: reading a socket within a total deadline.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A socket's reading side that keeps a total deadline (the modules' and the watcher's HTTP client, the
watcher's HTTP listeners).

A socket timeout bounds each read alone: a peer that sends a byte just before each read would time out
holds the reader for ever. ``deadline_reader(sock, deadline)`` gives each read only what is left until
``deadline`` (``time.monotonic()``), so the whole exchange ends by then, however the bytes come.
"""

from __future__ import annotations

import io
import socket
import time
from typing import Any


class DeadlineReader(io.RawIOBase):
    """The raw reader of ``sock`` (its ``makefile("rb", buffering=0)``), each read waiting only until
    ``deadline``; ``socket.timeout`` after."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        super().__init__()
        self.connection = sock
        self.deadline = deadline
        self.raw = sock.makefile("rb", buffering=0)   # counted by the socket as makefile()'s files are

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> Any:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("deadline passed")
        self.connection.settimeout(left)
        return self.raw.readinto(b)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self.raw.close()


def deadline_reader(sock: socket.socket, deadline: float) -> io.BufferedReader:
    """A buffered reader of ``sock`` that keeps ``deadline`` (to replace a ``sock.makefile("rb")``)."""
    return io.BufferedReader(DeadlineReader(sock, deadline))
