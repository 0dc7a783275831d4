"""Locust users that hold HTTP CONNECT tunnels open through a proxy and echo through them.

Each ``TunnelUser`` opens one tunnel through the proxy under test to an echo target, keeps it
open, and sends one message every ``--tunnel-think-time`` seconds, checking each echo byte for
byte. Locust's statistics see two request types: ``CONNECT`` (connect to the proxy until its 200
head has arrived) and ``ECHO`` (one message's round trip). A failure is reported under a short,
precise reason: the proxy's status (``407``, ``403``, ``502`` ...), ``connect timeout``,
``response timeout``, ``echo timeout``, ``refused``, ``reset``, ``short read``, ``mismatch``, ``fd limit``.

Normally run by ``python -m bench.loadtest``; by hand::

    locust -f bench/locustfile.py --headless -u 100 -r 50 -t 30s \\
        --tunnel-proxy 127.0.0.1:8080 --tunnel-target 127.0.0.1:9000

Custom options are prefixed ``--tunnel-`` so they cannot collide with locust's own; a locust
master forwards them to its workers.
"""

from __future__ import annotations

import base64
import errno
import itertools
import json
import os
import random
import socket
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import gevent
import locust.stats
from locust import User, events, task

# RFC 9112 §2.2 sets no limit on a head; 16 KiB is twice what nginx and tomcat accept from a
# client (8 KiB), and a proxy's 200 is usually 39 bytes.
MAX_RESPONSE_HEAD_BYTES = 16 * 1024

# Linux 4.2+: bind() to a source address without reserving a port; the port is chosen at
# connect() time per destination, so spreading over many 127.0.0.x addresses does not cost a
# bind-time port each. Missing from the socket module before Python 3.12.
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)

