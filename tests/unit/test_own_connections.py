"""The dynamic loop check: a client is "us" only if its whole address pair is
one of our upstream connections (Linux lets a client's ephemeral port equal an
upstream socket's local port toward another destination)."""

from __future__ import annotations

import socket

from gconnect.tunnel.loopcheck import OwnConnections


def test_same_local_port_toward_another_destination_is_not_a_loop():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = socket.create_connection(listener.getsockname())
    accepted, address = listener.accept()
    try:
        own = OwnConnections()
        # An upstream connection of ours that happens to use the client's port,
        # toward some other destination.
        own.add((address[:2], ("127.0.0.1", 1)))
        assert not own.is_own(address, accepted)
        # Toward this very listener: the client is our own upstream socket.
        own.add((address[:2], accepted.getsockname()[:2]))
        assert own.is_own(address, accepted)
        own.remove((address[:2], accepted.getsockname()[:2]))
        assert not own.is_own(address, accepted)
        own.remove((address[:2], ("127.0.0.1", 1)))
        own.remove((address[:2], ("127.0.0.1", 1)))  # removing twice is harmless
        assert not own.is_own(address, accepted)
    finally:
        for sock in (client, accepted, listener):
            sock.close()
