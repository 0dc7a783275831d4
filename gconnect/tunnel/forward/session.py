"""The forwarded requests of one client connection, answered in order.

A client may keep its connection and send requests one after another, or
pipeline them (apt does): each is read only once the previous response is
complete, so responses leave in request order, and what a client sends ahead
simply waits in the socket. A CONNECT after forwarded requests ends the
session and hands its bytes back to the tunnel. Origin-form requests are for
the proxy itself: ``/proxy.pac`` when enabled, 404 otherwise.

Every request, refused or forwarded, leaves one :class:`~.context.RequestRecord`
for the access log and the metrics.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

from gevent import get_hub

from ...config import hostport
from ...errors import ClientClosedError, GConnectError, HeadTimeoutError, NotFoundError
from ..client import ClientConnection, ClientServed
from ..head import ConnectRequest, RequestParser
from ..limits import client_key
from ..waiting import READ, wait
from .context import ClientStream, ConnectionStream, ForwardContext, RequestRecord
from .exchange import Exchange
from .fields import values
from .pac import pac_file
from .render import own_response
from .request import ForwardRequest, ForwardRequestParser, is_connect

log = logging.getLogger(__name__)

#: How long a client's connection may sit idle between requests (Squid's
#: client_idle_pconn_timeout is 2 minutes; nginx keepalive_timeout 75 s).
CLIENT_IDLE_SECONDS = 120.0
_AUTHORITY = re.compile(rb"[A-Za-z0-9.\-]+(?::[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](?::[0-9]{1,5})?")


class ForwardSession:
    """Serves forwarded requests on *client* until it closes, errs, or sends a CONNECT."""

    def __init__(
        self, ctx: ForwardContext, client: ClientStream, ends_at: float, parser: ForwardRequestParser | None = None
    ) -> None:
        self.ctx = ctx
        self.client = client
        #: The connection's end of life (loop time) under --max-tunnel-lifetime.
        self.ends_at = ends_at
        self.loop = get_hub().loop
        self.requests = 0
        #: Shutdown has begun: answer the request under way, then close.
        self.draining = False
        #: True while waiting for the next request (nothing under way).
        self._idle = False
        #: The parser that read the last head, renewed for the next (ForwardRequestParser.renew).
        self._parser = parser
        #: The last request's (host, port) and its host:port text: a connection
        #: mostly asks one host, and the text is made once.
        self._target: tuple[str, int, str] = ("", 0, "")

    def drain(self) -> None:
        """Shutdown has begun (ClientSide.drain): finish the request under way,
        take no other, and end a wait between requests now."""
        self.draining = True
        if self._idle:
            # Wake the wait as if the socket were readable (with the callback
            # it waits with): it finds nothing to read, and sees the flag.
            reader = self.client.client_reader()
            reader.feed(READ, reader.callback, *reader.args)

    def serve(self, request: ForwardRequest) -> bytes | None:
        """Serve *request* and those after it; the bytes of a CONNECT that
        followed them (the tunnel takes over), or None when the connection is done."""
        while True:
            keep, leftover = self.serve_one(request)
            if not keep or self.draining:
                return None
            if self._parser is not None:
                self._parser = self._parser.renew(request)
            following = self.read_next(leftover)
            if not isinstance(following, ForwardRequest):
                return following
            request = following

    def serve_one(self, request: ForwardRequest) -> tuple[bool, bytes]:
        """One request, answered: whether the connection goes on, and the client's bytes after it."""
        ctx = self.ctx
        self.requests += 1
        record = RequestRecord(ctx.address, request.method)
        if ctx.side is not None:
            record.side = ctx.side
        scheme = request.scheme
        if scheme:
            record.scheme = scheme
            host, port, target = self._target
            if request.port != port or request.host != host:
                target = request.target
                self._target = (request.host, request.port, target)
            record.target = target
        else:
            record.scheme = "-"
        if ctx.services.config.log_path:
            record.path = request.path.decode("ascii", "backslashreplace")
        keep, leftover = False, b""
        try:
            if not scheme:
                keep, leftover = self.own_path(request, record), request.trailing
            else:
                exchange = Exchange(ctx, self.client, request, record, self.ends_at, self.loop)
                keep, _ = exchange.run()
                leftover = exchange.leftover
        except GConnectError as exc:
            record.status, record.end_reason = exc.status, exc.code
            self.client.refuse(exc)
        except OSError as exc:
            record.status = record.status or 499
            record.end_reason = "client_reset"
            log.debug("client %s: %s", ctx.address, exc)
        except Exception:
            log.exception("bug while forwarding for %s (target %s)", ctx.address, record.target)
            if not record.status:
                record.status, record.end_reason = 500, "error"
                self.client.refuse(GConnectError("internal error, see the proxy's log"))
        finally:
            ctx.services.observer.forwarded(record)
        return keep, leftover

    def own_path(self, request: ForwardRequest, record: RequestRecord) -> bool:
        """An origin-form request, for the proxy itself."""
        config = self.ctx.config
        path = request.path.partition(b"?")[0]
        if not (config.proxy_pac and path == b"/proxy.pac" and request.method in (b"GET", b"HEAD")):
            raise NotFoundError(f"{request.path[:80].decode('ascii', 'replace')}: this is a proxy; no such page here")
        hosts = values(request.headers, b"host")
        if hosts and _AUTHORITY.fullmatch(hosts[0]):
            authority = hosts[0].decode("ascii")
        else:
            authority = hostport(*config.listen[0])
        if ":" not in authority.rpartition("]")[2]:
            authority += ":80"
        body = pac_file(authority, self.ctx.tls, config.allow_host)
        headers = (("Content-Type", "application/x-ns-proxy-autoconfig"), ("Cache-Control", "max-age=300"))
        answer = own_response(200, "OK", body, headers)
        if request.method == b"HEAD":
            answer = answer[: len(answer) - len(body)]
        record.status, record.end_reason = 200, "own_path"
        record.bytes_down = len(answer)
        sent = self.client.send(answer, self.loop.now() + config.header_timeout)
        # A body sent along is not read: the connection cannot go on after it.
        return sent and request.keep_alive and not request.framing.has_body

    def read_next(self, data: bytes) -> ForwardRequest | bytes | None:
        """The next request head: a forwarded request, the bytes of a CONNECT,
        or None (the client closed or stayed idle, or its head was refused)."""
        config = self.ctx.services.config
        loop = self.loop
        deadline = min(loop.now() + CLIENT_IDLE_SECONDS, self.ends_at)
        prefix = b""
        parser: ForwardRequestParser | None = None
        try:
            while True:
                if data:
                    if parser is None:
                        prefix += data
                        connect = is_connect(prefix)
                        if connect:
                            return prefix
                        if connect is None:
                            data = b""
                        else:
                            parser = self._parser or ForwardRequestParser(config.max_header_bytes)
                            self._parser, data = parser, prefix
                        # One header deadline from the first byte of a head.
                        deadline = min(loop.now() + config.header_timeout, self.ends_at)
                    if parser is not None and data:
                        request = parser.feed(data)
                        if request is not None:
                            return request
                try:
                    data = self.client.recv_nowait()
                except BlockingIOError:
                    data = self._recv(deadline, started=bool(prefix))
                except OSError:
                    return None
                if not data:
                    return None
        except GConnectError as exc:
            record = RequestRecord(self.ctx.address, b"-")
            record.status, record.end_reason = exc.status, exc.code
            self.client.refuse(exc)
            self.ctx.services.observer.forwarded(record)
            return None

    def _recv(self, deadline: float, started: bool) -> bytes:
        """The client's next bytes, once it has sent some (nothing had come
        when this was called); b"" when it closed, or went idle between
        requests, or shutdown began before the next request started."""
        while True:
            if self.draining and not started:
                return b""
            self._idle = not started
            try:
                ready = wait(self.client.client_reader(), deadline - self.loop.now())
            finally:
                self._idle = False
            if not ready:
                if started:
                    raise HeadTimeoutError("request head not received in time") from None
                return b""
            try:
                return self.client.recv_nowait()
            except BlockingIOError:
                pass
            except OSError:
                return b""


