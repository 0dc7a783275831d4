"""Traffic that runs while a test kills or upgrades workers, and what the
kernel says about who holds which connection.

:class:`HeldTunnels` keeps N tunnels exchanging a numbered message every
interval and checks every echo byte for byte; :class:`NewTunnels` opens tunnel
after tunnel and records each failure with the client port it had. Both are
bounded in count and time. :func:`client_ports_held_by` reads /proc to tell
which client connections a process holds, so a test can tell the tunnels a
killed worker held (which may end) from everyone else's (which must not).
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time

from .conftest import ProxyProcess, open_tunnel, recv_exactly

MESSAGE = "%05d:%09d\n"  # tunnel index, round: 16 bytes
MESSAGE_BYTES = 16
#: A tunnel whose echo takes longer than this is stalled, and that is a failure.
STALL_SECONDS = 5.0


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def gone(pid: int) -> bool:
    """Exited (a zombie counts: its parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


def _socket_inodes(pid: int) -> dict[str, int]:
    """Socket inode -> descriptor number in *pid*."""
    found = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if link.startswith("socket:["):
            found[link[8:-1]] = int(fd)
    return found


def _tcp_table() -> list[tuple[int, int, str]]:
    """(local port, remote port, inode) of every IPv4 TCP socket in our namespace."""
    rows = []
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            rows.append((int(fields[1].split(":")[1], 16), int(fields[2].split(":")[1], 16), fields[9]))
    return rows


def client_ports_held_by(pid: int, proxy_port: int) -> set[int]:
    """The client ports of the connections to *proxy_port* that process *pid* holds."""
    inodes = _socket_inodes(pid)
    return {remote for local, remote, inode in _tcp_table() if local == proxy_port and remote and inode in inodes}


def accepting(pid: int, proxy_port: int) -> bool:
    """Whether *pid* has its listening socket on *proxy_port* in its epoll set:
    it accepts (a worker that is starting or stopped accepting has not, or not now)."""
    inodes = _socket_inodes(pid)
    listening = [inodes[i] for l_, r, i in _tcp_table() if l_ == proxy_port and r == 0 and i in inodes]
    if not listening:
        return False
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:[eventpoll]":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                registered = {int(line.split()[1]) for line in f if line.startswith("tfd:")}
        except FileNotFoundError:
            continue
        if any(fd_ in registered for fd_ in listening):
            return True
    return False


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
