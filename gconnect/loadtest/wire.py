"""What one load-test tunnel says and hears: the CONNECT request, the proxy's answer, the echo.

Plain sockets and no locust, so the runner, the locustfile and tests share one copy. A failed step
raises ``TunnelFailure`` with the short reason locust groups failures by: the proxy's status
(``407``, ``403``, ``502`` ...), ``connect timeout``, ``response timeout``, ``echo timeout``,
``refused``, ``reset``, ``short read``, ``mismatch``, ``fd limit``.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import socket
from collections import Counter
from dataclasses import dataclass
from typing import Any

# RFC 9112 §2.2 sets no limit on a head; 16 KiB is twice what nginx and tomcat accept from a
# client (8 KiB), and a proxy's 200 is usually 39 bytes.
MAX_RESPONSE_HEAD_BYTES = 16 * 1024

# Linux 4.2+: bind() to a source address without reserving a port; the port is chosen at
# connect() time per destination, so spreading over many 127.0.0.x addresses does not cost a
# bind-time port each. Missing from the socket module before Python 3.12.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

# The sequence number at the head of each message, so a replayed or reordered echo mismatches.
SEQUENCE_BYTES = 8


class TunnelFailure(Exception):
    """One failed step; ``reason`` is the key locust groups failures by."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    # Locust's failure table shows repr(exception): make it the bare reason, not
    # "TunnelFailure('407')", so the CSV can be grepped for "407".
    def __repr__(self) -> str:
        return self.reason

    def __str__(self) -> str:
        return self.reason


def classify(exc: BaseException, step: str) -> TunnelFailure:
    """Translate an OS error raised during ``step`` (``connect``/``echo``) into its reason."""
    if isinstance(exc, TunnelFailure):
        return exc
    if isinstance(exc, TimeoutError):
        return TunnelFailure(f"{step} timeout")
    if isinstance(exc, ConnectionRefusedError):
        return TunnelFailure("refused")
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return TunnelFailure("reset")
    if isinstance(exc, OSError) and exc.errno in (errno.EMFILE, errno.ENFILE):
        return TunnelFailure("fd limit")
    if isinstance(exc, OSError) and exc.errno == errno.EADDRNOTAVAIL:
        return TunnelFailure("no source port")
    if isinstance(exc, OSError) and exc.errno is not None:
        return TunnelFailure(errno.errorcode.get(exc.errno, str(exc.errno)).lower())
    return TunnelFailure(type(exc).__name__)


def parse_address(text: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[V6]:PORT`` too; HOST may be a name) into a tuple."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class TunnelSettings:
    """Everything a TunnelUser needs, read once from locust's parsed options."""

    proxy: tuple[str, int]
    target: str
    credentials: str
    message_bytes: int
    think_time: float
    hold_time: float
    reopen_ratio: float
    connect_timeout: float
    io_timeout: float
    source_addresses: int

    @classmethod
    def from_options(cls, options: Any) -> TunnelSettings:
        return cls(
            proxy=parse_address(options.tunnel_proxy),
            target=options.tunnel_target,
            credentials=options.tunnel_credentials,
            message_bytes=max(1, options.tunnel_message_bytes),
            think_time=options.tunnel_think_time,
            hold_time=options.tunnel_hold_time,
            reopen_ratio=options.tunnel_reopen_ratio,
            connect_timeout=options.tunnel_connect_timeout,
            io_timeout=options.tunnel_io_timeout,
            source_addresses=options.tunnel_source_addresses,
        )

    def connect_request(self) -> bytes:
        """The CONNECT head, with Basic credentials when configured (RFC 9110 §11.7.1)."""
        lines = [f"CONNECT {self.target} HTTP/1.1", f"Host: {self.target}"]
        if self.credentials:
            token = base64.b64encode(self.credentials.encode()).decode("ascii")
            lines.append(f"Proxy-Authorization: Basic {token}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def read_response_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read up to the end of the proxy's response head; return (head, bytes after it)."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_RESPONSE_HEAD_BYTES:
            raise TunnelFailure("head too large")
        chunk = sock.recv(4096)
        if not chunk:
            raise TunnelFailure("short read")
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    return head, rest


def response_status(head: bytes) -> int:
    """The status code of an HTTP/1.x status line (RFC 9112 §4)."""
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise TunnelFailure("bad response")
    return int(parts[1])


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    """Read exactly ``size`` bytes; a close before that is a ``short read``."""
    chunks = []
    remaining = size
    while remaining:
        chunk = sock.recv(min(remaining, 65536))
        if not chunk:
            raise TunnelFailure("short read")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


class LatencyHistogram:
    """Latencies rounded to two significant digits of a microsecond.

    Locust rounds response times under 100 ms to whole milliseconds, which hides the difference
    between a 90 µs and a 400 µs echo on loopback; this keeps that resolution at a few hundred
    counters per request type, and merges across worker processes by adding counters.
    """

    def __init__(self) -> None:
        self.counts: dict[str, Counter[int]] = {}
        # Once every user runs, samples are also kept under "<type> steady": the ramp-up's
        # burst of connects would otherwise hide what a held tunnel costs.
        self.steady = False

    def record(self, request_type: str, seconds: float) -> None:
        micros = max(1, round(seconds * 1e6))
        # Keep two significant digits: 123456 µs -> 120000 µs.
        scale = 10 ** max(0, len(str(micros)) - 2)
        rounded = micros // scale * scale
        self.counts.setdefault(request_type, Counter())[rounded] += 1
        if self.steady:
            self.counts.setdefault(f"{request_type} steady", Counter())[rounded] += 1

    def dump(self, directory: str) -> None:
        """Write ``latency-<pid>.json`` into *directory*, which the runner merges."""
        if not any(self.counts.values()):
            return
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"latency-{os.getpid()}.json")
        with open(path, "w") as out:
            json.dump({kind: dict(c) for kind, c in self.counts.items()}, out)
