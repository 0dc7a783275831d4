"""Byte movers: how one direction of a tunnel gets its bytes from ``src`` to ``dst``.

The relay (:mod:`gconnect.tunnel.relay`) decides *when* to move: it calls
:meth:`Mover.pump` when the source is readable and :meth:`Mover.flush` when
the destination, full before, is writable again. A mover decides *how*, and
keeps what it could not deliver in the direction's :class:`Half`:

* :class:`CopyMover`: ``recv_into`` one per-process scratch buffer, ``send``
  out; only a partial send leaves a per-tunnel remainder.
* :class:`SpliceMover`: Linux splice(2) socket -> pipe -> socket, so the payload
  never enters Python. A pipe is borrowed from a :class:`PipePool` while bytes
  sit in it and given back empty, so idle tunnels hold none.
* ``auto`` (:class:`CopyMover` with a bulk mover): copies until one read fills
  the scratch buffer, then hands that direction to splice for good. Small
  exchanges (a request, an echo) never borrow a pipe; bulk never pays the copy.
* the TLS movers (:mod:`gconnect.tunnel.tls`) decrypt or encrypt on the way.

Every mover does at most one read from ``src`` per wake-up (then as many
writes as it takes to deliver it, or until ``dst`` is full): one busy
direction goes back to the loop after a chunk, so other tunnels' small
exchanges never wait behind a bulk burst (reading all there is per callback
let 50 bulk pushes hold other tunnels' echoes for tens of milliseconds:
docs/performance.rst, bursts).

How much that one read may take follows the load (:class:`ReadSize`): a
share of ``turn_budget_bytes`` per turn of the event loop, split among the
sockets ready in it, at most ``chunk_bytes``. One turn's copying is what
every socket that becomes ready meanwhile waits behind, and fifty full
chunks are tens of milliseconds; a tunnel alone keeps the large read that
makes bulk cheap per byte.

Errors: a failed read is the source's reset, a failed write the
destination's; both raise :class:`Reset` naming that side.
"""

from __future__ import annotations

import _socket
import fcntl
import os
from typing import Any

from gevent import get_hub

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class Reset(Exception):
    """A peer reset the connection; ``side`` is "client" or "upstream"."""

    def __init__(self, side: str) -> None:
        super().__init__(side)
        self.side = side


class Direction:
    """One direction of a tunnel, as every relay keeps it: its state, and its
    source ``src`` (a socket; None where the source is not one, as an HTTP/2
    stream's client side). ``name`` is the side that sends into it ("client"
    or "upstream"), ``peer`` the side it delivers to.

    Only the fields every direction has are set per instance; the rest start
    as the class's defaults below (fewer stores per tunnel: this is made
    twice for every tunnel opened).
    """

    #: libev watchers on src (read) and dst (write), owned by the relay.
    reader: Any = None
    writer: Any = None
    #: Bytes delivered to dst.
    nbytes = 0
    #: True while bytes wait for dst to accept them (the reader is stopped).
    blocked = False
    #: src sent EOF; ``done`` once it was passed on to dst.
    eof = False
    done = False
    #: The EOF could not be passed on yet (a TLS close_notify waits for room).
    finishing = False
    #: The source's hang-up is watched while the reader is stopped
    #: (relay.HangupWatch), and was seen (a FIN still behind unread bytes).
    hangup = False
    peer_fin = False
    #: CopyMover's undelivered remainder; SpliceMover's pipe and its fill.
    pending: Any = None
    pipe: tuple[int, int] | None = None
    in_pipe = 0
    #: The TLS session of a TLS mover's side.
    tls: Any = None
    #: A bandwidth limit's state (shaping.Throttle); None: unlimited.
    throttle: Any = None

    def __init__(self, name: str, peer: str, src: Any) -> None:
        self.name = name
        self.peer = peer
        self.src = src


class Half(Direction):
    """A direction between two sockets, moved by a :class:`Mover`: bytes from
    ``src`` to ``dst``, and what the mover holds for ``dst`` meanwhile."""

    def __init__(self, name: str, peer: str, src: Any, dst: Any, mover: Mover) -> None:
        # Not through Direction.__init__: one call fewer, twice per tunnel.
        self.name = name
        self.peer = peer
        self.src = src
        self.dst = dst
        self.mover = mover


