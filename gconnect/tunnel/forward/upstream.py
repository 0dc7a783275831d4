"""Connections to origins (or parents) for forwarded requests, and the idle
ones kept for reuse.

Ownership: an :class:`Upstream` belongs to the exchange that dialled or took
it; when the exchange is done it either closes it or gives it to
:class:`IdleConnections`, which owns it until a later exchange takes it or it
is closed (idle too long, over the cap, found closed, or at shutdown).
:meth:`Upstream.close` is the one exit: watchers, socket, the loop-check
entry and the parent's count.

A connection is reused only under the same key: the user (never across
users, so one user's request can never ride a connection another user's
policy opened), the dialled address and port, and the parent ("" for
direct); and only if it is bound to a source address the request may use.
"""

from __future__ import annotations

import logging
import select
from typing import Any, NamedTuple

from gevent import get_hub
from gevent.monkey import get_original

from ...config import hostport
from ..dial import Connection
from ..waiting import READ, WRITE, send_all

log = logging.getLogger(__name__)

#: Bytes asked of one recv() from an origin (Squid's read buffer is 64 KiB too).
UPSTREAM_RECV_BYTES = 64 * 1024
#: How often idle connections are looked at for expiry.
SWEEP_INTERVAL_SECONDS = 1.0
#: The blocking poll (gevent's would wait in the hub): asked with timeout 0 only.
_poll = get_original("select", "poll")


class ReuseKey(NamedTuple):
    """What a connection may be reused for. A tuple: the idle set hashes and
    compares one per request, and a tuple does both in C."""

    user: str | None
    address: str
    port: int
    #: The parent's URL (no password), or "" for a direct connection.
    parent: str


class Upstream:
    """One connection to an origin or a parent, with its watchers."""

    __slots__ = (
        "_own_connections",
        "_poller",
        "address",
        "dialled",
        "idle_since",
        "key",
        "member",
        "own",
        "port",
        "reader",
        "sock",
        "source",
        "writer",
    )

    def __init__(
        self, connection: Connection, user: str | None, parent: str, own_connections: Any, member: Any
    ) -> None:
        loop = get_hub().loop
        sock = self.sock = connection.sock
        self.address = connection.address
        self.port = connection.port
        #: host:port as records name it (made once: a kept connection serves many requests).
        self.dialled = hostport(connection.address, connection.port)
        self.writer = connection.writer or loop.io(sock.fileno(), WRITE)
        self.reader = loop.io(sock.fileno(), READ)
        local = sock.getsockname()[:2]
        self.key = ReuseKey(user, connection.address, connection.port, parent)
        #: The address this connection was bound to (ours, chosen from --bind-address or by the kernel).
        self.source = local[0]
        #: (local, remote): the loop check's record of this connection.
        self.own = (local, (connection.address, connection.port))
        self._own_connections = own_connections
        own_connections.add(self.own)
        #: The pool member (parent) this connection counts against, or None.
        self.member = member
        self.idle_since = 0.0
        self._poller: Any = None

    def recv(self, size: int = UPSTREAM_RECV_BYTES) -> bytes:
        """What has arrived, at most *size* bytes (b"" at EOF); BlockingIOError if nothing yet."""
        return self.sock.recv(size)  # type: ignore[no-any-return]

    def send(self, data: bytes, deadline: float) -> bool:
        """All of *data* by *deadline* (loop time); False if it passed."""
        return send_all(self.sock, data, self.writer, deadline)

    def alive(self) -> bool:
        """True if the peer has neither closed nor sent anything while idle
        (an idle HTTP/1.1 connection has nothing to say: bytes there are a
        close or garbage)."""
        # poll(0), not a MSG_PEEK recv: same answer (readable means bytes or
        # EOF; a reset is an error event), without raising BlockingIOError
        # for the usual answer.
        poller = self._poller
        if poller is None:
            poller = self._poller = _poll()
            poller.register(self.sock.fileno(), select.POLLIN)
        return not poller.poll(0)

    def close(self) -> None:
        """Release everything; a second call does nothing."""
        if self.sock.fileno() < 0:
            return
        self.reader.close()
        self.writer.close()
        self.sock.close()
        self._own_connections.remove(self.own)
        if self.member is not None:
            self.member.release()
            self.member = None


class IdleConnections:
    """Idle upstream connections by key: at most *per_key* each, none older
    than *idle_timeout* seconds (0: none kept)."""

    def __init__(self, idle_timeout: float, per_key: int) -> None:
        self.idle_timeout = idle_timeout
        self.per_key = per_key
        self._idle: dict[tuple[str | None, str, int, str], list[Upstream]] = {}
        self._timer: Any = None
        #: Connections taken for reuse, and those found closed when taken.
        self.reused = 0
        self.stale = 0

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._idle.values())

    def take(self, key: tuple[str | None, str, int, str], sources: tuple[str, ...] = ()) -> Upstream | None:
        """The most recently idle connection for *key* (a :class:`ReuseKey`, or
        the plain tuple of its fields) that is still open and bound to one of
        *sources* (when --bind-address gives any), or None."""
        conns = self._idle.get(key)
        now = get_hub().loop.now()
        while conns:
            upstream = conns.pop()
            if not conns:
                del self._idle[key]
            usable = not sources or upstream.source in sources
            if usable and now - upstream.idle_since < self.idle_timeout and upstream.alive():
                self.reused += 1
                return upstream
            self.stale += 1
            upstream.close()
        return None

    def put(self, upstream: Upstream) -> None:
        """Keep *upstream* for reuse (or close it, past the caps)."""
        if self.idle_timeout <= 0 or self.per_key <= 0:
            upstream.close()
            return
        loop = get_hub().loop
        # The loop's cached time may be as old as its last iteration; starting
        # the sweep timer below updates it, which would age this connection.
        loop.update_now()
        upstream.idle_since = loop.now()
        conns = self._idle.get(upstream.key)
        if conns is None:
            self._idle[upstream.key] = [upstream]
        else:
            conns.append(upstream)
            if len(conns) > self.per_key:
                conns.pop(0).close()
        if self._timer is None:
            self._timer = loop.timer(SWEEP_INTERVAL_SECONDS, SWEEP_INTERVAL_SECONDS)
            self._timer.start(self._sweep)

    def _sweep(self) -> None:
        now = get_hub().loop.now()
        for key in list(self._idle):
            conns = self._idle[key]
            keep = [c for c in conns if now - c.idle_since < self.idle_timeout]
            for upstream in conns:
                if upstream not in keep:
                    upstream.close()
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if not self._idle and self._timer is not None:
            self._timer.close()
            self._timer = None

    def close(self) -> None:
        """Close every idle connection (shutdown)."""
        for conns in self._idle.values():
            for upstream in conns:
                upstream.close()
        self._idle.clear()
        if self._timer is not None:
            self._timer.close()
            self._timer = None
