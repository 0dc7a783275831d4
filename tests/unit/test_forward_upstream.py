"""The idle origin connections kept for reuse: keys, caps, expiry, and
connections the origin closed while idle. Real loopback sockets."""

from __future__ import annotations

import _socket
import socket

import gevent
import pytest

from gconnect.tunnel.dial import Connection
from gconnect.tunnel.forward.upstream import IdleConnections, ReuseKey, Upstream
from gconnect.tunnel.loopcheck import OwnConnections

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def origin():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []

    def dial(user: str | None = "ann", own: OwnConnections | None = None) -> tuple[Upstream, socket.socket]:
        sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        sock.connect(server.getsockname())
        sock.setblocking(False)
        peer, _ = server.accept()
        accepted.append(peer)
        connection = Connection(sock, "127.0.0.1", server.getsockname()[1], None)
        return Upstream(connection, user, "", own or OwnConnections(), None), peer

    yield dial
    for peer in accepted:
        peer.close()
    server.close()


def test_reused_only_for_the_same_key(origin) -> None:
    idle = IdleConnections(60, 4)
    upstream, _ = origin("ann")
    idle.put(upstream)
    assert idle.take(ReuseKey("bob", upstream.address, upstream.port, "")) is None
    assert idle.take(ReuseKey("ann", upstream.address, upstream.port, "via")) is None
    assert idle.take(upstream.key) is upstream
    assert idle.take(upstream.key) is None and idle.reused == 1
    upstream.close()


def test_cap_per_key_closes_the_oldest(origin) -> None:
    idle = IdleConnections(60, 2)
    conns = [origin()[0] for _ in range(3)]
    for upstream in conns:
        idle.put(upstream)
    assert conns[0].sock.fileno() < 0 and len(idle) == 2
    assert idle.take(conns[0].key) is conns[2]
    idle.close()
    assert conns[1].sock.fileno() < 0 and conns[2].sock.fileno() >= 0
    conns[2].close()


def test_closed_by_the_origin_while_idle_is_not_reused(origin) -> None:
    idle = IdleConnections(60, 4)
    own = OwnConnections()
    upstream, peer = origin(own=own)
    local = upstream.sock.getsockname()[:2]
    assert own.is_own(local, peer)
    idle.put(upstream)
    peer.shutdown(socket.SHUT_WR)
    gevent.sleep(0.05)  # the FIN reaches our socket
    assert idle.take(upstream.key) is None and idle.stale == 1
    assert upstream.sock.fileno() < 0 and not own.is_own(local, peer)


def test_expired_connections_are_swept(origin) -> None:
    idle = IdleConnections(0.05, 4)
    upstream, _ = origin()
    idle.put(upstream)
    gevent.sleep(1.2)  # one sweep interval
    assert len(idle) == 0 and upstream.sock.fileno() < 0


def test_no_reuse_when_turned_off(origin) -> None:
    idle = IdleConnections(0, 4)
    upstream, _ = origin()
    idle.put(upstream)
    assert len(idle) == 0 and upstream.sock.fileno() < 0


def test_source_must_be_one_the_request_may_use(origin) -> None:
    idle = IdleConnections(60, 4)
    upstream, _ = origin()
    idle.put(upstream)
    assert idle.take(upstream.key, ("127.0.0.2",)) is None
    other, _ = origin()
    idle.put(other)
    assert idle.take(other.key, ("127.0.0.1",)) is other
    other.close()