class ReadSize:
    """The most one read may take: a share of *budget* bytes per turn of the
    event loop, split among the watchers ready in that turn, no more than
    *full* and no less than *floor* (``budget`` 0: always *full*).

    libev runs a turn's ready watchers one after another, and every socket
    that becomes ready meanwhile waits for the turn to end; so the turn's
    reads together, not each one, are what to bound. The first read of a turn
    counts the watchers still to run (``pendingcnt``) and fixes the share for
    the rest of it (``iteration`` tells turns apart). A tunnel alone in its
    turn, as in single-tunnel bulk, reads *full*; fifty ready ones read a
    fiftieth of the budget each.
    """

    __slots__ = ("budget", "floor", "full", "loop", "share", "turn")

    def __init__(self, full: int, budget: int = 0, floor: int = 4096) -> None:
        self.full = full
        self.budget = budget
        self.floor = min(floor, full)
        self.share = full
        #: The loop iteration ``share`` was fixed in.
        self.turn = -1
        loop = get_hub().loop
        # Only libev counts pending watchers (gevent's libuv loop does not): there every read is full.
        self.loop = loop if budget and hasattr(loop, "pendingcnt") else None

    def __call__(self, cap: int = 0) -> int:
        """The size for the read about to be made, no more than *cap* if given
        (a bandwidth limit's allowance: :meth:`Mover.pump`'s *size*)."""
        loop = self.loop
        if loop is None:
            return cap or self.full
        turn = loop.iteration
        if turn != self.turn:
            self.turn = turn
            share = self.budget // (loop.pendingcnt + 1)
            self.share = self.full if share >= self.full else max(share, self.floor)
        return cap if cap and cap < self.share else self.share


class Mover:
    """The interface the relay drives. Movers hold no per-tunnel state: that
    lives in the :class:`Half`, so one mover serves every tunnel of a process."""

    #: The most one read takes (a bandwidth limit's allowance is capped at it).
    size = 64 * 1024

    def pump(self, half: Half, size: int = 0) -> int:
        """``src`` is readable: read once (at most *size* bytes; 0: the mover's
        own read size, which a bandwidth limit's *size* never exceeds) and
        deliver what can be delivered. Sets ``half.eof`` at EOF and
        ``half.blocked`` when bytes wait for dst; returns the bytes read (0:
        nothing there, or EOF)."""
        raise NotImplementedError

    def flush(self, half: Half) -> int:
        """``dst`` is writable: deliver what waits; clears ``half.blocked`` once
        all of it is delivered. Returns the bytes delivered."""
        raise NotImplementedError

    def finish(self, half: Half) -> bool:
        """Pass the EOF on (shut dst's sending side); False if that has to wait
        for dst to be writable (then it is called again)."""
        try:
            half.dst.shutdown(_socket.SHUT_WR)
        except OSError:
            pass  # already gone: the other direction will notice
        return True

    def drop(self, half: Half) -> None:
        """The tunnel ended: let go of whatever is held for dst."""
        half.pending = None


def send_some(half: Half, data: Any) -> int:
    """One write of *data* to ``half.dst``; the count written (0 if dst is
    full). A short write means the socket buffer is full: trying again at once
    would only meet EAGAIN, so the rest waits for the writer."""
    try:
        return half.dst.send(data)  # type: ignore[no-any-return]
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise Reset(half.peer) from exc


def flush_pending(half: Half) -> int:
    """Write ``half.pending`` to dst; clear it and ``half.blocked`` once all is
    written. Returns the count written."""
    pending = half.pending
    sent = send_some(half, pending)
    if sent < len(pending):
        half.pending = pending[sent:]
    else:
        half.pending = None
        half.blocked = False
    return sent


