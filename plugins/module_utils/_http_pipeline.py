# -*- coding: utf-8 -*-
# Private to swallowkeeper.dyups: HTTP/1.1 pipelining on one connected socket, for KeepAliveTransport.many.
# Copyright: swallowkeeper.dyups contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Requests sent a window at a time on one socket, their answers read in order (HTTP/1.1 pipelining,
which nginx serves request after request on a connection).

Why: a full resync POSTs every upstream, and one request at a time costs a round trip each, most of it
the client's own request building and header parsing (``http.client`` parses headers with the ``email``
package) and the wake-ups between the two processes. Pipelined, 5 000 POSTs to the Lua flavor took 0.3 to
0.45 s against 1.7 to 2.0 s one at a time on this project's 2-core machine (docs/benchmarks.md, "POSTs
pipelined").

``exchange(sock, requests, start, window, answers, deadline_for, max_answer)`` sends ``requests[start:]``
(bytes, each a whole request) a window at a time and puts each answer ``(status, body, headers)``
(header names in lower case) into ``answers`` at its index; it returns the index of the first request
without an answer: the end, or where the server closed the connection (``Connection: close``, nginx's
``keepalive_requests``), after which the caller sends the rest on a new one. A socket error, an answer
that breaks the framing or one larger than ``max_answer`` is raised (OSError or ValueError) once the
answers before it are in ``answers``.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Callable, List, Optional, Sequence, Tuple

from ansible_collections.swallowkeeper.dyups.plugins.module_utils._deadline_io import deadline_reader

Answer = Tuple[int, bytes, dict]
MAX_LINE = 65536
MAX_HEADERS = 100


def request_bytes(method: str, target: str, host: str, headers: dict, body: Optional[bytes]) -> bytes:
    """One HTTP/1.1 request, whole; ValueError for a target or header that would break the framing."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body or b'')}")
    if any(char in line for line in lines for char in "\r\n\0"):
        raise ValueError("a request line or header holds a line break")
    return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (body or b"")


def _line(reader: Any) -> bytes:
    line = reader.readline(MAX_LINE + 1)
    if len(line) > MAX_LINE:
        raise ValueError("an answer line longer than 64 KiB")
    return line


def read_answer(reader: Any, max_answer: int) -> Tuple[Optional[Answer], bool]:
    """(answer, the server closes after it) read from ``reader``; (None, True) when the connection ended
    before an answer began."""
    status_line = _line(reader)
    if not status_line:
        return None, True
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {status_line[:80]!r}")
    status = int(parts[1])
    headers = {}
    for _count in range(MAX_HEADERS + 1):
        line = _line(reader)
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise ValueError("the connection ended inside an answer's headers")
        name, sep, value = line.decode("latin-1").partition(":")
        if not sep:
            raise ValueError(f"a header line without a colon: {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    else:
        raise ValueError(f"more than {MAX_HEADERS} headers in one answer")
    closes = headers.get("connection", "").lower() == "close" or parts[0] == b"HTTP/1.0"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = _chunked(reader, max_answer)
    elif "content-length" in headers:
        length = int(headers["content-length"]) if headers["content-length"].isdigit() else -1
        if length < 0 or length > max_answer:
            raise ValueError(f"an answer of Content-Length {headers['content-length']!r} (read at most {max_answer})")
        body = reader.read(length)
        if len(body) < length:
            raise ValueError("the connection ended inside an answer's body")
    elif status in (204, 304) or 100 <= status < 200:
        body = b""
    else:   # delimited by the end of the connection
        body = reader.read(max_answer + 1)
        if len(body) > max_answer:
            raise ValueError(f"an answer longer than {max_answer} bytes")
        closes = True
    return (status, body, headers), closes


def _chunked(reader: Any, max_answer: int) -> bytes:
    chunks: List[bytes] = []
    size_read = 0
    while True:
        size_text = _line(reader).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ValueError(f"a bad chunk size {size_text[:20]!r}") from None
        if size == 0:
            while _line(reader) not in (b"\r\n", b"\n", b""):   # trailers
                pass
            return b"".join(chunks)
        size_read += size
        if size_read > max_answer:
            raise ValueError(f"an answer longer than {max_answer} bytes")
        chunk = reader.read(size)
        if len(chunk) < size:
            raise ValueError("the connection ended inside a chunk")
        chunks.append(chunk)
        _line(reader)


def exchange(sock: socket.socket, requests: Sequence[bytes], start: int, window: int,
             answers: List[Optional[Answer]], deadline_for: Callable[[], float], max_answer: int) -> int:
    """See the module's text; ``deadline_for()`` gives each window its deadline (time.monotonic())."""
    index = start
    while index < len(requests):
        batch = requests[index:index + window]
        deadline = deadline_for()
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        sock.sendall(b"".join(batch))
        reader = deadline_reader(sock, deadline)
        try:
            for _unused in batch:
                answer, closes = read_answer(reader, max_answer)
                if answer is None:
                    return index
                answers[index] = answer
                index += 1
                if closes:
                    return index
        finally:
            reader.detach().close()   # the socket stays open; what was buffered past the answers is none
    return index
