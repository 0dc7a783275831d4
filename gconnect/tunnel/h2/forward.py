"""One HTTP/2 stream carrying a plain ``http://`` request (``:scheme http``):
what Chromium sends through an HTTPS proxy for an ``http://`` URL.

The request is forwarded by the same :class:`~gconnect.tunnel.forward.exchange.Exchange`
as an HTTP/1.1 client's (the same steps, policy, reuse and strictness
toward the origin); :class:`H2ForwardStream` is its
:class:`~gconnect.tunnel.forward.context.ClientStream`: it hands the
exchange the stream's DATA as an HTTP/1.1 body (chunked unless the client gave
a ``content-length``) and turns the HTTP/1.1 response the exchange writes back
into HEADERS and DATA, kept to the stream's send window. Its own bytes are
parsed with the forwarding grammar, so what reaches the client is exactly what
the exchange decided.

Ownership: the stream belongs to its session; its greenlet runs the exchange
and lets the stream go (:meth:`StreamConnection.forget`) at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from gevent import get_hub
from greenlet import greenlet as RawGreenlet
from h2.errors import ErrorCodes

from ...errors import GConnectError, MalformedRequestError, MalformedStreamError, TraceRefusedError
from .. import steps
from ..forward.body import BodyReader
from ..forward.context import ForwardContext, RequestRecord
from ..forward.fields import CHUNKED, LENGTH, NO_BODY, UNTIL_CLOSE, Framing, FramingError, request_framing
from ..forward.request import ForwardRequest, parse_absolute
from ..forward.response import ResponseParser
from ..forward.session import ForwardSession
from ..head import proxy_status
from ..waiting import wait
from .head import split_block

if TYPE_CHECKING:
    from .relay import StreamConnection

log = logging.getLogger(__name__)

#: Fields HTTP/2 does not carry (RFC 9113 §8.2.2), dropped from the response.
_H1_ONLY = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"})


def is_forwarded(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether a stream's header block is a plain ``http://`` request (not a CONNECT)."""
    pseudo = dict(headers[:4])
    return pseudo.get(b":scheme") == b"http" and pseudo.get(b":method") not in (None, b"CONNECT")


def parse_h2_forward(headers: list[tuple[bytes, bytes]], ended: bool, max_header_bytes: int) -> ForwardRequest:
    """The forwarded request a stream's header block carries (*ended*: the
    stream ended without DATA, so there is no body)."""
    pseudo, fields = split_block(headers, max_header_bytes)
    method, authority, path = pseudo.get(b":method"), pseudo.get(b":authority"), pseudo.get(b":path")
    if not method or not authority or not path or b":protocol" in pseudo:
        raise MalformedRequestError("a request needs :method, :authority and :path (RFC 9113 §8.3.1)")
    if method == b"TRACE":
        raise TraceRefusedError("TRACE is not forwarded")
    host, port, family, _ = parse_absolute(b"http://" + authority)
    if not path.startswith(b"/") and not (method == b"OPTIONS" and path == b"*"):
        raise MalformedRequestError("an http :path starts with / (RFC 9113 §8.3.1)")
    try:
        framing = request_framing(fields)
    except FramingError as exc:
        raise MalformedRequestError(str(exc)) from None
    if framing.kind == NO_BODY and not ended:
        framing = Framing(CHUNKED)  # DATA frames to come: sent on chunked
    elif ended and framing.kind == LENGTH and framing.length:
        raise MalformedStreamError(f"content-length {framing.length}, and the stream ended without DATA")
    headers_out = [(b"host", authority), *[(n, v) for n, v in fields if n not in (b"host", b"content-length")]]
    if framing.kind == LENGTH:
        headers_out.append((b"content-length", b"%d" % framing.length))
    elif framing.kind == CHUNKED:
        headers_out.append((b"transfer-encoding", b"chunked"))
    return ForwardRequest(method, "http", host, port, family, path, "1.1", headers_out, framing)


