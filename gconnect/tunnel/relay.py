"""The relay: both directions of one tunnel, driven by libev callbacks.

Once the 200 is sent a tunnel needs no blocking call at all: every move is a
non-blocking call made when libev says a socket is ready. So the relay is a
small state machine whose watchers call it from the hub directly: no greenlet
per tunnel, no stack kept per idle tunnel, no switch per event. An idle tunnel
is two sockets, two read watchers, at most one timer and a few small objects.

What moves the bytes is a :class:`~gconnect.tunnel.movers.Mover` per
direction (copy, splice, or TLS); everything else is here and shared by all of
them, so plain and TLS tunnels speak one vocabulary:

* half-close is carried: EOF from one side becomes ``shutdown(SHUT_WR)`` (for
  TLS, close_notify first) toward the other, and the other direction keeps
  flowing;
* a reset on one side is passed on as a reset (SO_LINGER 0) to the other;
* deadlines: one timer per tunnel. The idle limit is per tunnel, not per
  direction (a long download has a silent upload side); once a side has
  half-closed, the shorter half-close limit applies; the lifetime limit counts
  from the 200. Which one fired is decided when the timer fires, from the
  tunnel's state, and is the end reason;
* end reasons: ``client_eof`` / ``upstream_eof`` (who ended first; both did),
  ``idle``, ``half_close_timeout``, ``lifetime``, ``client_reset``,
  ``upstream_reset``, ``shutdown``, ``error`` (a bug, logged);
* a source that hangs up while its reader is stopped for back-pressure is
  noticed at once (:class:`HangupWatch`), not at the idle timeout.

Ownership: the relay borrows both sockets from its tunnel. It never closes
them: when it ends it stops its watchers, lets go of what it holds and calls
``on_done(relay)``; the tunnel closes the sockets.
"""

from __future__ import annotations

import _socket
import logging
import select
import struct
import time
from collections.abc import Callable
from typing import Any

from gevent import get_hub
from gevent.monkey import get_original

from .deadlines import Deadlines, RelayLimits
from .movers import Direction, Half, Mover, Reset
from .waiting import READ, WRITE

log = logging.getLogger(__name__)

#: SO_LINGER on, 0 s: close() then sends a reset, passing on the other side's reset.
LINGER_ABORT = struct.pack("ii", 1, 0)
_epoll = get_original("select", "epoll")


