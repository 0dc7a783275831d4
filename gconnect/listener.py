"""Listening sockets and the accept loop: where a client is handed over.

:class:`Listener` is gevent's StreamServer with two changes on the hot path:
an accepted client is a raw non-blocking ``_socket.socket`` (gevent's wrapper
makes two watchers per socket that the handshake never uses), handed at once,
from the accept callback, to the *serve* callback it was given (the
composition root's, which runs it in a plain greenlet: ``Greenlet.spawn``
would schedule it for a later loop callback and keep Pool/Group bookkeeping
per client). :class:`AcceptBackoff` survives descriptor exhaustion. The
listener knows nothing of what a client becomes.

Ownership: a Listener owns its listening socket and closes it in ``close()``;
an accepted socket belongs to *serve* from the moment it is handed over.
"""

from __future__ import annotations

import _socket
import errno
import logging
import time
from collections.abc import Callable
from typing import Any

from gevent.monkey import get_original
from gevent.server import StreamServer

from .tunnel.dial import tune_socket
from .tunnel.limits import EXHAUSTION_ERRNOS

log = logging.getLogger(__name__)

#: gevent's BaseServer backs off from 10 ms to 1 s after an accept error; same here.
ACCEPT_BACKOFF_MIN_SECONDS = 0.01
ACCEPT_BACKOFF_MAX_SECONDS = 1.0
#: One log line per this many seconds while descriptors stay exhausted.
EXHAUSTION_LOG_SECONDS = 10.0
#: An exhaustion episode is over once accept() has not failed for this long.
EXHAUSTION_RECOVERED_SECONDS = 1.0

# The standard library's socket class, not gevent's cooperative one: the listener
# is only ever accepted from when libev says it is readable.
_StdSocket = get_original("socket", "socket")
_STREAM = _socket.SOCK_STREAM


