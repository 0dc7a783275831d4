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

from gconnect.errors import MalformedRequestError

from .fields import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, end_to_end, values
from .request import ForwardRequest
from .response import ResponseHead

_DIGITS = re.compile(rb"[0-9]{1,10}")
#: Dropped besides the hop-by-hop fields: re-made here.
_REMADE = frozenset({b"host", b"max-forwards"})


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
    found = values(request.headers, b"max-forwards")
    if not found:
        return None
    if len(found) > 1 or not _DIGITS.fullmatch(found[0]):
        raise MalformedRequestError("invalid Max-Forwards")
    return int(found[0])


def _forwarded_for(client: str) -> bytes:
    # RFC 7239 §6: an IPv6 address is bracketed, and then quoted.
    return (f'for="[{client}]"' if ":" in client else f"for={client}").encode("ascii")


def request_head(request: ForwardRequest, out: Outgoing, keep_alive: bool) -> bytes:
    """The head to send for *request*: origin-form to an origin, absolute-form to a parent."""
    target = request.path
    if out.absolute:
        target = b"http://" + request.authority.encode("ascii") + (b"" if target == b"*" else target)
    lines = [request.method + b" " + target + b" HTTP/1.1", b"Host: " + request.authority.encode("ascii")]
    drop = request.options | _REMADE
    lines += [name + b": " + value for name, value in end_to_end(request.headers, drop)]
    hops = max_forwards(request)
    if hops is not None:
        lines.append(b"Max-Forwards: %d" % (hops - 1))
    lines.append(f"Via: {out.received or request.version} {out.via_name}".encode("ascii"))
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
    return b"\r\n".join(lines) + b"\r\n\r\n"


def response_head(response: ResponseHead, via_name: str, client_version: str, keep_alive: bool) -> bytes:
    """The head to send the client for *response* (an interim 1xx included).
    A chunked body goes on chunked to an HTTP/1.1 client and until the close
    to an HTTP/1.0 one; a body that ends with the connection ends the client's."""
    lines = [b"HTTP/1.1 %d " % response.status + response.reason]
    lines += [name + b": " + value for name, value in end_to_end(response.headers, response.options)]
    lines.append(f"Via: {response.version} {via_name}".encode("ascii"))
    framing = response.framing
    status = response.status
    if framing.kind == NO_BODY and status >= 200 and status != 204:
        # A HEAD (or 304) response's Content-Length is the size of what GET would send.
        lines += [b"Content-Length: " + value for value in values(response.headers, b"content-length")[:1]]
    elif framing.kind == CHUNKED and client_version == "1.1":
        lines.append(b"Transfer-Encoding: chunked")
    elif framing.kind == LENGTH:
        lines.append(b"Content-Length: %d" % framing.length)
    if status >= 200 and (not keep_alive or framing.kind == UNTIL_CLOSE):
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


def own_response(status: int, reason: str, body: bytes, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """A response of the proxy's own (a PAC file, an OPTIONS answered here), kept alive."""
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers)
    head = f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: {len(body)}\r\n\r\n"
    return head.encode("latin-1") + body
