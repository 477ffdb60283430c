"""The test harness's WatcherProcess when the status port it picked is taken before the watcher binds it.

free_port() only says a port was free a moment ago; with several runs side by side (the long
restart-burst profile ran four at once) another process can listen there first, and a check that only
waits for "something listening" then talks to that process (a 404 from someone else's server). The
harness must notice that the watcher exited on the taken port and start it on another one.
"""

from __future__ import annotations

import http.server
import socket
import threading

from tests.support.ports import close_listener
from tests.support.watcher import WatcherProcess


class _NotTheWatcher(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the base class's name)
        self.send_error(404)

    def log_message(self, *args):  # quiet
        pass


def test_a_status_port_taken_before_the_watcher_binds_it_moves_the_watcher_to_another(tmp_path):
    watcher = WatcherProcess(tmp_path, consul_url="http://127.0.0.1:9", dyups_url="http://127.0.0.1:9",
                             upstream_file=str(tmp_path / "upstreams.conf"))
    taken = watcher.port
    squatter = http.server.HTTPServer(("127.0.0.1", taken), _NotTheWatcher)
    squatter.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    thread = threading.Thread(target=squatter.serve_forever, daemon=True)
    thread.start()
    try:
        watcher.start()
        try:
            assert watcher.port != taken
            assert "status" in watcher.status()   # the watcher's own endpoint, not the squatter's 404
            assert f"127.0.0.1:{taken}" in (tmp_path / f"watcher-{taken}.log").read_text()
        finally:
            watcher.stop()
    finally:
        squatter.shutdown()
        close_listener(squatter.socket, thread)
