"""Dialling the destination: one non-blocking connect, or an RFC 8305 (Happy
Eyeballs v2) race between several addresses, all in the calling greenlet.

Attempts start one after another, ``attempt_delay`` apart or as soon as the
previous one fails; the first to connect wins and the rest are closed. A single
address (an IP literal, most names) is one connect and at most one wait, with
no race set up. The winner comes back with the write watcher it was waited on,
which the relay reuses. OS errors become OutboundConnectError /
OutboundTimeoutError / OutOfDescriptorsError here.
"""

from __future__ import annotations

import _socket
import errno
import os
from collections.abc import Sequence
from typing import Any, NoReturn

from gevent import get_hub

from ..config import hostport
from ..errors import OutboundConnectError, OutboundTimeoutError, OutOfDescriptorsError, UnroutableError
from .limits import EXHAUSTION_ERRNOS
from .waiting import WRITE, wait, wait_any

#: Linux defaults keep a dead peer's tunnel for over two hours; these find it in
#: about 3 minutes (HAProxy and nginx leave this to the OS; Squid's
#: tcp_keepalive option takes the same three numbers).
KEEPALIVE_IDLE_SECONDS = 120
KEEPALIVE_INTERVAL_SECONDS = 20
KEEPALIVE_PROBES = 3

_IN_PROGRESS = (errno.EINPROGRESS, errno.EALREADY, errno.EAGAIN)
#: Failures that mean no route to the address (Proxy-Status destination_ip_unroutable).
_UNROUTABLE = (errno.ENETUNREACH, errno.EHOSTUNREACH)
#: Linux's IP_BIND_ADDRESS_NO_PORT (include/uapi/linux/in.h; Python's socket
#: module does not name it): bind() takes the address now and leaves the port to
#: connect(), which picks it per destination, so a source address is not limited
#: to one ephemeral port range for all destinations together.
IP_BIND_ADDRESS_NO_PORT = getattr(_socket, "IP_BIND_ADDRESS_NO_PORT", 24)


#: (level, option, value) of every setting, the Linux keepalive knobs where they exist.
_TUNING = (
    (_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1),
    (_socket.SOL_SOCKET, _socket.SO_KEEPALIVE, 1),
) + (
    (
        (_socket.IPPROTO_TCP, _socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_SECONDS),
        (_socket.IPPROTO_TCP, _socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_SECONDS),
        (_socket.IPPROTO_TCP, _socket.TCP_KEEPCNT, KEEPALIVE_PROBES),
    )
    if hasattr(_socket, "TCP_KEEPIDLE")
    else ()
)
_STREAM = _socket.SOCK_STREAM | _socket.SOCK_NONBLOCK | _socket.SOCK_CLOEXEC
_AF_INET, _AF_INET6 = _socket.AF_INET, _socket.AF_INET6
_SOL_SOCKET, _SO_ERROR = _socket.SOL_SOCKET, _socket.SO_ERROR


def tune_socket(sock: Any) -> None:
    """Settings both legs of a tunnel get: keepalive, and no Nagle delay (we
    forward what we receive at once; batching is the endpoints' business).
    Accepted sockets inherit them from the listener, so only dialled ones pay."""
    setsockopt = sock.setsockopt
    for setting in _TUNING:
        setsockopt(*setting)


def describe(code: int) -> str:
    """A short human reason for a connect errno."""
    if code == errno.ECONNREFUSED:
        return "connection refused"
    if code in (errno.ENETUNREACH, errno.EHOSTUNREACH):
        return "unreachable"
    return os.strerror(code)


