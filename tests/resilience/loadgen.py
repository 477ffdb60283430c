"""Steady HTTP load at a fixed rate plus long-lived websocket clients; every failure accounted.

Run as a separate process (its own interpreter, so the orchestrating script's threads never slow
it down), on loopback only:

    .venv/bin/python tests/resilience/loadgen.py --port 18080 --rate 300 --connections 16 \
        --ws 50 --ws-lifetime 20:60 --duration 300 --output load.json

HTTP: ``--connections`` clients, each on one kept-alive HTTP/1.1 connection that it reopens
after ``--reuse`` requests (so new connections arrive all the time, as from real clients), each
sending ``--rate / --connections`` requests a second on a fixed schedule (open loop: a slow answer
does not lower the offered rate; a client that fell behind by more than one interval skips
ahead rather than bursting). Each request is counted as ok (2xx) or failed, by kind:

    status_NNN     a non-2xx answer
    connect        the connection could not be opened (refused, timeout)
    reset_reused   the connection closed or reset before the answer, on a connection that had
                   already served a request (the race of a keep-alive connection that the server
                   closes at the moment a request is sent; browsers retry such a request silently,
                   load generators such as wrk count it as an error: so do we, separately).
                   A kept-alive connection that the server had already closed before the request
                   is reopened first, as any HTTP client does; those are counted as
                   ``stale_reconnects``, not as failures.
    reset          the same on a fresh connection
    timeout        no complete answer within ``--timeout`` seconds

Websockets: ``--ws`` clients connect to ``--ws-path``, send a numbered message every
``--ws-interval`` seconds and wait for its echo (``--timeout``). A client closes its connection
itself (cleanly, not a drop) after a lifetime drawn from ``--ws-lifetime MIN:MAX`` seconds and
reconnects: websocket sessions keep starting, as on a real site. A connection that ends any
other way (closed by the server side, reset, no echo in time) is a DROP; the client then
reconnects. Failed connection attempts are counted apart.

Stops after ``--duration`` seconds or at SIGTERM/SIGINT; prints ``ready`` once every websocket
client has connected the first time, and writes the JSON results to ``--output`` at the end:
totals, failures by kind, latency percentiles, per-second counts and the time of every failure
(epoch seconds), so that the caller can cut the run into windows (before, during, after a fault);
with ``--record-backends`` also the start time and the backend port (X-Backend-Port) of every ok
answer, so that the caller can tell which instance served when.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time

MAX_EVENTS = 20000
MAX_BACKEND_RECORDS = 500000


def percentiles(values, shares=(0.5, 0.9, 0.99)):
    if not values:
        return {}
    ordered = sorted(values)
    out = {}
    for share in shares:
        out[f"p{int(share * 100)}"] = ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]
    out["max"] = ordered[-1]
    return {key: round(value * 1000, 2) for key, value in out.items()}


class Stats:
    def __init__(self):
        self.ok = 0
        self.failed = 0
        self.by_kind = {}
        self.latencies = []
        self.failures = []          # [epoch, kind, detail]
        self.seconds = {}           # epoch second -> [ok, failed]
        self.ws = {"connects": 0, "connect_failures": 0, "clean_closes": 0, "drops": 0, "echoes": 0,
                   "bad_echoes": 0}
        self.ws_events = []         # [epoch, "drop" | "connect_failure", detail]
        self.ws_latencies = []
        self.ws_open = 0
        self.ws_open_max = 0
        self.stale_reconnects = 0
        self.backends = []          # [epoch, backend port] of every ok answer, with --record-backends

    def record(self, started, latency, kind=None, detail=""):
        bucket = self.seconds.setdefault(int(started), [0, 0])
        if kind is None:
            self.ok += 1
            bucket[0] += 1
            self.latencies.append(latency)
            return
        self.failed += 1
        bucket[1] += 1
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1
        if len(self.failures) < MAX_EVENTS:
            self.failures.append([round(started, 4), kind, detail[:200]])

    def ws_event(self, kind, detail):
        self.ws["drops" if kind == "drop" else "connect_failures"] += 1
        if len(self.ws_events) < MAX_EVENTS:
            self.ws_events.append([round(time.time(), 4), kind, detail[:200]])

    def result(self, args, started, ended):
        return {
            "args": vars(args), "started": started, "ended": ended,
            "http": {"requests": self.ok + self.failed, "ok": self.ok, "failed": self.failed,
                     "by_kind": dict(sorted(self.by_kind.items())),
                     "stale_reconnects": self.stale_reconnects, "latency_ms": percentiles(self.latencies),
                     "failures": self.failures,
                     "seconds": {str(second): counts for second, counts in sorted(self.seconds.items())},
                     "backends": self.backends},
            "ws": dict(self.ws, clients=args.ws, open_max=self.ws_open_max, events=self.ws_events,
                       echo_latency_ms=percentiles(self.ws_latencies)),
        }


async def read_response(reader):
    """(status, headers) after reading one HTTP/1.1 response whole (Content-Length or chunked)."""
    status, headers, _size, _body = await read_response_counted(reader)
    return status, headers


async def read_response_counted(reader):
    """(status, headers, bytes on the wire, body) of one HTTP/1.1 response, read whole (Content-Length
    or chunked). Also tests/benchmarks/bench_fanout.py's reader."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            key, _sep, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
    size, body = len(head), []
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            line = await reader.readuntil(b"\r\n")
            length = int(line.split(b";")[0], 16)
            body.append((await reader.readexactly(length + 2))[:length])
            size += len(line) + length + 2
            if length == 0:
                break
    else:
        length = int(headers.get("content-length", "0"))
        body.append(await reader.readexactly(length))
        size += length
    return status, headers, size, b"".join(body)


