"""Limits against greedy clients and against running out of descriptors.

* :class:`ClientLimits` counts clients being served, globally and per address,
  and refuses the one over a limit with 503 (global) or 429 (per address). The
  per-address count is a gauge shared by every worker (and the fleet); the
  global count, ``max_clients``, is this process's own (it guards this
  process's descriptors). The accept loop keeps running: a refusal is an
  answer, not silence. The listener accepts up to :data:`REFUSAL_SLOTS` clients above ``max_clients`` so that
  refusals can still be written while the proxy is full; past that it stops
  accepting (the backpressure of last resort).
* running out of descriptors at accept() is the listener's business
  (:class:`gconnect.listener.AcceptBackoff`); :data:`EXHAUSTION_ERRNOS` names
  the errors that mean it, for the dialler too.
"""

from __future__ import annotations

import errno
import ipaddress

from ..errors import TooManyClientsError, TooManyClientsPerAddressError
from ..state.tally import LocalTally, Tally

#: Pool slots above max_clients, for the greenlets that only write a 503/429 and
#: linger (at most LINGER_SECONDS each). HAProxy's maxconn likewise leaves the
#: listen queue to absorb the excess; 64 refusals in flight is a burst, not a flood.
REFUSAL_SLOTS = 64
#: accept() errors that mean "no resources right now", not "this listener is broken".
EXHAUSTION_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


#: The gauge of clients being served from one address (its client_key follows).
CLIENTS_KEY = "clients:"

#: Prefix length that counts as one IPv6 client: RFC 4291 §2.5.4 / RFC 7421 give
#: a site a /64 at least, so one host can rotate through 2**64 addresses.
IPV6_CLIENT_PREFIX = 64


def client_key(host: str) -> str:
    """Who a client is, for per-client limits: its IPv4 address, or its IPv6 /64."""
    if ":" not in host:
        return host  # IPv4 (or a Unix socket path): itself, with no parsing
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
    """Clients being served: globally in this process, and per address in the
    *gauges* tally (every worker's, and the fleet's with ``--shared-state``)."""

    def __init__(self, max_clients: int, max_clients_per_ip: int, gauges: Tally | None = None) -> None:
        self.max_clients = max_clients
        self.max_clients_per_ip = max_clients_per_ip
        self.active = 0
        self.gauges: Tally = gauges if gauges is not None else LocalTally()

    def admit(self, ip: str) -> None:
        """Count one more client from *ip*, or raise 503/429 (nothing counted)."""
        if self.active >= self.max_clients:
            raise TooManyClientsError(f"proxy is serving its maximum of {self.max_clients} clients")
        if self.max_clients_per_ip:
            key = CLIENTS_KEY + ip
            count = self.gauges.add(key, 1)
            if count > self.max_clients_per_ip:
                self.gauges.add(key, -1)
                raise TooManyClientsPerAddressError(
                    f"address {ip} already has {count - 1} connections (limit {self.max_clients_per_ip})"
                )
        self.active += 1

    def release(self, ip: str) -> None:
        """Forget one client from *ip* admitted before."""
        self.active -= 1
        if self.max_clients_per_ip:
            self.gauges.add(CLIENTS_KEY + ip, -1)

    def count(self, ip: str) -> int:
        """Clients from *ip* being served by every process sharing the gauges
        (counted only with a per-address limit: without one nobody reads it)."""
        return self.gauges.total(CLIENTS_KEY + ip)
