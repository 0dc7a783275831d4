"""The heads gconnect sends on, sans I/O: the request to the origin (or a
parent) and the response to the client, as RFC 9110 §7.6 asks of a proxy.

Hop-by-hop fields go (:data:`~.fields.HOP_BY_HOP` and whatever Connection
names); Host is made from the URI (RFC 9112 §3.2.2); the framing fields are
made from the framing we parsed, never copied; ``Via`` names us by a
pseudonym with no version (§7.6.3); the client's address is added only when
asked, as ``Forwarded`` (RFC 7239). Everything else passes in order, as
received.
"""

from __future__ import annotations

import base64
import dataclasses
import re
from collections.abc import Sequence

from ...errors import MalformedRequestError
from .fields import CHUNKED, HOP_BY_HOP, LENGTH, NO_BODY, REQUEST_DROPS, UNTIL_CLOSE, FieldList, end_to_end, values
from .request import ForwardRequest
from .response import ResponseHead

_DIGITS = re.compile(rb"[0-9]{1,10}")
#: Via lines, by the version received and the name: a handful of values.
_via_lines: dict[tuple[str, str], bytes] = {}


@dataclasses.dataclass(frozen=True, slots=True)
class Outgoing:
    """What the request head says besides the client's fields: ``via_name``
    (the Via pseudonym), ``client`` (the address for ``Forwarded: for=``, ""
    for none), ``absolute`` (a parent gets the absolute form) and
    ``credentials`` (``user:pass`` for the parent, "" for none), ``received``
    (the version the request came in when not its own, "2" for HTTP/2)."""

    via_name: str = "gconnect"
    client: str = ""
    absolute: bool = False
    credentials: str = ""
    #: The protocol version the request came in, for Via, when not the request's own ("2": HTTP/2).
    received: str = ""


def max_forwards(request: ForwardRequest) -> int | None:
    """RFC 9110 §7.6.2: the Max-Forwards of an OPTIONS request (None: absent,
    or not OPTIONS); MalformedRequestError if it is not a number."""
    if request.method != b"OPTIONS":
        return None
    found = values(request.headers, b"max-forwards", request.lnames or None)
    if not found:
        return None
    if len(found) > 1 or not _DIGITS.fullmatch(found[0]):
        raise MalformedRequestError("invalid Max-Forwards")
    return int(found[0])


def _forwarded_for(client: str) -> bytes:
    # RFC 7239 §6: an IPv6 address is bracketed, and then quoted.
    return (f'for="[{client}]"' if ":" in client else f"for={client}").encode("ascii")


def _via(version: str, name: str) -> bytes:
    line = _via_lines[version, name] = f"Via: {version} {name}".encode("ascii")
    return line


def _sent_on(
    kept: FieldList | None,
    headers: FieldList,
    lnames: Sequence[bytes],
    drop: frozenset[bytes],
    options: frozenset[bytes],
) -> FieldList:
    """The fields to send on: those the parser *kept*, less what the
    Connection *options* name; sorted out here when the parser did not."""
    if kept is None:
        return end_to_end(headers, drop | options, lnames)
    if options and not options <= drop:
        # RFC 9110 §7.6.1: and every field Connection names (rare but for close and keep-alive).
        return [field for field in kept if field[0].lower() not in options]
    return kept


def request_head(request: ForwardRequest, out: Outgoing, keep_alive: bool) -> bytes:
    """The head to send for *request*: origin-form to an origin, absolute-form to a parent."""
    authority = request.host_field or request.authority.encode("ascii")
    target = request.path
    if out.absolute:
        target = b"http://" + authority + (b"" if target == b"*" else target)
    lines = [b"%s %s HTTP/1.1\r\nHost: %s" % (request.method, target, authority)]
    kept = _sent_on(request.kept, request.headers, request.lnames, REQUEST_DROPS, request.options)
    if kept:
        lines += map(b": ".join, kept)
    if request.method == b"OPTIONS":
        hops = max_forwards(request)
        if hops is not None:
            lines.append(b"Max-Forwards: %d" % (hops - 1))
    version = out.received or request.version
    lines.append(_via_lines.get((version, out.via_name)) or _via(version, out.via_name))
    if out.client:
        lines.append(b"Forwarded: " + _forwarded_for(out.client))
    framing = request.framing
    if framing.kind == CHUNKED:
        lines.append(b"Transfer-Encoding: chunked")
    elif framing.kind == LENGTH and framing.length:
        lines.append(b"Content-Length: %d" % framing.length)
    if out.credentials:
        lines.append(b"Proxy-Authorization: Basic " + base64.b64encode(out.credentials.encode("utf-8")))
    if not keep_alive:
        lines.append(b"Connection: close")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def response_head(response: ResponseHead, via_name: str, client_version: str, keep_alive: bool) -> bytes:
    """The head to send the client for *response* (an interim 1xx included).
    A chunked body goes on chunked to an HTTP/1.1 client and until the close
    to an HTTP/1.0 one; a body that ends with the connection ends the client's."""
    status = response.status
    lines = [b"HTTP/1.1 %d %s" % (status, response.reason)]
    kept = _sent_on(response.kept, response.headers, response.lnames, HOP_BY_HOP, response.options)
    if kept:
        lines += map(b": ".join, kept)
    lines.append(_via_lines.get((response.version, via_name)) or _via(response.version, via_name))
    kind = response.framing.kind
    if kind == LENGTH:
        lines.append(b"Content-Length: %d" % response.framing.length)
    elif kind == CHUNKED:
        if client_version == "1.1":
            lines.append(b"Transfer-Encoding: chunked")
    elif kind == NO_BODY and status >= 200 and status != 204:
        # A HEAD (or 304) response's Content-Length is the size of what GET would send.
        found = values(response.headers, b"content-length", response.lnames or None)
        lines += [b"Content-Length: " + value for value in found[:1]]
    if status >= 200 and (not keep_alive or kind == UNTIL_CLOSE):
        lines.append(b"Connection: close")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def own_response(status: int, reason: str, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A response of the proxy's own (a PAC file, an OPTIONS answered here), kept alive."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body
