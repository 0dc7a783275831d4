"""The client side of a tunnel: the contract, and the accepted connection.

A :class:`~gconnect.tunnel.tunnel.Tunnel` runs the same steps for every kind
of client (authenticate, check, resolve, dial, close); what differs between
kinds sits behind :class:`ClientSide`: HTTP/1.1 over TCP or TLS
(:mod:`gconnect.tunnel.http1`) and an HTTP/2 stream
(:mod:`gconnect.tunnel.h2.stream`) are its implementations. A side never
learns which steps ran; the steps never learn which side they serve.

:class:`ClientConnection` is an accepted socket and the way in: the loop
check, a trusted load balancer's PROXY header, the TLS handshake and the
protocol the client picked by ALPN, all by one header deadline from accept.

Ownership: the connection owns its socket and the watchers it made, from
accept to :meth:`ClientConnection.close`; a relay may take its read
watcher (:meth:`ClientConnection.take_reader`), and then closes that one itself.
"""

from __future__ import annotations

import _socket
import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import ClientClosedError, GConnectError, HeadTimeoutError, LoopDetectedError
from . import proxyproto
from .tls import TLSSession
from .waiting import READ, WRITE, send_all, wait

if TYPE_CHECKING:
    from .dial import Connection
    from .head import ConnectRequest
    from .services import TunnelServices

#: Bytes asked of recv() while reading a head: a typical head and a TLS
#: ClientHello sent right behind it fit in one read.
HEAD_RECV_BYTES = 8192


class ClientServed(Exception):
    """Raised by :meth:`ClientSide.read_request` when the side served the
    client itself and it is done: no tunnel to open, nothing to refuse (an
    HTTP/1.1 connection whose plain http:// requests were forwarded, each
    reported to the observer on its own). *end_reason* is the connection's."""

    def __init__(self, end_reason: str) -> None:
        super().__init__(end_reason)
        self.end_reason = end_reason


class RelayHandle(Protocol):
    """A relay that a client side started: it moves bytes until the tunnel ends,
    then calls the ``on_done`` it was given with itself, once, from the hub (a
    libev callback; possibly before ``start_relay`` has returned)."""

    #: Why the relay ended ("" while it runs): ``client_eof``, ``idle``, ``upstream_reset``...
    end_reason: str
    #: time.monotonic() when the target's first byte reached the client (0: none).
    first_byte_at: float

    #: Bytes delivered from the client to the target, early bytes included, and
    #: from the target to the client: set when the relay ends.
    bytes_up: int
    bytes_down: int

    def abort(self, reason: str) -> None:
        """End the relay now with *reason*; ``on_done`` is called before this
        returns. Nothing happens if the relay has ended already."""


class ClientSide(Protocol):
    """What differs between kinds of client; the tunnel calls these in order.

    ``admit`` once, then ``read_request``; then either ``refuse`` (any
    GConnectError before the answer) or ``established`` followed by
    ``start_relay``; finally ``close``, exactly once, whatever happened. A
    method that finds the client gone raises OSError (ConnectionError).
    """

    @property
    def address(self) -> tuple:
        """The client's address as policy and logs see it (after a PROXY header)."""

    @property
    def protocol(self) -> str:
        """The protocol the access log names ("http/1.1", "h2")."""

    @property
    def stream_id(self) -> int | None:
        """The HTTP/2 stream (0: the connection itself), or None for a connection's only request."""

    def peer_certificate(self) -> dict[str, Any] | None:
        """The client certificate the TLS handshake verified (``SSLObject.getpeercert()``),
        None or empty without one; a stream answers with its connection's."""

    def admit(self) -> Callable[[], str] | None:
        """Make sure the client may be served at all (loop check, PROXY header,
        TLS handshake; for a stream, that its connection is still there).
        Raises GConnectError. Returns None, or a *takeover*: the client picked
        another protocol (ALPN) whose server the tunnel calls instead of the
        steps; it serves the connection to its end and returns the end reason."""

    def read_request(self) -> ConnectRequest:
        """The client's CONNECT request, by the header deadline. Raises
        GConnectError, or ClientServed when the side served the client's
        requests itself (plain HTTP forwarding) and nothing is left to do."""

    def established(self) -> None:
        """Tell the client its tunnel is open (the 200). OSError if it cannot be told."""

    def refuse(self, exc: GConnectError) -> None:
        """Answer *exc* as its HTTP error where it is answerable, then let the
        client go. It may wait (HTTP/1.1 lingers up to a second so the answer is
        read) and may be killed there; ``close`` still follows."""

    def read_ahead(self, deadline: float) -> bytes | None:
        """After ``established``: the tunnel bytes the client sent next, by
        *deadline* (loop time); b"" at its EOF, None once the deadline passed.
        The side keeps what it read: its relay delivers it first (after the
        early bytes start_relay is given). OSError if the client is gone."""

    def end_with(self, data: bytes) -> None:
        """After ``established``, instead of a relay: send *data* (a TLS alert)
        as the last bytes the client gets; ``close`` follows. Never raises."""

    def start_relay(self, outbound: Connection, early: bytes, on_done: Callable[[Any], None]) -> RelayHandle:
        """Relay between the client and *outbound*, first sending *early* (bytes
        that came with the request) and what ``read_ahead`` returned, and return
        at once; the relay calls *on_done* with itself when it ends (see
        :class:`RelayHandle`). OSError if those bytes cannot be sent: then no
        relay was started and the side holds nothing more than before. Sending
        them may wait, and be killed."""

    def drain(self) -> None:
        """Ask the client to finish (shutdown): a connection carrying streams
        stops taking new ones; otherwise nothing."""

    def close(self, status: int, end_reason: str) -> None:
        """Release the client's resources; the tunnel ended with *status* and *end_reason*."""


