"""Traffic that runs while a test kills or upgrades workers, and what the
kernel says about who holds which connection.

:class:`HeldTunnels` keeps N tunnels exchanging a numbered message every
interval and checks every echo byte for byte; :class:`NewTunnels` opens tunnel
after tunnel and records each failure with the client port it had. Both are
bounded in count and time. Which connections a process holds, and whether it
accepts, is in :mod:`gconnect.testing.connections`.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time

from .conftest import ProxyProcess, open_tunnel, recv_exactly

MESSAGE = "%05d:%09d\n"  # tunnel index, round: 16 bytes
MESSAGE_BYTES = 16
#: A tunnel whose echo takes longer than this is stalled, and that is a failure.
STALL_SECONDS = 5.0


class HeldTunnels:
    """*count* tunnels, each sending a numbered 16-byte message every *interval* s."""

    def __init__(self, proxy: ProxyProcess, target: str, count: int, interval: float = 0.1) -> None:
        self.socks = [open_tunnel(proxy, target) for _ in range(count)]
        self.ports = [sock.getsockname()[1] for sock in self.socks]
        self.interval = interval
        self.rounds = [0] * count
        #: index -> (monotonic time the end was seen, "eof" / "reset")
        self.ended: dict[int, tuple[float, str]] = {}
        #: Closed by us, after a round that checked out.
        self.closed: set[int] = set()
        self.errors: list[str] = []
        self._to_close: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def active(self) -> list[int]:
        return [i for i in range(len(self.socks)) if i not in self.ended and i not in self.closed]

    def close(self, indices: list[int], timeout: float = 10.0) -> None:
        """Close these tunnels from the client side, between two rounds."""
        self._to_close.update(indices)
        deadline = time.monotonic() + timeout
        while self._to_close and time.monotonic() < deadline:
            time.sleep(self.interval / 4)
        assert not self._to_close, "the exchange loop did not close the tunnels"

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for i, sock in enumerate(self.socks):
            if i not in self.closed:
                sock.close()

    def _run(self) -> None:
        rnd = 0
        while not self._stop.is_set():
            started = time.monotonic()
            rnd += 1
            for i in list(self._to_close):
                self.socks[i].close()
                self.closed.add(i)
                self._to_close.discard(i)
            expect = {}
            for i in self.active():
                try:
                    self.socks[i].sendall((MESSAGE % (i, rnd)).encode())
                    expect[i] = (MESSAGE % (i, rnd)).encode()
                except OSError:
                    self.ended[i] = (time.monotonic(), "reset")
            self._collect(expect)
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def _collect(self, expect: dict[int, bytes]) -> None:
        got = {i: b"" for i in expect}
        with selectors.DefaultSelector() as sel:
            for i in expect:
                sel.register(self.socks[i], selectors.EVENT_READ, i)
            deadline = time.monotonic() + STALL_SECONDS
            while got and time.monotonic() < deadline:
                for key, _ in sel.select(max(0.0, deadline - time.monotonic())):
                    i = key.data
                    try:
                        data = self.socks[i].recv(MESSAGE_BYTES - len(got[i]))
                    except OSError:
                        data, why = b"", "reset"
                    else:
                        why = "eof"
                    if not data:
                        self.ended.setdefault(i, (time.monotonic(), why))
                        sel.unregister(self.socks[i])
                        del got[i]
                        continue
                    got[i] += data
                    if len(got[i]) == MESSAGE_BYTES:
                        if got[i] != expect[i]:
                            self.errors.append(f"tunnel {i}: sent {expect[i]!r}, got back {got[i]!r}")
                        self.rounds[i] += 1
                        sel.unregister(self.socks[i])
                        del got[i]
        for i in got:
            self.errors.append(f"tunnel {i}: no echo within {STALL_SECONDS} s")


class NewTunnels:
    """Open a tunnel, exchange one message, close; again and again (at most
    *limit* per thread, in *threads* threads at once)."""

    def __init__(
        self,
        proxy: ProxyProcess,
        target: str,
        *,
        pause: float = 0.01,
        limit: int = 20_000,
        threads: int = 1,
        timeout: float = 10.0,
    ) -> None:
        self.address = (proxy.host, proxy.port)
        self.target = target
        self.pause = pause
        self.limit = limit
        self.timeout = timeout
        self.ok = 0
        #: (monotonic time, client port or 0, what went wrong)
        self.failures: list[tuple[float, int, str]] = []
        #: (monotonic time it started, seconds it took, "ok" or what went wrong), every attempt
        self.attempts: list[tuple[float, float, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self._threads:
            thread.start()

    def _one(self) -> None:
        port = 0
        started = time.monotonic()
        try:
            with socket.create_connection(self.address, timeout=self.timeout) as sock:
                port = sock.getsockname()[1]
                sock.sendall(f"CONNECT {self.target} HTTP/1.1\r\nHost: {self.target}\r\n\r\n".encode() + b"new-one!")
                head = b""
                while not head.endswith(b"\r\n\r\n"):
                    byte = sock.recv(1)
                    if not byte:
                        raise ConnectionError(f"closed after {head!r}")
                    head += byte
                if not head.startswith(b"HTTP/1.1 200 "):
                    raise ConnectionError(head.split(b"\r\n")[0].decode())
                if recv_exactly(sock, 8) != b"new-one!":
                    raise ConnectionError("echo cut short")
            self.ok += 1
            self.attempts.append((started, time.monotonic() - started, "ok"))
        except OSError as exc:
            self.failures.append((time.monotonic(), port, repr(exc)))
            self.attempts.append((started, time.monotonic() - started, repr(exc)))

    def _run(self) -> None:
        for _ in range(self.limit):
            if self._stop.is_set():
                return
            self._one()
            self._stop.wait(self.pause)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
