"""Websocket echo backends on several loopback ports, in one process (the ``websockets`` package).

    .venv/bin/python tests/resilience/ws_echo.py --ports 18201,18202,18203

Every port accepts websocket connections on any path and answers each message ``M`` with
``PORT:M`` (so a client knows which backend echoed). Prints ``ready`` once every port listens;
stops at SIGTERM/SIGINT. Also answers a plain HTTP GET with 200 ``PORT`` (a health probe).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from http import HTTPStatus


async def serve(ports):
    from websockets.asyncio.server import serve as ws_serve
    from websockets.http11 import Response
    from websockets.datastructures import Headers

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def make_handler(port):
        async def echo(connection):
            async for message in connection:
                await connection.send(f"{port}:{message}")
        return echo

    def make_probe(port):
        def process_request(connection, request):
            if request.headers.get("Upgrade", "").lower() != "websocket":
                body = f"{port}\n".encode()
                return Response(HTTPStatus.OK.value, "OK", Headers([("Content-Length", str(len(body)))]), body)
            return None
        return process_request

    servers = [await ws_serve(make_handler(port), "127.0.0.1", port, ping_interval=None, backlog=1024,
                              process_request=make_probe(port), max_size=2 ** 16) for port in ports]
    print("ready", flush=True)
    await stop.wait()
    for server in servers:
        server.close()
    for server in servers:
        await server.wait_closed()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--ports", required=True, help="comma-separated ports on 127.0.0.1")
    args = parser.parse_args(argv)
    asyncio.run(serve([int(port) for port in args.ports.split(",")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
