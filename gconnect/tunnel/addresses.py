"""Address arithmetic, sans I/O: canonical address text as integers, the
special-purpose ranges, the IPv4 addresses an IPv6 address leads to, and
configured networks as integer ranges.

Addresses are canonical text (``"192.0.2.1"``, ``"2001:db8::1"``), as the head
parser and the resolver produce them, and every check is integer arithmetic on
the packed address against tables built once: no ``ipaddress`` object per
tunnel (building one and asking ``is_private`` cost several microseconds a
tunnel in the handshake profile).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

from ..config import IPNetwork

# IPv4 ranges that are not public: the IANA IPv4 Special-Purpose Address Registry
# (RFC 6890 and its updates), multicast (RFC 5771) and the reserved 240/4 (RFC 1112,
# with the broadcast address). The registry marks two single addresses inside
# 192.0.0.0/24 as global (192.0.0.9, .10: anycast services a proxy's clients have
# no use for); the whole /24 is refused here, the stricter reading.
_V4_NOT_PUBLIC = (
    "0.0.0.0/8",  # "this network" (RFC 791), includes the unspecified address
    "10.0.0.0/8",  # RFC 1918
    "100.64.0.0/10",  # RFC 6598, shared address space (CGNAT)
    "127.0.0.0/8",  # loopback (RFC 1122)
    "169.254.0.0/16",  # link-local (RFC 3927), cloud metadata at 169.254.169.254
    "172.16.0.0/12",  # RFC 1918
    "192.0.0.0/24",  # IETF protocol assignments (RFC 6890)
    "192.0.2.0/24",  # TEST-NET-1 (RFC 5737)
    "192.88.99.0/24",  # 6to4 relay anycast, deprecated (RFC 7526)
    "192.168.0.0/16",  # RFC 1918
    "198.18.0.0/15",  # benchmarking (RFC 2544)
    "198.51.100.0/24",  # TEST-NET-2 (RFC 5737)
    "203.0.113.0/24",  # TEST-NET-3 (RFC 5737)
    "224.0.0.0/4",  # multicast (RFC 5771)
    "240.0.0.0/4",  # reserved (RFC 1112), and 255.255.255.255 broadcast
)
# IPv6: only global unicast (2000::/3, RFC 4291 §2.4) can be public; inside it,
# the registry's non-global blocks. IPv4-mapped, NAT64, ULA, link-local, multicast
# and the loopback and unspecified addresses all lie outside 2000::/3.
_V6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")
_V6_NOT_PUBLIC = (
    "2001::/23",  # IETF protocol assignments (RFC 2928), Teredo 2001::/32 inside
    "2001:db8::/32",  # documentation (RFC 3849)
    "3fff::/20",  # documentation (RFC 9637)
)
_NAT64 = 0x0064_FF9B_0000_0000_0000_0000  # 64:ff9b::/96 (RFC 6052), the top 96 bits
_NAT64_LOCAL = 0x0064_FF9B_0001  # 64:ff9b:1::/48 (RFC 8215), the top 48 bits
MAPPED = 0xFFFF  # ::ffff:0:0/96 (RFC 4291 §2.5.5.2), the top 96 bits
_SIX_TO_FOUR = 0x2002  # 2002::/16 (RFC 3056), the top 16 bits
_TEREDO = 0x2001_0000  # 2001::/32 (RFC 4380), the top 32 bits
V4_MASK = 0xFFFF_FFFF


def _intervals(networks: Iterable[str]) -> tuple[list[int], list[int]]:
    """Sorted, merged ``(starts, ends)`` of *networks*, for bisect."""
    spans = sorted((int(n.network_address), int(n.broadcast_address)) for n in map(ipaddress.ip_network, networks))
    starts: list[int] = []
    ends: list[int] = []
    for start, end in spans:
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return starts, ends


_V4_STARTS, _V4_ENDS = _intervals(_V4_NOT_PUBLIC)
_V6_STARTS, _V6_ENDS = _intervals(_V6_NOT_PUBLIC)
_V6_GLOBAL_LOW = int(_V6_GLOBAL_UNICAST.network_address)
_V6_GLOBAL_HIGH = int(_V6_GLOBAL_UNICAST.broadcast_address)


def in_ranges(value: int, starts: list[int], ends: list[int]) -> bool:
    i = bisect.bisect_right(starts, value) - 1
    return i >= 0 and value <= ends[i]


def to_int(address: str) -> tuple[int, int]:
    """``(4 or 6, the address as an integer)`` for canonical address text."""
    if ":" in address:
        return 6, int.from_bytes(inet_pton(AF_INET6, address), "big")
    return 4, int.from_bytes(inet_pton(AF_INET, address), "big")


def v4_text(value: int) -> str:
    return inet_ntop(AF_INET, value.to_bytes(4, "big"))


def embedded_ipv4_ints(value: int) -> list[int]:
    """IPv4 addresses (as integers) an IPv6 address leads to: IPv4-mapped
    (RFC 4291), NAT64 (RFC 6052, RFC 8215), 6to4 (RFC 3056) and Teredo
    (RFC 4380, its server and its obfuscated client)."""
    top96 = value >> 32
    if top96 == MAPPED or top96 == _NAT64 or value >> 80 == _NAT64_LOCAL:
        return [value & V4_MASK]
    if value >> 112 == _SIX_TO_FOUR:
        return [(value >> 80) & V4_MASK]
    if value >> 96 == _TEREDO:
        return [(value >> 64) & V4_MASK, ~value & V4_MASK]
    return []


def embedded_ipv4(address: str) -> list[str]:
    """:func:`embedded_ipv4_ints` of IPv6 address text, as IPv4 address text."""
    version, value = to_int(address)
    return [v4_text(v) for v in embedded_ipv4_ints(value)] if version == 6 else []


def public(version: int, value: int) -> bool:
    if version == 4:
        return not in_ranges(value, _V4_STARTS, _V4_ENDS)
    return _V6_GLOBAL_LOW <= value <= _V6_GLOBAL_HIGH and not in_ranges(value, _V6_STARTS, _V6_ENDS)


def is_public(address: str) -> bool:
    """True for a globally routable unicast address (loopback, RFC 1918, CGNAT,
    ULA, link-local including 169.254.169.254, multicast, unspecified, reserved
    and documentation ranges are not). An embedded IPv4 address is not looked
    at here; :meth:`gconnect.tunnel.policy.Policy.denial` checks it as well."""
    return public(*to_int(address))


class Networks:
    """Configured networks as integer ranges per family, with their text for reasons."""

    __slots__ = ("_spans",)

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        self._spans = [
            (net.version, int(net.network_address), int(net.broadcast_address), str(net)) for net in networks
        ]

    def find(self, version: int, value: int) -> str | None:
        """The first network holding the address, as text; None if none does."""
        for net_version, low, high, text in self._spans:
            if net_version == version and low <= value <= high:
                return text
        return None

    def __bool__(self) -> bool:
        return bool(self._spans)
