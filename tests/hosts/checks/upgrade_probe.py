"""Traffic through a proxy across a binary upgrade, on the test host itself (standard library only: the host has
no websockets package). Run by extensions/molecule/tengine_host/upgrade.yml:

    python3 upgrade_probe.py --url http://127.0.0.1:PORT/ --ws-path /ws/ --ws-port ECHO_PORT --ready-file R \
        --stop-file F --out F.json

Serves a websocket echo on 127.0.0.1:ECHO_PORT (each message M answered with ``echo:M``); opens one websocket
through the proxy (URL's host and port, --ws-path) and checks an echo, creates --ready-file; then sends GET URL in a loop, one new
connection each (the held websocket echoing every 10 s), until --stop-file exists. Then it checks an echo on the held websocket and on a new one, and
writes {"requests", "failed", "errors", "held", "fresh"} as JSON to --out. Exit status 0 when it wrote the file.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import socket
import struct
import threading
import time
import urllib.parse
import urllib.request

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def read_frame(conn):
    head = conn.recv(2, socket.MSG_WAITALL)
    if len(head) < 2:
        raise ConnectionError("websocket closed")
    length = head[1] & 0x7F
    if length == 126:
        length = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))[0]
    elif length == 127:
        length = struct.unpack("!Q", conn.recv(8, socket.MSG_WAITALL))[0]
    mask = conn.recv(4, socket.MSG_WAITALL) if head[1] & 0x80 else b""
    data = conn.recv(length, socket.MSG_WAITALL) if length else b""
    if mask:
        data = bytes(byte ^ mask[index % 4] for index, byte in enumerate(data))
    return data.decode()


def send_frame(conn, text, masked):
    data = text.encode()
    header = bytes([0x81, (0x80 if masked else 0) | len(data)])  # short text messages only
    if masked:
        mask = os.urandom(4)
        conn.sendall(header + mask + bytes(byte ^ mask[index % 4] for index, byte in enumerate(data)))
    else:
        conn.sendall(header + data)


def read_head(conn):
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(1)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    return head.decode("latin-1")


def echo_server(port):
    listener = socket.create_server(("127.0.0.1", port))

    def serve(conn):
        with conn:
            try:
                head = read_head(conn)
                key = [line.split(":", 1)[1].strip() for line in head.split("\r\n")
                       if line.lower().startswith("sec-websocket-key:")][0]
                accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
                conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                              f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
                while True:
                    send_frame(conn, "echo:" + read_frame(conn), masked=False)
            except (ConnectionError, IndexError, OSError):
                return

    def accept_loop():
        while True:
            conn, _unused = listener.accept()
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()


def open_websocket(host, port, path):
    conn = socket.create_connection((host, port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    conn.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = read_head(conn)
    if not head.startswith("HTTP/1.1 101"):
        raise ConnectionError(head.split("\r\n", 1)[0])
    return conn


def echo(conn, message):
    send_frame(conn, message, masked=True)
    return read_frame(conn) == "echo:" + message


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--ws-path", required=True)
    parser.add_argument("--ws-port", type=int, required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--stop-file", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    echo_server(args.ws_port)
    target = urllib.parse.urlsplit(args.url)
    held_conn = None
    for _attempt in range(100):  # the watcher puts the echo server's upstream in place from Consul
        try:
            held_conn = open_websocket(target.hostname, target.port, args.ws_path)
            break
        except OSError:
            time.sleep(0.2)
    result = {"requests": 0, "failed": 0, "errors": [], "held": False, "fresh": False,
              "held_before": bool(held_conn) and echo(held_conn, "before")}
    with open(args.ready_file, "w", encoding="utf-8") as stream:
        stream.write("ready\n")
    last_ping = time.monotonic()
    while not os.path.exists(args.stop_file):
        # the held websocket talks every 10 s, as applications keep theirs alive (nginx's proxy_read_timeout,
        # 60 s, closes a silent one): each answer is checked, so a drop shows whenever it happens
        if held_conn is not None and time.monotonic() - last_ping > 10:
            last_ping = time.monotonic()
            try:
                if not echo(held_conn, f"ping {result['requests']}"):
                    result["errors"].append("held websocket: a wrong echo")
                    held_conn = None
            except OSError as error:
                result["errors"].append("held websocket: " + repr(error))
                held_conn = None
        result["requests"] += 1
        try:
            with urllib.request.urlopen(args.url, timeout=10) as answer:
                answer.read()
        except OSError as error:
            result["failed"] += 1
            result["errors"] = (result["errors"] + [repr(error)])[-10:]
    try:
        result["held"] = bool(held_conn) and echo(held_conn, "after")
    except OSError as error:
        result["errors"].append("held websocket: " + repr(error))
    try:
        with open_websocket(target.hostname, target.port, args.ws_path) as fresh:
            result["fresh"] = echo(fresh, "fresh")
    except OSError as error:
        result["errors"].append("new websocket: " + repr(error))
    with open(args.out, "w", encoding="utf-8") as stream:
        json.dump(result, stream)


if __name__ == "__main__":
    main()
