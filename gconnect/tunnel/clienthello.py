"""The server name in a TLS ClientHello, read from the bytes a client sends.

Sans I/O: :class:`ClientHelloReader` is fed the bytes as they arrive, in any
split (one byte at a time, a record over several TCP segments, the message
over several records), and answers ``None`` (need more) or a
:class:`ClientHello`; anything that is not one acceptable ClientHello raises
:class:`ClientHelloError`, whose ``outcome`` names why (``not_tls``,
``malformed``, ``oversize``). It never raises anything else, whatever the bytes.

The grammar (every length is read against the bytes its parent declares, so
no read crosses into a neighbour, and each bound below is checked):

* records, RFC 8446 §5.1: ``ContentType type (22: handshake); ProtocolVersion
  legacy_record_version (major 3); uint16 length (1 .. 2^14)``; the handshake
  message may span records (§5.1: "Handshake messages MAY be coalesced into a
  single TLSPlaintext record or fragmented across several records");
* the message, §4: ``HandshakeType msg_type (1: client_hello); uint24 length``;
* its body, §4.1.2 (TLS 1.2's ClientHello, RFC 5246 §7.4.1.2, is the same
  layout, and may end after the compression methods)::

    uint16 legacy_version; opaque random[32]; opaque legacy_session_id<0..32>;
    CipherSuite cipher_suites<2..2^16-2>; opaque legacy_compression_methods<1..2^8-1>;
    Extension extensions<0..2^16-1>;   (Extension: uint16 type; opaque data<0..2^16-1>)

* ``server_name`` (0), RFC 6066 §3: ``ServerName server_name_list<1..2^16-1>``,
  each ``NameType name_type (0: host_name); opaque HostName<1..2^16-1>``.
  Exactly one ``host_name`` entry is accepted, as OpenSSL does (other name
  types were never defined); two extensions of one type are refused (RFC 8446
  §4.2 "MUST NOT"): a reader taking the first and a server the last would
  disagree on the name.
* ``encrypted_client_hello`` (0xfe0d, RFC 9849 §5): only its presence is
  noted; the ``server_name`` beside it is the outer (public) name, and that is
  the name returned.

The name is returned in the name rules' canonical form
(:func:`~gconnect.tunnel.names.canonical_name`). RFC 6066 forbids IP literals
in ``HostName``; a client that sends one anyway gets its canonical address text
back, so it can still equal an IP-literal target.
"""

from __future__ import annotations

from typing import NamedTuple

from .names import canonical_address, canonical_name

#: Bytes taken for one ClientHello, record headers included; past it the
#: outcome is ``oversize``. nginx's stream ``preread_buffer_size`` and HAProxy's
#: ``tune.bufsize`` (which bound ``ssl_preread_server_name`` and ``req.ssl_sni``)
#: are 16 KiB; a browser's ClientHello with a post-quantum key share is ~1.8 KiB.
MAX_CLIENT_HELLO_BYTES = 16 * 1024

#: RFC 8446 §5.1: ``TLSPlaintext.length`` "MUST NOT exceed 2^14 bytes".
MAX_RECORD_BYTES = 2**14
RECORD_HEADER_BYTES = 5
HANDSHAKE_HEADER_BYTES = 4
CONTENT_HANDSHAKE = 0x16
CLIENT_HELLO = 1
EXT_SERVER_NAME = 0x0000
EXT_ENCRYPTED_CLIENT_HELLO = 0xFE0D
NAME_TYPE_HOST_NAME = 0


