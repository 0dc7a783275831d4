"""TLS on the listening side (an "HTTPS proxy": curl ``--proxy https://``).

The client speaks TLS to the proxy; the CONNECT head and the tunnel's bytes
travel inside that TLS session. splice(2) cannot move bytes through TLS
records, so such tunnels relay with the two movers here, behind the same
:class:`~gconnect.tunnel.relay.Relay` as plain tunnels (same deadlines, end
reasons, reset passing and half-close):

* :class:`DecryptMover`, client -> upstream: ciphertext from the client socket
  into the session, every complete record decrypted, plaintext to the upstream;
* :class:`EncryptMover`, upstream -> client: plaintext in, records out; the
  upstream's EOF becomes a close_notify and then a FIN.

The session runs on memory BIOs (``SSLContext.wrap_bio``): we move the
ciphertext ourselves, so OpenSSL never reads the socket behind our back. That
is what lets half-close be carried both ways: the upstream's EOF becomes a
close_notify (then a FIN) while the client's direction keeps flowing, as TLS 1.3
allows (RFC 8446 §6.1). With ``SSLSocket`` the ssl module's shutdown calls
SSL_shutdown twice and the second call reads the socket, where a fast client's
next record is taken and lost (OpenSSL: APPLICATION_DATA_AFTER_CLOSE_NOTIFY,
seen in our tests); a FIN without close_notify is no better, as OpenSSL 3
clients take it for a truncation attack and stop writing too.

A mover decrypts everything that has arrived before it returns, so no
plaintext is ever left inside the session waiting for a socket event that
may not come.
"""

from __future__ import annotations

import _socket
import ssl
from collections.abc import Sequence
from typing import Any

from ..config import Config
from ..errors import TLSHandshakeError
from .movers import CopyMover, Half, Reset, flush_pending, send_some
from .waiting import recv, send_all, unsent

#: Ciphertext read from the socket at once during the handshake: a few full TLS
#: records (16 KiB each) and more than any ClientHello.
TLS_RECV_BYTES = 64 * 1024
#: Plaintext taken from the session per read call (one record holds at most 16 KiB).
_RECORD_BYTES = 16 * 1024
#: Octets put into a memory BIO at once: its buffer keeps the largest size it ever
#: held (and touched) until the connection closes, so a bulk transfer's 512 KiB write
#: would stay with an idle connection; a few records a slice keep the calls few.
BIO_SLICE_BYTES = 64 * 1024


