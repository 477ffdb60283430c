"""Free TCP ports on loopback for servers the tests start."""

import socket


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (the kernel picks it; collisions are rare, not impossible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def free_ports(count, host="127.0.0.1"):
    """``count`` different ports that were free a moment ago: all held at once while the kernel picks them,
    so no two are the same (free_port() called ``count`` times can give one port twice)."""
    sockets = []
    try:
        for _unused in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def wait_port(port, host="127.0.0.1", timeout=10.0):
    """Block until something accepts connections on host:port; raise TimeoutError otherwise."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


def close_listener(listener, thread, timeout=10.0):
    """Stop ``thread``, which accepts connections on ``listener`` (its loop returns on OSError), then close
    the socket, in that order. A listening socket closed while its thread may still call accept() frees
    its file descriptor number, and the next socket this process opens (often another test's server)
    gets it: the old thread then accepts that server's connections. Seen in CI rehearsal: two threads of
    a fake Consul left in accept() on the fd of the next test's fake dyups server took its connections,
    a syncer test failed and the server's shutdown hung. shutdown() wakes an accept() in progress and
    makes the next one fail (Linux); the descriptor is freed only once the thread is gone (or after
    ``timeout``, when it is busy with a connection and no longer accepting)."""
    try:
        listener.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    thread.join(timeout)
    listener.close()
