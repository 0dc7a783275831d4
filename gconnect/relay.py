"""The byte pumps of one tunnel.

One greenlet serves both directions of a tunnel: it waits on libev watchers for
whichever socket is ready and moves bytes without blocking, so an idle tunnel
costs one parked greenlet and its two sockets, and a tunnel whose two peers
both write before they read cannot deadlock.

Two ways to move bytes:

* ``splice``: Linux splice(2) through a pipe, socket -> pipe -> socket, so the
  payload never enters Python. A pipe is borrowed from a :class:`PipePool` for
  as long as bytes sit in it and given back empty, so idle tunnels hold none.
* ``copy``: readv(2) into one per-process scratch buffer, write(2) out; only a
  partial write leaves a per-tunnel remainder.

Half-close is carried: EOF from one side becomes ``shutdown(SHUT_WR)`` toward
the other while the other direction keeps flowing. A reset on one side is passed
on as a reset (SO_LINGER 0) to the other. The idle deadline is per tunnel,
shared by both directions.
"""

from __future__ import annotations

import fcntl
import os
import socket as _stdlib_socket
import struct
from typing import Any, Callable

from gevent import get_hub, getcurrent
from gevent.socket import socket

SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0
#: Reads in one wake-up before yielding to other tunnels: enough to amortise a
#: hub round trip on a bulk stream, few enough that one stream cannot starve others.
MAX_BURST = 8
_F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
_LINGER_ABORT = struct.pack("ii", 1, 0)

_READ = 1  # libev EV_READ
_WRITE = 2  # libev EV_WRITE


def splice_supported() -> bool:
    """True when os.splice exists and works on a socket here."""
    if not hasattr(os, "splice"):
        return False
    a, b = _stdlib_socket.socketpair()
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
        self.created = 0

    def get(self) -> tuple[int, int]:
        if self._free:
            return self._free.pop()
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            # A bigger pipe moves more per splice; pages are only allocated when used.
            fcntl.fcntl(w, _F_SETPIPE_SZ, self._pipe_bytes)
        except OSError:
            pass  # capped by /proc/sys/fs/pipe-max-size: the default 64 KiB works too.
        self.created += 1
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
        #: half_close_timeout, client_reset, upstream_reset, lifetime, shutdown
        self.reason = "shutdown"


class _Half:
    """One direction: bytes from ``src`` to ``dst``."""

    __slots__ = (
        "done",
        "dst",
        "dst_fd",
        "eof",
        "in_pipe",
        "loop",
        "name",
        "nbytes",
        "pending",
        "pipe",
        "reader",
        "src",
        "src_fd",
        "writer",
    )

    def __init__(self, name: str, src: socket, dst: socket, loop) -> None:  # type: ignore[no-untyped-def]
        self.name = name
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.reader = loop.io(self.src_fd, _READ)
        # Created on first back-pressure: most short tunnels never need one.
        self.writer: Any = None
        self.loop = loop
        self.pipe: tuple[int, int] | None = None
        self.in_pipe = 0
        self.pending: memoryview | None = None
        self.eof = False
        self.done = False
        self.nbytes = 0


def _unset_wake(tag: object) -> None:
    raise RuntimeError("Relay.run() is not running")


class _Reset(Exception):
    """A peer reset the connection; ``side`` is "client" or "upstream"."""

    def __init__(self, side: str) -> None:
        self.side = side


