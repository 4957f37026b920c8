#!/usr/bin/env python3
"""The flood scenario's clients, for bench/flood.sh, each its own process
so that one's work never delays the other's measurements.

  flood.py flood HOST PORT SECONDS CONNS   127.0.0.10 sends as fast as it can
                                           over CONNS keep-alive connections
  flood.py legit HOST PORT SECONDS RATE    127.0.0.11 sends RATE requests a
                                           second on one keep-alive connection

Each prints one JSON object: statuses, and latencies for the legitimate one.
"""

import asyncio
import json
import sys
import time

MODE, HOST, PORT = sys.argv[1], sys.argv[2], int(sys.argv[3])
SECONDS, N = float(sys.argv[4]), int(sys.argv[5])
RATE = N


async def connect(source):
    return await asyncio.open_connection(HOST, PORT, local_addr=(source, 0))


async def exchange(reader, writer, path):
    """One GET on an open connection: (status, keep the connection)."""
    writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    if length:
        await reader.readexactly(length)
    return status, not close


async def flooder(until, counts):
    reader, writer = await connect("127.0.0.10")
    while time.monotonic() < until:
        status, keep = await exchange(reader, writer, "/flood")
        counts[status] = counts.get(status, 0) + 1
        if not keep:
            writer.close()
            reader, writer = await connect("127.0.0.10")
    writer.close()


async def legitimate(seconds):
    """Steady requests; returns (latencies in ms, statuses)."""
    reader, writer = await connect("127.0.0.11")
    latencies, statuses = [], {}
    start = time.monotonic()
    n = int(seconds * RATE)
    for i in range(n):
        due = start + i / RATE
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        t0 = time.perf_counter()
        status, keep = await exchange(reader, writer, "/legit")
        latencies.append((time.perf_counter() - t0) * 1000)
        statuses[status] = statuses.get(status, 0) + 1
        if not keep:
            writer.close()
            reader, writer = await connect("127.0.0.11")
    writer.close()
    return latencies, statuses


def summary(latencies):
    s = sorted(latencies)
    pick = lambda q: s[min(len(s) - 1, int(len(s) * q))]
    return {"n": len(s), "p50_ms": round(pick(0.5), 3), "p99_ms": round(pick(0.99), 3), "max_ms": round(s[-1], 3)}


async def main():
    if MODE == "flood":
        counts = {}
        until = time.monotonic() + SECONDS
        await asyncio.gather(*(flooder(until, counts) for _ in range(N)))
        print(json.dumps({"statuses": counts, "per_second": round(sum(counts.values()) / SECONDS)}))
    else:
        latencies, statuses = await legitimate(SECONDS)
        print(json.dumps({**summary(latencies), "statuses": statuses}))


asyncio.run(main())