def bind_listener(host: str, port: int, *, reuse_port: bool = False) -> Any:
    """A bound, listening TCP socket for ``host:port`` (the supervisor's, to
    be inherited; or :func:`make_listener`'s)."""
    family = _socket.AF_INET6 if ":" in host else _socket.AF_INET
    sock = _StdSocket(family, _socket.SOCK_STREAM)
    try:
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEADDR, 1)
        if reuse_port:
            # Processes each bind the same port; the kernel spreads connections over them.
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_REUSEPORT, 1)
        if family == _socket.AF_INET6:
            sock.setsockopt(_socket.IPPROTO_IPV6, _socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        # The backlog is capped by net.core.somaxconn; ask for the most.
        sock.listen(_socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    return sock


def make_listener(host: str, port: int, *, reuse_port: bool = False) -> Any:
    """A listening, non-blocking TCP socket for ``host:port``, tuned for the tunnels it accepts."""
    return adopt_listener(bind_listener(host, port, reuse_port=reuse_port))


def adopt_listener(sock: Any) -> Any:
    """A listening socket made elsewhere (the supervisor, systemd), as make_listener
    would have made it: the standard library's class, non-blocking, tuned."""
    own = _StdSocket(sock.family, sock.type, sock.proto, sock.detach())
    try:
        # Accepted sockets inherit TCP_NODELAY and the keepalive settings from the
        # listener on Linux: set once here instead of five syscalls per client.
        tune_socket(own)
        own.setblocking(False)
    except BaseException:
        own.close()
        raise
    return own


class AcceptBackoff:
    """StreamServer mixin: survive descriptor exhaustion in accept().

    An episode starts at the first failed accept() and ends once accept() has
    worked and none failed for :data:`EXHAUSTION_RECOVERED_SECONDS`: a proxy
    hovering at the limit recovers and runs out again many times a second,
    and that is one episode, not many. Each episode logs its error line at most
    once per :data:`EXHAUSTION_LOG_SECONDS` and one recovery line at its end.
    """

    # Provided by gevent.baseserver.BaseServer.
    loop: Any
    started: bool
    #: When the current episode began, or None.
    _exhausted_since: float | None = None
    _episode_failures = 0
    _last_failure = 0.0
    _exhaustion_logged = float("-inf")
    _exhaustion_unlogged = 0
    _backoff = ACCEPT_BACKOFF_MIN_SECONDS
    _recovery_timer: Any = None
    _backing_off = False

    def _accepted_while_exhausted(self) -> None:
        """accept() worked during an episode: look for its end soon."""
        self._backoff = ACCEPT_BACKOFF_MIN_SECONDS
        if self._recovery_timer is None:
            self._recovery_timer = self.loop.timer(EXHAUSTION_RECOVERED_SECONDS)
            self._recovery_timer.start(self._check_recovered)

    def _check_recovered(self) -> None:
        self._recovery_timer.close()
        self._recovery_timer = None
        if self._exhausted_since is None:
            return
        quiet = time.monotonic() - self._last_failure
        if quiet < EXHAUSTION_RECOVERED_SECONDS:
            # Failed again meanwhile: look again once it has been quiet long enough.
            self._recovery_timer = self.loop.timer(EXHAUSTION_RECOVERED_SECONDS - quiet)
            self._recovery_timer.start(self._check_recovered)
            return
        log.warning(
            "accept: descriptors available again; %d accept failures over %.1f s",
            self._episode_failures,
            self._last_failure - self._exhausted_since,
        )
        self._exhausted_since = None

    def _back_off(self, exc: OSError) -> None:
        """accept() failed for want of descriptors or memory: pause accepting."""
        now = time.monotonic()
        if self._exhausted_since is None:
            self._exhausted_since = now
            self._episode_failures = 0
        self._episode_failures += 1
        self._last_failure = now
        self._exhaustion_unlogged += 1
        if now - self._exhaustion_logged >= EXHAUSTION_LOG_SECONDS:
            log.error(
                "accept: %s (%s); %d failures since the last report; pausing accept, retrying up to %g s apart",
                exc.strerror,
                errno.errorcode.get(exc.errno or 0, "?"),
                self._exhaustion_unlogged,
                ACCEPT_BACKOFF_MAX_SECONDS,
            )
            self._exhaustion_logged = now
            self._exhaustion_unlogged = 0
        # The listening socket stays readable while the backlog is not empty:
        # without a pause the accept watcher would fire again at once (a busy loop).
        self.stop_accepting()  # type: ignore[attr-defined]
        timer = self.loop.timer(self._backoff)
        timer.start(self._resume_accepting, timer)
        self._backoff = min(ACCEPT_BACKOFF_MAX_SECONDS, self._backoff * 2)
        self._backing_off = True

    @property
    def backing_off(self) -> bool:
        """True while accept is paused for want of descriptors: nothing else
        should restart it before the back-off timer does."""
        return self._backing_off

    def _resume_accepting(self, timer: Any) -> None:
        timer.close()
        self._backing_off = False
        if self.started:
            self.start_accepting()  # type: ignore[attr-defined]


class Listener(AcceptBackoff, StreamServer):
    """One listening socket. Every accepted client is a raw non-blocking socket
    handed to *serve* at once, from the accept callback. While *count_open*()
    is at *limit* the listener stops accepting (the kernel's queue holds the
    rest) and tells *on_full*; :meth:`resume_if_room` starts it again."""

    def __init__(
        self,
        listener: Any,
        serve: Callable[[_socket.socket, Any], None],
        *,
        count_open: Callable[[], int],
        limit: int,
        on_full: Callable[[], None],
    ) -> None:
        super().__init__(listener, spawn=None)
        self._serve = serve
        # gevent's accept loop calls do_handle(client, address): *serve* itself, one call fewer per client.
        self.do_handle = serve  # type: ignore[method-assign]
        # The standard library socket's accept without its wrapper: the (fd, address) pair.
        self._accept = listener._accept
        self._family = int(listener.family)
        self._count_open = count_open
        self._limit = limit
        self._on_full = on_full
        #: True while accepting is stopped because the limit was reached.
        self.paused = False
        # The loop iteration of the last wake-up, and whether it came right after the one
        # before (clients arriving together); libuv's loop has no count: always drain.
        self._counts_turns = getattr(self.loop, "iteration", None) is not None
        self._turn = -2
        self._crowded = True

    def full(self) -> bool:
        """gevent asks before each accept, and stops accepting while this says True."""
        if self._count_open() < self._limit:
            return False
        self.paused = True
        self._on_full()
        return True

    def resume_if_room(self) -> None:
        """Accept again if a full listener has room now (an EMFILE back-off keeps
        its pause: its own timer resumes)."""
        if self.paused and self.started and not self.backing_off and self._count_open() < self._limit:
            self.paused = False
            self.start_accepting()

    def do_read(self) -> tuple[_socket.socket, Any] | None:
        if self._counts_turns:
            # A lone client is accepted once per wake-up: a second accept would only
            # fail (EAGAIN), and raising that costs more than the accept. Clients that
            # keep the socket readable into the next iteration are drained as before.
            turn = self.loop.iteration
            if turn != self._turn:
                self._crowded = turn == self._turn + 1
                self._turn = turn
            elif not self._crowded:
                return None
        try:
            fd, address = self._accept()
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                # Not listening any more: a supervisor that stops shuts the
                # socket down under every worker (ops/sockets.stop_listening).
                log.info("listener on %s port %d was shut down: no longer accepting", *self.address[:2])
                self.close()
                return None
            if exc.errno not in EXHAUSTION_ERRNOS:
                raise
            self._back_off(exc)
            return None
        if self._exhausted_since is not None:
            self._accepted_while_exhausted()
        client = _socket.socket(self._family, _STREAM, 0, fd)
        client.setblocking(False)
        return client, address

    def handle(self, client: _socket.socket, address: Any) -> None:
        """Unused (do_handle serves directly); StreamServer insists on one."""
        self._serve(client, address)