async def http_client(args, stats, stop, offset):
    loop = asyncio.get_running_loop()
    interval = args.connections / args.rate
    request = (f"GET {args.path} HTTP/1.1\r\nHost: 127.0.0.1:{args.port}\r\nUser-Agent: resilience-loadgen\r\n"
               f"{args.header + chr(13) + chr(10) if args.header else ''}\r\n").encode()
    reader = writer = None
    used = 0
    next_at = loop.time() + offset * interval
    while not stop.is_set():
        delay = next_at - loop.time()
        if delay > 0:
            try:
                await asyncio.wait_for(stop.wait(), delay)
                break
            except asyncio.TimeoutError:
                pass
        next_at += interval
        if next_at < loop.time() - interval:
            next_at = loop.time() + interval
        started = time.time()
        t0 = loop.time()
        if writer is not None and (reader.at_eof() or writer.is_closing()):
            writer.close()     # the server closed this idle connection already: any client reconnects
            reader = writer = None
            stats.stale_reconnects += 1
        if writer is None:
            try:
                reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", args.port), args.timeout)
                used = 0
            except (OSError, asyncio.TimeoutError) as exc:
                stats.record(started, 0, "connect", f"{type(exc).__name__}: {exc}")
                reader = writer = None
                continue
        reused = used > 0
        try:
            writer.write(request)
            status, headers = await asyncio.wait_for(read_response(reader), args.timeout)
        except asyncio.TimeoutError:
            stats.record(started, 0, "timeout", f"after {args.timeout}s")
            writer.close()
            reader = writer = None
            continue
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, IndexError) as exc:
            stats.record(started, 0, "reset_reused" if reused else "reset", f"{type(exc).__name__}: {exc}")
            writer.close()
            reader = writer = None
            continue
        latency = loop.time() - t0
        used += 1
        if 200 <= status < 300:
            stats.record(started, latency)
            if args.record_backends and len(stats.backends) < MAX_BACKEND_RECORDS:
                stats.backends.append([round(started, 4), headers.get("x-backend-port", "")])
        else:
            stats.record(started, latency, f"status_{status}", headers.get("x-dyups-worker", ""))
        if used >= args.reuse or headers.get("connection", "").lower() == "close":
            writer.close()
            reader = writer = None
    if writer is not None:
        writer.close()


