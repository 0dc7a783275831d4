"""The proxy: listeners, and the life of one tunnel. The only module that
composes the others.

One tunnel, start to end (``TunnelServer.handle``)::

    1 read the head under the header deadline -> protocol -> ConnectRequest
    2 policy.check_port                                   -> 403
    3 resolver.resolve (IP literals skip it)              -> 502 / 504
    4 policy.filter_addresses on what will be dialled     -> 403
    5 upstream.open_connection (Happy Eyeballs)           -> 502 / 504
    6 send the 200 (the point of no return), forward early data
    7 hand both sockets to a Relay: libev callbacks, no greenlet; handle() returns
    8 when the relay ends it closes both sockets and calls tunnel_done: one access-log line

Before step 6 any GConnectError becomes its HTTP response; anything else is a
bug, logged with its traceback and answered 500, and the server keeps serving.
"""

from __future__ import annotations

import _socket
import dataclasses
import ipaddress
import logging
import socket as _stdlib_socket
import ssl
import time
from collections import Counter
from collections.abc import Callable

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer
from gevent.socket import socket

from .auth.authenticator import Authenticator, log_safe
from .config import Config
from .errors import (
    ClientClosedError,
    GConnectError,
    HeadTimeoutError,
    PolicyDeniedError,
)
from .ops.accesslog import JsonLogFile
from .ops.logfile import LogFile
from .ops.metrics import MetricsServer, ProxyCollector, Stats
from .tunnel import head as protocol
from .tunnel import proxyproto
from .tunnel.dial import open_connection, tune_socket
from .tunnel.limits import REFUSAL_SLOTS, AcceptBackoff, ClientLimits, client_key
from .tunnel.parent import Chain
from .tunnel.policy import Policy
from .tunnel.relay import PipePool, Relay, splice_supported
from .tunnel.resolver import Resolver
from .tunnel.tls import TLSRelay, accept_tls, server_context

log = logging.getLogger(__name__)

#: Bytes asked of recv() while reading the head: a typical head and a TLS
#: ClientHello sent right behind it fit in one read.
HEAD_RECV_BYTES = 8192
#: After an error response, read and discard what the client still sends for at
#: most this long / this much, so closing does not turn into a reset that
#: destroys the response in flight (Apache's lingering close waits up to 2 s).
LINGER_SECONDS = 1.0
LINGER_BYTES = 64 * 1024


