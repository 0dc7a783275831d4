"""One client, from accept to close.

:meth:`Tunnel.run` is the handshake, one method per step, read top to bottom::

    admit         loop check, PROXY header, TLS handshake, limits   -> 400 / 403 / 429 / 503
    read_head     one deadline from accept; head.py parses          -> 400 / 405 / 408 / 431 / 505
    authenticate  Basic, cached, bcrypt in the thread pool          -> 407 / 429
    check         port; whether a parent proxy carries it           -> 403
    resolve       IP literals skip DNS; every address checked       -> 403 / 502 / 504
    dial          Happy Eyeballs, or the parent's CONNECT           -> 502 / 503 / 504
    answer        "HTTP/1.1 200 Connection established"             (the point of no return)
    relay         early bytes first, then the callback relay
    close         the one exit for every outcome

Before ``answer`` any GConnectError becomes its HTTP response (:meth:`refuse`);
anything else is a bug, logged with its traceback and answered 500.

Ownership: the tunnel owns both sockets from accept to :meth:`close`, which
closes them. The handshake runs in the tunnel's own greenlet on raw
non-blocking sockets (:mod:`gconnect.tunnel.waiting`); after ``answer`` the
greenlet ends and the :class:`~gconnect.tunnel.relay.Relay` drives the sockets
from libev callbacks, adopting the watchers the handshake made, until its
``on_done`` calls :meth:`close`. Refusals, ended relays (plain or TLS) and
handshakes killed at shutdown all leave through :meth:`close`, which reads the
tunnel's attributes once for the stats and the access log.
"""

from __future__ import annotations

import _socket
import logging
import time
from typing import TYPE_CHECKING, Any

from ..errors import ClientClosedError, GConnectError, HeadTimeoutError, LoopDetectedError
from . import proxyproto
from .dial import Connection, fmt, open_connection
from .forward.request import FirstHeadParser, ForwardRequest
from .head import RESPONSE_200, ConnectRequest, RequestParser, proxy_status, render_error
from .limits import client_key
from .relay import Relay
from .tls import TLSSession
from .waiting import READ, WRITE, recv, send_all, wait

if TYPE_CHECKING:
    from ..server import Proxy

log = logging.getLogger(__name__)

#: Bytes asked of recv() while reading the head: a typical head and a TLS
#: ClientHello sent right behind it fit in one read.
HEAD_RECV_BYTES = 8192
#: Bytes asked of recv() for a forwarded request's body (as for the origin's side).
FORWARD_RECV_BYTES = 64 * 1024
#: After an error response, read and discard what the client still sends for at
#: most this long / this much, so closing does not turn into a reset that
#: destroys the response in flight (Apache's lingering close waits up to 2 s).
LINGER_SECONDS = 1.0
LINGER_BYTES = 64 * 1024


