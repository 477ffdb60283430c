"""tests/support/ports.py's close_listener: a test server's accepting thread is gone before its socket's file
descriptor can be reused (the way two fake-Consul threads once took a fake dyups server's connections)."""

import socket
import threading
import time

from tests.support.ports import close_listener


def accepting(listener, accepted):
    def loop():
        while True:
            try:
                connection, _address = listener.accept()
            except OSError:
                return
            accepted.append(connection)
    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_a_thread_blocked_in_accept_is_gone_before_the_socket_is_closed():
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []
    thread = accepting(listener, accepted)
    time.sleep(0.1)   # the thread is in accept() now
    started = time.monotonic()
    close_listener(listener, thread, timeout=5)
    assert not thread.is_alive(), "a plain close() leaves the thread in accept(), on a number the next socket gets"
    assert time.monotonic() - started < 2
    assert listener.fileno() == -1
