"""Dialling the destination: RFC 8305 (Happy Eyeballs v2) connection racing.

Attempts start one after another, ``attempt_delay`` apart or as soon as the
previous one fails; the first to connect wins and the rest are cancelled and
closed. OS errors become UpstreamConnectError / UpstreamConnectTimeoutError here.
"""

from __future__ import annotations

import errno
import ipaddress
import socket as _stdlib_socket
import time
from collections.abc import Sequence
from typing import Union

import gevent
from gevent import socket
from gevent.queue import Empty, Queue

from ..errors import OutOfDescriptorsError, UpstreamConnectError, UpstreamConnectTimeoutError
from .limits import EXHAUSTION_ERRNOS

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

#: Linux defaults keep a dead peer's tunnel for over two hours; these find it in
#: about 3 minutes (HAProxy and nginx leave this to the OS; Squid's
#: tcp_keepalive option takes the same three numbers).
KEEPALIVE_IDLE_SECONDS = 120
KEEPALIVE_INTERVAL_SECONDS = 20
KEEPALIVE_PROBES = 3


def tune_socket(sock: socket.socket) -> None:
    """Settings both legs of a tunnel get: keepalive, and no Nagle delay (we
    forward what we receive at once; batching is the endpoints' business)."""
    sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_NODELAY, 1)
    sock.setsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_KEEPALIVE, 1)
    if hasattr(_stdlib_socket, "TCP_KEEPIDLE"):
        sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS)
        sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS)
        sock.setsockopt(_stdlib_socket.IPPROTO_TCP, _stdlib_socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


def _describe(exc: OSError) -> str:
    if exc.errno == errno.ECONNREFUSED:
        return "connection refused"
    if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "unreachable"
    return exc.strerror or str(exc)


def _connect_one(ip: IPAddress, port: int, timeout: float) -> socket.socket:
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        if exc.errno in EXHAUSTION_ERRNOS:
            raise OutOfDescriptorsError(f"proxy cannot open a socket: {exc.strerror}") from exc
        raise
    try:
        sock.settimeout(timeout)
        sock.connect((str(ip), port))
        sock.settimeout(None)
        tune_socket(sock)
    except BaseException:
        sock.close()
        raise
    return sock


def _fmt(ip: IPAddress, port: int) -> str:
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def open_connection(
    addresses: Sequence[IPAddress],
    port: int,
    *,
    connect_timeout: float,
    attempt_delay: float,
) -> tuple[socket.socket, IPAddress]:
    """Connect to the first of *addresses* that answers; return ``(sock, ip)``.

    Raises UpstreamConnectTimeoutError (504) when nothing connected within
    *connect_timeout*, UpstreamConnectError (502) when every attempt failed.
    """
    if not addresses:
        raise UpstreamConnectError("no address to connect to")
    if len(addresses) == 1:
        # The common case (IP literals, single-address names) needs no race.
        ip = addresses[0]
        try:
            return _connect_one(ip, port, connect_timeout), ip
        except socket.timeout as exc:
            raise UpstreamConnectTimeoutError(
                f"connect to {_fmt(ip, port)} timed out after {connect_timeout:g} s"
            ) from exc
        except OSError as exc:
            raise UpstreamConnectError(f"connect to {_fmt(ip, port)} failed: {_describe(exc)}") from exc
    return _race(addresses, port, connect_timeout, attempt_delay)


def _race(
    addresses: Sequence[IPAddress], port: int, connect_timeout: float, attempt_delay: float
) -> tuple[socket.socket, IPAddress]:
    deadline = time.monotonic() + connect_timeout
    results: Queue = Queue()

    def attempt(ip: IPAddress) -> None:
        try:
            sock = _connect_one(ip, port, max(0.001, deadline - time.monotonic()))
        except OSError as exc:
            results.put((ip, None, exc))
        except OutOfDescriptorsError as exc:
            # Not the destination's failure: reported as such if nothing connects.
            results.put((ip, None, exc.__cause__ or OSError(str(exc))))
            starved.append(exc)
        else:
            results.put((ip, sock, None))

    starved: list[OutOfDescriptorsError] = []
    attempts: list[gevent.Greenlet] = []
    errors: list[tuple[IPAddress, OSError]] = []
    winner: tuple[socket.socket, IPAddress] | None = None
    try:
        pending = list(addresses)
        while winner is None:
            now = time.monotonic()
            if now >= deadline:
                break
            if pending:
                attempts.append(gevent.spawn(attempt, pending.pop(0)))
                wait = min(attempt_delay, deadline - now)
            elif len(errors) == len(attempts):
                break
            else:
                wait = deadline - now
            try:
                # A failure starts the next attempt at once (RFC 8305 §5).
                ip, sock, exc = results.get(timeout=wait)
            except Empty:
                continue
            if sock is not None:
                winner = (sock, ip)
            else:
                errors.append((ip, exc))
                if not pending and len(errors) == len(attempts):
                    break
    finally:
        gevent.killall([g for g in attempts if not g.ready()], block=True)
        while not results.empty():
            _ip, sock, _exc = results.get_nowait()
            if sock is not None and (winner is None or sock is not winner[0]):
                sock.close()
    if winner is not None:
        return winner
    if starved:
        raise starved[0]
    if len(errors) < len(addresses) or any(isinstance(e, socket.timeout) for _, e in errors):
        raise UpstreamConnectTimeoutError(
            f"connect to port {port} timed out after {connect_timeout:g} s "
            f"({len(addresses)} addresses, {len(errors)} failed)"
        )
    ip, exc = errors[0]
    detail = "; ".join(f"{_fmt(i, port)}: {_describe(e)}" for i, e in errors)
    raise UpstreamConnectError(f"connect failed: {detail}") from exc
