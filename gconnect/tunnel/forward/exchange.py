"""One forwarded request and its response, on the client's connection.

The steps are a tunnel's (authenticate, check, resolve, dial), then: send the
head, stream the body up while watching for an early response (a 100
Continue, or a final answer that ends the upload), stream the response down.
Every wait is one greenlet switch bounded by the idle limit and the
connection's lifetime; a peer that does not read holds the greenlet, which
stops reading the other side: that is the back-pressure.

Before the first byte of a response reaches the client, failures raise their
GConnectError (the session answers it); after, they end the connection with
a ``reason`` on the record. The :class:`~.upstream.Upstream` belongs to the
exchange: it goes back to the idle set only when both messages ended cleanly.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from gevent import get_hub

from ...errors import (
    BadResponseError,
    BodyTimeoutError,
    ClientClosedError,
    MalformedRequestError,
    ParentProxyError,
    ResponseIncompleteError,
    ResponseTimeoutError,
)
from .. import steps
from ..shaping import Pacer
from ..waiting import wait, wait_any
from . import outbound
from .body import NO_BODY_READER, BodyError, BodyReader, whole_body
from .context import ClientStream, ForwardContext, RequestRecord
from .fields import NO_BODY, UNTIL_CLOSE
from .render import max_forwards, own_response, request_head, response_head
from .request import ForwardRequest
from .response import ResponseHead, ResponseParser
from .upstream import Upstream

log = logging.getLogger(__name__)

#: RFC 9110 §9.2.2: a request that may be sent twice.
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"PUT", b"DELETE"})
#: Largest response head taken from an origin (Squid's reply_header_max_size is
#: 64 KB; responses carry more and longer Set-Cookie fields than requests do).
MAX_RESPONSE_HEAD_BYTES = 64 * 1024
#: A wait with no idle limit (idle_timeout 0) still wakes up once a day.
FOREVER_SECONDS = 86_400.0


class _Retry(Exception):
    """A reused connection was found closed before any of the response: send again on a new one."""


class Exchange:
    """One request: :meth:`run` forwards it and relays the answer."""

    __slots__ = (
        "body",
        "client",
        "ctx",
        "ends_at",
        "leftover",
        "loop",
        "parser",
        "policy",
        "pool",
        "record",
        "request",
        "response_bytes",
        "reused",
        "user",
    )

    def __init__(
        self,
        ctx: ForwardContext,
        client: ClientStream,
        request: ForwardRequest,
        record: RequestRecord,
        ends_at: float,
        loop: Any = None,
    ) -> None:
        self.ctx = ctx
        self.client = client
        self.request = request
        self.record = record
        self.ends_at = ends_at
        self.loop = loop if loop is not None else get_hub().loop
        self.user: str | None = None
        self.policy: Any = None
        self.pool: Any = None
        #: Bytes the client sent after this request's body (pipelined requests).
        self.leftover = b""
        framing = request.framing
        self.body = BodyReader(framing) if framing.kind != NO_BODY else NO_BODY_READER
        self.parser = ResponseParser(MAX_RESPONSE_HEAD_BYTES, request.method == b"HEAD")
        self.reused = False
        self.response_bytes = 0

    # --- the steps -------------------------------------------------------------------

    def run(self) -> tuple[bool, bool]:
        """Forward the request and relay the response: ``(keep the client's
        connection, the response was sent)``. Raises GConnectError while
        nothing of a response has been sent.

        The steps are :mod:`~gconnect.tunnel.steps`, as for a tunnel:
        authenticate; check (the user's policy, ``--forward-port``, the name
        rules before DNS, the byte quota, the external ACL, the route);
        resolve (a parent resolves its own); then an idle connection for the
        same key, or one dialled."""
        ctx, request, record = self.ctx, self.request, self.record
        services = ctx.services
        steps.authenticate(services, request, record, ctx.who, ctx.peer_certificate)
        self.user = record.user
        self.policy, self.pool = steps.check(services, request, record, steps.FORWARD_PORTS)
        if request.method == b"OPTIONS" and max_forwards(request) == 0:
            # RFC 9110 §7.6.2: the last hop Max-Forwards allows answers itself.
            record.status, record.end_reason = 200, "max_forwards"
            sent = self.client.send(
                own_response(200, "OK", b"", (("Allow", "GET, HEAD, POST, OPTIONS"),)), self._deadline()
            )
            return sent and request.keep_alive, sent
        addresses = steps.resolve(services, request, record, self.policy, self.pool)
        fresh = False
        while True:
            upstream = self.connect(addresses, fresh)
            try:
                return self.forward(upstream)
            except _Retry:
                upstream.close()
                log.debug("reused connection to %s was closed; sending again on a new one", record.dialled)
                fresh = True
            except BaseException:
                upstream.close()
                raise

    def connect(self, addresses: list[str], fresh: bool) -> Upstream:
        """An idle connection for the same key, or a new one (directly or to a
        parent): :func:`~gconnect.tunnel.steps.dial`, as for a tunnel."""
        ctx, record, request = self.ctx, self.record, self.request
        pool = self.pool
        upstream = None if fresh or pool is not None else outbound.idle(ctx, self.user, addresses, request.port)
        if upstream is None:
            through = outbound.through_parent(ctx, self.user, fresh) if pool is not None else None
            connection, _ = steps.dial(ctx.services, request, record, addresses, pool, through)
            upstream = connection if pool is not None else outbound.direct(ctx, self.user, connection)
        else:
            # Nothing was dialled: connected when resolved (the steps' clock read just before).
            record.connected_at = record.resolved_at
            record.dialled = upstream.dialled
        self.reused = record.reused = upstream.idle_since > 0
        return upstream

    # --- the exchange of messages ----------------------------------------------------

    def forward(self, upstream: Upstream) -> tuple[bool, bool]:
        idle = self.ctx.services.idle_upstreams
        keep_upstream = idle.idle_timeout > 0 and idle.per_key > 0
        request = self.request
        head = request_head(request, outbound.outgoing(self.ctx, upstream), keep_upstream)
        if self.body.done:
            final = self._send_up(upstream, head)
            self.leftover = request.trailing
        else:
            out, self.leftover = self._feed_body(request.trailing)
            final = self._send_up(upstream, head + out)
            if final is None:
                final = self._pump_body(upstream)
        if final is None:
            final = self._await_final(upstream)
        return self._relay_response(upstream, final, keep_upstream)

    def _feed_body(self, data: bytes) -> tuple[bytes, bytes]:
        try:
            return self.body.feed(data)
        except BodyError as exc:
            raise MalformedRequestError(f"request body: {exc}") from None

    def _seconds_left(self) -> float:
        idle = self.ctx.services.config.idle_timeout or FOREVER_SECONDS
        return min(idle, self.ends_at - self.loop.now())

    def _deadline(self) -> float:
        return self.loop.now() + self._seconds_left()

    def _send_up(self, upstream: Upstream, data: bytes) -> ResponseHead | None:
        """Send *data* to the origin; if a final response arrives meanwhile,
        stop and return its head."""
        try:
            sent = upstream.sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise self._lost(exc) from None
        if sent != len(data):
            final = self._send_rest(upstream, memoryview(data)[sent:])
            if final is not None:
                return final
        self.record.bytes_up = self.body.received
        return None

    def _send_rest(self, upstream: Upstream, view: memoryview) -> ResponseHead | None:
        """What one send did not take, as the socket takes it, watching for an early final response."""
        while view:
            ready = wait_any([upstream.writer, upstream.reader], self._seconds_left())
            if ready < 0:
                raise ResponseTimeoutError(f"{self.record.dialled} did not read the request in time")
            if ready == 1:
                final = self._read_response(upstream)
                if final is not None:
                    return final
            try:
                view = view[upstream.sock.send(view) :]
            except BlockingIOError:
                pass
            except OSError as exc:
                raise self._lost(exc) from None
        return None

    def _pump_body(self, upstream: Upstream) -> ResponseHead | None:
        """The rest of the request body, client to origin, until it ends or a final response comes.
        Under a bandwidth limit each read is what the user's up buckets allow, waited for."""
        usage = self.ctx.services.usage
        pacer = None
        if usage is not None and not self.body.done:
            pacer = usage.pacer(self.user, self.record.identity, self.ctx.who, up=True)
            if pacer is not None:
                pacer.take(self.body.received)  # what came with the head was not held back, but counts
        try:
            return self._pump_body_paced(upstream, pacer)
        finally:
            if pacer is not None:
                pacer.close()

    def _pump_body_paced(self, upstream: Upstream, pacer: Pacer | None) -> ResponseHead | None:
        client = self.client
        while not self.body.done:
            try:
                data = client.recv_nowait() if pacer is None else client.recv_nowait(pacer.allowance())
            except BlockingIOError:
                ready = wait_any([client.client_reader(), upstream.reader], self._seconds_left())
                if ready < 0:
                    raise BodyTimeoutError("request body stalled past the idle limit") from None
                if ready == 1:
                    final = self._read_response(upstream)
                    if final is not None:
                        return final
                continue
            except OSError:
                data = b""
            if not data:
                raise ClientClosedError("client closed the connection during the request body")
            if pacer is not None:
                pacer.take(len(data))
            out, self.leftover = self._feed_body(data)
            if out:
                final = self._send_up(upstream, out)
                if final is not None:
                    return final
        return None

    def _await_final(self, upstream: Upstream) -> ResponseHead:
        while True:
            final = self._read_response(upstream)
            if final is not None:
                return final
            if not wait(upstream.reader, self._seconds_left()):
                raise ResponseTimeoutError(f"no response from {self.record.dialled} within the idle limit")

    def _read_response(self, upstream: Upstream) -> ResponseHead | None:
        """Feed what the origin sent to the head parser; relay 1xx; the final head once complete."""
        try:
            data = upstream.recv()
        except BlockingIOError:
            return None
        except OSError as exc:
            raise self._lost(exc) from None
        if not data:
            raise self._lost(None)
        self.response_bytes += len(data)
        head = self.parser.feed(data)
        while head is not None and head.status < 200:  # interim: another head follows
            if self.request.version == "1.1":
                interim = response_head(head, self.ctx.config.via_name, "1.1", True)
                if not self.client.send(interim, self._deadline()):
                    raise ClientClosedError("client gone while an interim response was relayed")
            self.parser = ResponseParser(MAX_RESPONSE_HEAD_BYTES, self.request.method == b"HEAD")
            head = self.parser.feed(head.trailing) if head.trailing else None
        return head

    def _lost(self, exc: OSError | None) -> Exception:
        """The origin closed or reset before its response head was complete."""
        request = self.request
        if self.reused and not self.response_bytes and request.method in IDEMPOTENT:
            if request.framing.kind == NO_BODY:
                return _Retry()
        why = f": {exc.strerror or exc}" if exc is not None else ""
        return ResponseIncompleteError(f"{self.record.dialled} closed the connection before a response{why}")

    def _relay_response(self, upstream: Upstream, final: ResponseHead, keep_upstream: bool) -> tuple[bool, bool]:
        request, record = self.request, self.record
        if final.status == 407 and upstream.member is not None:
            # The parent wants our credentials, not the client's: never ask the client for them.
            raise ParentProxyError(f"parent proxy {upstream.member.url} answered 407 (check its credentials)", 407)
        client_keep = request.keep_alive and self.body.done and final.framing.kind != UNTIL_CLOSE
        head = response_head(final, self.ctx.services.config.via_name, request.version, client_keep)
        whole = whole_body(final.framing, final.trailing)
        if whole is not None:
            body = None
            out, rest = whole
        else:
            body = BodyReader(final.framing, rechunk=request.version == "1.1")
            try:
                out, rest = body.feed(final.trailing)
            except BodyError as exc:
                raise BadResponseError(f"response body: {exc}") from None
        record.status = final.status
        reusable = False
        try:
            if not self.client.send(head + out if out else head, self._deadline()):
                record.end_reason = "client_timeout"
                return False, True
            if self.ctx.services.timings:
                record.first_byte_at = time.monotonic()
            record.bytes_down = len(head) + len(out)
            if body is not None and not body.done:
                reason = self._pump_response(upstream, body)
                if reason:
                    record.end_reason = reason
                    return False, True
            record.end_reason = "complete"
            # Only a connection whose two messages ended cleanly; whether it said
            # anything since is looked at when it is taken (IdleConnections.take).
            reusable = keep_upstream and final.keep_alive and self.body.done and not rest
            return client_keep, True
        finally:
            if reusable:
                self.ctx.services.idle_upstreams.put(upstream)
            else:
                upstream.close()

    def _pump_response(self, upstream: Upstream, body: BodyReader) -> str:
        """Origin to client until the body ends: "" when it did, else the reason it did not.
        Under a bandwidth limit each read is what the user's buckets allow, waited for."""
        usage = self.ctx.services.usage
        pacer = usage.pacer(self.user, self.record.identity, self.ctx.who) if usage is not None else None
        try:
            return self._pump_response_body(upstream, body, pacer)
        finally:
            if pacer is not None:
                pacer.close()

    def _pump_response_body(self, upstream: Upstream, body: BodyReader, pacer: Pacer | None) -> str:
        client, record = self.client, self.record
        while not body.done:
            try:
                data = upstream.recv() if pacer is None else upstream.recv(pacer.allowance())
            except BlockingIOError:
                if not wait(upstream.reader, self._seconds_left()):
                    return "idle_timeout"
                continue
            except OSError:
                return "upstream_reset"
            try:
                if not data:
                    body.eof()
                    break
                out, rest = body.feed(data)
            except BodyError as exc:
                log.info("response from %s cut off: %s", record.dialled, exc)
                return "upstream_reset" if not data else "bad_response"
            if rest:
                return "bad_response"  # bytes after the body of a response nobody asked for
            if pacer is not None:
                pacer.take(len(data))
            if out:
                if not client.send(out, self._deadline()):
                    return "client_timeout"
                record.bytes_down += len(out)
        return ""