def forward_requests(
    conn: ClientConnection, received: bytes, refuse: Callable[[GConnectError], None]
) -> ConnectRequest:
    """Serve the plain HTTP requests of *conn* (*received*: its bytes so far,
    the start of the first one) in order, until it closes, errs or sends a
    CONNECT: return that CONNECT, or raise ClientServed. *refuse* answers a
    refusal on the connection. A first head that cannot be read raises its
    ClientError, answered like a CONNECT's."""
    services = conn.services
    config = services.config
    parser = ForwardRequestParser(config.max_header_bytes)
    request = _read_head(conn, parser, received)
    ctx = ForwardContext(
        services, conn.address, client_key(conn.address[0]), conn.tls is not None, peer_cert=conn.peer_certificate()
    )
    lifetime = config.max_tunnel_lifetime
    ends_at = conn.loop.now() + lifetime if lifetime else float("inf")
    session = ForwardSession(ctx, ConnectionStream(conn, refuse), ends_at, parser)
    conn.on_drain = session.drain
    try:
        early = session.serve(request)
    finally:
        conn.on_drain = None
    if early is None:
        raise ClientServed("forwarded")
    # A CONNECT followed the forwarded requests: its head gets a deadline of its own.
    conn.deadline = conn.loop.now() + config.header_timeout
    return _read_head(conn, RequestParser(config.max_header_bytes), early)


def _read_head(conn: ClientConnection, parser: Any, data: bytes) -> Any:
    """What *parser* makes of *data* and what *conn* sends next, by its header deadline."""
    head = parser.feed(data)
    while head is None:
        data = conn.recv("request head")
        if not data:
            raise ClientClosedError("connection closed before the request head was complete")
        head = parser.feed(data)
    return head