def _fmt_addr(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    return str(address)


def make_listener(host: str, port: int, *, reuse_port: bool = False) -> _stdlib_socket.socket:
    """A listening TCP socket for ``host:port``, tuned for the tunnels it accepts."""
    family = _stdlib_socket.AF_INET6 if ":" in host else _stdlib_socket.AF_INET
    sock = _stdlib_socket.socket(family, _stdlib_socket.SOCK_STREAM)
    try:
        sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEADDR, 1)
        if reuse_port:
            # Workers each bind the same port; the kernel spreads connections over them.
            sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_REUSEPORT, 1)
        if family == _stdlib_socket.AF_INET6:
            sock.setsockopt(_stdlib_socket.IPPROTO_IPV6, _stdlib_socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        # The backlog is capped by net.core.somaxconn; ask for the most.
        sock.listen(_stdlib_socket.SOMAXCONN)
        # Accepted sockets inherit TCP_NODELAY and the keepalive settings from the
        # listener on Linux: set once here instead of five syscalls per client.
        tune_socket(sock)
    except BaseException:
        sock.close()
        raise
    return sock


class OwnConnections:
    """Our upstream connections as (local, remote) address pairs. A client that
    arrives from one of them, at that very address, is this proxy talking to
    itself (a loop through a name or address the static check did not know)."""

    def __init__(self) -> None:
        self._pairs: set[tuple] = set()
        self._locals: Counter[tuple] = Counter()

    def add(self, pair: tuple) -> None:
        self._pairs.add(pair)
        self._locals[pair[0]] += 1

    def remove(self, pair: tuple) -> None:
        if pair in self._pairs:
            self._pairs.discard(pair)
            self._locals[pair[0]] -= 1
            if not self._locals[pair[0]]:
                del self._locals[pair[0]]

    def is_own(self, address: tuple, client: socket) -> bool:
        # Cheap test first: getsockname() only when the client's address matches.
        return address[:2] in self._locals and (address[:2], client.getsockname()[:2]) in self._pairs


class _TunnelEnded(Exception):
    """A TLS tunnel relayed to its end inside handle(): on to the access line."""


class _TunnelInfo:
    """What the access log needs once a relay ends."""

    __slots__ = ("address", "dialled", "fields", "own", "started", "target", "user")

    def __init__(
        self,
        address: tuple,
        target: str,
        dialled: str,
        started: float,
        own: tuple | None,
        fields: dict | None = None,
        user: str | None = None,
    ) -> None:
        self.address = address
        self.target = target
        self.dialled = dialled
        self.started = started
        self.own = own
        #: The JSON access log's open-line fields, for its close line.
        self.fields = fields
        self.user = user

    def done_callback(self, server: TunnelServer) -> Callable[[Relay], None]:
        return lambda relay: server.tunnel_done(self, relay)


class Proxy:
    """Everything shared by the tunnels of one process: listeners, the client
    pool, the resolver, the policy, the splice pipes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.policy = Policy(config)
        self.resolver = Resolver(config)
        # Slots above max_clients so a full proxy can still answer 503 (limits.py).
        self.pool = Pool(config.max_clients + REFUSAL_SLOTS)
        self.limits = ClientLimits(config.max_clients, config.max_clients_per_ip)
        self.auth = Authenticator(config) if config.auth_file else None
        self.tls_context = server_context(config) if config.tls_cert else None
        mode = config.relay
        if mode == "auto":
            mode = "splice" if splice_supported() else "copy"
        elif mode == "splice" and not splice_supported():
            raise RuntimeError("--relay splice: splice(2) does not work here")
        self.relay_mode = mode
        self.pipes = PipePool(config.pipe_pool_size, config.chunk_bytes) if mode == "splice" else None
        # One scratch buffer for every copy relay: a relay callback never yields while using it.
        self.scratch = bytearray(config.chunk_bytes) if mode == "copy" else None
        self.servers: list[TunnelServer] = []
        self.own_connections = OwnConnections()
        self.stopped = Event()
        self.access_log: LogFile | None = None
        if config.access_log:
            json_lines = config.log_format == "json"
            self.access_log = JsonLogFile(config.access_log) if json_lines else LogFile(config.access_log)
        self.stats = Stats()
        #: Policy reloads applied so far (SIGHUP).
        self.generation = 0
        self.chain = Chain(config.upstream, config.upstream_for, self.resolver) if config.upstream else None
        self.metrics: MetricsServer | None = None
        self.metrics_address: tuple[str, int] | None = None
        self.bound: list[tuple[str, int]] = []
        #: Tunnels past their 200: driven by libev callbacks, no greenlet each.
        self.relays: set[Relay] = set()
        self._no_relays = Event()
        self._no_relays.set()

    def open_count(self) -> int:
        """Clients being served: handshakes in progress plus relaying tunnels."""
        return len(self.pool) + len(self.relays)

    def add_relay(self, relay: Relay) -> None:
        self.relays.add(relay)
        self._no_relays.clear()

    def remove_relay(self, relay: Relay) -> None:
        self.relays.discard(relay)
        if not self.relays:
            self._no_relays.set()
        for server in self.servers:
            # A full proxy stopped accepting; a tunnel ending makes room again
            # (but an EMFILE back-off keeps its pause: its timer resumes).
            if server.started and not server.backing_off and not server.full():
                server.start_accepting()

    def start(self) -> list[tuple[str, int]]:
        """Bind and start every listener; return their real (host, port)."""
        bound = []
        for host, port in self.config.listen:
            server = TunnelServer(self, make_listener(host, port, reuse_port=self.config.reuse_port))
            server.start()
            self.servers.append(server)
            bound.append(server.address[:2])
        self.policy.set_listening(bound)
        self.bound = bound
        if self.config.metrics_listen is not None:
            self.metrics = MetricsServer(ProxyCollector(self), self.config.metrics_listen)
            self.metrics_address = self.metrics.start()
        if self.auth is not None:
            self.auth.start()
        return bound

    def reload_auth(self) -> None:
        """Re-read the auth file (SIGHUP); open tunnels are not touched."""
        if self.auth is not None:
            self.auth.reload()

    #: What SIGHUP can change; everything else needs a restart.
    RELOADABLE = ("allow_port", "allow_dest", "deny_dest")

    def reload(self, new: Config) -> None:
        """Apply *new*'s policy (ports, destinations) to tunnels that start from
        now on; open tunnels and listeners are not touched. Other changed
        settings are named in the log and left as they are."""
        fixed = [
            f.name
            for f in dataclasses.fields(Config)
            if f.name not in self.RELOADABLE and getattr(new, f.name) != getattr(self.config, f.name)
        ]
        if fixed:
            log.warning("SIGHUP: these need a restart and keep their running values: %s", ", ".join(fixed))
        changes = {name: getattr(new, name) for name in self.RELOADABLE}
        policy = Policy(dataclasses.replace(self.config, **changes), self.bound)
        # One assignment; each handshake reads it once, so it sees the old policy or the new one.
        self.policy = policy
        self.config = dataclasses.replace(self.config, **changes)
        self.generation += 1
        log.info("SIGHUP: policy reloaded (generation %d)", self.generation)

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let tunnels finish for *drain_timeout* seconds, then
        end the rest."""
        if drain_timeout is None:
            drain_timeout = self.config.drain_timeout
        for server in self.servers:
            server.close()
        if self.metrics is not None:
            self.metrics.stop()
        if self.auth is not None:
            self.auth.stop()
        deadline = time.monotonic() + drain_timeout
        if self.open_count():
            log.info("draining %d open tunnels for up to %g s", self.open_count(), drain_timeout)
            self.pool.join(timeout=drain_timeout)
            self._no_relays.wait(max(0.0, deadline - time.monotonic()))
            # Handshakes still running when the relays drained may have added more.
            self.pool.join(timeout=max(0.0, deadline - time.monotonic()))
        if self.open_count():
            log.info("closing %d tunnels still open", self.open_count())
            self.pool.kill(block=True, timeout=5)
            for relay in list(self.relays):
                relay.abort("shutdown")
        if self.pipes is not None:
            self.pipes.close()
        if self.access_log is not None:
            self.access_log.close()
        self.stopped.set()


class TunnelServer(AcceptBackoff, StreamServer):
    """One listening socket. Every accepted client runs :meth:`handle` in its
    own greenlet from the proxy's shared pool; a full pool stops accepting."""

    def __init__(self, proxy: Proxy, listener: _stdlib_socket.socket) -> None:
        super().__init__(listener, spawn=proxy.pool)
        self.proxy = proxy
        self.config = proxy.config
        # The pool counts handshakes only; relaying tunnels have no greenlet, so
        # "full" is both together (set_spawn installed pool.full as an attribute).
        self.full = self._full  # type: ignore[method-assign]

    def _full(self) -> bool:
        # Past max_clients clients still get their 503 (limits.ClientLimits); past
        # these few more slots for the refusals, accept() waits.
        return self.proxy.open_count() >= self.config.max_clients + REFUSAL_SLOTS

    def handle(self, client: socket, address: tuple) -> None:
        """Serve one client's handshake. Once the 200 is sent, both sockets are
        handed to a :class:`Relay`, which owns them from then on; this returns
        only when nothing here uses the client socket any more."""
        proxy = self.proxy
        config = self.config
        started = time.monotonic()
        status = 0
        reason = "error"
        target = "-"
        dialled = "-"
        bytes_up = bytes_down = 0
        upstream: socket | None = None
        own: tuple | None = None
        who = ""  # the client as limits count it, once admitted
        handed_off = False  # True once a Relay owns the sockets
        # One policy for the whole handshake, even if SIGHUP swaps it meanwhile.
        policy = proxy.policy
        user: str | None = None  # set by proxy authentication
        parent = None
        resolved = connected = 0.0
        try:
            if proxy.own_connections.is_own(address, client):
                raise PolicyDeniedError("tunnel loops back into this proxy")
            initial = b""
            if config.proxy_protocol and self._trusts_proxy_header(address):
                # From here on the client is the one the load balancer names.
                address, initial = self._read_proxy_header(client, address)
            if proxy.tls_context is not None:
                client = accept_tls(client, proxy.tls_context, config.header_timeout)
            admitted = client_key(address[0])
            proxy.limits.admit(admitted)
            who = admitted
            # One header deadline from accept, whatever came first (TLS handshake, PROXY header).
            request = self._read_head(client, initial, spent=time.monotonic() - started)
            target = request.target
            if proxy.auth is not None:
                values = [v for k, v in request.headers if k.lower() == b"proxy-authorization"]
                user = proxy.auth.authenticate(values, who)
            policy.check_port(request.port)
            parent = proxy.chain if proxy.chain is not None and proxy.chain.applies(request.host, request.ip) else None
            if request.ip is not None:
                addresses = [request.ip]
            elif parent is not None:
                addresses = []  # the parent resolves names, under its own policy
            else:
                addresses = proxy.resolver.resolve(request.host)
            resolved = time.monotonic()
            if addresses or parent is None:
                addresses = policy.filter_addresses(request.host, request.port, addresses)
            if parent is not None:
                upstream, ip = parent.open(
                    request.host,
                    request.port,
                    connect_timeout=config.connect_timeout,
                    attempt_delay=config.attempt_delay,
                )
                ip_text, port = str(ip), parent.parent.port
            else:
                upstream, ip = open_connection(
                    addresses,
                    request.port,
                    connect_timeout=config.connect_timeout,
                    attempt_delay=config.attempt_delay,
                )
                ip_text = request.host if request.ip is not None else str(ip)
                port = request.port
            connected = time.monotonic()
            dialled = f"[{ip_text}]:{port}" if ip.version == 6 else f"{ip_text}:{port}"
            own = (upstream.getsockname()[:2], (ip_text, port))
            proxy.own_connections.add(own)
            client.sendall(protocol.RESPONSE_200)
            status = 200
            proxy.stats.opened(time.monotonic() - started)
            if request.trailing:
                # RFC 9110 §9.3.6 lets the client send early: those bytes are tunnel data.
                upstream.sendall(request.trailing)
            fields = None
            if isinstance(proxy.access_log, JsonLogFile):
                fields = self._fields(address, target, dialled, user, parent, started, resolved, connected)
                proxy.access_log.write_json("open", fields)
            if proxy.tls_context is not None:
                # TLS needs the ssl socket's recv/send: a greenlet relay, run to its end here.
                tls_relay = TLSRelay(
                    client,
                    upstream,
                    idle_timeout=config.idle_timeout,
                    half_close_timeout=config.half_close_timeout,
                    max_lifetime=config.max_tunnel_lifetime,
                    chunk_bytes=config.chunk_bytes,
                )
                tls_relay.run()  # the early data went just above
                reason = tls_relay.result.reason
                bytes_up = len(request.trailing) + tls_relay.result.bytes_up
                bytes_down = tls_relay.result.bytes_down
                raise _TunnelEnded
            info = _TunnelInfo(address, target, dialled, started, own, fields, user)
            relay = Relay(
                _socket.socket(fileno=client.detach()),
                _socket.socket(fileno=upstream.detach()),
                mode=proxy.relay_mode,
                idle_timeout=config.idle_timeout,
                half_close_timeout=config.half_close_timeout,
                on_done=info.done_callback(self),
                max_lifetime=config.max_tunnel_lifetime,
                pipes=proxy.pipes,
                scratch=proxy.scratch,
                chunk_bytes=config.chunk_bytes,
            )
            own = None  # the relay's on_done releases it from here on
            who = ""  # ... and the client's admission
            proxy.add_relay(relay)
            relay.start(first_bytes_up=len(request.trailing))
            handed_off = True
            return
        except _TunnelEnded:
            pass
        except GConnectError as exc:
            if status == 0:
                status = exc.status
                reason = exc.code
                self._refuse(client, exc)
            else:
                reason = exc.code
        except OSError as exc:
            # A client that vanished while we wrote the 200 or the error.
            reason = "client_reset"
            status = status or 499
            log.debug("client %s: %s", _fmt_addr(address), exc)
        except Exception:
            log.exception("bug while serving %s (target %s)", _fmt_addr(address), target)
            if status == 0:
                status = 500
                self._refuse(client, GConnectError("internal error, see the proxy's log"))
        except BaseException:
            # Killed (the drain timed out at shutdown): release and log on the way out.
            reason = "shutdown"
            raise
        finally:
            if not handed_off:
                # Refused or failed handshakes, ended TLS tunnels and killed ones.
                if who:
                    proxy.limits.release(who)
                if own is not None:
                    proxy.own_connections.remove(own)
                if upstream is not None:
                    upstream.close()
                client.close()
                proxy.stats.closed(status, reason, bytes_up, bytes_down)
                fields = None
                if isinstance(proxy.access_log, JsonLogFile):
                    fields = self._fields(address, target, dialled, user, parent, started, resolved, connected)
                info = _TunnelInfo(address, target, dialled, started, None, fields, user)
                self._log_close(info, status, bytes_up, bytes_down, reason)

    def tunnel_done(self, info: _TunnelInfo, relay: Relay) -> None:
        """A relay ended: release what it held and write its access-log line."""
        proxy = self.proxy
        proxy.remove_relay(relay)
        if info.own is not None:
            proxy.own_connections.remove(info.own)
        proxy.limits.release(client_key(info.address[0]))
        result = relay.result
        proxy.stats.closed(200, result.reason, result.bytes_up, result.bytes_down)
        self._log_close(info, 200, result.bytes_up, result.bytes_down, result.reason, relay.first_byte_at)

    def _log_close(
        self, info: _TunnelInfo, status: int, bytes_up: int, bytes_down: int, reason: str, first_byte_at: float = 0.0
    ) -> None:
        """The one access-log line (or JSON close event) of a client that is done."""
        access_log = self.proxy.access_log
        if isinstance(access_log, JsonLogFile) and info.fields is not None:
            fields = dict(info.fields, status=status, up=bytes_up, down=bytes_down, reason=reason)
            # Accept to the first byte from the target reaching the client.
            fields["first_byte"] = round(first_byte_at - info.started, 6) if first_byte_at else None
            fields["duration"] = round(time.monotonic() - info.started, 6)
            access_log.write_json("close", fields)
        elif access_log is not None:
            access_log.write(
                f"client={_fmt_addr(info.address)} user={log_safe(info.user) if info.user else '-'} "
                f"target={info.target} addr={info.dialled} status={status} up={bytes_up} down={bytes_down} "
                f"duration={time.monotonic() - info.started:.3f} reason={reason}"
            )

    def _fields(
        self,
        address: tuple,
        target: str,
        dialled: str,
        user: str | None,
        parent: Chain | None,
        started: float,
        resolved: float,
        connected: float,
    ) -> dict:
        """The JSON access line's fields common to open and close (times in seconds)."""
        return {
            "id": f"{id(gevent.getcurrent()):x}-{started:.6f}",
            "client": _fmt_addr(address),
            "user": user,
            "target": target,
            "addr": dialled,
            "via": str(parent.parent) if parent is not None else None,
            "dns": round(resolved - started, 6) if resolved else None,
            "connect": round(connected - resolved, 6) if connected else None,
        }

    def _trusts_proxy_header(self, address: tuple) -> bool:
        try:
            ip = ipaddress.ip_address(address[0])
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self.config.proxy_protocol_from)

    def _read_proxy_header(self, client: socket, address: tuple) -> tuple[tuple, bytes]:
        """Read the load balancer's PROXY header: (client address, bytes after it)."""
        timeout = gevent.Timeout(
            self.config.header_timeout,
            HeadTimeoutError(f"PROXY header not received within {self.config.header_timeout:g} s"),
        )
        timeout.start()
        data = b""
        try:
            while True:
                chunk = client.recv(HEAD_RECV_BYTES)
                if not chunk:
                    raise ClientClosedError("connection closed before the PROXY header was complete")
                data += chunk
                parsed = proxyproto.parse(data)
                if parsed is not None:
                    header, length = parsed
                    return (header.source or address), data[length:]
        finally:
            timeout.close()

    def _read_head(self, client: socket, initial: bytes = b"", spent: float = 0.0) -> protocol.ConnectRequest:
        """The request head, within the header deadline less *spent* seconds
        (a TLS handshake shares the deadline with the head)."""
        parser = protocol.RequestParser(self.config.max_header_bytes)
        if initial:
            request = parser.feed(initial)
            if request is not None:
                return request
        # Fast path: the head usually arrived with the connection; no timer needed.
        client.settimeout(0.0)
        try:
            data = client.recv(HEAD_RECV_BYTES)
        except (BlockingIOError, ssl.SSLWantReadError):
            # SSLWantReadError: a TLS listener's client whose head is not here yet.
            data = None
        finally:
            client.settimeout(None)
        if data is not None:
            if not data:
                raise ClientClosedError("connection closed before the request head was complete")
            request = parser.feed(data)
            if request is not None:
                return request
        # One deadline for the whole head: a client trickling a byte at a time
        # is not kept alive by each byte.
        timeout = gevent.Timeout(
            max(0.0, self.config.header_timeout - spent),
            HeadTimeoutError(f"request head not received within {self.config.header_timeout:g} s"),
        )
        timeout.start()
        try:
            while True:
                data = client.recv(HEAD_RECV_BYTES)
                if not data:
                    raise ClientClosedError("connection closed before the request head was complete")
                request = parser.feed(data)
                if request is not None:
                    return request
        finally:
            timeout.close()

    def _refuse(self, client: socket, exc: GConnectError) -> None:
        if not exc.answerable:
            return
        body = protocol.render_error(exc.status, exc.reason, str(exc), exc.headers)
        try:
            client.sendall(body)
            client.shutdown(_stdlib_socket.SHUT_WR)
            with gevent.Timeout(LINGER_SECONDS, False):
                drained = 0
                while drained < LINGER_BYTES:
                    chunk = client.recv(LINGER_BYTES)
                    if not chunk:
                        break
                    drained += len(chunk)
        except OSError:
            pass
