"""A loopback DNS server for tests: answers every A query with one address and records the names asked.

Written by hand (the standard library only; a DNS answer for one A record is a few dozen bytes): a UDP
socket on a free port of 127.0.0.1, a thread that answers. Used to show that nginx does, or does not,
send a name to DNS (tests/integration/test_role_vhosts_conf.py).

    with LoopbackDns(answer="127.0.0.1") as dns:
        dns.port           # the UDP port ("resolver 127.0.0.1:PORT;")
        dns.queries        # [name, ...] in the order asked
"""

from __future__ import annotations

import socket
import struct
import threading


def _question_name(packet, offset=12):
    """(name, offset after the name) of the question that starts at ``offset``."""
    labels = []
    while packet[offset]:
        length = packet[offset]
        labels.append(packet[offset + 1:offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    return ".".join(labels), offset + 1


def answer_packet(query, address):
    """The answer to ``query`` (a DNS query packet): its first question, one A record for ``address``."""
    ident, _flags, _qd, _an, _ns, _ar = struct.unpack("!6H", query[:12])
    _name, end = _question_name(query)
    qtype = struct.unpack("!H", query[end:end + 2])[0]
    question = query[12:end + 4]
    header = struct.pack("!6H", ident, 0x8180, 1, 1 if qtype == 1 else 0, 0, 0)
    if qtype != 1:                                  # AAAA and the rest: no record, no error
        return header + question
    record = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(address)
    return header + question + record


class LoopbackDns:
    def __init__(self, answer="127.0.0.1"):
        self.answer = answer
        self.queries = []
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port = self._socket.getsockname()[1]
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="loopback-dns", daemon=True)

    def _serve(self):
        while not self._stopping.is_set():
            try:
                query, peer = self._socket.recvfrom(512)
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                self.queries.append(_question_name(query)[0])
                self._socket.sendto(answer_packet(query, self.answer), peer)
            except (IndexError, struct.error, OSError):
                continue

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stopping.set()
        self._thread.join(timeout=5)
        self._socket.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