class H2ForwardStream:
    """One ``:scheme http`` stream: the session's stream, and the exchange's client."""

    protocol = "h2"
    #: For the session: no relay; a reset or the connection's end cancels the greenlet.
    relay = None

    def __init__(self, session: StreamConnection, stream_id: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.session = session
        self.stream_id = stream_id
        self.headers = headers
        self.tunnel = self  # the session cancels a stream's "tunnel"
        self.loop = session.loop
        #: DATA not yet taken by the exchange, with its flow-controlled lengths.
        self.inbox: list[tuple[bytes, int]] = []
        self.ended = False  # the client's END_STREAM
        self._last_chunk_sent = False
        self.chunked = False
        self.wake = self.loop.async_()
        self.greenlet: Any = None
        self.status = 0
        self.end_reason = "error"
        self._parser: ResponseParser | None = None
        self._body: BodyReader | None = None
        self._response_ended = False
        self._head_request = False
        #: The request's content-length (None: none), and the DATA bytes taken so far.
        self.declared: int | None = None
        for name, value in headers:
            if name == b"content-length":
                self.declared = int(value)  # h2 has checked it is digits, and the same if repeated
        self.received = 0
        #: Set once the stream is found malformed (RFC 9113 §8.1.1); it is reset PROTOCOL_ERROR.
        self.malformed_error: MalformedStreamError | None = None

    # --- the session's calls -------------------------------------------------------------

    def start(self) -> None:
        self.greenlet = RawGreenlet(self.run, get_hub())
        self.loop.run_callback(self.greenlet.switch)

    def deliver(self, parts: Sequence[bytes | memoryview], flow_length: int) -> None:
        if self.malformed_error is not None:
            self.session.ack(self.stream_id, flow_length)
            return
        data = b"".join(parts)
        self.received += len(data)
        self.inbox.append((data, flow_length))
        self.wake.send()

    def client_ended(self) -> None:
        if self.declared is not None and self.received != self.declared:
            # h2 counts DATA frames only: trailers can end the stream short.
            self.malformed(f"content-length {self.declared}, DATA {self.received} bytes")
            return
        self.ended = True
        self.wake.send()

    def malformed(self, why: str) -> None:
        """The request's DATA disagrees with its content-length: nothing more
        of it goes to the origin, and the exchange stops at its next wait."""
        if self.malformed_error is not None:
            return
        error = self.malformed_error = MalformedStreamError(f"stream {self.stream_id}: {why}")
        for _, flow_length in self.inbox:
            self.session.ack(self.stream_id, flow_length)
        self.inbox.clear()
        self.cancel(error)

    def resume(self) -> None:
        self.wake.send()

    def cancel(self, exc: GConnectError) -> None:
        """The client reset the stream, or the connection ended: stop at the next wait."""

        def throw() -> None:
            if self.greenlet is not None and not self.greenlet.dead:
                self.greenlet.throw(exc)

        self.loop.run_callback(throw)

    # --- the stream's greenlet -------------------------------------------------------------

    def run(self) -> None:
        session = self.session
        services = session.current()  # the policy in force now, as for a CONNECT stream
        address = session.address
        lifetime = services.config.max_tunnel_lifetime
        ends_at = self.loop.now() + lifetime if lifetime else float("inf")
        who: str | None = None  # once admitted: the client's limits key, released at the end
        try:
            try:
                # Ended with no DATA: no body (DATA and END_STREAM may both have come already).
                no_body = self.ended and not self.inbox
                request = parse_h2_forward(self.headers, no_body, services.config.max_header_bytes)
                if self.malformed_error is not None:
                    raise self.malformed_error  # before the greenlet ran: nothing was sent
                # Each stream is a client for the limits, as a CONNECT stream is.
                who = steps.admit(services, address)
            except GConnectError as exc:
                self._refused(exc)
                return
            self.chunked = request.framing.kind == CHUNKED
            self._head_request = request.method == b"HEAD"
            ctx = ForwardContext(services, address, who, tls=True, side=self, peer_cert=session.peer_certificate)
            ForwardSession(ctx, self, ends_at).serve_one(request)
            body = self._body
            if body is not None and body.framing.kind == UNTIL_CLOSE and not self._response_ended:
                self._end_response()  # a body that ended with the origin's connection
            elif not self._response_ended:
                self.end_reason = "upstream_reset"
        except BaseException as exc:  # a reset, the connection's end, shutdown
            self.end_reason = getattr(exc, "code", "shutdown")
        finally:
            if who is not None:
                services.limits.release(who)
            self.wake.close()
            # An answered stream the client still sends on is reset NO_ERROR (RFC 9113 §8.1).
            status = self.status or 499
            reason = "complete" if self._response_ended else self.end_reason
            self.session.forget(self.stream_id, status, reason, self._malformed_code())

    def _malformed_code(self) -> int | None:
        """PROTOCOL_ERROR for a malformed request, or for a response cut short
        of the content-length its HEADERS gave (RFC 9113 §8.1.1); else None."""
        body = self._body
        cut_short = body is not None and body.framing.kind == LENGTH and not self._response_ended
        return ErrorCodes.PROTOCOL_ERROR if self.malformed_error is not None or cut_short else None

    def _refused(self, exc: GConnectError) -> None:
        """A request refused before the exchange: answered and recorded here."""
        record = RequestRecord(self.session.address, dict(self.headers[:4]).get(b":method") or b"-")
        record.side = self
        record.status, record.end_reason = exc.status, exc.code
        self.end_reason = exc.code
        if isinstance(exc, MalformedStreamError):
            self.malformed_error = exc
        self.refuse(exc)
        self.session.services.observer.forwarded(record)

    # --- the ClientStream contract (for the exchange) ---------------------------------------

    def recv_nowait(self, size: int = 0) -> bytes:
        # One DATA frame's payload whatever *size*: taking it gives its window back,
        # so a limit that paces these calls paces the client.
        if self.malformed_error is not None:
            raise self.malformed_error
        if self.inbox:
            data, flow_length = self.inbox.pop(0)
            self.session.ack(self.stream_id, flow_length)
            if self.chunked:
                return b"%x\r\n%s\r\n" % (len(data), data) if data else b""
            return data
        if self.ended:
            if self.chunked and not self._last_chunk_sent:
                self._last_chunk_sent = True
                return b"0\r\n\r\n"
            return b""
        raise BlockingIOError

    def client_reader(self) -> Any:
        return self.wake

    def refuse(self, exc: GConnectError) -> None:
        if exc.answerable and not self.session.closed:
            headers = (*exc.headers, ("Proxy-Status", proxy_status(exc)))
            self.session.respond(self.stream_id, exc.status, headers, end_stream=True)
        self.status = exc.status

    def send(self, data: bytes, deadline: float) -> bool:
        """The exchange's HTTP/1.1 response bytes, as HEADERS and DATA."""
        while data:
            if self._body is None:
                if self._parser is None:
                    self._parser = ResponseParser(1 << 20, self._head_request)
                head = self._parser.feed(data)
                if head is None:
                    return True
                self._parser = None
                fields = tuple((name.lower(), value) for name, value in head.headers if name.lower() not in _H1_ONLY)
                no_body = head.framing.kind == NO_BODY and not head.interim
                if not self.session.respond(self.stream_id, head.status, fields, end_stream=no_body):
                    return False
                if not head.interim:
                    self.status = head.status
                    self._body = BodyReader(head.framing, rechunk=False)
                    self._response_ended = no_body
                data = head.trailing
                continue
            out, _ = self._body.feed(data)
            if out and not self._send_data(memoryview(out), deadline):
                return False
            if self._body.done and not self._response_ended:
                self._end_response()
            return True
        return True

    def _send_data(self, view: memoryview, deadline: float) -> bool:
        session = self.session
        while view:
            window = session.send_window(self.stream_id)
            if window <= 0 or session.congested():
                if not wait(self.wake, deadline - self.loop.now()):
                    return False
                continue
            session.send_data(self.stream_id, view[:window])
            view = view[window:]
        return True

    def _end_response(self) -> None:
        self._response_ended = True
        if not self.session.closed:
            self.session.end_stream(self.stream_id)