class Relay:
    """Pump bytes between two connected sockets until the tunnel ends.

    The caller owns and closes both sockets after :meth:`run` returns; if the
    tunnel ended by a reset, the surviving socket has already been set to close
    with a reset of its own.
    """

    def __init__(
        self,
        client: socket,
        upstream: socket,
        *,
        mode: str,
        idle_timeout: float,
        half_close_timeout: float,
        max_lifetime: float = 0.0,
        pipes: PipePool | None = None,
        scratch: bytearray | None = None,
        chunk_bytes: int = 256 * 1024,
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
        self.result = RelayResult()
        self._first_eof = ""
        self._wake: Callable[[object], None] = _unset_wake

    def run(self, first_chunk: bytes = b"") -> RelayResult:
        """Relay until both directions end, the tunnel idles out or a side resets."""
        hub = get_hub()
        loop = hub.loop
        result = self.result
        up = _Half("client", self.client, self.upstream, loop)
        down = _Half("upstream", self.upstream, self.client, loop)
        halves = (up, down)
        fired: list[object] = []
        current = getcurrent()

        def wake(tag: object) -> None:
            fired.append(tag)
            if len(fired) == 1:
                current.switch()

        self._wake = wake

        started = loop.now()
        last_activity = started
        timer = None
        timer_limit = -1.0
        try:
            if first_chunk:
                # RFC 9110 §9.3.6 leaves it to the client to send early; those bytes are tunnel data.
                self.upstream.sendall(first_chunk)
                up.nbytes += len(first_chunk)
            for half in halves:
                half.reader.start(wake, half.reader)
            while True:
                limit = self._idle_limit(halves)
                if timer is None or timer_limit != limit:
                    if timer is not None:
                        timer.stop()
                        timer = None
                    deadline = self._deadline(started, last_activity, limit)
                    if deadline is not None:
                        timer = loop.timer(max(0.0, deadline - loop.now()))
                        timer.start(wake, None)
                    timer_limit = limit
                del fired[:]
                hub.switch()
                now = loop.now()
                moved = False
                for tag in fired:
                    if tag is None:
                        timer = None
                        reason = self._expired(now, started, last_activity, limit, halves[0].done or halves[1].done)
                        if reason:
                            result.reason = reason
                            return result
                        continue
                    for half in halves:
                        if tag is half.reader:
                            moved = self._pump(half) or moved
                        elif tag is half.writer:
                            moved = self._flush(half) or moved
                if moved:
                    last_activity = now
                if up.done and down.done:
                    result.reason = "client_eof" if self._first_eof == "client" else "upstream_eof"
                    return result
        except _Reset as reset:
            result.reason = f"{reset.side}_reset"
            survivor = self.upstream if reset.side == "client" else self.client
            try:
                survivor.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_LINGER, _LINGER_ABORT)
            except OSError:
                pass
            return result
        finally:
            if timer is not None:
                timer.stop()
            for half in halves:
                half.reader.stop()
                half.reader.close()
                if half.writer is not None:
                    half.writer.stop()
                    half.writer.close()
                if half.pipe is not None:
                    # Bytes still in it had nowhere to go: the pipe is not reusable.
                    PipePool.discard(half.pipe)
                    half.pipe = None
            result.bytes_up = up.nbytes
            result.bytes_down = down.nbytes

    def _idle_limit(self, halves: tuple[_Half, _Half]) -> float:
        """Seconds without traffic that end the tunnel now (0: no limit)."""
        limit = self.idle_timeout
        if self.half_close_timeout and (halves[0].done or halves[1].done):
            limit = min(limit, self.half_close_timeout) if limit else self.half_close_timeout
        return limit

    def _deadline(self, started: float, last_activity: float, idle: float) -> float | None:
        deadlines = []
        if idle:
            deadlines.append(last_activity + idle)
        if self.max_lifetime:
            deadlines.append(started + self.max_lifetime)
        return min(deadlines) if deadlines else None

    def _expired(self, now: float, started: float, last: float, idle: float, half_closed: bool) -> str:
        # libev timers may fire a hair early relative to loop.now(): allow 1 ms.
        if self.max_lifetime and now - started >= self.max_lifetime - 0.001:
            return "lifetime"
        if idle and now - last >= idle - 0.001:
            return "half_close_timeout" if half_closed and idle == self.half_close_timeout else "idle"
        return ""

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
                raise self._reset(half.name, exc) from exc
            if n == 0:
                self._on_eof(half)
                break
            half.in_pipe += n
            moved = True
            if not self._drain_pipe(half):
                break
            if n < self.chunk:
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
                raise self._reset(self._other(half.name), exc) from exc
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
                raise self._reset(half.name, exc) from exc
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
                raise self._reset(self._other(half.name), exc) from exc
        half.nbytes += sent
        return sent

    def _flush(self, half: _Half) -> bool:
        """dst became writable: push what is waiting, then resume reading."""
        if self.mode == "splice":
            if half.pipe is None or not self._drain_pipe(half):
                return False
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
            half.reader.start(self._wake, half.reader)
        return True

    def _wait_writable(self, half: _Half) -> None:
        # Back-pressure: stop reading this direction until dst drains.
        half.reader.stop()
        if half.writer is None:
            half.writer = half.loop.io(half.dst_fd, _WRITE)
        half.writer.start(self._wake, half.writer)

    def _on_eof(self, half: _Half) -> None:
        half.eof = True
        if not self._first_eof:
            self._first_eof = half.name
        half.reader.stop()
        if self.mode == "splice" and half.in_pipe:
            return  # the writer finishes once the pipe is drained
        if self.mode == "copy" and half.pending is not None:
            return
        self._finish(half)

    def _finish(self, half: _Half) -> None:
        half.done = True
        if half.writer is not None:
            half.writer.stop()
        try:
            half.dst.shutdown(_stdlib_socket.SHUT_WR)
        except OSError:
            pass  # already gone: the other direction will notice

    @staticmethod
    def _other(side: str) -> str:
        return "upstream" if side == "client" else "client"

    @staticmethod
    def _reset(side: str, exc: OSError) -> _Reset:
        # ECONNRESET/EPIPE are the usual; any other error on a connected socket
        # (ETIMEDOUT from keepalive, EHOSTUNREACH) ends the tunnel the same way.
        return _Reset(side)
