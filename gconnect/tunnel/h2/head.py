"""Sans-I/O: an HTTP/2 CONNECT request's header block -> ConnectRequest or ClientError.

The h2 package decodes HPACK and frames; its own header validation is turned
off because it treats a malformed request as a *connection* error (GOAWAY for
every stream), where RFC 9113 §8.1.1 makes it the one stream's: we answer it
400 on that stream and the others go on. So the checks it would make are here,
with the CONNECT rules of RFC 9113 §8.5, and the target goes through the same
grammar as an HTTP/1.1 request-target (:func:`~gconnect.tunnel.head.parse_authority`).
"""

from __future__ import annotations

from ...errors import HeadTooLargeError, MalformedRequestError, MethodNotAllowedError
from ..head import ConnectRequest, check_host_header, parse_authority, show

#: RFC 9113 §8.2.2: connection-specific fields are malformed in HTTP/2
#: ("te" is allowed only as "te: trailers").
CONNECTION_FIELDS = frozenset((b"connection", b"proxy-connection", b"keep-alive", b"transfer-encoding", b"upgrade"))
#: RFC 9113 §8.3.1 (and RFC 8441's :protocol): the request pseudo-headers.
REQUEST_PSEUDO = frozenset((b":method", b":scheme", b":authority", b":path", b":protocol"))
#: RFC 7541 §4.1: a field's size is its name, its value and 32 octets of overhead;
#: SETTINGS_MAX_HEADER_LIST_SIZE counts the same way.
FIELD_OVERHEAD_BYTES = 32
_BAD_NAME_BYTES = b"\0\r\n :"


def parse_h2_connect(headers: list[tuple[bytes, bytes]], *, max_header_bytes: int) -> ConnectRequest:
    """The CONNECT request a stream's header block carries.

    Raises MalformedRequestError (400) for a block RFC 9113 calls malformed, a
    CONNECT with ``:scheme`` or ``:path`` (§8.5: only ``:authority``, unless it
    is RFC 8441's extended CONNECT, which we do not offer) or a bad target;
    MethodNotAllowedError (405) for any other method; HeadTooLargeError (431)
    past *max_header_bytes* counted as SETTINGS_MAX_HEADER_LIST_SIZE counts.
    """
    pseudo, fields = split_block(headers, max_header_bytes)
    method = pseudo.get(b":method")
    if method is None:
        raise MalformedRequestError("no :method")
    if method != b"CONNECT":
        raise MethodNotAllowedError(f"method {show(method)} not allowed: this proxy only tunnels (CONNECT)")
    if b":scheme" in pseudo or b":path" in pseudo or b":protocol" in pseudo:
        raise MalformedRequestError("CONNECT carries :authority only (RFC 9113 §8.5)")
    authority = pseudo.get(b":authority")
    if not authority:
        raise MalformedRequestError("CONNECT without :authority (RFC 9113 §8.5)")
    host, port, family = parse_authority(authority)
    for name, value in fields:
        if name == b"host":
            check_host_header(value, authority, host, port)
    return ConnectRequest(host, port, family, "2", fields)


def split_block(
    headers: list[tuple[bytes, bytes]], max_header_bytes: int
) -> tuple[dict[bytes, bytes], list[tuple[bytes, bytes]]]:
    """A request header block's pseudo-headers and fields, checked as RFC 9113
    §8.2 and §8.3 ask of any request (MalformedRequestError, HeadTooLargeError)."""
    size = 0
    pseudo: dict[bytes, bytes] = {}
    fields: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        size += len(name) + len(value) + FIELD_OVERHEAD_BYTES
        if size > max_header_bytes:
            raise HeadTooLargeError(f"header block larger than {max_header_bytes} bytes")
        # §8.2.1: no upper case in names; no NUL, CR or LF in values; no edge whitespace.
        body = name[1:] if name[:1] == b":" else name
        if not body or name != name.lower() or any(c in _BAD_NAME_BYTES for c in body):
            raise MalformedRequestError(f"invalid field name {show(name)}")
        if any(c in value for c in b"\0\r\n") or value[:1] in (b" ", b"\t") or value[-1:] in (b" ", b"\t"):
            raise MalformedRequestError(f"invalid value in field {show(name)}")
        if name[:1] == b":":
            # §8.3: pseudo-headers come first, once each, and only those defined.
            if fields or name not in REQUEST_PSEUDO or name in pseudo:
                raise MalformedRequestError(f"misplaced, repeated or unknown pseudo-header {show(name)}")
            pseudo[name] = value
            continue
        if name in CONNECTION_FIELDS or (name == b"te" and value != b"trailers"):
            raise MalformedRequestError(f"connection-specific field {show(name)} (RFC 9113 §8.2.2)")
        fields.append((name, value))
    return pseudo, fields
