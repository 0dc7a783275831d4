"""The relay conformance suite's HTTP/2 kind: one CONNECT stream served in process.

:class:`ServedStream` is the proxy side, the real code end to end: a loopback
TCP pair whose inner end is a :class:`~gconnect.tunnel.http1.HTTP1Side` (a ClientConnection)
(TLS, ALPN h2) served by a :class:`~gconnect.tunnel.tunnel.Tunnel` as the
composition root serves it, so the ALPN table hands it to
:class:`~gconnect.tunnel.h2.session.H2Protocol`; the stream's own tunnel dials
a loopback listener, whose accepted socket is the upstream peer. The stream's
relay (:class:`~gconnect.tunnel.h2.relay.StreamRelay`) is handed to
*on_done* when its tunnel closes, as the observer hears it.

:class:`H2StreamPeer` is the client peer: tests/h2client.py's client with one
CONNECT stream, used like a socket from several threads: sendall is DATA,
shutdown(SHUT_WR) END_STREAM, recv the DATA payloads (b"" at END_STREAM, a
ConnectionResetError at RST_STREAM), reset() RST_STREAM. Received DATA is
acknowledged to the proxy as recv() takes it, so a peer that stops reading
stops the stream. Only the peer's pump thread waits on the socket; every use of
the connection's state and socket is under one lock.
"""

from __future__ import annotations

import _socket
import ipaddress
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import gevent
import h2.exceptions

from gconnect.config import Config
from gconnect.tunnel.deadlines import RelayLimits
from gconnect.tunnel.h2 import H2Protocol
from gconnect.tunnel.http1 import HTTP1Side
from gconnect.tunnel.relay import HangupWatch
from gconnect.tunnel.services import TunnelServices
from gconnect.tunnel.tunnel import Tunnel
from tests.h2client import H2Client

#: The client's receive window per stream: RFC 9113's initial 65,535 octets, so the
#: proxy's stream relay stops and resumes reading its target many times a test.
STREAM_WINDOW_BYTES = 65_535
#: How often the pump thread looks at its stop flag while the proxy is silent.
PUMP_WAKE_SECONDS = 0.05


