"""The byte pumps of one tunnel, driven by libev callbacks, with no greenlet.

Once the 200 is sent a tunnel needs no blocking call at all: every move is a
non-blocking splice/read/write made when libev says a socket is ready. So the
relay is a small state machine whose watchers call it from the hub directly:
no greenlet per tunnel, no stack saved per idle tunnel, no switch per event.
An idle tunnel is two sockets, two read watchers, one timer and a few small
objects (a greenlet parked in a wait costs more than all of that: its frames
and its slice of the C stack).

Two ways to move bytes:

* ``splice``: Linux splice(2) through a pipe, socket -> pipe -> socket, so the
  payload never enters Python. A pipe is borrowed from a :class:`PipePool` while
  bytes sit in it and given back empty, so idle tunnels hold none.
* ``copy``: readv(2) into one per-process scratch buffer, write(2) out; only a
  partial write leaves a per-tunnel remainder.

Half-close is carried: EOF from one side becomes ``shutdown(SHUT_WR)`` toward
the other while the other direction keeps flowing. A reset on one side is passed
on as a reset (SO_LINGER 0) to the other. The idle deadline is per tunnel,
shared by both directions.
"""

from __future__ import annotations

import _socket
import fcntl
import logging
import os
import struct
import time
from collections.abc import Callable
from typing import Any

from gevent import get_hub

log = logging.getLogger(__name__)

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0
#: Reads in one callback before yielding to other tunnels: enough to amortise a
#: loop iteration on a bulk stream, few enough that one stream cannot starve others.
MAX_BURST = 8
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_LINGER_ABORT = struct.pack("ii", 1, 0)
_READ = 1  # libev EV_READ
_WRITE = 2  # libev EV_WRITE
#: libev timers may fire a hair early relative to loop.now().
_TIMER_SLACK = 0.001


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


class RelayResult:
    """What happened to a tunnel: bytes each way and why it ended."""

    __slots__ = ("bytes_down", "bytes_up", "reason")

    def __init__(self) -> None:
        #: client -> upstream
        self.bytes_up = 0
        #: upstream -> client
        self.bytes_down = 0
        #: client_eof / upstream_eof (who closed first, both closed), idle,
        #: half_close_timeout, client_reset, upstream_reset, lifetime, shutdown, error
        self.reason = ""


class _Half:
    """One direction: bytes from ``src`` to ``dst``."""

    __slots__ = (
        "done",
        "dst",
        "dst_fd",
        "eof",
        "in_pipe",
        "name",
        "nbytes",
        "pending",
        "pipe",
        "reader",
        "src",
        "src_fd",
        "writer",
    )

    def __init__(self, name: str, src: _socket.socket, dst: _socket.socket) -> None:
        self.name = name
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.reader: Any = None
        # Created on first back-pressure: most tunnels never need one.
        self.writer: Any = None
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
        self.pending: memoryview | None = None
        self.eof = False
        self.done = False
        self.nbytes = 0


class _Reset(Exception):
    """A peer reset the connection; ``side`` is "client" or "upstream"."""

    def __init__(self, side: str) -> None:
        self.side = side


