"""The daemon's signal handlers (plugins/watcher/daemon.py): they run in the main thread between two bytecodes,
possibly while it holds the event queue's lock inside ``queue.get``, so they must take no lock.

Found by tests/integration/test_watcher_bursts_restarts.py on 940f60b and after: a SIGTERM or SIGHUP that
landed at that moment put a wake-up on the queue from the handler and deadlocked the watcher for good (a
thread dump showed the main thread in ``request_stop -> queue.put`` inside ``queue.get``). No server is
involved: the Daemon is built on addresses nothing listens on and its loop is not run.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from ansible_collections.swallowkeeper.dyups.plugins.watcher import settings as watcher_settings
from ansible_collections.swallowkeeper.dyups.plugins.watcher.daemon import Daemon

SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


@pytest.fixture
def daemon(tmp_path):
    settings = watcher_settings.build({"upstream_file": str(tmp_path / "upstreams.conf"), "status_listen": "",
                                       "consul_url": "http://127.0.0.1:9", "dyups_url": "http://127.0.0.1:9"})
    handlers = {signum: signal.getsignal(signum) for signum in SIGNALS}
    wakeup_fd = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup_fd)
    made = Daemon(settings)
    try:
        made.install_signals()
        yield made
    finally:
        signal.set_wakeup_fd(wakeup_fd)
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        made.source.stop()
        made.dyups_transport.close()


@pytest.mark.parametrize("signum", SIGNALS)
def test_a_handler_takes_no_lock_the_main_thread_may_hold(daemon, signum):
    handler = signal.getsignal(signum)
    done = threading.Event()

    def inside_get():   # what the main thread holds when the handler runs inside queue.get
        with daemon.events.mutex:
            handler(signum, None)
        done.set()

    threading.Thread(target=inside_get, daemon=True).start()
    assert done.wait(3), "the handler waited for the event queue's lock: the watcher would hang for good"


def test_a_signal_still_wakes_the_loop(daemon):
    os.kill(os.getpid(), signal.SIGHUP)
    assert daemon.events.get(timeout=3) == ("wake", None)
    assert daemon.reload_requested