async def ws_client(args, stats, stop, first_connect, offset):
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    low, _sep, high = args.ws_lifetime.partition(":")
    lifetime_range = (float(low), float(high or low)) if args.ws_lifetime else None
    rng = random.Random(offset)
    url = f"ws://127.0.0.1:{args.port}{args.ws_path}"
    announced = False
    try:
        await asyncio.wait_for(stop.wait(), offset * 0.02)
        return
    except asyncio.TimeoutError:
        pass
    while not stop.is_set():
        try:
            ws = await asyncio.wait_for(connect(url, ping_interval=None, open_timeout=args.timeout, close_timeout=2,
                                                max_size=2 ** 16), args.timeout)
        except Exception as exc:  # any failed handshake: count it, retry
            stats.ws_event("connect_failure", f"{type(exc).__name__}: {exc}")
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            continue
        stats.ws["connects"] += 1
        stats.ws_open += 1
        stats.ws_open_max = max(stats.ws_open_max, stats.ws_open)
        if not announced:
            announced = True
            first_connect()
        born = loop.time()
        lifetime = rng.uniform(*lifetime_range) if lifetime_range else float("inf")
        sequence = 0
        try:
            while not stop.is_set() and loop.time() - born < lifetime:
                sequence += 1
                t0 = loop.time()
                await ws.send(str(sequence))
                reply = await asyncio.wait_for(ws.recv(), args.timeout)
                stats.ws["echoes"] += 1
                stats.ws_latencies.append(loop.time() - t0)
                if not str(reply).endswith(f":{sequence}"):
                    stats.ws["bad_echoes"] += 1
                try:
                    await asyncio.wait_for(stop.wait(), max(0.0, args.ws_interval - (loop.time() - t0)))
                except asyncio.TimeoutError:
                    pass
            await ws.close()
            stats.ws["clean_closes"] += 1
        except Exception as exc:  # the connection ended without our close: a drop
            stats.ws_event("drop", f"{type(exc).__name__}: {exc}")
            try:
                await asyncio.wait_for(ws.close(), 1)
            except Exception:  # already broken; nothing more to close
                pass
        finally:
            stats.ws_open -= 1


async def main_async(args):
    stats = Stats()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    pending_ws = {"count": args.ws}

    def first_connect():
        pending_ws["count"] -= 1
        if pending_ws["count"] == 0:
            print("ready", flush=True)

    if args.ws == 0:
        print("ready", flush=True)
    started = time.time()
    tasks = [asyncio.create_task(http_client(args, stats, stop, i / max(1, args.connections)))
             for i in range(args.connections)]
    tasks += [asyncio.create_task(ws_client(args, stats, stop, first_connect, i)) for i in range(args.ws)]
    try:
        await asyncio.wait_for(stop.wait(), args.duration)
    except asyncio.TimeoutError:
        stop.set()
    await asyncio.wait(tasks, timeout=args.timeout + 5)
    ended = time.time()
    result = stats.result(args, started, ended)
    with open(args.output, "w") as handle:
        json.dump(result, handle)
    print(f"done: {result['http']['requests']} requests, {result['http']['failed']} failed, "
          f"{result['ws']['drops']} websocket drops", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--port", type=int, required=True, help="the proxy's port on 127.0.0.1")
    parser.add_argument("--path", default="/")
    parser.add_argument("--header", default="", help="one extra request header line, e.g. 'X-A: b'")
    parser.add_argument("--rate", type=float, default=300.0, help="HTTP requests a second, in all")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--reuse", type=int, default=100, help="requests per connection before it is reopened")
    parser.add_argument("--ws", type=int, default=0, help="websocket clients")
    parser.add_argument("--ws-path", default="/ws/")
    parser.add_argument("--ws-interval", type=float, default=1.0)
    parser.add_argument("--ws-lifetime", default="", help="MIN:MAX seconds before a client reconnects itself")
    parser.add_argument("--timeout", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=3600.0, help="upper bound; SIGTERM ends it earlier")
    parser.add_argument("--record-backends", action="store_true",
                        help="record [start epoch, X-Backend-Port] of every ok answer (which instance served when)")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