class CopyMover(Mover):
    """Through one scratch buffer shared by every tunnel (a relay callback
    never yields while it uses it); *bulk* takes over a direction whose read
    fills the buffer (``--relay auto``)."""

    def __init__(self, chunk_bytes: int, bulk: Mover | None = None, budget_bytes: int = 0) -> None:
        self.scratch = bytearray(chunk_bytes)
        self.view = memoryview(self.scratch)
        self.size = chunk_bytes
        self.read_size = ReadSize(chunk_bytes, budget_bytes)
        self.bulk = bulk

    def pump(self, half: Half, size: int = 0) -> int:
        try:
            n = half.src.recv_into(self.scratch, self.read_size(size))
        except BlockingIOError:
            return 0
        except OSError as exc:
            raise Reset(half.name) from exc
        if not n:
            half.eof = True
            return 0
        # send_some(), inline: once per read.
        try:
            sent = half.dst.send(self.view[:n])
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise Reset(half.peer) from exc
        half.nbytes += sent
        if sent < n:
            # Only a remainder is ever copied out of the shared buffer.
            half.pending = self.scratch[sent:n]
            half.blocked = True
        if n == self.size and self.bulk is not None:
            # Only a full-size read hands over: a crowded turn's smaller share says nothing of bulk.
            half.mover = self.bulk  # which delivers the remainder first
        return n

    def flush(self, half: Half) -> int:
        sent = flush_pending(half)
        half.nbytes += sent
        return sent


class PipePool:
    """Pipes for splice, lent while bytes are in flight.

    Only empty pipes come back; at most *size* are kept, the rest are closed.
    """

    def __init__(self, size: int, pipe_bytes: int) -> None:
        self._free: list[tuple[int, int]] = []
        self._size = size
        self._pipe_bytes = pipe_bytes

    def get(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            # A bigger pipe moves more per splice; pages are only allocated when used.
            fcntl.fcntl(w, _F_SETPIPE_SZ, self._pipe_bytes)
        except OSError:
            pass  # capped by /proc/sys/fs/pipe-max-size: the default 64 KiB works too.
        return r, w

    def put(self, pipe: tuple[int, int]) -> None:
        if len(self._free) < self._size:
            self._free.append(pipe)
        else:
            self.discard(pipe)

    @staticmethod
    def discard(pipe: tuple[int, int]) -> None:
        os.close(pipe[0])
        os.close(pipe[1])

    def close(self) -> None:
        while self._free:
            self.discard(self._free.pop())

    def __len__(self) -> int:
        return len(self._free)


class SpliceMover(Mover):
    """socket -> pipe -> socket with splice(2); the pipe is held only while bytes sit in it."""

    def __init__(self, pipes: PipePool, chunk_bytes: int, budget_bytes: int = 0) -> None:
        self.pipes = pipes
        self.chunk = self.size = chunk_bytes
        self.read_size = ReadSize(chunk_bytes, budget_bytes)

    def pump(self, half: Half, size: int = 0) -> int:
        pipe = half.pipe
        if pipe is None:
            pipe = half.pipe = self.pipes.get()
        try:
            n = os.splice(half.src.fileno(), pipe[1], self.read_size(size), flags=SPLICE_FLAGS)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            raise Reset(half.name) from exc
        else:
            if n:
                half.in_pipe = n
                self._drain(half, pipe)
            else:
                half.eof = True
        if not half.in_pipe:
            self.pipes.put(pipe)
            half.pipe = None
        return n

    def flush(self, half: Half) -> int:
        if half.pending is not None:
            # The remainder of the copy mover this direction started with (auto).
            sent = flush_pending(half)
            half.nbytes += sent
            return sent
        pipe = half.pipe
        assert pipe is not None
        before = half.in_pipe
        self._drain(half, pipe)
        if not half.in_pipe:
            self.pipes.put(pipe)
            half.pipe = None
        return before - half.in_pipe

    @staticmethod
    def _drain(half: Half, pipe: tuple[int, int]) -> None:
        dst = half.dst.fileno()
        while half.in_pipe:
            try:
                m = os.splice(pipe[0], dst, half.in_pipe, flags=SPLICE_FLAGS)
            except BlockingIOError:
                half.blocked = True
                return
            except OSError as exc:
                raise Reset(half.peer) from exc
            half.in_pipe -= m
            half.nbytes += m
        half.blocked = False

    def drop(self, half: Half) -> None:
        if half.pipe is not None:
            # Bytes still in it had nowhere to go: the pipe is not reusable.
            PipePool.discard(half.pipe)
            half.pipe = None
        half.in_pipe = 0


def splice_supported() -> bool:
    """True when os.splice exists and works on a socket here."""
    if not hasattr(os, "splice"):
        return False
    a, b = _socket.socketpair()
    r, w = os.pipe()
    try:
        b.send(b"x")
        return os.splice(a.fileno(), w, 1, flags=SPLICE_FLAGS) == 1
    except OSError:
        return False
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()
