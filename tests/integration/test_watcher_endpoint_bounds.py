"""The watcher's management endpoint (POST /release, /status, /metrics) under a slow-loris client: the
real watcher process, 300 connections that send half a request and then a byte at a time. The watcher
holds at most bounded_http.MAX_CONNECTIONS threads for them, answers the others 503 at once, cuts each
slow one off at the request deadline, and answers again once they are gone (issue 19, deliver 6)."""

from __future__ import annotations

import os
import socket
import time

from ansible_collections.swallowkeeper.dyups.plugins.watcher import bounded_http
from tests.support.ports import free_port
from tests.support.watcher import WatcherProcess

CLIENTS = 300


def threads_of(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def test_half_sent_requests_hold_a_bounded_number_of_threads_for_a_bounded_time(tmp_path):
    dead = f"http://127.0.0.1:{free_port()}"   # nothing listens: the sync loop retries, the endpoint serves
    with WatcherProcess(tmp_path, consul_url=dead, dyups_url=dead, upstream_file=str(tmp_path / "upstreams.conf"),
                        retry_initial=1.0, retry_max=5.0) as watcher:
        watcher.wait_for(lambda: "ok" in watcher._get("/healthz"), "the endpoint answers")
        baseline = threads_of(watcher.pid)
        clients = []
        try:
            for _unused in range(CLIENTS):
                client = socket.create_connection(("127.0.0.1", watcher.port), timeout=5)
                client.sendall(b"POST /release HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                clients.append(client)
            started = time.monotonic()
            time.sleep(0.5)
            assert threads_of(watcher.pid) <= baseline + bounded_http.MAX_CONNECTIONS
            busy = []
            for client in clients:   # the connections over the cap were answered 503 and closed
                client.setblocking(False)
                try:
                    first = client.recv(64)
                except BlockingIOError:
                    continue
                busy.append(client)
                assert first.startswith(b"HTTP/1.0 503 "), first
            assert len(busy) >= CLIENTS - bounded_http.MAX_CONNECTIONS
            slow = [client for client in clients if client not in busy]
            cut_off = {}
            deadline = started + bounded_http.REQUEST_DEADLINE + bounded_http.WRITE_FLOOR + 3
            while len(cut_off) < len(slow) and time.monotonic() < deadline:
                for client in slow:      # a byte at a time: each read is quick, the request never ends
                    if client in cut_off:
                        continue
                    try:
                        client.send(b"a")
                        if client.recv(64) == b"":
                            cut_off[client] = time.monotonic() - started
                    except BlockingIOError:
                        pass
                    except OSError:
                        cut_off[client] = time.monotonic() - started
                assert threads_of(watcher.pid) <= baseline + bounded_http.MAX_CONNECTIONS
                time.sleep(0.2)
            assert len(cut_off) == len(slow), f"{len(slow) - len(cut_off)} slow clients still connected"
            assert max(cut_off.values()) < bounded_http.REQUEST_DEADLINE + 2
        finally:
            for client in clients:
                client.close()
        watcher.wait_for(lambda: threads_of(watcher.pid) <= baseline, "the threads of the slow clients end")
        assert "ok" in watcher._get("/healthz")
        assert watcher.release().strip()   # a whole request is still served
        assert "Traceback" not in watcher.log_text()
