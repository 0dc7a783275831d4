"""Who may tunnel where. Pure functions of the configuration and an address.

The destination check runs on the address that will actually be dialled, after
resolution, so a DNS name cannot smuggle in a private address (SSRF, DNS
rebinding), and the dialler is handed exactly the list that passed.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import Union

from ..config import Config, IPNetwork
from ..errors import PolicyDeniedError

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

# Special-purpose IPv6 prefixes that carry an IPv4 address inside them. Each is
# checked as the IPv4 address it leads to as well as on its own.
_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
# 100.64.0.0/10 (RFC 6598, CGNAT) is neither private nor global in the stdlib:
# listed so the rule reads plainly.
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address leads to: IPv4-mapped (RFC 4291), NAT64
    (RFC 6052), 6to4 (RFC 3056) and Teredo (RFC 4380, server and client)."""
    found: list[ipaddress.IPv4Address] = []
    if ip.ipv4_mapped is not None:
        found.append(ip.ipv4_mapped)
    if ip.sixtofour is not None:
        found.append(ip.sixtofour)
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if any(ip in net for net in _NAT64):
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def is_public(ip: IPAddress) -> bool:
    """True for a globally routable unicast address (loopback, RFC 1918, CGNAT,
    ULA, link-local including 169.254.169.254, multicast, unspecified and
    reserved ranges are not)."""
    if ip.is_multicast or ip.is_unspecified or ip.is_reserved or ip.is_loopback:
        return False
    if ip.is_link_local or ip.is_private or not ip.is_global:
        return False
    if ip.version == 4 and ip in _CGNAT:
        return False
    return True


class Policy:
    """The checks of one configuration: ports, destinations, loops."""

    def __init__(self, config: Config, listening: Sequence[tuple[str, int]] = ()) -> None:
        self._ports = config.allow_port
        self._allow: tuple[IPNetwork, ...] = config.allow_dest
        self._deny: tuple[IPNetwork, ...] = config.deny_dest
        self._listening: list[tuple[IPAddress, int]] = []
        self._wildcard_ports: set[int] = set()
        self.set_listening(listening)

    def set_listening(self, addresses: Iterable[tuple[str, int]]) -> None:
        """Record the proxy's own bound addresses: a tunnel to one is a loop."""
        self._listening = []
        self._wildcard_ports = set()
        for host, port in addresses:
            ip = ipaddress.ip_address(host)
            if ip.is_unspecified:
                self._wildcard_ports.add(port)
            else:
                self._listening.append((ip, port))

    def check_port(self, port: int) -> None:
        """Raise PolicyDeniedError unless *port* is in an allowed range."""
        for low, high in self._ports:
            if low <= port <= high:
                return
        raise PolicyDeniedError(f"port {port} is not allowed")

    def denial(self, ip: IPAddress, port: int) -> str | None:
        """Why dialling ``ip:port`` is refused, or None if it is allowed."""
        # On a dual-stack socket ::ffff:a.b.c.d reaches the IPv4 listener a.b.c.d.
        mapped = ip.ipv4_mapped if ip.version == 6 else None  # type: ignore[union-attr]
        for own in (ip, mapped):
            if own is not None and (
                (own, port) in self._listening
                or (port in self._wildcard_ports and (own.is_loopback or own.is_unspecified))
            ):
                return "is this proxy itself"
        candidates: list[IPAddress] = [ip]
        if ip.version == 6:
            candidates.extend(embedded_ipv4(ip))  # type: ignore[arg-type]
        for candidate in candidates:
            reason = self._denial_one(candidate)
            if reason:
                return reason if candidate is ip else f"embeds {candidate}, which {reason}"
        return None

    def _denial_one(self, ip: IPAddress) -> str | None:
        # deny-dest wins over allow-dest; allow-dest wins over the built-in list.
        for net in self._deny:
            if ip.version == net.version and ip in net:
                return f"is in denied network {net}"
        for net in self._allow:
            if ip.version == net.version and ip in net:
                return None
        if not is_public(ip):
            return "is not a public address"
        return None

    def filter_addresses(self, host: str, port: int, addresses: Sequence[IPAddress]) -> list[IPAddress]:
        """The addresses of *host* that may be dialled, in order.

        Raises PolicyDeniedError naming the first reason when none may.
        """
        allowed: list[IPAddress] = []
        first_reason = None
        for ip in addresses:
            reason = self.denial(ip, port)
            if reason is None:
                allowed.append(ip)
            elif first_reason is None:
                first_reason = f"{ip} {reason}"
        if not allowed:
            raise PolicyDeniedError(f"destination {host}:{port} denied: {first_reason}")
        return allowed