def server_context(config: Config, alpn: Sequence[str] = ("http/1.1",)) -> ssl.SSLContext:
    """The listener's context: Python's defaults for a server (TLS 1.2 and up,
    the ssl module's cipher selection), with the configured certificate chain,
    offering the *alpn* protocols in that order, and client certificates asked
    for (verified against --tls-client-ca and its CRL) when configured. Raises
    OSError/ssl.SSLError if the files cannot be loaded."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_cert, config.tls_key)
    if config.tls_client_ca:
        # Only this bundle: a server context loads no system CAs, and must not,
        # or any publicly issued certificate would name a user.
        context.load_verify_locations(cafile=config.tls_client_ca)
        if config.tls_client_crl:
            context.load_verify_locations(cafile=config.tls_client_crl)
            # The leaf's issuer must have a CRL in the file: a missing one fails closed.
            context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        context.verify_mode = ssl.CERT_REQUIRED if config.tls_client_cert == "required" else ssl.CERT_OPTIONAL
    # Only what something here serves: HTTP/2 when its server is in the table
    # (many tunnels on one connection, RFC 9113 §8.5), HTTP/1.1 for the rest;
    # a client without ALPN gets HTTP/1.1.
    context.set_alpn_protocols(list(alpn))
    return context


class TLSSession:
    """The server side of one TLS session over a raw non-blocking socket."""

    __slots__ = ("eof", "incoming", "outgoing", "sock", "ssl")

    def __init__(self, sock: _socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        #: The client's EOF (close_notify, or a FIN) was read during the handshake phase.
        self.eof = False
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.ssl = context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    def handshake(self, reader: Any, writer: Any, deadline: float) -> None:
        """Complete the handshake by *deadline* (loop time), waiting on the
        socket's watchers. Raises TLSHandshakeError; there is no channel to
        answer on."""
        while True:
            try:
                self.ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                raise TLSHandshakeError(f"TLS handshake failed: {exc}") from exc
            try:
                if not self.flush(writer, deadline):
                    raise TLSHandshakeError("TLS handshake not completed in time (client not reading)")
                data = recv(self.sock, TLS_RECV_BYTES, reader, deadline)
            except OSError as exc:
                raise TLSHandshakeError(f"TLS handshake failed: {exc}") from exc
            if data is None:
                raise TLSHandshakeError("TLS handshake not completed within the header deadline")
            if data:
                self.incoming.write(data)
            else:
                self.incoming.write_eof()
        try:
            self.flush(writer, deadline)
        except OSError as exc:
            raise TLSHandshakeError(f"TLS handshake failed: {exc}") from exc

    def decrypt(self) -> tuple[bytes, bool]:
        """Every complete record's plaintext, and whether the client is done
        (close_notify, or EOF without it). Raises ssl.SSLError on a bad record."""
        chunks: list[bytes] = []
        eof = self._read_records(chunks)
        return b"".join(chunks), eof

    def _read_records(self, chunks: list[bytes]) -> bool:
        """Append every complete record's plaintext to *chunks*; whether the client is done."""
        try:
            while True:
                chunk = self.ssl.read(_RECORD_BYTES)
                if not chunk:  # close_notify (the ssl module returns b"")
                    return True
                chunks.append(chunk)
        except ssl.SSLWantReadError:
            return False
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return True

    def decrypt_from(self, ciphertext: memoryview) -> tuple[bytes, bool]:
        """As :meth:`decrypt`, first putting *ciphertext* into the session (EOF if
        it is empty) at most BIO_SLICE_BYTES at a time."""
        if not ciphertext:
            self.incoming.write_eof()
            return self.decrypt()
        if len(ciphertext) <= BIO_SLICE_BYTES:
            self.incoming.write(ciphertext)
            return self.decrypt()
        chunks: list[bytes] = []
        for at in range(0, len(ciphertext), BIO_SLICE_BYTES):
            self.incoming.write(ciphertext[at : at + BIO_SLICE_BYTES])
            if self._read_records(chunks):
                return b"".join(chunks), True
        return b"".join(chunks), False

    def recv(self, size: int = TLS_RECV_BYTES) -> bytes:
        """Plaintext that has arrived (b"" at EOF), reading the socket only when
        the session holds no complete record (records often arrive with the
        handshake's last flight); BlockingIOError when nothing is there yet.
        For the handshake phase."""
        plain, eof = self._decrypt_or_reset()
        if not (plain or eof):
            data = self.sock.recv(size)
            if data:
                self.incoming.write(data)
            else:
                self.incoming.write_eof()
            plain, eof = self._decrypt_or_reset()
        if eof:
            self.eof = True
        if plain or eof:
            return plain
        raise BlockingIOError

    def recv_into(self, scratch: memoryview, plain: memoryview) -> int:
        """As :meth:`recv`, allocating nothing: ciphertext is read into *scratch*,
        plaintext decrypted into *plain* (what does not fit waits in the session);
        returns its length, 0 at EOF. For a reader done with *plain* before its next call."""
        n, eof = self._decrypt_into(plain)
        if not (n or eof):
            got = self.sock.recv_into(scratch)
            if not got:
                self.incoming.write_eof()
                n, eof = self._decrypt_into(plain)
            for at in range(0, got, BIO_SLICE_BYTES):  # decrypted slice by slice, to keep the BIO small
                self.incoming.write(scratch[at : min(got, at + BIO_SLICE_BYTES)])
                more, eof = self._decrypt_into(plain[n:])
                n += more
        if eof:
            self.eof = True
        if n or eof:
            return n
        raise BlockingIOError

    def _decrypt_into(self, plain: memoryview) -> tuple[int, bool]:
        n = 0
        try:
            while n < len(plain):
                # With a buffer the ssl module returns a count (typeshed says bytes).
                got: int = self.ssl.read(len(plain) - n, plain[n:])  # type: ignore[assignment]
                if not got:  # close_notify
                    return n, True
                n += got
        except ssl.SSLWantReadError:
            pass
        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
            return n, True
        except ssl.SSLError as exc:
            raise ConnectionResetError(f"TLS: {exc}") from exc
        return n, False

    def _decrypt_or_reset(self) -> tuple[bytes, bool]:
        try:
            return self.decrypt()
        except ssl.SSLError as exc:
            raise ConnectionResetError(f"TLS: {exc}") from exc

    def encrypt(self, data: bytes | memoryview) -> bytes:
        """The records carrying *data*, with whatever else the session queued."""
        self.ssl.write(data)  # memory BIO: always takes all of it
        return self.outgoing.read()

    def encrypt_parts(self, data: bytes | memoryview) -> list[bytes]:
        """As :meth:`encrypt`, the records in parts (for one ``sendmsg``), put
        through the BIO at most BIO_SLICE_BYTES at a time."""
        if len(data) <= BIO_SLICE_BYTES:
            self.ssl.write(data)
            return [self.outgoing.read()]
        view = memoryview(data)
        parts = []
        for at in range(0, len(view), BIO_SLICE_BYTES):
            self.ssl.write(view[at : at + BIO_SLICE_BYTES])
            parts.append(self.outgoing.read())
        return parts

    def flush(self, writer: Any, deadline: float) -> bool:
        """Send what the session queued (handshake records, alerts) by *deadline*."""
        data = self.outgoing.read()
        return send_all(self.sock, data, writer, deadline) if data else True

    def close_notify(self) -> bytes:
        """Queue our close_notify; return the records to send."""
        try:
            self.ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # sent; the peer's close_notify, if any, comes through decrypt()
        except ssl.SSLError:
            pass
        return self.outgoing.read()


