"""Waiting on raw sockets from a handshake greenlet.

The handshake uses raw non-blocking sockets (``_socket.socket``, not gevent's
cooperative wrapper): every step makes its system call first and waits only
when it would block (EAGAIN), on a libev watcher that the tunnel keeps and
hands on to the relay. A wait starts the watcher and one timer for what is
left of the step's deadline, and parks the greenlet in the hub; whichever
fires first switches back. That is all gevent's socket wrapper does too, minus
a wrapper object, two watchers and a ``Timeout`` per socket, and a watcher
started and stopped around every call.

A wait is a plain greenlet switch, so a greenlet killed meanwhile (shutdown)
gets its exception at the wait, and the ``finally`` here stops the watchers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from gevent import get_hub, getcurrent

#: libev's EV_READ / EV_WRITE.
READ = 1
WRITE = 2


def wait(watcher: Any, timeout: float) -> bool:
    """Park the current greenlet until *watcher* is ready (True) or *timeout*
    seconds pass (False)."""
    if timeout <= 0:
        return False
    hub = get_hub()
    switch = getcurrent().switch
    timer = hub.loop.timer(timeout)
    watcher.start(switch, True)
    timer.start(switch, False)
    try:
        ready = hub.switch()
    finally:
        watcher.stop()
        timer.close()
    return ready is True


def wait_any(watchers: Sequence[Any], timeout: float) -> int:
    """Park until one of *watchers* is ready; return its index, or -1 once
    *timeout* seconds have passed."""
    if timeout <= 0:
        return -1
    hub = get_hub()
    switch = getcurrent().switch
    timer = hub.loop.timer(timeout)
    for index, watcher in enumerate(watchers):
        watcher.start(switch, index)
    timer.start(switch, -1)
    try:
        index = hub.switch()
    finally:
        for watcher in watchers:
            watcher.stop()
        timer.close()
    return index if isinstance(index, int) else -1


def recv(sock: Any, size: int, watcher: Any, deadline: float, flags: int = 0) -> bytes | None:
    """Up to *size* bytes from non-blocking *sock*, waiting on *watcher* (its
    read watcher) until *deadline* (loop time); None if the deadline passed."""
    loop = get_hub().loop
    while True:
        try:
            return sock.recv(size, flags)  # type: ignore[no-any-return]
        except BlockingIOError:
            if not wait(watcher, deadline - loop.now()):
                return None


def send_all(sock: Any, data: bytes, watcher: Any, deadline: float) -> bool:
    """Write all of *data* to non-blocking *sock*, waiting on *watcher* (its
    write watcher) when the socket is full; False if *deadline* passed first."""
    loop = get_hub().loop
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view) :]
        except BlockingIOError:
            if not wait(watcher, deadline - loop.now()):
                return False
    return True


def unsent(parts: Sequence[bytes | memoryview], sent: int) -> bytearray:
    """What one write of *parts* (a ``sendmsg``) left when the socket took
    *sent* bytes of them, joined: the socket was full, which is rare."""
    rest = bytearray()
    for part in parts:
        if sent < len(part):
            rest += memoryview(part)[sent:]
        sent = max(0, sent - len(part))
    return rest
