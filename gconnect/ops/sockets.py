"""Listening sockets, owned once: bound here or handed over by systemd, then
inherited by every worker.

Whoever holds a listening socket open keeps its accept queue alive. The
supervisor binds each ``--listen`` address once (or takes the sockets systemd
passed with ``LISTEN_FDS``) and holds them until it stops; every worker of
every generation inherits the same sockets and accepts from them. A worker
that dies or drains closes only its own descriptor: connections waiting in the
queue stay there for the next ``accept()`` of another worker, so none is reset
(the per-worker ``SO_REUSEPORT`` pitfall, nginx ticket 1300). How evenly the
kernel spreads accepts over workers sharing one socket was measured before
choosing this (README, Operations; ``bench/listeners.py``).

The other side of sharing: a socket keeps listening while any process holds a
copy, so a stop that only closes copies leaves new clients queueing, unserved,
until the last worker has drained. :func:`stop_listening` ends the socket
itself for every holder at once; the supervisor calls it when it stops (never
on an upgrade, whose new workers accept from the same sockets), and only on
sockets it bound itself: systemd's must keep queueing while we restart.
"""

from __future__ import annotations

import logging
import os
import socket as _stdlib_socket
from collections.abc import Iterable, MutableMapping

from ..config import hostport
from ..listener import bind_listener

log = logging.getLogger(__name__)

#: sd_listen_fds(3): passed descriptors start at 3 (SD_LISTEN_FDS_START).
SD_LISTEN_FDS_START = 3


class ListenerError(Exception):
    """A socket we were given cannot be served (the message says which and why)."""


def fmt(address: tuple[str, int]) -> str:
    """A socket address as ``host:port``."""
    return hostport(*address[:2])


def bind(addresses: Iterable[tuple[str, int]], *, reuse_port: bool = False) -> list[_stdlib_socket.socket]:
    """A listening socket per address (untuned: ``Proxy.start`` tunes what it
    inherits, see ``listener.adopt_listener``)."""
    socks: list[_stdlib_socket.socket] = []
    try:
        for host, port in addresses:
            socks.append(bind_listener(host, port, reuse_port=reuse_port))
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def adopt(fd: int) -> _stdlib_socket.socket:
    """The listening TCP socket on descriptor *fd*; ListenerError if it is not one."""
    try:
        sock = _stdlib_socket.socket(fileno=fd)
    except OSError as exc:
        raise ListenerError(f"descriptor {fd} is not a socket: {exc.strerror}") from None
    if sock.family not in (_stdlib_socket.AF_INET, _stdlib_socket.AF_INET6) or sock.type != _stdlib_socket.SOCK_STREAM:
        sock.detach()
        raise ListenerError(f"descriptor {fd} is not a TCP socket (gconnect serves TCP only)")
    if not sock.getsockopt(_stdlib_socket.SOL_SOCKET, _stdlib_socket.SO_ACCEPTCONN):
        sock.detach()
        raise ListenerError(f"descriptor {fd} is a socket that is not listening")
    # Ours now: no program we start inherits it unless we pass it on by name.
    sock.set_inheritable(False)
    return sock


def from_systemd(environ: MutableMapping[str, str]) -> list[_stdlib_socket.socket] | None:
    """The sockets of systemd socket activation, or None when there are none.

    sd_listen_fds(3): ``LISTEN_FDS`` descriptors from 3 up, meant for us only
    if ``LISTEN_PID`` is our PID. The variables are removed either way, so no
    child mistakes them for its own (sd_listen_fds' *unset_environment*).
    """
    count, pid = environ.pop("LISTEN_FDS", None), environ.pop("LISTEN_PID", None)
    names = environ.pop("LISTEN_FDNAMES", None)
    if count is None:
        return None
    if pid != str(os.getpid()):
        log.warning("LISTEN_FDS is meant for process %s, not this one (%d): ignored", pid, os.getpid())
        return None
    if not count.isdigit() or int(count) < 1:
        raise ListenerError(f"LISTEN_FDS={count!r}: expected a positive number of descriptors")
    socks = [adopt(SD_LISTEN_FDS_START + i) for i in range(int(count))]
    log.info("serving %d socket(s) passed by systemd%s", len(socks), f" ({names})" if names else "")
    return socks


def stop_listening(socks: Iterable[_stdlib_socket.socket]) -> None:
    """Stop *socks* listening in every process that holds them, then close ours.

    On Linux ``shutdown(SHUT_RD)`` on a listening socket disconnects it
    (inet_shutdown, tcp_disconnect): the clients in its accept queue are reset
    at once, a new SYN finds no listener and is refused, every other holder's
    accept() fails with EINVAL, and the port is free to bind again. A close()
    alone does none of this while a worker still holds a copy.
    """
    for sock in socks:
        try:
            sock.shutdown(_stdlib_socket.SHUT_RD)
        except OSError as exc:  # already shut down, or not listening: nothing left to stop
            log.debug("shutdown of listener %d: %s", sock.fileno(), exc)
        sock.close()


def addresses(socks: Iterable[_stdlib_socket.socket]) -> list[tuple[str, int]]:
    """The (host, port) each socket listens on."""
    return [sock.getsockname()[:2] for sock in socks]
