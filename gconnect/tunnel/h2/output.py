"""The writing side of an HTTP/2 connection: TLS records out, never a wait.

Frames are encrypted and sent at once; what the socket does not take waits in
one buffer that a write watcher sends. While that buffer holds ``high_water``
bytes or more the connection is :meth:`~RecordOutput.congested` and the stream
relays stop reading their targets, so a client that reads slowly bounds the
memory of the whole connection.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any

from ..tls import TLSSession
from ..waiting import WRITE, send_all, unsent

log = logging.getLogger(__name__)


class RecordOutput:
    """Encrypts and sends for one connection; ``lost`` once the socket or the
    TLS session failed under a write (then *on_lost* is called, once)."""

    lost = False

    def __init__(
        self,
        sock: Any,
        tls: TLSSession,
        loop: Any,
        *,
        high_water: int,
        on_drained: Callable[[], None],
        on_lost: Callable[[], None],
    ) -> None:
        self.sock = sock
        self.tls = tls
        self.loop = loop
        self.high_water = high_water
        self._on_drained = on_drained
        self._on_lost = on_lost
        #: Ciphertext the socket has not taken yet (None: nothing waits).
        self.out: bytearray | None = None
        self._writer: Any = None

    def send(self, data: bytes | memoryview) -> None:
        """Encrypt *data* and send it, or queue what the socket does not take."""
        if self.lost:
            return
        try:
            parts = self.tls.encrypt_parts(data)
        except ssl.SSLError:
            self._lose()  # the session is over (the client's EOF or a fatal alert)
            return
        if self.out is not None:
            for part in parts:
                self.out += part
            return
        size = sum(map(len, parts))
        try:
            sent = self.sock.sendmsg(parts) if len(parts) > 1 else self.sock.send(parts[0])
        except BlockingIOError:
            sent = 0
        except OSError:
            self._lose()
            return
        if sent < size:
            self.out = unsent(parts, sent)
            self._writer_watcher().start(self._on_writable)

    def congested(self) -> bool:
        """True while the buffer is at its high-water mark."""
        return self.out is not None and len(self.out) >= self.high_water

    def finish(self, seconds: float) -> None:
        """At the connection's end: send what is buffered (a GOAWAY), waiting at most *seconds*."""
        if self.out and not self.lost:
            try:
                send_all(self.sock, bytes(self.out), self._writer_watcher(), self.loop.now() + seconds)
            except OSError:
                pass

    def close(self) -> None:
        self.out = None
        if self._writer is not None:
            self._writer.close()

    def _writer_watcher(self) -> Any:
        if self._writer is None:
            self._writer = self.loop.io(self.sock.fileno(), WRITE)
        return self._writer

    def _on_writable(self) -> None:
        out = self.out
        if out is None:
            self._writer.stop()
            return
        try:
            sent = self.sock.send(out)
        except BlockingIOError:
            return
        except OSError:
            self._lose()
            return
        del out[:sent]
        if not out:
            self.out = None
            self._writer.stop()
        if not self.congested():
            try:
                self._on_drained()
            except Exception:
                log.exception("h2 session bug (resume)")

    def _lose(self) -> None:
        self.lost = True
        self.out = None
        if self._writer is not None:
            self._writer.stop()
        self._on_lost()
