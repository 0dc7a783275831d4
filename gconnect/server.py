"""The proxy: listeners, and the life of one tunnel. The only module that
composes the others.

One tunnel, start to end (``TunnelServer.handle``)::

    1 read the head under the header deadline -> protocol -> ConnectRequest
    2 policy.check_port                                   -> 403
    3 resolver.resolve (IP literals skip it)              -> 502 / 504
    4 policy.filter_addresses on what will be dialled     -> 403
    5 upstream.open_connection (Happy Eyeballs)           -> 502 / 504
    6 send the 200 (the point of no return)
    7 relay both ways until done
    8 close upstream and client, one access-log line

Before step 6 any GConnectError becomes its HTTP response; anything else is a
bug, logged with its traceback and answered 500, and the server keeps serving.
"""

from __future__ import annotations

import logging
import socket as _stdlib_socket
import time

import gevent
from gevent.event import Event
from gevent.pool import Pool
from gevent.server import StreamServer
from gevent.socket import socket

from . import protocol
from .config import Config
from .errors import (
    ClientClosedError,
    GConnectError,
    HeadTimeoutError,
    PolicyDeniedError,
)
from .logfile import LogFile
from .policy import Policy
from .relay import PipePool, Relay, splice_supported
from .resolver import Resolver
from .upstream import open_connection, tune_socket

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


class Proxy:
    """Everything shared by the tunnels of one process: listeners, the client
    pool, the resolver, the policy, the splice pipes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.policy = Policy(config)
        self.resolver = Resolver(config)
        self.pool = Pool(config.max_clients)
        mode = config.relay
        if mode == "auto":
            mode = "splice" if splice_supported() else "copy"
        elif mode == "splice" and not splice_supported():
            raise RuntimeError("--relay splice: splice(2) does not work here")
        self.relay_mode = mode
        self.pipes = PipePool(config.pipe_pool_size, config.chunk_bytes) if mode == "splice" else None
        # One scratch buffer for every copy relay: greenlets never yield while using it.
        self.scratch = bytearray(config.chunk_bytes) if mode == "copy" else None
        self.servers: list[TunnelServer] = []
        #: Our upstream sockets, local -> remote address: a client arriving from
        #: one of them at that very address is this proxy talking to itself.
        self.upstream_locals: dict[tuple, tuple] = {}
        self.stopped = Event()
        self.access_log: LogFile | None = LogFile(config.access_log) if config.access_log else None

    def start(self) -> list[tuple[str, int]]:
        """Bind and start every listener; return their real (host, port)."""
        bound = []
        for host, port in self.config.listen:
            server = TunnelServer(self, (host, port))
            server.start()
            self.servers.append(server)
            bound.append(server.address[:2])
        self.policy.set_listening(bound)
        return bound

    def stop(self, drain_timeout: float | None = None) -> None:
        """Stop accepting, let tunnels finish for *drain_timeout* seconds, then
        end the rest."""
        if drain_timeout is None:
            drain_timeout = self.config.drain_timeout
        for server in self.servers:
            server.close()
        if len(self.pool):
            log.info("draining %d open tunnels for up to %g s", len(self.pool), drain_timeout)
            self.pool.join(timeout=drain_timeout)
        if len(self.pool):
            log.info("closing %d tunnels still open", len(self.pool))
            self.pool.kill(block=True, timeout=5)
        if self.pipes is not None:
            self.pipes.close()
        if self.access_log is not None:
            self.access_log.close()
        self.stopped.set()


class TunnelServer(StreamServer):
    """One listening socket. Every accepted client runs :meth:`handle` in its
    own greenlet from the proxy's shared pool; a full pool stops accepting."""

    def __init__(self, proxy: Proxy, address: tuple[str, int]) -> None:
        super().__init__(address, spawn=proxy.pool)
        self.proxy = proxy
        self.config = proxy.config

    def init_socket(self) -> None:
        super().init_socket()
        # The listen backlog is SOMAXCONN-capped by the kernel; ask for the most.
        self.socket.listen(_stdlib_socket.SOMAXCONN)
        # Accepted sockets inherit TCP_NODELAY and the keepalive settings from the
        # listener on Linux: set once here instead of five syscalls per client.
        tune_socket(self.socket)

    def handle(self, client: socket, address: tuple) -> None:
        """Serve one client: returns only when nothing uses its socket any more."""
        proxy = self.proxy
        config = self.config
        started = time.monotonic()
        status = 0
        reason = "error"
        target = "-"
        dialled = "-"
        bytes_up = bytes_down = 0
        upstream: socket | None = None
        local: tuple | None = None
        try:
            looped = proxy.upstream_locals.get(address[:2])
            if looped is not None and looped == client.getsockname()[:2]:
                raise PolicyDeniedError("tunnel loops back into this proxy")
            request = self._read_head(client)
            target = request.target
            proxy.policy.check_port(request.port)
            if request.ip is not None:
                addresses = [request.ip]
            else:
                addresses = proxy.resolver.resolve(request.host)
            addresses = proxy.policy.filter_addresses(request.host, request.port, addresses)
            upstream, ip = open_connection(
                addresses,
                request.port,
                connect_timeout=config.connect_timeout,
                attempt_delay=config.attempt_delay,
            )
            dialled = f"[{ip}]:{request.port}" if ip.version == 6 else f"{ip}:{request.port}"
            local = upstream.getsockname()[:2]
            proxy.upstream_locals[local] = (str(ip), request.port)
            client.sendall(protocol.RESPONSE_200)
            status = 200
            relay = Relay(
                client,
                upstream,
                mode=proxy.relay_mode,
                idle_timeout=config.idle_timeout,
                half_close_timeout=config.half_close_timeout,
                pipes=proxy.pipes,
                scratch=proxy.scratch,
                chunk_bytes=config.chunk_bytes,
            )
            try:
                relay.run(request.trailing)
            finally:
                bytes_up = relay.result.bytes_up
                bytes_down = relay.result.bytes_down
                reason = relay.result.reason
        except GConnectError as exc:
            if status == 0:
                status = exc.status
                reason = exc.code
                self._refuse(client, exc)
            else:
                reason = exc.code
        except OSError as exc:
            # A client that vanished while we wrote the 200 or the error.
            reason = "client_reset" if status == 0 else "error"
            status = status or 499
            log.debug("client %s: %s", _fmt_addr(address), exc)
        except Exception:
            log.exception("bug while serving %s (target %s)", _fmt_addr(address), target)
            if status == 0:
                status = 500
                self._refuse(client, GConnectError("internal error, see the proxy's log"))
        finally:
            if local is not None:
                proxy.upstream_locals.pop(local, None)
            if upstream is not None:
                upstream.close()
            client.close()
            if proxy.access_log is not None:
                proxy.access_log.write(
                    f"client={_fmt_addr(address)} target={target} addr={dialled} status={status} "
                    f"up={bytes_up} down={bytes_down} duration={time.monotonic() - started:.3f} reason={reason}"
                )

    def _read_head(self, client: socket) -> protocol.ConnectRequest:
        parser = protocol.RequestParser(self.config.max_header_bytes)
        # Fast path: the head usually arrived with the connection; no timer needed.
        client.settimeout(0.0)
        try:
            data = client.recv(HEAD_RECV_BYTES)
        except BlockingIOError:
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
            self.config.header_timeout,
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
