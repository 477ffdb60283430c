"""Free TCP ports on loopback for servers the tests start."""

import socket


def free_port(host="127.0.0.1"):
    """A port that was free a moment ago (the kernel picks it; collisions are rare, not impossible)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


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