class SourceAddresses:
    """``--bind-address``: the source addresses of dialled sockets, taken in
    turn per family (one connection each); a family with none is left to the
    kernel's routing."""

    def __init__(self, addresses: Sequence[str]) -> None:
        self._by_family: dict[int, list[str]] = {_AF_INET: [], _AF_INET6: []}
        for address in addresses:
            self._by_family[_AF_INET6 if ":" in address else _AF_INET].append(address)
        self._turn = {_AF_INET: 0, _AF_INET6: 0}

    def check(self) -> None:
        """Bind a throwaway socket to each address: OSError if one is not ours."""
        for family, addresses in self._by_family.items():
            for address in addresses:
                sock = _socket.socket(family, _socket.SOCK_STREAM)
                try:
                    sock.setsockopt(_socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                    sock.bind((address, 0))
                except OSError as exc:
                    raise OSError(exc.errno, f"--bind-address {address}: {exc.strerror}") from exc
                finally:
                    sock.close()

    def bind(self, sock: _socket.socket, family: int) -> None:
        """Bind *sock* to the next source address of *family*, if there is one."""
        addresses = self._by_family[family]
        if not addresses:
            return
        turn = self._turn[family]
        self._turn[family] = turn + 1
        address = addresses[turn % len(addresses)]
        try:
            sock.setsockopt(_socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((address, 0))
        except OSError as exc:
            sock.close()
            raise OutboundConnectError(f"cannot bind to source address {address}: {exc.strerror}") from exc


class Connection:
    """A connected outbound socket (to the target, or to a parent proxy): where it
    goes, and the watcher it was waited on."""

    __slots__ = ("address", "port", "sock", "writer")

    def __init__(self, sock: _socket.socket, address: str, port: int, writer: Any) -> None:
        self.sock = sock
        self.address = address
        self.port = port
        #: libev write watcher on ``sock``, stopped; None if the connect did not wait.
        self.writer = writer


class _Attempt:
    __slots__ = ("address", "sock", "watcher")

    def __init__(self, sock: _socket.socket, address: str, watcher: Any) -> None:
        self.sock = sock
        self.address = address
        self.watcher = watcher

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
        self.sock.close()


def _start(address: str, port: int, source: SourceAddresses | None) -> tuple[_Attempt | None, int]:
    """Begin a non-blocking connect: ``(attempt, 0)`` in progress or connected,
    ``(None, errno)`` if it failed at once."""
    family = _AF_INET6 if ":" in address else _AF_INET
    try:
        sock = _socket.socket(family, _STREAM)
    except OSError as exc:
        if exc.errno in EXHAUSTION_ERRNOS:
            raise OutOfDescriptorsError(f"proxy cannot open a socket: {exc.strerror}") from exc
        raise
    if source is not None:
        source.bind(sock, family)
    code = sock.connect_ex((address, port))
    if code and code not in _IN_PROGRESS:
        sock.close()
        return None, code
    return _Attempt(sock, address, None if code == 0 else get_hub().loop.io(sock.fileno(), WRITE)), 0


def _connected(attempt: _Attempt) -> int:
    return attempt.sock.getsockopt(_SOL_SOCKET, _SO_ERROR)  # type: ignore[no-any-return]


def _won(attempt: _Attempt, port: int) -> Connection:
    try:
        tune_socket(attempt.sock)
    except OSError as exc:
        attempt.close()
        raise OutboundConnectError(f"connect to {hostport(attempt.address, port)} failed: {exc.strerror}") from exc
    return Connection(attempt.sock, attempt.address, port, attempt.watcher)


def open_connection(
    addresses: Sequence[str],
    port: int,
    *,
    connect_timeout: float,
    attempt_delay: float,
    source: SourceAddresses | None = None,
) -> Connection:
    """Connect to the first of *addresses* (canonical address text) that answers,
    from the next of *source*'s addresses when given.

    Raises OutboundTimeoutError (504) when nothing connected within
    *connect_timeout*, OutboundConnectError (502) when every attempt failed,
    OutOfDescriptorsError (503) when no socket could be opened at all.
    """
    if not addresses:
        raise OutboundConnectError("no address to connect to")
    if len(addresses) == 1:
        return _dial_one(addresses[0], port, connect_timeout, source)
    return _race(addresses, port, connect_timeout, attempt_delay, source)


def _dial_one(address: str, port: int, connect_timeout: float, source: SourceAddresses | None) -> Connection:
    # The common case, written out: one socket, one connect, at most one wait.
    family = _AF_INET6 if ":" in address else _AF_INET
    try:
        sock = _socket.socket(family, _STREAM)
    except OSError as exc:
        if exc.errno in EXHAUSTION_ERRNOS:
            raise OutOfDescriptorsError(f"proxy cannot open a socket: {exc.strerror}") from exc
        raise
    if source is not None:
        source.bind(sock, family)
    writer = None
    try:
        code = sock.connect_ex((address, port))
        if code:
            if code not in _IN_PROGRESS:
                raise _connect_error(f"connect to {hostport(address, port)} failed: {describe(code)}", [code])
            writer = get_hub().loop.io(sock.fileno(), WRITE)
            if not wait(writer, connect_timeout):
                raise OutboundTimeoutError(
                    f"connect to {hostport(address, port)} timed out after {connect_timeout:g} s"
                )
            code = sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
            if code:
                raise _connect_error(f"connect to {hostport(address, port)} failed: {describe(code)}", [code])
        tune_socket(sock)
    except BaseException as exc:
        if writer is not None:
            writer.close()
        sock.close()
        if isinstance(exc, OSError):
            raise OutboundConnectError(f"connect to {hostport(address, port)} failed: {exc.strerror}") from exc
        raise
    return Connection(sock, address, port, writer)


def _race(
    addresses: Sequence[str], port: int, connect_timeout: float, attempt_delay: float, source: SourceAddresses | None
) -> Connection:
    loop = get_hub().loop
    now = loop.now()
    deadline = now + connect_timeout
    pending = list(addresses)
    running: list[_Attempt] = []
    errors: list[tuple[str, int]] = []
    starved: OutOfDescriptorsError | None = None
    next_start = now
    winner: _Attempt | None = None
    try:
        while winner is None:
            now = loop.now()
            if pending and now >= next_start:
                address = pending.pop(0)
                try:
                    attempt, code = _start(address, port, source)
                except OutOfDescriptorsError as exc:
                    # Not the destination's failure: reported as such if nothing connects.
                    starved, attempt, code = exc, None, errno.EMFILE
                if attempt is None:
                    errors.append((address, code))
                    continue  # RFC 8305 §5: a failure starts the next attempt at once
                if attempt.watcher is None:
                    winner = attempt
                    break
                running.append(attempt)
                next_start = now + attempt_delay
            if not running and not pending:
                break
            wake = min(deadline, next_start) if pending else deadline
            if now >= deadline:
                break
            index = wait_any([a.watcher for a in running], wake - now)
            if index < 0:
                continue
            attempt = running.pop(index)
            code = _connected(attempt)
            if code:
                errors.append((attempt.address, code))
                attempt.close()
                next_start = loop.now()
            else:
                winner = attempt
    finally:
        for attempt in running:
            attempt.close()
    if winner is not None:
        return _won(winner, port)
    return _failure(addresses, port, connect_timeout, errors, starved)


def _failure(
    addresses: Sequence[str],
    port: int,
    connect_timeout: float,
    errors: list[tuple[str, int]],
    starved: OutOfDescriptorsError | None,
) -> NoReturn:
    if starved is not None:
        raise starved
    if len(errors) < len(addresses):
        raise OutboundTimeoutError(
            f"connect to port {port} timed out after {connect_timeout:g} s "
            f"({len(addresses)} addresses, {len(errors)} failed)"
        )
    detail = "; ".join(f"{hostport(address, port)}: {describe(code)}" for address, code in errors)
    raise _connect_error(f"connect failed: {detail}", [code for _, code in errors])


def _connect_error(message: str, codes: list[int]) -> OutboundConnectError:
    """The error for failed attempts: unroutable when no attempt found a route."""
    if codes and all(code in _UNROUTABLE for code in codes):
        return UnroutableError(message)
    return OutboundConnectError(message)
