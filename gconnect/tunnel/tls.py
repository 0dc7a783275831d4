"""TLS on the listening side (an "HTTPS proxy": curl ``--proxy https://``).

The client speaks TLS to the proxy; the CONNECT head and the tunnel's bytes
travel inside that TLS session. splice(2) and the fd-level copy relay cannot
move bytes through TLS records, so such tunnels use :class:`TLSRelay`: two
greenlets calling :class:`TLSConnection`'s ``recv``/``sendall``, with the idle
deadline shared by both directions as in :class:`~gconnect.relay.Relay`.

The TLS session runs on memory BIOs (``SSLContext.wrap_bio``): we move the
ciphertext ourselves, so OpenSSL never reads the socket behind our back. That
is what lets half-close be carried both ways: the upstream's EOF becomes a
close_notify (then a FIN) while the client's direction keeps flowing, as TLS 1.3
allows (RFC 8446 §6.1). With ``SSLSocket`` the ssl module's shutdown calls
SSL_shutdown twice and the second call reads the socket, where a fast client's
next record is taken and lost (OpenSSL: APPLICATION_DATA_AFTER_CLOSE_NOTIFY,
seen in our tests); a FIN without close_notify is no better, as OpenSSL 3
clients take it for a truncation attack and stop writing too.
"""

from __future__ import annotations

import logging
import socket as _stdlib_socket
import ssl
import struct
import time
from typing import Any

import gevent
from gevent.lock import Semaphore
from gevent.socket import socket

from ..config import Config
from ..errors import TLSHandshakeError
from .relay import RelayResult

log = logging.getLogger(__name__)

_LINGER_ABORT = struct.pack("ii", 1, 0)
#: Ciphertext read from the socket at once: a few full TLS records (16 KiB each).
TLS_RECV_BYTES = 64 * 1024


def server_context(config: Config) -> ssl.SSLContext:
    """The listener's context: Python's defaults for a server (TLS 1.2 and up,
    the ssl module's cipher selection), with the configured certificate chain.
    Raises OSError/ssl.SSLError if the files cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    # A CONNECT proxy speaks HTTP/1.1 only; say so to clients that offer ALPN.
    context.set_alpn_protocols(["http/1.1"])
    return context


class TLSConnection:
    """The server side of one TLS session over a gevent socket, on memory BIOs.

    Socket-like where :mod:`gconnect.server` needs it (``recv``, ``sendall``,
    ``shutdown``, ``close``, ``settimeout``, ``getsockname``, ``setsockopt``).
    One greenlet may read while another writes. :meth:`recv` decrypts every
    complete record it has read before returning, so between calls the
    incoming BIO holds at most part of a record, and :meth:`close_notify` never
    makes OpenSSL meet application data it would have to drop.
    """

    def __init__(self, sock: socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=True)
        self._plain = b""
        self._write_lock = Semaphore()
        self._notified = False

    def _flush(self) -> None:
        # Under a lock: two greenlets sending at once would interleave records.
        with self._write_lock:
            data = self._outgoing.read()
            while data:
                self.sock.sendall(data)
                data = self._outgoing.read()

    def _fill(self) -> None:
        data = self.sock.recv(TLS_RECV_BYTES)  # BlockingIOError in non-blocking mode
        if data:
            self._incoming.write(data)
        else:
            self._incoming.write_eof()

    def do_handshake(self) -> None:
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
                continue
            self._flush()
            return

    def recv(self, n: int) -> bytes:
        """Up to *n* plaintext bytes (more if a record held more); b"" at EOF,
        with or without close_notify."""
        while not self._plain:
            chunks = []
            eof = False
            try:
                while True:
                    chunk = self._tls.read(TLS_RECV_BYTES)
                    if not chunk:  # close_notify received (the ssl module returns b"")
                        eof = True
                        break
                    chunks.append(chunk)
            except ssl.SSLWantReadError:
                if not chunks:
                    self._flush()  # TLS 1.3 may answer (KeyUpdate) while reading
                    self._fill()
                    continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                eof = True
            if not chunks and eof:
                return b""
            self._plain = b"".join(chunks)
        data, self._plain = self._plain[:n], self._plain[n:]
        return data

    def sendall(self, data: bytes) -> None:
        self._tls.write(data)  # memory BIO: always takes all of it
        self._flush()

    def close_notify(self) -> None:
        """Send close_notify and a FIN: our direction is done; theirs is not."""
        if self._notified:
            return
        self._notified = True
        try:
            self._tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # sent; the peer's close_notify will come through recv()
        except ssl.SSLError:
            pass
        try:
            self._flush()
            self.sock.shutdown(_stdlib_socket.SHUT_WR)
        except OSError:
            pass

    def shutdown(self, how: int) -> None:
        if how in (_stdlib_socket.SHUT_WR, _stdlib_socket.SHUT_RDWR):
            self.close_notify()
        if how != _stdlib_socket.SHUT_WR:
            self.sock.shutdown(_stdlib_socket.SHUT_RD)

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def getsockname(self) -> Any:
        return self.sock.getsockname()

    def setsockopt(self, *args: Any) -> None:
        self.sock.setsockopt(*args)

    def fileno(self) -> int:
        return int(self.sock.fileno())

    def close(self) -> None:
        self.sock.close()


def accept_tls(client: socket, context: ssl.SSLContext, timeout: float) -> TLSConnection:
    """Run the server side of the handshake within *timeout* seconds.

    Raises TLSHandshakeError on failure or timeout; there is no channel to
    answer on.
    """
    timer = gevent.Timeout(timeout, TLSHandshakeError(f"TLS handshake not completed within {timeout:g} s"))
    timer.start()
    try:
        tls = TLSConnection(client, context)
        tls.do_handshake()
        return tls
    except OSError as exc:  # ssl.SSLError is an OSError
        raise TLSHandshakeError(f"TLS handshake failed: {exc}") from exc
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
        client: TLSConnection,
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
                if not running:
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

    def _pump(self, src: Any, dst: Any, name: str) -> None:
        try:
            self._pump_until_eof(src, dst, name)
        except Exception:
            # Not a peer's doing (an ssl object in an unexpected state): end the
            # tunnel as if reset rather than leave the other side waiting.
            log.exception("TLS relay bug (%s side)", name)
            self._reset_side = self._reset_side or name

    def _pump_until_eof(self, src: Any, dst: Any, name: str) -> None:
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
        try:
            # Toward the client a close_notify and a FIN; toward the upstream a FIN.
            dst.shutdown(_stdlib_socket.SHUT_WR)
        except OSError:
            pass