class Relay:
    """Pump bytes between two connected sockets until the tunnel ends.

    :meth:`start` arms the watchers and returns at once. The relay then owns
    both sockets: when the tunnel ends it closes them (a reset passed on as a
    reset) and calls *on_done* with itself. :meth:`abort` ends it early.
    """

    __slots__ = (
        "_first_eof",
        "_halves",
        "_last_activity",
        "_limit",
        "_loop",
        "_started",
        "_timer",
        "chunk",
        "client",
        "first_byte_at",
        "half_close_timeout",
        "idle_timeout",
        "max_lifetime",
        "mode",
        "on_done",
        "pipes",
        "result",
        "scratch",
        "upstream",
    )

    def __init__(
        self,
        client: _socket.socket,
        upstream: _socket.socket,
        *,
        mode: str,
        idle_timeout: float,
        half_close_timeout: float,
        on_done: Callable[[Relay], None],
        max_lifetime: float = 0.0,
        pipes: PipePool | None = None,
        scratch: bytearray | None = None,
        chunk_bytes: int = 64 * 1024,
    ) -> None:
        if mode == "splice" and pipes is None:
            raise ValueError("the splice relay needs a PipePool")
        if mode == "copy" and scratch is None:
            scratch = bytearray(chunk_bytes)
        self.client = client
        self.upstream = upstream
        self.mode = mode
        self.idle_timeout = idle_timeout
        self.half_close_timeout = half_close_timeout
        self.max_lifetime = max_lifetime
        self.pipes = pipes
        self.scratch = scratch
        self.chunk = chunk_bytes
        self.on_done = on_done
        self.result = RelayResult()
        #: time.monotonic() when the first upstream byte reached the client (0: none yet).
        self.first_byte_at = 0.0
        self._first_eof = ""
        self._halves = (_Half("client", client, upstream), _Half("upstream", upstream, client))
        self._loop: Any = None
        self._timer: Any = None
        self._started = 0.0
        self._last_activity = 0.0
        self._limit = 0.0

    def start(self, first_bytes_up: int = 0) -> None:
        """Arm the watchers; *first_bytes_up* counts early data already sent."""
        loop = self._loop = get_hub().loop
        self._started = self._last_activity = loop.now()
        self._halves[0].nbytes = first_bytes_up
        for half in self._halves:
            half.reader = loop.io(half.src_fd, _READ)
            half.reader.start(self._on_readable, half)
        self._arm_timer()

    def abort(self, reason: str) -> None:
        """End the tunnel now (e.g. at shutdown), closing both sockets."""
        self._end(reason)

    # --- callbacks, run by the hub -------------------------------------------------

    def _on_readable(self, half: _Half) -> None:
        self._step(self._pump, half)

    def _on_writable(self, half: _Half) -> None:
        self._step(self._flush, half)

    def _step(self, move: Callable[[_Half], bool], half: _Half) -> None:
        # A libev callback must not raise: every outcome ends here.
        try:
            if move(half):
                self._last_activity = self._loop.now()
                if not self.first_byte_at and half is self._halves[1]:
                    self.first_byte_at = time.monotonic()
        except _Reset as reset:
            self._end_reset(reset.side)
            return
        except Exception:
            log.exception("relay bug (%s, %s side)", move.__name__, half.name)
            self._end("error")
            return
        self._after_progress()

    def _on_timer(self) -> None:
        self._timer = None
        now = self._loop.now()
        if self.max_lifetime and now - self._started >= self.max_lifetime - _TIMER_SLACK:
            self._end("lifetime")
            return
        if self._limit and now - self._last_activity >= self._limit - _TIMER_SLACK:
            half_closed = self._halves[0].done or self._halves[1].done
            if half_closed and self._limit == self.half_close_timeout:
                self._end("half_close_timeout")
            else:
                self._end("idle")
            return
        self._arm_timer()

    # --- state ---------------------------------------------------------------------

    def _after_progress(self) -> None:
        up, down = self._halves
        if up.done and down.done:
            self._end("client_eof" if self._first_eof == "client" else "upstream_eof")
        elif (up.done or down.done) and self._idle_limit() != self._limit:
            self._arm_timer()  # half-closed: a shorter idle limit may apply now

    def _idle_limit(self) -> float:
        """Seconds without traffic that end the tunnel now (0: no limit)."""
        limit = self.idle_timeout
        if self.half_close_timeout and (self._halves[0].done or self._halves[1].done):
            limit = min(limit, self.half_close_timeout) if limit else self.half_close_timeout
        return limit

    def _arm_timer(self) -> None:
        # One timer per tunnel, re-armed only when it fires or the limit changes;
        # traffic just moves _last_activity.
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        self._limit = limit = self._idle_limit()
        deadlines = []
        if limit:
            deadlines.append(self._last_activity + limit)
        if self.max_lifetime:
            deadlines.append(self._started + self.max_lifetime)
        if deadlines:
            self._timer = self._loop.timer(max(0.0, min(deadlines) - self._loop.now()))
            self._timer.start(self._on_timer)

    def _end_reset(self, side: str) -> None:
        survivor = self.upstream if side == "client" else self.client
        try:
            survivor.setsockopt(_socket.SOL_SOCKET, _socket.SO_LINGER, _LINGER_ABORT)
        except OSError:
            pass
        self._end(f"{side}_reset")

    def _end(self, reason: str) -> None:
        if self.result.reason:
            return
        self.result.reason = reason
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        for half in self._halves:
            for watcher in (half.reader, half.writer):
                if watcher is not None:
                    watcher.stop()
                    watcher.close()
            half.reader = half.writer = None
            if half.pipe is not None:
                # Bytes still in it had nowhere to go: the pipe is not reusable.
                PipePool.discard(half.pipe)
                half.pipe = None
            half.pending = None
        self.result.bytes_up = self._halves[0].nbytes
        self.result.bytes_down = self._halves[1].nbytes
        self.client.close()
        self.upstream.close()
        try:
            self.on_done(self)
        except Exception:
            log.exception("relay on_done failed")

    # --- moving bytes --------------------------------------------------------------

    def _pump(self, half: _Half) -> bool:
        """The source is readable: move what is there. True if bytes moved."""
        if half.eof or half.in_pipe or half.pending is not None:
            # A stale wake-up: this direction waits for dst; reading now would reorder bytes.
            return False
        if self.mode == "splice":
            return self._pump_splice(half)
        return self._pump_copy(half)

    def _pump_splice(self, half: _Half) -> bool:
        pipes = self.pipes
        assert pipes is not None
        moved = False
        for _ in range(MAX_BURST):
            if half.pipe is None:
                half.pipe = pipes.get()
            try:
                n = os.splice(half.src_fd, half.pipe[1], self.chunk, flags=SPLICE_FLAGS)
            except BlockingIOError:
                break
            except OSError as exc:
                raise _Reset(half.name) from exc
            if n == 0:
                self._on_eof(half)
                break
            half.in_pipe += n
            moved = True
            if not self._drain_pipe(half) or n < self.chunk:
                break
        if half.pipe is not None and half.in_pipe == 0:
            pipes.put(half.pipe)
            half.pipe = None
        return moved

    def _drain_pipe(self, half: _Half) -> bool:
        """Move the pipe's bytes to dst. False (and writer armed) if dst is full."""
        pipe = half.pipe
        assert pipe is not None
        while half.in_pipe:
            try:
                m = os.splice(pipe[0], half.dst_fd, half.in_pipe, flags=SPLICE_FLAGS)
            except BlockingIOError:
                self._wait_writable(half)
                return False
            except OSError as exc:
                raise _Reset(self._other(half.name)) from exc
            half.in_pipe -= m
            half.nbytes += m
        return True

    def _pump_copy(self, half: _Half) -> bool:
        scratch = self.scratch
        assert scratch is not None
        moved = False
        for _ in range(MAX_BURST):
            try:
                n = os.readv(half.src_fd, [scratch])
            except BlockingIOError:
                break
            except OSError as exc:
                raise _Reset(half.name) from exc
            if n == 0:
                self._on_eof(half)
                break
            moved = True
            view = memoryview(scratch)[:n]
            sent = self._write(half, view)
            if sent < n:
                # Only a remainder is ever copied out of the shared buffer.
                half.pending = memoryview(bytes(view[sent:]))
                self._wait_writable(half)
                break
            if n < len(scratch):
                break
        return moved

    def _write(self, half: _Half, data: memoryview) -> int:
        sent = 0
        while sent < len(data):
            try:
                sent += os.write(half.dst_fd, data[sent:])
            except BlockingIOError:
                break
            except OSError as exc:
                raise _Reset(self._other(half.name)) from exc
        half.nbytes += sent
        return sent

    def _flush(self, half: _Half) -> bool:
        """dst became writable: push what is waiting, then resume reading."""
        if self.mode == "splice":
            if half.pipe is None:
                return False
            before = half.in_pipe
            if not self._drain_pipe(half):
                return half.in_pipe < before
            assert self.pipes is not None
            self.pipes.put(half.pipe)
            half.pipe = None
        else:
            pending = half.pending
            if pending is not None:
                sent = self._write(half, pending)
                if sent < len(pending):
                    half.pending = pending[sent:]
                    return sent > 0
                half.pending = None
        if half.writer is not None:
            half.writer.stop()
        if half.eof:
            self._finish(half)
        else:
            half.reader.start(self._on_readable, half)
        return True

    def _wait_writable(self, half: _Half) -> None:
        # Back-pressure: stop reading this direction until dst drains.
        half.reader.stop()
        if half.writer is None:
            half.writer = self._loop.io(half.dst_fd, _WRITE)
        half.writer.start(self._on_writable, half)

    def _on_eof(self, half: _Half) -> None:
        half.eof = True
        if not self._first_eof:
            self._first_eof = half.name
        half.reader.stop()
        if half.in_pipe or half.pending is not None:
            return  # the writer finishes once the rest is delivered
        self._finish(half)

    def _finish(self, half: _Half) -> None:
        half.done = True
        if half.writer is not None:
            half.writer.stop()
        try:
            half.dst.shutdown(_socket.SHUT_WR)
        except OSError:
            pass  # already gone: the other direction will notice

    @staticmethod
    def _other(side: str) -> str:
        return "upstream" if side == "client" else "client"
