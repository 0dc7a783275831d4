"""TLS on the listening side (an "HTTPS proxy": curl ``--proxy https://``).

The client speaks TLS to the proxy; the CONNECT head and the tunnel's bytes
travel inside that TLS session. splice(2) and the fd-level copy relay cannot
move bytes through TLS records, so such tunnels use :class:`TLSRelay`: two
greenlets calling the SSL socket's ``recv``/``sendall``, with the idle deadline
shared by both directions as in :class:`~gconnect.relay.Relay`.

Half-close is carried one way only. The client's EOF becomes a FIN toward the
upstream and the upstream's bytes keep flowing. The upstream's EOF becomes a
close_notify to the client and ends the tunnel: the ssl module's shutdown calls
SSL_shutdown twice, and the second call reads the socket, where a fast client's
next record is taken and lost (OpenSSL: APPLICATION_DATA_AFTER_CLOSE_NOTIFY,
seen in tests); a FIN without close_notify is worse, as OpenSSL 3 clients take
it for a truncation attack and stop writing too. Carrying this direction would
need the TLS session on memory BIOs, where nothing is read behind our back.
"""

from __future__ import annotations

import select
import socket as _stdlib_socket
import ssl
import struct
import time

import gevent
from gevent import ssl as gevent_ssl
from gevent.socket import socket

from .config import Config
from .errors import TLSHandshakeError
from .relay import RelayResult

_LINGER_ABORT = struct.pack("ii", 1, 0)
#: Tries (10 ms apart) to find the client's direction quiet before sending close_notify.
CLOSE_NOTIFY_ATTEMPTS = 20


def server_context(config: Config) -> ssl.SSLContext:
    """The listener's context: Python's defaults for a server (TLS 1.2 and up,
    the ssl module's cipher selection), with the configured certificate chain.
    Raises OSError/ssl.SSLError if the files cannot be loaded."""
    context = gevent_ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    # A CONNECT proxy speaks HTTP/1.1 only; say so to clients that offer ALPN.
    context.set_alpn_protocols(["http/1.1"])
    return context


def accept_tls(client: socket, context: ssl.SSLContext, timeout: float) -> socket:
    """Run the server side of the handshake within *timeout* seconds.

    Returns the TLS socket (which now owns the descriptor). Raises
    TLSHandshakeError on failure or timeout; there is no channel to answer on.
    """
    timer = gevent.Timeout(timeout, TLSHandshakeError(f"TLS handshake not completed within {timeout:g} s"))
    timer.start()
    tls = None
    try:
        tls = context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        tls.do_handshake()
        return tls  # type: ignore[no-any-return]
    except OSError as exc:  # ssl.SSLError is an OSError
        if tls is not None:
            tls.close()
        raise TLSHandshakeError(f"TLS handshake failed: {exc}") from exc
    except TLSHandshakeError:
        if tls is not None:
            tls.close()
        raise
    finally:
        timer.close()


class TLSRelay:
    """Relay between a TLS client socket and a plain upstream socket.

    The same contract as :class:`~gconnect.relay.Relay`: :meth:`run` returns
    once both directions ended, the tunnel idled out or outlived
    *max_lifetime*, or a side reset; the caller closes both sockets.
    """

    def __init__(
        self,
        client: socket,
        upstream: socket,
        *,
        idle_timeout: float,
        half_close_timeout: float,
        max_lifetime: float = 0.0,
        chunk_bytes: int = 64 * 1024,
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.idle_timeout = idle_timeout
        self.half_close_timeout = half_close_timeout
        self.max_lifetime = max_lifetime
        self.chunk = chunk_bytes
        self.result = RelayResult()
        self._last_activity = 0.0
        self._first_eof = ""
        self._reset_side = ""

    def run(self, first_chunk: bytes = b"") -> RelayResult:
        """Relay until done; see the class docstring."""
        result = self.result
        started = self._last_activity = time.monotonic()
        if first_chunk:
            self.upstream.sendall(first_chunk)
            result.bytes_up += len(first_chunk)
        up = gevent.spawn(self._pump, self.client, self.upstream, "client")
        down = gevent.spawn(self._pump, self.upstream, self.client, "upstream")
        try:
            while True:
                running = [g for g in (up, down) if not g.dead]
                if self._reset_side:
                    result.reason = f"{self._reset_side}_reset"
                    survivor = self.upstream if self._reset_side == "client" else self.client
                    try:
                        survivor.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_LINGER, _LINGER_ABORT)
                    except OSError:
                        pass
                    return result
                if not running or down.dead:
                    # down.dead: the upstream's EOF ends a TLS tunnel (module docstring).
                    result.reason = "client_eof" if self._first_eof == "client" else "upstream_eof"
                    return result
                half_closed = len(running) == 1
                idle = self.idle_timeout
                if half_closed and self.half_close_timeout:
                    idle = min(idle, self.half_close_timeout) if idle else self.half_close_timeout
                deadlines = []
                if idle:
                    deadlines.append(self._last_activity + idle)
                if self.max_lifetime:
                    deadlines.append(started + self.max_lifetime)
                wait = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
                gevent.wait(running, timeout=wait, count=1)
                now = time.monotonic()
                if self.max_lifetime and now - started >= self.max_lifetime:
                    result.reason = "lifetime"
                    return result
                if idle and now - self._last_activity >= idle:
                    result.reason = "half_close_timeout" if half_closed and idle == self.half_close_timeout else "idle"
                    return result
        finally:
            gevent.killall([up, down])

    def _pump(self, src: socket, dst: socket, name: str) -> None:
        result = self.result
        while True:
            try:
                data = src.recv(self.chunk)
            except OSError:
                self._reset_side = self._reset_side or name
                return
            if not data:
                break
            try:
                dst.sendall(data)
            except OSError:
                self._reset_side = self._reset_side or ("upstream" if name == "client" else "client")
                return
            if name == "client":
                result.bytes_up += len(data)
            else:
                result.bytes_down += len(data)
            self._last_activity = time.monotonic()
        self._first_eof = self._first_eof or name
        if name == "upstream":
            self._close_notify()
        else:
            try:
                dst.shutdown(_stdlib_socket.SHUT_WR)
            except OSError:
                pass

    def _close_notify(self) -> None:
        """Tell the TLS client the upstream is done: close_notify, then FIN.

        Client bytes already waiting are relayed first (the up pump reads them
        within a few polls); after this the tunnel ends (module docstring)."""
        client = self.client
        for _ in range(CLOSE_NOTIFY_ATTEMPTS):
            try:
                waiting = client.pending() or select.select([client.fileno()], [], [], 0)[0]
            except (OSError, ValueError):
                return
            if not waiting:
                break
            gevent.sleep(0.01)
        else:
            waiting = True
        sslobj = getattr(client, "_sslobj", None)
        if not waiting and sslobj is not None:
            try:
                sslobj.shutdown()
            except ssl.SSLWantReadError:
                pass  # close_notify sent; the client's own comes later, through recv
            except (OSError, ValueError):
                pass
        try:
            # The plain socket's shutdown: SSLSocket.shutdown would also drop the TLS layer.
            socket.shutdown(client, _stdlib_socket.SHUT_WR)
        except OSError:
            pass
