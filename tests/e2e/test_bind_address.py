"""``--bind-address``: several source addresses raise the ceiling of concurrent
tunnels to one destination past the ephemeral port range.

Each proxy runs in a network namespace of its own (``unshare --net``) with
loopback up and ``net.ipv4.ip_local_port_range`` narrowed to a few ports, so
the ceiling is small and nothing else on the machine is touched. The test
reaches into that namespace with setns(2) from its own thread: the target's
listener and the clients' sockets are made there (a socket keeps the
namespace it was made in), then the thread returns to its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import socket
from collections.abc import Iterator

import pytest

from ..conftest import read_head, recv_all

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(tool) for tool in ("unshare", "ip", "sysctl")),
        reason="needs root, unshare(1), ip(8) and sysctl(8) for a network namespace",
    ),
]

#: The narrowed ephemeral range: ten ports per source address and destination.
LOW, HIGH = 40000, 40009
RANGE = HIGH - LOW + 1
PROXY_PORT, TARGET_PORT = 3128, 9000
#: Clients bind to ports outside the range, so only the proxy's dialled sockets draw from it.
CLIENT_PORTS = 20000
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@contextlib.contextmanager
def inside(pid: int) -> Iterator[None]:
    """Run this thread in *pid*'s network namespace for the duration."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    theirs = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY)
    try:
        _setns(theirs)
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(own)
        os.close(theirs)


def start_in_namespace(start_proxy, *extra: str):
    script = f'ip link set lo up && sysctl -qw net.ipv4.ip_local_port_range="{LOW} {HIGH}" && exec "$@"'
    return start_proxy(
        "--listen",
        f"127.0.0.1:{PROXY_PORT}",
        "--allow-port",
        "1-65535",
        "--allow-dest",
        "127.0.0.0/8",
        "--connect-timeout",
        "2",
        "--drain-timeout",
        "1",
        *extra,
        defaults=False,
        prefix=["unshare", "--net", "sh", "-c", script, "gconnect-netns"],
    )


def tunnels_until_refused(proxy, ports: tuple[int, ...] = (TARGET_PORT,)) -> tuple[int, bytes]:
    """Open tunnels to the namespace's targets (*ports*, in turn), holding each,
    until one is refused: (tunnels that got their 200, the refusal)."""
    held: list[socket.socket] = []
    listeners = []
    with inside(proxy.pid):
        for port in ports:
            listener = socket.socket()
            listener.bind(("127.0.0.1", port))
            # Never accepted: a connection in the backlog holds its 4-tuple all the same.
            listener.listen(4 * RANGE)
            listeners.append(listener)
    try:
        for index in range(4 * RANGE):
            with inside(proxy.pid):
                client = socket.socket()
            held.append(client)
            client.settimeout(10)
            client.bind(("127.0.0.1", CLIENT_PORTS + index))
            client.connect(("127.0.0.1", PROXY_PORT))
            target = f"127.0.0.1:{ports[index % len(ports)]}"
            client.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            head, rest = read_head(client)
            if not head.startswith(b"HTTP/1.1 200 "):
                return index, head + b"\r\n\r\n" + rest + recv_all(client)
        raise AssertionError(f"no refusal after {4 * RANGE} tunnels")
    finally:
        for sock in [*held, *listeners]:
            sock.close()


def test_two_source_addresses_double_the_ceiling_to_one_destination(start_proxy):
    alone = start_in_namespace(start_proxy)
    opened, refusal = tunnels_until_refused(alone)
    # One source address: the range is the ceiling, and the next tunnel is told why.
    assert opened == RANGE
    assert refusal.startswith(b"HTTP/1.1 502 ") and b"Cannot assign requested address" in refusal
    assert "reason=connect_error" in alone.wait_access("status=502")

    spread = start_in_namespace(start_proxy, "--bind-address", "127.0.0.2", "--bind-address", "127.0.0.3")
    opened, refusal = tunnels_until_refused(spread)
    assert opened == 2 * RANGE
    assert refusal.startswith(b"HTTP/1.1 502 ")


def test_a_source_address_reuses_its_ports_toward_other_destinations(start_proxy):
    # IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect(), per destination;
    # a plain bind() would take one from the range for all destinations together.
    bound = start_in_namespace(start_proxy, "--bind-address", "127.0.0.2")
    opened, refusal = tunnels_until_refused(bound, (TARGET_PORT, TARGET_PORT + 1))
    assert opened == 2 * RANGE
    assert refusal.startswith(b"HTTP/1.1 502 ")