class Tunnel:
    """One client connection: the handshake's steps, the relay, one exit.

    Its attributes are what the access log and the metrics read at the end:
    ``address`` (the client, or the one a PROXY header names), ``user``,
    ``target``, ``dialled``, ``via``, ``status`` (0 until answered),
    ``reason``, ``bytes_up``/``bytes_down`` and the monotonic times
    ``started``, ``resolved_at``, ``connected_at``, ``first_byte_at`` (0: not
    reached). Attributes most tunnels never change start as the class
    defaults below: a tunnel is made for every client, and each store counts.
    """

    status = 0
    reason = "error"
    target = "-"
    dialled = "-"
    user: str | None = None
    via: str | None = None
    #: The pool carrying this tunnel (None: direct), and the parent of it that does.
    parent: Any = None
    #: Report mode: the name rules' reason this tunnel would have been refused for.
    would_deny: str | None = None
    member: Any = None
    #: The client as the limits count it, once admitted.
    who = ""
    #: Our (local, remote) addresses of the upstream connection, for the loop check.
    own: tuple | None = None
    tls: TLSSession | None = None
    upstream: Connection | None = None
    relay: Relay | None = None
    greenlet: Any = None
    bytes_up = 0
    bytes_down = 0
    resolved_at = 0.0
    connected_at = 0.0
    first_byte_at = 0.0
    _client_reader: Any = None
    _client_writer: Any = None
    _early = b""
    #: HTTP/2 (ALPN h2): the connection's session, and the stream id (0 for the connection itself).
    h2: Any = None
    stream_id: int | None = None
    #: Serving forwarded requests: each is its own access-log record, so the connection writes none.
    forwarding = False

    def __init__(self, proxy: Proxy, client: _socket.socket, address: tuple) -> None:
        self.proxy = proxy
        self.client = client
        self.address = address
        self.started = time.monotonic()
        self._loop = loop = proxy.loop
        #: One header deadline from accept for the PROXY header, TLS handshake and head.
        self._deadline = loop.now() + proxy.config.header_timeout
        # One policy for the whole handshake, even if SIGHUP swaps it meanwhile.
        self._policy = proxy.policy

    def run(self) -> None:
        """Serve the client until the relay has the sockets or the tunnel is closed."""
        try:
            self.admit()
            if self.h2 is not None:
                self.h2.serve()  # each stream is a tunnel of its own; this is the connection
                self.close()
                return
            request = self.read_head()
            if isinstance(request, ForwardRequest):
                early = self.forward(request)
                if early is None:
                    self.close()
                    return
                # A CONNECT followed the forwarded requests: a tunnel from here on.
                self._early = early
                request = self.read_head()
                assert isinstance(request, ConnectRequest)
            self.authenticate(request)
            self.check(request)
            addresses = self.resolve(request)
            self.dial(request, addresses)
            self.answer()
        except GConnectError as exc:
            self.refuse(exc)
        except OSError as exc:
            # A client that vanished while we wrote to it.
            self.status = self.status or 499
            self.reason = "client_reset"
            log.debug("client %s: %s", self.address, exc)
        except Exception:
            log.exception("bug while serving %s (target %s)", self.address, self.target)
            if not self.status:
                self.refuse(GConnectError("internal error, see the proxy's log"))
        except BaseException:
            # Killed (the drain timed out at shutdown): release and log on the way out.
            self.reason = "shutdown"
            self.close()
            raise
        else:
            self.start_relay(request.trailing)
            return
        self.close()

    # --- the steps -------------------------------------------------------------------

    def admit(self) -> None:
        """The loop check, the load balancer's PROXY header, the TLS handshake,
        then the client counted against the limits (429/503 past them)."""
        proxy = self.proxy
        if proxy.own_connections.is_own(self.address, self.client):
            raise LoopDetectedError("tunnel loops back into this proxy")
        if proxy.proxy_protocol and proxy.trusts_proxy_header(self.address):
            self.read_proxy_header()
        if proxy.tls_context is not None:
            self.tls = TLSSession(self.client, proxy.tls_context)
            self.tls.handshake(self._reader(), self._writer(), self._deadline)
            if self.tls.ssl.selected_alpn_protocol() == "h2":
                from .h2session import H2Session

                self.h2 = H2Session(self)
                return  # not counted as a client: each of its streams is
        who = client_key(self.address[0])
        proxy.limits.admit(who)
        self.who = who

    def read_proxy_header(self) -> None:
        """Read the load balancer's PROXY header: from here on the client is the one it names."""
        data = b""
        while True:
            chunk = self._recv_client("PROXY header")
            if not chunk:
                raise ClientClosedError("connection closed before the PROXY header was complete")
            data += chunk
            parsed = proxyproto.parse(data)
            if parsed is not None:
                header, length = parsed
                self.address = header.source or self.address
                self._early = data[length:]
                return

    def read_head(self) -> ConnectRequest | ForwardRequest:
        """The request head, by the header deadline: a CONNECT, or (with
        --forward-http on) a plain HTTP request to forward."""
        config = self.proxy.config
        forwarding = config.forward_http == "on"
        parser = FirstHeadParser(config.max_header_bytes) if forwarding else RequestParser(config.max_header_bytes)
        data, self._early = self._early, b""
        while True:
            if data:
                request = parser.feed(data)
                if request is not None:
                    if isinstance(request, ConnectRequest):
                        self.target = request.target
                    return request
            data = self._recv_client("request head")
            if not data:
                raise ClientClosedError("connection closed before the request head was complete")

    def forward(self, request: ForwardRequest) -> bytes | None:
        """Serve plain HTTP requests on this connection (one access-log record
        each); the bytes of a CONNECT that followed them, or None when done."""
        from .forward.context import ForwardContext
        from .forward.session import ForwardSession

        proxy = self.proxy
        config = proxy.config
        self.forwarding = True
        ctx = ForwardContext(
            config=config,
            policy=lambda: proxy.policy,
            auth=proxy.auth,
            resolver=proxy.resolver,
            router=proxy.router,
            source=proxy.source,
            own_connections=proxy.own_connections,
            stats=proxy.stats,
            access_log=proxy.access_log,
            idle=proxy.forward_idle,
            address=self.address,
            who=self.who,
            tls=self.tls is not None,
        )
        lifetime = config.max_tunnel_lifetime
        ends_at = self._loop.now() + lifetime if lifetime else float("inf")
        early = ForwardSession(ctx, self, ends_at).serve(request)
        if early is not None:
            # The CONNECT's head gets a header deadline of its own.
            self.forwarding = False
            self._deadline = self._loop.now() + config.header_timeout
        return early

    # The client connection as forwarding uses it (forward.context.ClientStream).

    def recv_nowait(self) -> bytes:
        """What the client sent (plaintext), b"" at EOF; BlockingIOError if nothing yet."""
        return self.tls.recv() if self.tls is not None else self.client.recv(FORWARD_RECV_BYTES)  # type: ignore[no-any-return]

    def client_reader(self) -> Any:
        return self._reader()

    def send(self, data: bytes, deadline: float) -> bool:
        return self._send_client(data, deadline)

    def authenticate(self, request: ConnectRequest) -> None:
        """Who the client is, if the proxy asks (407/429 otherwise)."""
        auth = self.proxy.auth
        if auth is not None:
            values = [v for k, v in request.headers if k.lower() == b"proxy-authorization"]
            self.user = auth.authenticate(values, self.who)

    def check(self, request: ConnectRequest) -> None:
        """The user's policy, the port rule, the name rules (before any DNS
        lookup, so a refused name is never queried), and which pool of parent
        proxies (if any) carries this tunnel."""
        policy = self._policy
        if policy.users and self.user is not None:
            policy = self._policy = policy.users.get(self.user, policy)
        policy.check_port(request.port)
        if policy.hosts is not None:
            self.would_deny = policy.check_host(request.host, request.family)
            if self.would_deny:
                self.proxy.stats.would_deny(self.would_deny)
        router = self.proxy.router
        if router is not None:
            self.parent = router.route(request.host, request.family)

    def resolve(self, request: ConnectRequest) -> list[str]:
        """The addresses that may be dialled, each checked by the policy. A name
        a parent carries is the parent's to resolve (under its own policy)."""
        if request.family:
            addresses = [request.host]
        elif self.parent is not None:
            self.resolved_at = time.monotonic()
            return []
        else:
            addresses = self.proxy.resolver.resolve(request.host)
        self.resolved_at = time.monotonic()
        return self._policy.filter_addresses(request.host, request.port, addresses)

    def dial(self, request: ConnectRequest, addresses: list[str]) -> None:
        """Connect: directly to the first address that answers, or through the pool's parents."""
        config = self.proxy.config
        if self.parent is not None:
            tried: list[Any] = []
            try:
                upstream, self.member = self.parent.open(
                    request.host,
                    request.port,
                    connect_timeout=config.connect_timeout,
                    attempt_delay=config.attempt_delay,
                    tried=tried,
                )
            finally:
                # The parent that carried the tunnel, or the last one that failed it.
                self.via = tried[-1].url if tried else None
        else:
            upstream = open_connection(
                addresses,
                request.port,
                connect_timeout=config.connect_timeout,
                attempt_delay=config.attempt_delay,
                source=self.proxy.source,
            )
        self.upstream = upstream
        self.connected_at = time.monotonic()
        self.dialled = fmt(upstream.address, upstream.port)
        self.own = (upstream.sock.getsockname()[:2], (upstream.address, upstream.port))
        self.proxy.own_connections.add(self.own)

    def answer(self) -> None:
        """Tell the client 200: from here on there is no HTTP to speak."""
        if not self._send_client(RESPONSE_200, self._loop.now() + self.proxy.config.header_timeout):
            raise ConnectionError("the client does not read: the 200 could not be sent")
        self.status = 200
        self.proxy.stats.opened(time.monotonic() - self.started)
        if self.proxy.access_log is not None:
            self.proxy.access_log.opened(self)

    def start_relay(self, early: bytes) -> None:
        """Forward the bytes that came with the head (RFC 9110 §9.3.6 lets the
        client send early: they are tunnel data), then hand both sockets to
        the relay; this greenlet ends here."""
        proxy = self.proxy
        upstream = self.upstream
        assert upstream is not None
        if early:
            if upstream.writer is None:
                upstream.writer = self._loop.io(upstream.sock.fileno(), WRITE)
            try:
                sent = send_all(upstream.sock, early, upstream.writer, self._loop.now() + proxy.config.connect_timeout)
            except OSError:
                sent = False
            if not sent:
                self.reason = "upstream_reset"
                self.close()
                return
            self.bytes_up = len(early)
        tls = self.tls
        relay = self.relay = Relay(
            self.client,
            upstream.sock,
            movers=proxy.plain_movers if tls is None else proxy.tls_movers,
            limits=proxy.relay_limits,
            on_done=self._relay_done,
            client_reader=self._client_reader,
            upstream_writer=upstream.writer,
            tls=tls,
            hangups=proxy.hangups,
        )
        # The relay owns these watchers now.
        self._client_reader = upstream.writer = None
        relay.start(len(early), tls is not None and tls.eof)

    def _relay_done(self, relay: Relay) -> None:
        self.bytes_up = relay.up.nbytes
        self.bytes_down = relay.down.nbytes
        self.reason = relay.reason
        self.first_byte_at = relay.first_byte_at
        self.close()

    # --- refusing and closing --------------------------------------------------------

    def refuse(self, exc: GConnectError) -> None:
        """Answer *exc* as its HTTP error, then linger briefly so the response
        is read before the connection goes."""
        self.status = exc.status
        self.reason = exc.code
        if not exc.answerable:
            return
        headers = (*exc.headers, ("Proxy-Status", proxy_status(exc)))
        body = render_error(exc.status, exc.reason, str(exc), headers)
        deadline = self._loop.now() + LINGER_SECONDS
        try:
            if not self._send_client(body, deadline):
                return
            if self.tls is not None:
                send_all(self.client, self.tls.close_notify(), self._writer(), deadline)
            self.client.shutdown(_socket.SHUT_WR)
            drained = 0
            while drained < LINGER_BYTES:
                chunk = recv(self.client, LINGER_BYTES, self._reader(), deadline)
                if not chunk:  # the client's EOF, or the deadline (None)
                    return
                drained += len(chunk)
        except OSError:
            pass

    def close(self) -> None:
        """The one exit: release what the tunnel held, close both sockets, count
        the outcome and write its access-log record."""
        proxy = self.proxy
        if self.who:
            proxy.limits.release(self.who)
        if self.own is not None:
            proxy.own_connections.remove(self.own)
        if self.member is not None:
            self.member.release()
        if self._client_reader is not None:
            self._client_reader.close()
        if self._client_writer is not None:
            self._client_writer.close()
        upstream = self.upstream
        if upstream is not None:
            if upstream.writer is not None:
                upstream.writer.close()
            upstream.sock.close()
        self.client.close()
        proxy.tunnel_closed(self)
        if self.forwarding:
            return
        proxy.stats.closed(self.status, self.reason, self.bytes_up, self.bytes_down)
        if proxy.access_log is not None:
            proxy.access_log.closed(self)

    # --- the client socket during the handshake ---------------------------------------

    def _reader(self) -> Any:
        if self._client_reader is None:
            self._client_reader = self._loop.io(self.client.fileno(), READ)
        return self._client_reader

    def _writer(self) -> Any:
        if self._client_writer is None:
            self._client_writer = self._loop.io(self.client.fileno(), WRITE)
        return self._client_writer

    def _recv_client(self, what: str) -> bytes:
        """What the client sent next (plaintext on a TLS listener), by the header deadline."""
        while True:
            try:
                return self.tls.recv() if self.tls is not None else self.client.recv(HEAD_RECV_BYTES)
            except BlockingIOError:
                if not wait(self._reader(), self._deadline - self._loop.now()):
                    timeout = self.proxy.config.header_timeout
                    raise HeadTimeoutError(f"{what} not received within {timeout:g} s") from None

    def _send_client(self, data: bytes, deadline: float) -> bool:
        """Write *data* to the client (encrypted on a TLS listener) by *deadline*."""
        if self.tls is not None:
            data = self.tls.encrypt(data)
        try:
            sent = self.client.send(data)
        except BlockingIOError:
            sent = 0
        return sent == len(data) or send_all(self.client, data[sent:], self._writer(), deadline)
