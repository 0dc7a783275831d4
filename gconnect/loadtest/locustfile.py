"""Locust users that hold HTTP CONNECT tunnels open through a proxy and echo through them.

Each ``TunnelUser`` opens one tunnel through the proxy under test to an echo target, keeps it
open, and sends one message every ``--tunnel-think-time`` seconds, checking each echo byte for
byte. Locust's statistics see two request types: ``CONNECT`` (connect to the proxy until its 200
head has arrived) and ``ECHO`` (one message's round trip). A failure is reported under a short,
precise reason (``wire.TunnelFailure``).

Normally run by ``gconnect loadtest``; by hand, with the path ``gconnect loadtest --locustfile``
prints::

    locust -f "$(gconnect loadtest --locustfile)" --headless -u 100 -r 50 -t 30s \\
        --tunnel-proxy 127.0.0.1:8080 --tunnel-target 127.0.0.1:9000

Custom options are prefixed ``--tunnel-`` so they cannot collide with locust's own; a locust
master forwards them to its workers. Locust loads this file by its path, as a top-level module,
so its imports are absolute.
"""

from __future__ import annotations

import itertools
import random
import socket
import time
from typing import Any

import gevent
import locust.stats
from locust import User, events, task

from gconnect.loadtest.wire import (
    IP_BIND_ADDRESS_NO_PORT,
    SEQUENCE_BYTES,
    LatencyHistogram,
    TunnelFailure,
    TunnelSettings,
    classify,
    read_response_head,
    recv_exactly,
    response_status,
)

# The runner reads locust's stats history for its progress line; locust flushes that file
# every 5 s by default, which would show a run up to 5 s late.
locust.stats.CSV_STATS_FLUSH_INTERVAL_SEC = 1


@events.init_command_line_parser.add_listener
def add_tunnel_arguments(parser: Any) -> None:
    group = parser.add_argument_group("tunnel", "TunnelUser options (gconnect/loadtest/locustfile.py)")
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