# bench.loadtest reads locust's stats history for its progress line; locust flushes that file
# every 5 s by default, which would show a run up to 5 s late.
locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1

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
    """Split ``HOST:PORT`` into a tuple."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
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


@events.init_command_line_parser.add_listener
def add_tunnel_arguments(parser: Any) -> None:
    group = parser.add_argument_group("tunnel", "TunnelUser options (bench/locustfile.py)")
    group.add_argument("--tunnel-proxy", default="127.0.0.1:8080", metavar="HOST:PORT")
    group.add_argument(
        "--tunnel-target",
        default="127.0.0.1:9000",
        metavar="HOST:PORT",
        help="the echo target, as written in the CONNECT request line",
    )
    group.add_argument(
        "--tunnel-credentials",
        default="",
        metavar="USER:PASSWORD",
        help="send Proxy-Authorization: Basic with these",
    )
    group.add_argument("--tunnel-message-bytes", type=int, default=64)
    group.add_argument(
        "--tunnel-think-time",
        type=float,
        default=1.0,
        help="seconds between the starts of two messages on one tunnel (send rate)",
    )
    group.add_argument(
        "--tunnel-hold-time",
        type=float,
        default=0.0,
        help="close and reopen a tunnel after this many seconds; 0 holds it to the end",
    )
    group.add_argument(
        "--tunnel-reopen-ratio",
        type=float,
        default=0.0,
        help="probability of closing and reopening the tunnel after each echo",
    )
    group.add_argument("--tunnel-connect-timeout", type=float, default=10.0)
    group.add_argument("--tunnel-io-timeout", type=float, default=10.0)
    group.add_argument(
        "--tunnel-source-addresses",
        type=int,
        default=0,
        help="bind tunnels to 127.0.0.2 .. 127.0.0.(N+1) in turn; 0 lets the kernel choose",
    )
    group.add_argument(
        "--tunnel-latency-dir",
        default="",
        help="write microsecond-precision latency histograms to this directory at exit",
    )


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
        if not any(self.counts.values()):
            return
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, f"latency-{os.getpid()}.json")
        with open(path, "w") as out:
            json.dump({kind: dict(c) for kind, c in self.counts.items()}, out)


HISTOGRAM = LatencyHistogram()

# Hands out source addresses round-robin across the users of this process.
_user_numbers = itertools.count()


_csv_written_by_locust = False


@events.init.add_listener
def remember_csv_option(environment: Any, **_kwargs: Any) -> None:
    global _csv_written_by_locust
    _csv_written_by_locust = bool(getattr(environment.parsed_options, "csv_prefix", None))


@events.quit.add_listener
def let_locust_write_final_csv(**_kwargs: Any) -> None:
    # Locust rewrites its CSV files once a second from a greenlet and not again at shutdown, so
    # the last second of requests, and any failure in it, would be missing from _stats.csv.
    # This runs after the users have stopped and before locust closes the files: one more turn
    # of that greenlet writes the final figures.
    if _csv_written_by_locust:
        gevent.sleep(locust.stats.CSV_STATS_INTERVAL_SEC + 0.2)


@events.spawning_complete.add_listener
def mark_steady(**_kwargs: Any) -> None:
    HISTOGRAM.steady = True


@events.quitting.add_listener
def dump_latency(environment: Any, **_kwargs: Any) -> None:
    directory = getattr(environment.parsed_options, "tunnel_latency_dir", "")
    if directory:
        HISTOGRAM.dump(directory)


class TunnelUser(User):
    """Holds one tunnel through the proxy and echoes a message through it at a fixed pace."""

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.settings = TunnelSettings.from_options(environment.parsed_options)
        self.source = self._pick_source_address(next(_user_numbers))
        self.tunnel: socket.socket | None = None
        self.opened_at = 0.0
        self.iteration_started = 0.0
        self.sequence = 0
        self.payload = random.randbytes(self.settings.message_bytes)

    def _pick_source_address(self, number: int) -> str | None:
        count = self.settings.source_addresses
        if count <= 0:
            return None
        # 127.0.0.1 is left to the proxy's own outbound connections to the target.
        return f"127.0.0.{2 + number % count}"

    def wait_time(self) -> float:
        # Pacing, not think time after the fact: a slow echo does not lower the send rate.
        return max(0.0, self.settings.think_time - (time.monotonic() - self.iteration_started))

    @task
    def echo_once(self) -> None:
        self.iteration_started = time.monotonic()
        if self.tunnel is None and not self.open_tunnel():
            return
        if not self.echo():
            return
        if self._due_for_reopen():
            self.close_tunnel()

    def _due_for_reopen(self) -> bool:
        held = time.monotonic() - self.opened_at
        if self.settings.hold_time > 0 and held >= self.settings.hold_time:
            return True
        return self.settings.reopen_ratio > 0 and random.random() < self.settings.reopen_ratio

    def on_stop(self) -> None:
        self.close_tunnel()

    def close_tunnel(self) -> None:
        if self.tunnel is not None:
            self.tunnel.close()
            self.tunnel = None

    def open_tunnel(self) -> bool:
        """Connect to the proxy and send CONNECT; fire a ``CONNECT`` event either way.

        A timeout is ``connect timeout`` while the TCP handshake is pending and ``response
        timeout`` once it is done: the second is a proxy whose accept queue took the connection
        but which never served it (a full ``--max-clients`` pool, a stalled loop).
        """
        started = time.perf_counter()
        head = b""
        step = "connect"
        sock: socket.socket | None = None
        try:
            sock = self.dial_proxy()
            step = "response"
            sock.sendall(self.settings.connect_request())
            head, early = read_response_head(sock)
            status = response_status(head)
            if status != 200:
                raise TunnelFailure(str(status))
            if early:
                # Nothing was sent through the tunnel yet, so nothing may come back.
                raise TunnelFailure("mismatch")
        except Exception as exc:  # every failure is reported, by reason
            if sock is not None:
                sock.close()
            self._fire("CONNECT", started, len(head), classify(exc, step))
            return False
        sock.settimeout(self.settings.io_timeout)
        self.tunnel = sock
        self.opened_at = time.monotonic()
        self._fire("CONNECT", started, len(head), None)
        return True

    def dial_proxy(self) -> socket.socket:
        """A TCP connection to the proxy, from this user's source address if it has one."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.settings.connect_timeout)
            if self.source is not None:
                sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                sock.bind((self.source, 0))
            sock.connect(self.settings.proxy)
        except BaseException:
            sock.close()
            raise
        return sock

    def next_message(self) -> bytes:
        self.sequence += 1
        header = self.sequence.to_bytes(SEQUENCE_BYTES, "big")
        size = self.settings.message_bytes
        return (header + self.payload[SEQUENCE_BYTES:])[:size]

    def echo(self) -> bool:
        """Send one message and read it back; fire an ``ECHO`` event either way."""
        assert self.tunnel is not None
        message = self.next_message()
        started = time.perf_counter()
        try:
            self.tunnel.sendall(message)
            received = recv_exactly(self.tunnel, len(message))
            if received != message:
                raise TunnelFailure("mismatch")
        except Exception as exc:  # every failure is reported, by reason
            self.close_tunnel()
            self._fire("ECHO", started, 0, classify(exc, "echo"))
            return False
        self._fire("ECHO", started, len(message), None)
        return True

    def _fire(
        self,
        request_type: str,
        started: float,
        length: int,
        failure: TunnelFailure | None,
    ) -> None:
        elapsed = time.perf_counter() - started
        if failure is None:
            HISTOGRAM.record(request_type, elapsed)
        self.environment.events.request.fire(
            request_type=request_type,
            name=self.settings.target if request_type == "CONNECT" else f"{len(self.payload)} B",
            response_time=elapsed * 1000.0,
            response_length=length,
            exception=failure,
            context={},
        )


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
