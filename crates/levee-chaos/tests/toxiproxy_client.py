"""Drives `levee chaos proxy` with the published Toxiproxy client
(toxiproxy-python, import name `toxiproxy`), as a Toxiproxy user's test
suite would. Run by tests/proxy/client.rs:

    toxiproxy_client.py API_PORT ECHO_ADDRESS

ECHO_ADDRESS is a TCP echo server on loopback. Exits non-zero on the first
failed check. Every socket has a timeout."""

import socket
import sys
import time

from toxiproxy import Toxiproxy
from toxiproxy.api import APIConsumer
from toxiproxy.exceptions import InvalidToxic, NotFound, ProxyExists
from toxiproxy.proxy import Proxy

TIMEOUT = 10.0


def connect(listen):
    host, port = listen.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def round_trip(s, msg):
    start = time.monotonic()
    s.sendall(msg)
    got = b""
    while len(got) < len(msg):
        chunk = s.recv(len(msg) - len(got))
        assert chunk, "the connection ended early"
        got += chunk
    assert got == msg, got
    return time.monotonic() - start


def read_to_end(s):
    got = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            return got
        got += chunk


def expect(exception, call):
    try:
        call()
    except exception:
        return
    raise AssertionError("expected %s" % exception.__name__)


def proxies_and_errors(server, echo):
    assert server.running()
    assert b'"version"' in server.version()
    proxy = server.create(upstream=echo, name="echo", listen="127.0.0.1:0")
    assert proxy.enabled is True
    assert proxy.listen.startswith("127.0.0.1:") and not proxy.listen.endswith(":0"), proxy.listen
    assert server.get_proxy("echo").upstream == echo
    # The client checks names itself, and maps the server's 409, 404, 400.
    expect(ProxyExists, lambda: server.create(upstream=echo, name="echo"))
    body = {"name": "echo", "upstream": echo, "listen": "127.0.0.1:0"}
    expect(ProxyExists, lambda: APIConsumer.post("/proxies", json=body))
    missing = Proxy(name="missing", upstream=echo, enabled=True, listen="127.0.0.1:1")
    expect(NotFound, missing.toxics)
    expect(InvalidToxic, lambda: proxy.add_toxic(type="nope"))
    return proxy


def toxics_on_open_connections(proxy):
    s = connect(proxy.listen)
    assert round_trip(s, b"hello") < 0.5
    proxy.add_toxic(type="latency", attributes={"latency": 500})
    toxic = proxy.toxics()["latency_downstream"]
    assert (toxic.type, toxic.stream, toxic.toxicity) == ("latency", "downstream", 1.0)
    assert toxic.attributes == {"latency": 500, "jitter": 0}, toxic.attributes
    took = round_trip(s, b"slow")  # the connection opened before the toxic
    assert took >= 0.5, took
    assert proxy.destroy_toxic("latency_downstream")
    assert proxy.toxics() == {}
    assert round_trip(s, b"quick") < 0.5
    s.close()

    proxy.add_toxic(name="cut", type="limit_data", stream="downstream", attributes={"bytes": 5})
    assert proxy.get_toxic("cut").attributes == {"bytes": 5}
    s = connect(proxy.listen)
    s.sendall(b"0123456789")
    assert read_to_end(s) == b"01234"
    s.close()


def down_and_reset(server, proxy):
    with proxy.down():
        assert server.get_proxy("echo").enabled is False
        expect(ConnectionRefusedError, lambda: connect(proxy.listen))
    assert server.get_proxy("echo").enabled is True
    assert server.reset()
    assert proxy.toxics() == {}
    s = connect(proxy.listen)
    assert round_trip(s, b"after reset") < 0.5
    s.close()


def populate_and_destroy(server, echo):
    made = server.populate([{"name": "pop", "upstream": echo, "listen": "127.0.0.1:0"}])
    assert [p.name for p in made] == ["pop"]
    assert sorted(server.proxies()) == ["echo", "pop"]
    server.destroy_all()
    assert server.proxies() == {}


def main():
    api_port, echo = int(sys.argv[1]), sys.argv[2]
    server = Toxiproxy()
    server.update_api_consumer("127.0.0.1", api_port)
    proxy = proxies_and_errors(server, echo)
    toxics_on_open_connections(proxy)
    down_and_reset(server, proxy)
    populate_and_destroy(server, echo)
    print("toxiproxy-python: every check passed")


if __name__ == "__main__":
    main()