class ClientHelloError(Exception):
    """The bytes are not one acceptable ClientHello; ``outcome`` is ``not_tls``,
    ``malformed`` or ``oversize``, the message says what was wrong."""

    def __init__(self, outcome: str, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


class ClientHello(NamedTuple):
    """What the reader found: the canonical server name (None: the client sent
    none), whether an Encrypted ClientHello extension came with it (the name is
    then the outer one), and how many bytes, from the first, the records
    holding the ClientHello took."""

    server_name: str | None
    ech: bool
    consumed: int


def _malformed(message: str) -> ClientHelloError:
    return ClientHelloError("malformed", message)


class _Cursor:
    """Reads a bounded region of *data*: every read is checked against ``end``."""

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self.data = data
        self.pos = pos
        self.end = end

    def at_end(self) -> bool:
        return self.pos == self.end

    def take(self, n: int, what: str) -> int:
        """Advance by *n* bytes; the old position."""
        start = self.pos
        if self.end - start < n:
            raise _malformed(f"{what}: {n} bytes declared, {self.end - start} left")
        self.pos = start + n
        return start

    def uint(self, n: int, what: str) -> int:
        start = self.take(n, what)
        data = self.data
        if n == 1:
            return data[start]
        if n == 2:
            return data[start] << 8 | data[start + 1]
        return int.from_bytes(data[start : start + n], "big")

    def vector(self, length_bytes: int, low: int, high: int, what: str) -> _Cursor:
        """The vector here (its length in *length_bytes*, within *low* .. *high*)
        as a cursor of its own; this one moves past it."""
        n = self.uint(length_bytes, what)
        if not low <= n <= high:
            raise _malformed(f"{what}: length {n} outside {low}..{high}")
        start = self.take(n, what)
        return _Cursor(self.data, start, start + n)

    def expect_end(self, what: str) -> None:
        if self.pos != self.end:
            raise _malformed(f"{what}: {self.end - self.pos} bytes after its declared content")


class ClientHelloReader:
    """Feed the client's first bytes; see the module's docstring."""

    __slots__ = ("_done", "_handshake", "_max_bytes", "_pos", "buffer")

    def __init__(self, max_bytes: int = MAX_CLIENT_HELLO_BYTES) -> None:
        self._max_bytes = max_bytes
        #: Every byte fed so far, for the caller to pass on unchanged.
        self.buffer = bytearray()
        # The start of the first record not yet taken, and the handshake bytes they held.
        self._pos = 0
        self._handshake = bytearray()
        self._done = False

    def feed(self, data: bytes) -> ClientHello | None:
        """Take *data*; the ClientHello once complete, else None. Raises
        ClientHelloError; after a result or an error, feeding is an error."""
        if self._done:
            raise ClientHelloError("malformed", "the reader has already answered")
        self.buffer += data
        try:
            result = self._records()
        except ClientHelloError:
            self._done = True
            raise
        self._done = result is not None
        return result

    def _records(self) -> ClientHello | None:
        buffer = self.buffer
        if buffer and buffer[0] != CONTENT_HANDSHAKE:
            raise ClientHelloError("not_tls", f"first byte {buffer[0]:#04x} is not a TLS handshake record")
        if len(buffer) > 1 and buffer[1] != 3:
            raise ClientHelloError("not_tls", f"record version major {buffer[1]} is not 3")
        while len(buffer) - self._pos >= RECORD_HEADER_BYTES:
            pos = self._pos
            if buffer[pos] != CONTENT_HANDSHAKE:
                raise _malformed(f"record type {buffer[pos]} inside the ClientHello")
            if buffer[pos + 1] != 3:
                raise _malformed(f"record version major {buffer[pos + 1]}")
            length = int.from_bytes(buffer[pos + 3 : pos + 5], "big")
            if not 0 < length <= MAX_RECORD_BYTES:
                # §5.1: no zero-length handshake fragments, none over 2^14.
                raise _malformed(f"handshake record of {length} bytes")
            end = pos + RECORD_HEADER_BYTES + length
            if end > self._max_bytes:
                raise ClientHelloError("oversize", f"ClientHello records past {self._max_bytes} bytes")
            if len(buffer) < end:
                return None
            self._handshake += buffer[pos + RECORD_HEADER_BYTES : end]
            self._pos = end
            result = self._message()
            if result is not None:
                return result
        if len(buffer) > self._max_bytes and self._pos < len(buffer):
            raise ClientHelloError("oversize", f"ClientHello records past {self._max_bytes} bytes")
        return None

    def _message(self) -> ClientHello | None:
        handshake = self._handshake
        if handshake[0] != CLIENT_HELLO:
            raise ClientHelloError("not_tls", f"first handshake message is type {handshake[0]}, not ClientHello")
        if len(handshake) < HANDSHAKE_HEADER_BYTES:
            return None
        length = int.from_bytes(handshake[1:4], "big")
        if HANDSHAKE_HEADER_BYTES + length > self._max_bytes:
            raise ClientHelloError("oversize", f"ClientHello of {length} bytes, past {self._max_bytes}")
        if len(handshake) < HANDSHAKE_HEADER_BYTES + length:
            return None
        # Bytes after it in the last record are the next message's: not ours to judge.
        name, ech = parse_body(bytes(handshake), HANDSHAKE_HEADER_BYTES, HANDSHAKE_HEADER_BYTES + length)
        return ClientHello(name, ech, self._pos)


def parse_body(data: bytes, start: int, end: int) -> tuple[str | None, bool]:
    """The canonical server name (or None) and whether ECH is offered, from the
    ClientHello body ``data[start:end]``. Raises ClientHelloError."""
    body = _Cursor(data, start, end)
    version = body.uint(2, "legacy_version")
    if version >> 8 != 3:
        raise _malformed(f"legacy_version {version:#06x}")
    body.take(32, "random")
    body.vector(1, 0, 32, "legacy_session_id")
    suites = body.vector(2, 2, 2**16 - 2, "cipher_suites")
    if (suites.end - suites.pos) % 2:
        raise _malformed("cipher_suites: odd length")
    body.vector(1, 1, 2**8 - 1, "legacy_compression_methods")
    if body.at_end():
        return None, False  # RFC 5246 §7.4.1.2: a ClientHello may carry no extensions
    extensions = body.vector(2, 0, 2**16 - 1, "extensions")
    body.expect_end("ClientHello")
    # The hot loop (a browser sends ~18 extensions): plain indexing, the same bounds.
    seen: set[int] = set()
    name = None
    pos, end = extensions.pos, extensions.end
    while pos < end:
        if end - pos < 4:
            raise _malformed(f"extension header: {end - pos} bytes left")
        kind = data[pos] << 8 | data[pos + 1]
        stop = pos + 4 + (data[pos + 2] << 8 | data[pos + 3])
        if stop > end:
            raise _malformed(f"extension {kind:#06x}: {stop - pos - 4} bytes declared, {end - pos - 4} left")
        if kind in seen:
            raise _malformed(f"extension {kind:#06x} given twice")
        seen.add(kind)
        if kind == EXT_SERVER_NAME:
            name = _server_name(_Cursor(data, pos + 4, stop))
        pos = stop
    return name, EXT_ENCRYPTED_CLIENT_HELLO in seen


def _server_name(ext: _Cursor) -> str:
    names = ext.vector(2, 1, 2**16 - 1, "server_name_list")
    ext.expect_end("server_name")
    kind = names.uint(1, "name_type")
    if kind != NAME_TYPE_HOST_NAME:
        raise _malformed(f"server_name: name_type {kind}")
    host = names.vector(2, 1, 2**16 - 1, "HostName")
    names.expect_end("server_name_list (one host_name only)")
    raw = host.data[host.pos : host.end]
    if not raw.isascii():
        raise _malformed("HostName is not ASCII (RFC 6066 §3: A-labels only)")
    text = raw.decode("ascii")
    try:
        return canonical_address(text) or canonical_name(text)
    except ValueError as exc:  # HostNameError, or inet_pton's on a NUL
        raise _malformed(f"HostName: {exc}") from None