def send_parts(half: Half, parts: list[bytes]) -> None:
    """One write of *parts* (one ``sendmsg``) to ``half.dst``; what the socket
    does not take becomes ``half.pending``, joined (the socket is full: rare)."""
    size = sum(map(len, parts))
    try:
        sent = half.dst.sendmsg(parts) if len(parts) > 1 else half.dst.send(parts[0])
    except BlockingIOError:
        sent = 0
    except OSError as exc:
        raise Reset(half.peer) from exc
    if sent < size:
        half.pending = memoryview(unsent(parts, sent))
        half.blocked = True


class DecryptMover(CopyMover):
    """client (TLS) -> upstream: ciphertext in, plaintext out."""

    def pump(self, half: Half, size: int = 0) -> int:
        session: TLSSession = half.tls
        try:
            n = half.src.recv_into(self.scratch, self.read_size(size))
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise Reset(half.name) from exc
        try:
            plain, eof = session.decrypt_from(self.view[:n])
        except ssl.SSLError as exc:
            raise Reset(half.name) from exc  # a forged or corrupt record
        if plain:
            sent = send_some(half, plain)
            half.nbytes += sent
            if sent < len(plain):
                half.pending = memoryview(plain)[sent:]
                half.blocked = True
        if eof or not n:
            half.eof = True
        return n


class EncryptMover(CopyMover):
    """upstream -> client (TLS): plaintext in, records out, close_notify at EOF."""

    def pump(self, half: Half, size: int = 0) -> int:
        try:
            n = half.src.recv_into(self.scratch, self.read_size(size))
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise Reset(half.name) from exc
        if n == 0:
            half.eof = True
            return 0
        half.nbytes += n  # plaintext, as for a plain tunnel
        send_parts(half, half.tls.encrypt_parts(self.view[:n]))
        return n

    def flush(self, half: Half) -> int:
        return flush_pending(half)

    def finish(self, half: Half) -> bool:
        if not half.finishing:
            records = half.tls.close_notify()
            half.pending = memoryview(records) if records else None
        if half.pending is not None:
            flush_pending(half)
            if half.pending is not None:
                return False  # called again once the client socket has room
        return super().finish(half)
