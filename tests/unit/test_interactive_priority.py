"""A direction whose read drained its socket (an interactive exchange, as an
echo's) runs first in a turn of the loop, ahead of the bulk directions ready in
the same turn (relay.INTERACTIVE_PRIORITY); a large read puts it back among
them. Real relays on loopback TCP pairs in this process's hub; a copy mover
that notes which direction each read served, and in which turn."""

from __future__ import annotations

import socket
import time

import gevent
import pytest

from gconnect.tunnel.deadlines import RelayLimits
from gconnect.tunnel.movers import CopyMover, Half
from gconnect.tunnel.relay import INTERACTIVE_PRIORITY, INTERACTIVE_READ_BYTES, Relay

from .test_read_size import BUDGET, CHUNK, TUNNELS, fill
from .test_relay_conformance import raw, tcp_pair

pytestmark = pytest.mark.timeout(60)


class Recording(CopyMover):
    """The copy mover, noting (loop iteration, direction) for every read."""

    def __init__(self) -> None:
        super().__init__(CHUNK, budget_bytes=BUDGET)
        self.reads: list[tuple[int, Half]] = []

    def pump(self, half: Half, size: int = 0) -> int:
        self.reads.append((gevent.get_hub().loop.iteration, half))
        return super().pump(half, size)


class Tunnel:
    """One relay between loopback pairs: ``client`` sends into it, ``upstream`` receives."""

    def __init__(self, mover: CopyMover) -> None:
        self.client, client_end = tcp_pair()
        upstream_end, self.upstream = tcp_pair()
        self.client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.upstream.setblocking(False)
        self.received = 0
        limits = RelayLimits(10.0, 10.0, 0.0)
        self.relay = Relay(raw(client_end), raw(upstream_end), (mover, mover), limits, lambda relay: None)

    def delivered(self) -> int:
        try:
            while chunk := self.upstream.recv(65536):
                self.received += len(chunk)
        except BlockingIOError:
            pass
        return self.received

    def close(self) -> None:
        self.relay.abort("test over")
        self.relay.up.src.close()
        self.relay.up.dst.close()
        self.client.close()
        self.upstream.close()


@pytest.fixture
def made():
    tunnels: list[Tunnel] = []
    yield tunnels
    for tunnel in tunnels:
        tunnel.close()


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        gevent.sleep(0.001)


def test_a_large_read_lowers_the_reader_and_a_draining_one_raises_it_again(made):
    made.append(tunnel := Tunnel(Recording()))
    tunnel.relay.start()
    up, down = tunnel.relay.up, tunnel.relay.down
    for half in (up, down):  # from the start: a short tunnel never restarts a watcher
        assert half.interactive and half.reader.priority == INTERACTIVE_PRIORITY
    tunnel.client.sendall(b"x" * 64)
    wait_for(lambda: tunnel.delivered() == 64)
    assert up.interactive and up.reader.priority == INTERACTIVE_PRIORITY
    # One segment (TCP_NODELAY, under the loopback MSS): one read of all of it.
    tunnel.client.sendall(b"y" * (2 * INTERACTIVE_READ_BYTES))
    wait_for(lambda: tunnel.delivered() == 64 + 2 * INTERACTIVE_READ_BYTES)
    assert not up.interactive and up.reader.priority == 0
    assert down.interactive and down.reader.priority == INTERACTIVE_PRIORITY  # untouched
    tunnel.client.sendall(b"z" * 64)  # and it still relays, raised again
    wait_for(lambda: tunnel.delivered() == 64 * 2 + 2 * INTERACTIVE_READ_BYTES)
    assert up.interactive and up.reader.priority == INTERACTIVE_PRIORITY


def test_an_interactive_direction_reads_before_the_bulk_ready_in_its_turn(made):
    mover = Recording()
    made.append(echo := Tunnel(mover))
    bulk = [Tunnel(mover) for _ in range(TUNNELS)]
    made.extend(bulk)
    for tunnel in [echo, *bulk]:
        tunnel.relay.start()
    for tunnel in bulk:  # one large read each: bulk from now on
        tunnel.client.sendall(b"y" * (2 * INTERACTIVE_READ_BYTES))
    wait_for(lambda: all(t.delivered() == 2 * INTERACTIVE_READ_BYTES for t in bulk))
    assert not any(t.relay.up.interactive for t in bulk)
    # The echo's bytes are ready before any bulk source is, and the hub does not run between
    # these sends: without priorities libev (which runs a turn's ready watchers
    # last-noticed first) would read the echo after every bulk source.
    echo.client.sendall(b"x" * 64)
    for tunnel in bulk:
        fill(tunnel.client)
    mover.reads.clear()
    wait_for(lambda: echo.delivered() == 64)
    turn = next(i for i, half in mover.reads if half is echo.relay.up)
    in_turn = [half for i, half in mover.reads if i == turn]
    assert len(in_turn) > 1, "no bulk direction read in the echo's turn: the test shows nothing"
    assert in_turn[0] is echo.relay.up
