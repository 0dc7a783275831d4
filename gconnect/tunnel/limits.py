"""Limits against greedy clients and against running out of descriptors.

* :class:`ClientLimits` counts clients being served, globally and per address,
  and refuses the one over a limit with 503 (global) or 429 (per address). The
  accept loop keeps running: a refusal is an answer, not silence. The server's
  Pool is sized :data:`REFUSAL_SLOTS` above ``max_clients`` so that refusals can
  still be written while the proxy is full; past that the Pool stops accepting
  (the backpressure of last resort).
* :class:`AcceptBackoff` is mixed into the StreamServer: when accept() fails for
  want of descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the listener
  stops accepting for a growing delay instead of spinning on a listening socket
  that stays readable, logs one line per :data:`EXHAUSTION_LOG_SECONDS` without a
  traceback, and resumes by itself once descriptors are free again. Clients that
  arrive meanwhile wait in the kernel's listen backlog.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import time
from typing import Any

from ..errors import TooManyClientsError, TooManyClientsPerAddressError

log = logging.getLogger(__name__)

#: Pool slots above max_clients, for the greenlets that only write a 503/429 and
#: linger (at most LINGER_SECONDS each). HAProxy's maxconn likewise leaves the
#: listen queue to absorb the excess; 64 refusals in flight is a burst, not a flood.
REFUSAL_SLOTS = 64
#: accept() errors that mean "no resources right now", not "this listener is broken".
EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: gevent's BaseServer backs off from 10 ms to 1 s after an accept error; same here.
ACCEPT_BACKOFF_MIN_SECONDS = 0.01
ACCEPT_BACKOFF_MAX_SECONDS = 1.0
#: One log line per this many seconds while descriptors stay exhausted.
EXHAUSTION_LOG_SECONDS = 10.0
#: An exhaustion episode is over once accept() has not failed for this long.
EXHAUSTION_RECOVERED_SECONDS = 1.0


#: Prefix length that counts as one IPv6 client: RFC 4291 §2.5.4 / RFC 7421 give
#: a site a /64 at least, so one host can rotate through 2**64 addresses.
IPV6_CLIENT_PREFIX = 64


def client_key(host: str) -> str:
    """Who a client is, for per-client limits: its IPv4 address, or its IPv6 /64."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host  # not an IP (a Unix socket path): itself
    if ip.version == 6:
        if ip.ipv4_mapped is not None:  # type: ignore[union-attr]
            return str(ip.ipv4_mapped)  # type: ignore[union-attr]
        return str(ipaddress.IPv6Network((ip, IPV6_CLIENT_PREFIX), strict=False))
    return host


class ClientLimits:
    """Clients being served, globally and per address."""

    def __init__(self, max_clients: int, max_clients_per_ip: int) -> None:
        self.max_clients = max_clients
        self.max_clients_per_ip = max_clients_per_ip
        self.active = 0
        self._per_ip: dict[str, int] = {}

    def admit(self, ip: str) -> None:
        """Count one more client from *ip*, or raise 503/429 (nothing counted)."""
        if self.active >= self.max_clients:
            raise TooManyClientsError(f"proxy is serving its maximum of {self.max_clients} clients")
        count = self._per_ip.get(ip, 0)
        if self.max_clients_per_ip and count >= self.max_clients_per_ip:
            raise TooManyClientsPerAddressError(
                f"address {ip} already has {count} connections (limit {self.max_clients_per_ip})"
            )
        self.active += 1
        self._per_ip[ip] = count + 1

    def release(self, ip: str) -> None:
        """Forget one client from *ip* admitted before."""
        self.active -= 1
        count = self._per_ip[ip] - 1
        if count:
            self._per_ip[ip] = count
        else:
            del self._per_ip[ip]

    def count(self, ip: str) -> int:
        return self._per_ip.get(ip, 0)


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

    def do_read(self) -> Any:
        try:
            result = super().do_read()  # type: ignore[misc]
        except OSError as exc:
            if exc.errno not in EXHAUSTION_ERRNOS:
                raise
            self._back_off(exc)
            return None
        self._backoff = ACCEPT_BACKOFF_MIN_SECONDS
        if self._exhausted_since is not None and self._recovery_timer is None:
            self._recovery_timer = self.loop.timer(EXHAUSTION_RECOVERED_SECONDS)
            self._recovery_timer.start(self._check_recovered)
        return result

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