def trusts_proxy_header(services: TunnelServices, address: tuple) -> bool:
    """True if a PROXY header is expected from this peer (a trusted load balancer)."""
    config = services.config
    if not config.proxy_protocol:
        return False
    try:
        ip = ipaddress.ip_address(address[0])
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in config.proxy_protocol_from)


class ClientConnection:
    """An accepted client connection (see the module docstring).

    Attributes most connections never change start as the class defaults
    below: one is made for every client, and each store counts.
    """

    tls: TLSSession | None = None
    #: The protocol the client picked by ALPN (None: no ALPN, which means HTTP/1.1).
    alpn: str | None = None
    #: Bytes read past the PROXY header: the start of the client's own.
    early = b""
    #: Shutdown has begun (drain() was called): a protocol served later drains from its start.
    draining = False
    #: Set by a protocol that can drain (HTTP/2's GOAWAY); called at shutdown.
    on_drain: Callable[[], None] | None = None
    _reader: Any = None
    _writer: Any = None

    def __init__(self, services: TunnelServices, sock: _socket.socket, address: tuple) -> None:
        self.services = services
        self.sock = sock
        self.address = address
        self.loop = loop = services.loop
        #: One header deadline from accept for the PROXY header, TLS handshake and head.
        self.deadline: float = loop.now() + services.config.header_timeout

    def handshake(self) -> None:
        """The way in: the loop check, the load balancer's PROXY header, the TLS handshake."""
        services = self.services
        if services.own_connections.is_own(self.address, self.sock):
            raise LoopDetectedError("tunnel loops back into this proxy")
        if services.config.proxy_protocol and trusts_proxy_header(services, self.address):
            self.read_proxy_header()
        if services.tls_context is not None:
            self.tls = TLSSession(self.sock, services.tls_context)
            self.tls.handshake(self.reader(), self.writer(), self.deadline)
            self.alpn = self.tls.ssl.selected_alpn_protocol()

    def peer_certificate(self) -> dict[str, Any] | None:
        """The client certificate the TLS handshake verified; None on a plain listener or without one."""
        return self.tls.ssl.getpeercert() if self.tls is not None else None

    def read_proxy_header(self) -> None:
        """Read the load balancer's PROXY header: from here on the client is the one it names."""
        data = b""
        while True:
            chunk = self.recv("PROXY header")
            if not chunk:
                raise ClientClosedError("connection closed before the PROXY header was complete")
            data += chunk
            parsed = proxyproto.parse(data)
            if parsed is not None:
                header, length = parsed
                self.address = header.source or self.address
                self.early = data[length:]
                return

    def recv(self, what: str) -> bytes:
        """What the client sent next (plaintext on a TLS listener), by the header
        deadline; b"" at its EOF. HeadTimeoutError names *what* was awaited."""
        # recv_by's loop, inline: this runs for every request head.
        while True:
            try:
                return self.tls.recv() if self.tls is not None else self.sock.recv(HEAD_RECV_BYTES)
            except BlockingIOError:
                if not wait(self.reader(), self.deadline - self.loop.now()):
                    timeout = self.services.config.header_timeout
                    raise HeadTimeoutError(f"{what} not received within {timeout:g} s") from None

    def recv_by(self, deadline: float) -> bytes | None:
        """What the client sent next (plaintext on a TLS listener); b"" at its
        EOF; None once *deadline* (loop time) has passed."""
        while True:
            try:
                return self.tls.recv() if self.tls is not None else self.sock.recv(HEAD_RECV_BYTES)
            except BlockingIOError:
                if not wait(self.reader(), deadline - self.loop.now()):
                    return None

    def send(self, data: bytes, deadline: float) -> bool:
        """Write *data* to the client (encrypted on a TLS listener) by *deadline*."""
        if self.tls is not None:
            data = self.tls.encrypt(data)
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        return sent == len(data) or send_all(self.sock, data[sent:], self.writer(), deadline)

    def reader(self) -> Any:
        """The socket's libev read watcher, made on first use."""
        if self._reader is None:
            self._reader = self.loop.io(self.sock.fileno(), READ)
        return self._reader

    def writer(self) -> Any:
        """The socket's libev write watcher, made on first use."""
        if self._writer is None:
            self._writer = self.loop.io(self.sock.fileno(), WRITE)
        return self._writer

    def take_reader(self) -> Any:
        """Hand the read watcher (or None) to a relay, which closes it."""
        reader, self._reader = self._reader, None
        return reader

    def close(self, status: int = 0, end_reason: str = "") -> None:
        """Close the watchers still held and the socket. (The arguments are the
        ClientSide contract's, for the sides built on a connection; a connection
        does not need them.)"""
        if self._reader is not None:
            self._reader.close()
        if self._writer is not None:
            self._writer.close()
        self.sock.close()
