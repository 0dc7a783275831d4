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

import struct
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
#: An extension's type and length (uint16 each), in one call per extension.
_EXTENSION_HEADER = struct.Struct(">HH").unpack_from


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
        name, ech = parse_body(handshake, HANDSHAKE_HEADER_BYTES, HANDSHAKE_HEADER_BYTES + length)
        return ClientHello(name, ech, self._pos)


def parse_body(data: bytes | bytearray, start: int, end: int) -> tuple[str | None, bool]:
    """The canonical server name (or None) and whether ECH is offered, from the
    ClientHello body ``data[start:end]``. Raises ClientHelloError.

    Plain index arithmetic, every read after a check against the bound its
    parent declared: this runs once per tunnel to a listed port, and a cursor
    object per vector cost as much as the rest of the parse."""
    if end - start < 35:
        raise _malformed(f"ClientHello body of {end - start} bytes, shorter than its fixed fields")
    if data[start] != 3:
        raise _malformed(f"legacy_version {data[start]:#04x}{data[start + 1]:02x}")
    pos = start + 34  # legacy_version, random[32]
    n = data[pos]
    if n > 32:
        raise _malformed(f"legacy_session_id: length {n} outside 0..32")
    pos += 1 + n
    if end - pos < 2:
        raise _malformed("cipher_suites: truncated")
    n = data[pos] << 8 | data[pos + 1]
    if n < 2 or n % 2:
        raise _malformed(f"cipher_suites: length {n} (2..2^16-2, even)")
    pos += 2 + n
    if end - pos < 1:
        raise _malformed("legacy_compression_methods: truncated")
    n = data[pos]
    if n < 1:
        raise _malformed("legacy_compression_methods: empty")
    pos += 1 + n
    if pos >= end:
        if pos > end:
            raise _malformed("legacy_compression_methods: longer than the ClientHello")
        return None, False  # RFC 5246 §7.4.1.2: a ClientHello may carry no extensions
    if end - pos < 2:
        raise _malformed("extensions: truncated")
    n = data[pos] << 8 | data[pos + 1]
    pos += 2
    if pos + n != end:
        raise _malformed(f"extensions: {n} bytes declared, {end - pos} in the ClientHello")
    seen: set[int] = set()
    name = None
    while pos < end:
        if end - pos < 4:
            raise _malformed(f"extension header: {end - pos} bytes left")
        kind, length = _EXTENSION_HEADER(data, pos)
        stop = pos + 4 + length
        if stop > end:
            raise _malformed(f"extension {kind:#06x}: {stop - pos - 4} bytes declared, {end - pos - 4} left")
        if kind in seen:
            raise _malformed(f"extension {kind:#06x} given twice")
        seen.add(kind)
        if kind == EXT_SERVER_NAME:
            name = _server_name(data, pos + 4, stop)
        pos = stop
    return name, EXT_ENCRYPTED_CLIENT_HELLO in seen


def _server_name(data: bytes | bytearray, pos: int, end: int) -> str:
    """The one host_name of the server_name extension ``data[pos:end]``, canonical."""
    # ServerName server_name_list<1..2^16-1>: its length is the extension's, less its
    # own 2 bytes; one entry, name_type host_name(0), HostName<1..2^16-1>.
    if end - pos < 5:
        raise _malformed(f"server_name of {end - pos} bytes")
    if (data[pos] << 8 | data[pos + 1]) != end - pos - 2:
        raise _malformed("server_name_list: its length is not the extension's")
    if data[pos + 2] != NAME_TYPE_HOST_NAME:
        raise _malformed(f"server_name: name_type {data[pos + 2]}")
    n = data[pos + 3] << 8 | data[pos + 4]
    if n < 1 or pos + 5 + n != end:
        raise _malformed("server_name_list: one host_name of its declared length, nothing else")
    raw = data[pos + 5 : end]
    if not raw.isascii():
        raise _malformed("HostName is not ASCII (RFC 6066 §3: A-labels only)")
    text = raw.decode("ascii")
    try:
        return canonical_address(text) or canonical_name(text)
    except ValueError as exc:  # HostNameError, or inet_pton's on a NUL
        raise _malformed(f"HostName: {exc}") from None
