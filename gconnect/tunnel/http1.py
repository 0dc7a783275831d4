"""HTTP/1.1 over TCP or TLS: the client side of a connection's one CONNECT
(or, first, of the plain http:// requests it forwards: :mod:`.forward`).

The head is read by :class:`~gconnect.tunnel.head.RequestParser` from what the
:class:`~gconnect.tunnel.client.ClientConnection` receives; the answer is
``200 Connection established`` or an error rendered by
:func:`~gconnect.tunnel.head.render_error`, followed by a lingering close;
the relay is :class:`~gconnect.tunnel.relay.Relay` with the plain or TLS
movers. A TLS client that picked another protocol by ALPN is handed to that
protocol's server (the ``protocols`` table of the services).

It is a :class:`~gconnect.tunnel.client.ClientConnection` with the ClientSide
methods added (one object per client, not two: this path runs for every
tunnel). Ownership: it owns its socket and closes it in :meth:`close`; the
relay borrows the socket (and adopts the read watcher and the outbound
connection's write watcher) until it ends.
"""

from __future__ import annotations

import _socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ClientClosedError, GConnectError, MethodNotAllowedError
from .client import ClientConnection
from .forward.session import forward_requests
from .head import RESPONSE_200, ConnectRequest, RequestParser, proxy_status, render_error
from .relay import Relay
from .waiting import WRITE, recv, send_all

if TYPE_CHECKING:
    from .dial import Connection

#: After an error response, read and discard what the client still sends for at
#: most this long / this much, so closing does not turn into a reset that
#: destroys the response in flight (Apache's lingering close waits up to 2 s).
LINGER_SECONDS = 1.0
LINGER_BYTES = 64 * 1024


class HTTP1Side(ClientConnection):
    """One client connection's CONNECT request, over TCP or TLS."""

    #: The access log's protocol and stream: changed only when ALPN hands the connection over.
    protocol = "http/1.1"
    stream_id: int | None = None
    #: Tunnel bytes read ahead of the relay (the TLS name check's), sent first.
    ahead = b""

    def admit(self) -> Callable[[], str] | None:
        self.handshake()
        alpn = self.alpn
        serve = self.services.protocols.get(alpn) if alpn else None
        if serve is None:
            return None
        # The connection's own record: the protocol, stream 0.
        self.protocol = alpn or self.protocol
        self.stream_id = 0
        return lambda: serve(self, self.services)

    def read_request(self) -> ConnectRequest:
        config = self.services.config
        parser = RequestParser(config.max_header_bytes)
        data = self.early
        received = b""
        while True:
            if data:
                if config.forward_http == "on":
                    received += data
                try:
                    request = parser.feed(data)
                except MethodNotAllowedError:
                    if config.forward_http != "on":
                        raise
                    # Not a CONNECT: a plain HTTP request, for the forwarding side.
                    return forward_requests(self, received, self.refuse)
                if request is not None:
                    return request
            data = self.recv("request head")
            if not data:
                raise ClientClosedError("connection closed before the request head was complete")

    def established(self) -> None:
        if not self.send(RESPONSE_200, self.loop.now() + self.services.config.header_timeout):
            raise ConnectionError("the client does not read: the 200 could not be sent")

    def refuse(self, exc: GConnectError) -> None:
        if not exc.answerable:
            return
        headers = (*exc.headers, ("Proxy-Status", proxy_status(exc)))
        body = render_error(exc.status, exc.phrase, str(exc), headers)
        deadline = self.loop.now() + LINGER_SECONDS
        sock = self.sock
        try:
            if not self.send(body, deadline):
                return
            if self.tls is not None:
                send_all(sock, self.tls.close_notify(), self.writer(), deadline)
            sock.shutdown(_socket.SHUT_WR)
            drained = 0
            while drained < LINGER_BYTES:
                chunk = recv(sock, LINGER_BYTES, self.reader(), deadline)
                if not chunk:  # the client's EOF, or the deadline (None)
                    return
                drained += len(chunk)
        except OSError:
            pass

    def read_ahead(self, deadline: float) -> bytes | None:
        data = self.recv_by(deadline)
        if data:
            self.ahead += data
        return data

    def end_with(self, data: bytes) -> None:
        try:
            self.send(data, self.loop.now() + LINGER_SECONDS)
        except OSError:
            pass  # the client is gone already

    def start_relay(self, outbound: Connection, early: bytes, on_done: Callable[[Any], None]) -> Relay:
        services = self.services
        early += self.ahead
        if early:
            # RFC 9110 §9.3.6 lets the client send before the 200: tunnel data (and
            # the name check's ClientHello). A write watcher only if the target is slow.
            try:
                sent = outbound.sock.send(early)
            except BlockingIOError:
                sent = 0
            if sent < len(early):
                if outbound.writer is None:
                    outbound.writer = self.loop.io(outbound.sock.fileno(), WRITE)
                deadline = self.loop.now() + services.config.connect_timeout
                if not send_all(outbound.sock, early[sent:], outbound.writer, deadline):
                    raise ConnectionResetError("the target did not take the early bytes")
        tls = self.tls
        # By position, in Relay's order: keywords to a class call cost a dictionary per tunnel.
        relay = Relay(
            self.sock,
            outbound.sock,
            services.plain_movers if tls is None else services.tls_movers,
            services.relay_limits,
            on_done,
            self.take_reader(),  # client_reader
            outbound.writer,  # outbound_writer
            tls,
            services.hangups,
            self.loop,
        )
        outbound.writer = None  # the relay owns it now
        relay.start(len(early), tls is not None and tls.eof)
        return relay

    def drain(self) -> None:
        self.draining = True
        if self.on_drain is not None:
            self.on_drain()