class Relay(Deadlines):
    """Pump bytes between two connected sockets until the tunnel ends.

    :meth:`start` arms the watchers and returns at once; the relay then drives
    both sockets until the tunnel ends, and calls *on_done* with itself.
    :meth:`abort` ends it early. *client_reader* and *outbound_writer* are
    watchers the handshake already made (read on the client, write on the
    upstream), stopped; the relay adopts them instead of making its own (the
    writer becomes the upstream's reader). After the
    end, ``end_reason``, ``bytes_up``, ``bytes_down`` and ``first_byte_at`` say
    what happened.

    The arguments may be passed by position: keywords to a class call cost a
    dictionary per call (the client side makes one relay per tunnel).
    """

    up: Half
    down: Half
    #: time.monotonic() when the first upstream byte reached the client (0: none yet).
    first_byte_at = 0.0
    #: Bytes delivered each way, once the relay has ended (read them from the halves before).
    bytes_up = 0
    bytes_down = 0

    def __init__(
        self,
        client: Any,
        outbound: Any,
        movers: tuple[Mover, Mover],
        limits: RelayLimits,
        on_done: Callable[[Relay], None],
        client_reader: Any = None,
        outbound_writer: Any = None,
        tls: Any = None,
        hangups: HangupWatch | None = None,
        loop: Any = None,
    ) -> None:
        # The halves are named as the end reasons name the sides ("upstream_eof", "upstream_reset").
        self.up = up = Half("client", "upstream", client, outbound, movers[0])
        self.down = down = Half("upstream", "client", outbound, client, movers[1])
        if client_reader is not None:
            up.reader = client_reader
        if outbound_writer is not None:
            # Re-targeted, not kept as up's writer: a short tunnel needs a reader there
            # and never a writer, and changing a stopped watcher's events is a fraction of
            # making one (no Python object, no fcntl check of the descriptor).
            outbound_writer.events = READ
            down.reader = outbound_writer
        if tls is not None:
            up.tls = down.tls = tls
        self.limits = limits
        self.on_done = on_done
        self._hangups = hangups
        # The hub's loop; given by a caller that has it at hand (get_hub() costs a call).
        self.loop = loop if loop is not None else get_hub().loop

    def start(self, first_bytes_up: int = 0, client_eof: bool = False) -> None:
        """Arm the watchers; *first_bytes_up* counts early data already sent,
        *client_eof* says the client's EOF already came with it (a TLS
        close_notify read with the head)."""
        loop = self.loop
        # start_clock(), inline: once per tunnel.
        self._started = self._last_activity = loop.now()
        first = self.limits.first_deadline
        if first:
            self._timer = timer = loop.timer(first)
            timer.start(self.on_timer)
            self._timer_at = self._started + first
        up = self.up
        down = self.down
        if first_bytes_up:
            up.nbytes = first_bytes_up
        reader = down.reader
        if reader is None:
            reader = down.reader = loop.io(down.src.fileno(), READ)
        reader.start(self._on_readable, down)
        reader = up.reader
        if reader is None:
            reader = up.reader = loop.io(up.src.fileno(), READ)
        if client_eof:
            up.eof = True
            self._finish(up)
        else:
            reader.start(self._on_readable, up)

    def abort(self, reason: str) -> None:
        """End the tunnel now (e.g. at shutdown)."""
        self.end(reason)

    # --- callbacks, run by the hub: a libev callback must not raise -----------------

    def _on_readable(self, half: Half) -> None:
        try:
            if half.mover.pump(half):
                self._last_activity = self.loop.now()  # touch(), inline: once per wake-up
                if not self.first_byte_at and half is self.down:
                    self.first_byte_at = time.monotonic()
            if half.blocked:
                self._wait_writable(half)
            elif half.eof:
                half.reader.stop()
                self._finish(half)
        except Reset as reset:
            self._end_reset(reset.side)
        except Exception:
            log.exception("relay bug (pump, %s side)", half.name)
            self.end("error")

    def _on_writable(self, half: Half) -> None:
        try:
            if half.finishing:
                self._finish(half)
                return
            if half.mover.flush(half):
                self._last_activity = self.loop.now()  # touch(), inline: once per wake-up
            if half.blocked:
                return  # the writer stays armed
            half.writer.stop()
            if half.eof:
                self._finish(half)
            else:
                half.reader.start(self._on_readable, half)
        except Reset as reset:
            self._end_reset(reset.side)
        except Exception:
            log.exception("relay bug (flush, %s side)", half.name)
            self.end("error")

    def hung_up(self, half: Direction, error: int) -> None:
        """The source of *half* hung up while we were not reading it (HangupWatch)."""
        if self.end_reason:
            return
        if error:
            self._end_reset(half.name)
        elif not half.peer_fin:
            # A FIN behind bytes we have not read yet: they are still delivered, then the EOF.
            half.peer_fin = True
            self.half_closed(half.name)

    # --- state -----------------------------------------------------------------------

    def _wait_writable(self, half: Half) -> None:
        # Back-pressure: stop reading this direction until dst drains.
        half.reader.stop()
        if half.writer is None:
            half.writer = self.loop.io(half.dst.fileno(), WRITE)
        half.writer.start(self._on_writable, half)
        if self._hangups is not None and not half.hangup:
            half.hangup = True
            self._hangups.watch(self, half)

    def _finish(self, half: Half) -> None:
        if not half.mover.finish(half):
            half.finishing = True
            if half.writer is None:
                half.writer = self.loop.io(half.dst.fileno(), WRITE)
            half.writer.start(self._on_writable, half)
            return
        if half.finishing:
            half.finishing = False
            half.writer.stop()
        half.done = True
        self.side_done(half.name)

    def _end_reset(self, side: str) -> None:
        survivor = self.down.src if side == "client" else self.up.src
        try:
            survivor.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, LINGER_ABORT)
        except OSError:
            pass
        self.end(f"{side}_reset")

    def end(self, reason: str) -> None:
        if not self.settle(reason):
            return
        for half in (self.up, self.down):
            if half.reader is not None:
                half.reader.close()
                half.reader = None
            if half.writer is not None:
                half.writer.close()
                half.writer = None
            if half.pending is not None or half.pipe is not None:
                half.mover.drop(half)
            if half.hangup and self._hangups is not None:  # hangup is only set with a watch
                self._hangups.forget(half)
        self.bytes_up = self.up.nbytes
        self.bytes_down = self.down.nbytes
        try:
            self.on_done(self)
        except Exception:
            log.exception("relay on_done failed")


class HangupWatch:
    """Notices a socket's reset or FIN while its relay is not reading it.

    A back-pressured direction stops its reader, and libev then watches that
    socket for nothing: a client that resets meanwhile would hold two
    descriptors (and a pipe) until the idle timeout. One epoll instance per
    process, itself watched by libev, holds those sources with
    EPOLLRDHUP | EPOLLET: it wakes once when the peer hangs up (EPOLLERR and
    EPOLLHUP are always reported) and never for data. A socket is added the
    first time its direction is back-pressured and stays until it is closed
    (closing removes it from the epoll set), so bulk tunnels do not pay an
    epoll_ctl per stall.
    """

    def __init__(self) -> None:
        self._epoll = _epoll()
        self._watched: dict[int, tuple[Deadlines, Direction]] = {}
        self._watcher = get_hub().loop.io(self._epoll.fileno(), READ)
        self._watcher.start(self._on_events)

    def watch(self, relay: Deadlines, half: Direction) -> None:
        fd = half.src.fileno()
        try:
            self._epoll.register(fd, select.EPOLLRDHUP | select.EPOLLET)
        except OSError:
            return
        self._watched[fd] = (relay, half)

    def forget(self, half: Direction) -> None:
        """The relay ended; its sockets close next, which drops them from the epoll set."""
        fd = half.src.fileno()
        entry = self._watched.get(fd)
        if entry is not None and entry[1] is half:
            del self._watched[fd]

    def _on_events(self) -> None:
        try:
            events = self._epoll.poll(0)
        except OSError:
            return
        for fd, mask in events:
            entry = self._watched.get(fd)
            if entry is None:
                continue
            relay, half = entry
            error = 0
            if mask & (select.EPOLLERR | select.EPOLLHUP):
                try:
                    error = half.src.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
                except OSError as exc:
                    error = exc.errno or 1
            try:
                relay.hung_up(half, error)
            except Exception:
                log.exception("relay bug (hang-up, %s side)", half.name)

    def close(self) -> None:
        self._watcher.close()
        self._epoll.close()