class H2StreamPeer:
    """One CONNECT stream of an :class:`H2Client`, used like a socket (see the module docstring)."""

    def __init__(self, client: H2Client, stream_id: int) -> None:
        self.client = client
        self.stream_id = stream_id
        client.held.add(stream_id)  # acknowledged as recv() takes it
        self.cond = threading.Condition()
        self.timeout: float | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        client, sock = self.client, self.client.sock
        while not self._stop and not client.closed:
            with self.cond:  # another thread may be inside the TLS session
                pending = sock.pending()
            if not pending:
                readable, _, _ = select.select([sock], [], [], PUMP_WAKE_SECONDS)
                if not readable:
                    continue
            with self.cond:
                try:
                    chunk = sock.recv(1 << 20)
                except (ssl.SSLWantReadError, TimeoutError):
                    continue
                except OSError:
                    chunk = b""
                client.receive(chunk)
                self.cond.notify_all()

    def _broken(self) -> bool:
        client = self.client
        return self.stream_id in client.resets or (client.closed and self.stream_id not in client.ended)

    def _wait(self, deadline: float | None) -> None:
        remaining = None if deadline is None else deadline - time.monotonic()
        if (remaining is not None and remaining <= 0) or not self.cond.wait(remaining):
            raise TimeoutError("h2 stream peer: timed out")

    def settimeout(self, timeout: float | None) -> None:
        self.timeout = timeout

    def sendall(self, data: bytes) -> None:
        """DATA; returns once the frames are out (the stream's window allowed them)."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with self.cond:
            if self._broken():
                raise ConnectionResetError("h2 stream peer: the stream was reset")
            self.client.send(self.stream_id, data)
            while self.stream_id in self.client.outgoing:
                if self._broken():
                    raise ConnectionResetError("h2 stream peer: the stream was reset")
                self._wait(deadline)

    def shutdown(self, how: int) -> None:
        """END_STREAM after what was sent (*how* is SHUT_WR: a stream has no other)."""
        assert how == socket.SHUT_WR
        with self.cond:
            self.client.send(self.stream_id, b"", end=True)

    def recv(self, n: int) -> bytes:
        """Up to *n* bytes of DATA; b"" at END_STREAM; ConnectionResetError at RST_STREAM."""
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        client = self.client
        with self.cond:
            while True:
                buffered = client.data[self.stream_id]
                if buffered:
                    chunk = bytes(buffered[:n])
                    del buffered[:n]
                    try:
                        client.ack(self.stream_id, len(chunk))
                        client.flush()
                    except h2.exceptions.StreamClosedError:
                        pass
                    return chunk
                if self._broken():
                    raise ConnectionResetError("h2 stream peer: the stream was reset")
                if self.stream_id in client.ended:
                    return b""
                self._wait(deadline)

    def reset(self) -> None:
        """RST_STREAM (CANCEL)."""
        with self.cond:
            self.client.reset(self.stream_id)

    def close(self) -> None:
        """Stop the pump thread and close the connection."""
        self._stop = True
        self._thread.join(5)
        self.client.close()


class StreamObserver:
    """Hears the tunnels of one served connection: the stream's relay, and the connection's end."""

    def __init__(self, on_done: Callable[[Any], None]) -> None:
        self.on_done = on_done
        self.stream: Any = None

    def opened(self, tunnel: Any) -> None:
        self.stream = tunnel

    def would_deny(self, tunnel: Any, reason: str) -> None:
        pass

    def closed(self, tunnel: Any) -> None:
        if tunnel.side.stream_id:  # a stream; 0 is the connection itself
            self.on_done(tunnel.side.relay)


class ServedStream:
    """One CONNECT stream through the real HTTP/2 server code (see the module docstring).

    *run* runs functions in threads while the hub runs (the suite's Harness.run).
    """

    def __init__(
        self,
        cert: tuple[str, str],
        context: ssl.SSLContext,
        limits: RelayLimits,
        on_done: Callable[[Any], None],
        run: Callable[..., None],
    ) -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        config = Config(
            tls_cert=cert[0],
            tls_key=cert[1],
            allow_dest=(ipaddress.ip_network("127.0.0.0/8"),),
            allow_port=((port, port),),
            idle_timeout=limits.idle_timeout,
            half_close_timeout=limits.half_close_timeout,
            max_tunnel_lifetime=limits.max_lifetime,
            relay="copy",
        )
        self.observer = StreamObserver(on_done)
        services = self.services = TunnelServices.from_config(
            config,
            observer=self.observer,
            protocols={"h2": H2Protocol(lambda: services)},
            hangups=HangupWatch(),
        )
        with socket.socket() as accepting:
            accepting.bind(("127.0.0.1", 0))
            accepting.listen(1)
            client_sock = socket.create_connection(accepting.getsockname())
            inner, address = accepting.accept()
        # As the listener hands it over: a raw non-blocking socket.
        end = _socket.socket(inner.family, inner.type, 0, inner.detach())
        end.setblocking(False)
        self.connection = Tunnel(services, HTTP1Side(services, end, address))
        self.greenlet = self.connection.greenlet = gevent.spawn(self.connection.run)
        opened: dict[str, Any] = {}

        def open_stream() -> None:
            client = H2Client(None, context, window=STREAM_WINDOW_BYTES, sock=client_sock)
            stream_id = client.connect(f"127.0.0.1:{port}")
            assert client.status(stream_id) == 200
            opened["peer"] = H2StreamPeer(client, stream_id)

        try:
            run(open_stream)
            listener.settimeout(10)
            self.upstream, _ = listener.accept()  # the dial completed before the 200
            self.upstream.settimeout(None)
        finally:
            listener.close()
        self.peer: H2StreamPeer = opened["peer"]
        deadline = time.monotonic() + 10
        while self.observer.stream is None or self.observer.stream.side.relay is None:
            assert time.monotonic() < deadline, "the stream's relay did not start"
            gevent.sleep(0.005)
        self.side = self.observer.stream.side
        self.relay = self.side.relay

    def close(self) -> None:
        """Abort the stream, close both peers, and let the connection's greenlet end."""
        self.relay.abort("test over")
        self.peer.close()
        self.upstream.close()
        self.greenlet.join(10)
        assert self.greenlet.dead, "the HTTP/2 connection did not end"
        self.services.close()
