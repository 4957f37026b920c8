#!/usr/bin/env python3
"""Idle keep-alive connections for bench/idle-memory.sh.

Opens N connections to 127.0.0.1:PORT. On each it sends one complete
HTTP/1.1 request, reads the whole response (status 200, the expected body,
no `Connection: close`), then leaves the connection open and idle. Each
socket is bound to 127.0.0.(2 + i % SRC_COUNT) so that N can exceed the
ephemeral port range of one source address.

Protocol with the parent on stdin/stdout (one line each):

    client -> "READY <n>"      all N connections are open and idle
    client -> "ERROR <why>"    then exits 1
    parent -> "CHECK"          client -> "OPEN <k>": connections not closed by the peer
    parent -> "CLOSE" or EOF   client closes everything, -> "CLOSED <n>", exits 0

Progress and details go to stderr. Every wait is bounded: opening by
--open-timeout, holding by --hold-max (then the client closes and exits 2).
"""

import argparse
import errno
import os
import resource
import selectors
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
MAX_RESPONSE = 64 * 1024


def log(msg):
    print(f"[idle-client] {msg}", file=sys.stderr, flush=True)


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class Fail(Exception):
    pass


def response_complete(buf):
    """Returns None while incomplete, else (status, headers dict, body)."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1").split("\r\n")
    parts = head[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise Fail(f"not an HTTP/1 response: {head[0]!r}")
    status = int(parts[1])
    headers = {}
    for line in head[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    rest = buf[end + 4 :]
    if "content-length" in headers:
        n = int(headers["content-length"])
        if len(rest) < n:
            return None
        if len(rest) > n:
            raise Fail("bytes after the response body")
        return status, headers, rest
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = b""
        pos = 0
        while True:
            eol = rest.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(rest[pos:eol].split(b";")[0], 16)
            if size == 0:
                # no trailers expected: the last chunk ends with an empty line
                if len(rest) < eol + 4:
                    return None
                if rest[eol + 2 : eol + 4] != b"\r\n":
                    raise Fail("trailers after the last chunk are not supported")
                if len(rest) > eol + 4:
                    raise Fail("bytes after the response body")
                return status, headers, body
            if len(rest) < eol + 2 + size + 2:
                return None
            body += rest[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
    raise Fail("response has neither Content-Length nor chunked encoding (not keep-alive)")


class Conn:
    __slots__ = ("sock", "i", "state", "buf")

    def __init__(self, sock, i):
        self.sock = sock
        self.i = i
        self.state = "connecting"
        self.buf = b""


def open_all(args, sel):
    """Opens args.n idle connections; returns the list of sockets."""
    deadline = time.monotonic() + args.open_timeout
    idle = []
    pending = 0
    next_i = 0
    last_report = time.monotonic()
    expect = args.expect_body.encode()

    def start(i):
        src = f"127.0.0.{2 + i % args.src_count}"
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((src, 0))
            s.setblocking(False)
            rc = s.connect_ex(("127.0.0.1", args.port))
        except OSError as e:
            s.close()
            raise Fail(f"connection {i} from {src}: {e}") from None
        if rc not in (0, errno.EINPROGRESS):
            s.close()
            raise Fail(f"connection {i} from {src}: connect: {os.strerror(rc)}")
        c = Conn(s, i)
        sel.register(s, selectors.EVENT_WRITE, c)

    while len(idle) < args.n:
        while pending < args.concurrency and next_i < args.n:
            start(next_i)
            next_i += 1
            pending += 1
        now = time.monotonic()
        if now > deadline:
            raise Fail(f"only {len(idle)} of {args.n} connections open after {args.open_timeout}s")
        if now - last_report > 2:
            log(f"{len(idle)}/{args.n} open")
            last_report = now
        for key, _ in sel.select(timeout=min(0.5, deadline - now)):
            c = key.data
            s = c.sock
            if c.state == "connecting":
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err:
                    raise Fail(f"connection {c.i}: connect: {os.strerror(err)}")
                try:
                    sent = s.send(REQUEST)
                except OSError as e:
                    raise Fail(f"connection {c.i}: send: {e}") from None
                if sent != len(REQUEST):
                    raise Fail(f"connection {c.i}: short send")
                c.state = "reading"
                sel.modify(s, selectors.EVENT_READ, c)
            elif c.state == "reading":
                try:
                    data = s.recv(16384)
                except BlockingIOError:
                    continue
                except OSError as e:
                    raise Fail(f"connection {c.i}: recv: {e}") from None
                if not data:
                    raise Fail(f"connection {c.i}: closed by the peer before the response was complete")
                c.buf += data
                if len(c.buf) > MAX_RESPONSE:
                    raise Fail(f"connection {c.i}: response larger than {MAX_RESPONSE} bytes")
                done = response_complete(c.buf)
                if done is None:
                    continue
                status, headers, body = done
                if status != 200:
                    raise Fail(f"connection {c.i}: status {status}")
                if expect not in body:
                    raise Fail(f"connection {c.i}: unexpected body {body[:80]!r}")
                if "close" in headers.get("connection", "").lower():
                    raise Fail(f"connection {c.i}: response says Connection: close")
                # Idle from here on: still watched, so that a close by the
                # peer (EOF) is noticed and counted.
                c.state = "idle"
                c.buf = b""
                idle.append(c)
                pending -= 1
            else:  # idle connection became readable: EOF or unexpected data
                raise Fail(f"connection {c.i}: closed by the peer (or sent data) while opening the others")
    return idle


def on_idle_event(sel, c):
    """An idle socket became readable: the peer closed it, or sent data it
    should not have. Either way it is no longer watched (level-triggered
    readiness would otherwise spin)."""
    try:
        data = c.sock.recv(4096, socket.MSG_PEEK)
    except BlockingIOError:
        return
    except OSError:
        data = b""
    c.state = "closed" if not data else "unexpected-data"
    sel.unregister(c.sock)


def count_open(sel, conns):
    """Connections not closed by the peer (after draining pending events)."""
    for key, _ in sel.select(timeout=0):
        if key.data is not None and key.data.state == "idle":
            on_idle_event(sel, key.data)
    return sum(1 for c in conns if c.state != "closed")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=256, help="connections being opened at once")
    p.add_argument("--src-count", type=int, default=200, help="source addresses 127.0.0.2 ..")
    p.add_argument("--open-timeout", type=float, default=120.0)
    p.add_argument("--hold-max", type=float, default=600.0)
    p.add_argument("--expect-body", default="hello from backend")
    args = p.parse_args()
    if not (1 <= args.n and 1 <= args.concurrency and 1 <= args.src_count <= 250):
        p.error("bad --n, --concurrency or --src-count")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = args.n + 64
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            say(f"ERROR need {need} file descriptors, hard limit is {hard}")
            return 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))

    sel = selectors.DefaultSelector()
    t0 = time.monotonic()
    try:
        conns = open_all(args, sel)
    except Fail as e:
        log(f"error: {e}")
        say(f"ERROR {e}")
        return 1
    log(f"{len(conns)} connections open and idle after {time.monotonic() - t0:.1f}s")
    say(f"READY {len(conns)}")

    hold_deadline = time.monotonic() + args.hold_max
    sel.register(sys.stdin.fileno(), selectors.EVENT_READ, None)
    rc = 2
    pending = b""
    done = False
    while not done and time.monotonic() < hold_deadline:
        for key, _ in sel.select(timeout=1.0):
            if key.data is not None:
                if key.data.state == "idle":
                    on_idle_event(sel, key.data)
                continue
            chunk = os.read(sys.stdin.fileno(), 4096)
            if not chunk:  # EOF: the parent is gone or done
                rc, done = 0, True
                break
            pending += chunk
            while b"\n" in pending and not done:
                line, pending = pending.split(b"\n", 1)
                cmd = line.decode(errors="replace").strip()
                if cmd == "CHECK":
                    say(f"OPEN {count_open(sel, conns)}")
                elif cmd == "CLOSE":
                    rc, done = 0, True
                else:
                    log(f"unknown command {cmd!r}")
            if done:
                break
    if not done:
        log(f"nothing from the parent for {args.hold_max}s: closing")
    sel.close()
    for c in conns:
        c.sock.close()
    say(f"CLOSED {len(conns)}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
