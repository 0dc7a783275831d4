"""Who may tunnel where. Pure functions of the configuration and an address.

The destination check runs on the address that will actually be dialled, after
resolution, so a DNS name cannot smuggle in a private address (SSRF, DNS
rebinding), and the dialler is handed exactly the list that passed.

Addresses are canonical text (``"192.0.2.1"``, ``"2001:db8::1"``), as the head
parser and the resolver produce them, and every check is integer arithmetic on
the packed address against tables built once: no ``ipaddress`` object per
tunnel (building one and asking ``is_private`` cost several microseconds a
tunnel, measured in the handshake profile of issue 9).
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable, Sequence
from socket import AF_INET, AF_INET6, inet_ntop, inet_pton

from ..config import Config, IPNetwork
from ..errors import DestinationDeniedError, LoopDetectedError, PolicyDeniedError

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
_MAPPED = 0xFFFF  # ::ffff:0:0/96 (RFC 4291 §2.5.5.2), the top 96 bits
_SIX_TO_FOUR = 0x2002  # 2002::/16 (RFC 3056), the top 16 bits
_TEREDO = 0x2001_0000  # 2001::/32 (RFC 4380), the top 32 bits
_V4_MASK = 0xFFFF_FFFF


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


def _in(value: int, starts: list[int], ends: list[int]) -> bool:
    i = bisect.bisect_right(starts, value) - 1
    return i >= 0 and value <= ends[i]


def to_int(address: str) -> tuple[int, int]:
    """``(4 or 6, the address as an integer)`` for canonical address text."""
    if ":" in address:
        return 6, int.from_bytes(inet_pton(AF_INET6, address), "big")
    return 4, int.from_bytes(inet_pton(AF_INET, address), "big")


def _v4_text(value: int) -> str:
    return inet_ntop(AF_INET, value.to_bytes(4, "big"))


def embedded_ipv4_ints(value: int) -> list[int]:
    """IPv4 addresses (as integers) an IPv6 address leads to: IPv4-mapped
    (RFC 4291), NAT64 (RFC 6052, RFC 8215), 6to4 (RFC 3056) and Teredo
    (RFC 4380, its server and its obfuscated client)."""
    top96 = value >> 32
    if top96 == _MAPPED or top96 == _NAT64 or value >> 80 == _NAT64_LOCAL:
        return [value & _V4_MASK]
    if value >> 112 == _SIX_TO_FOUR:
        return [(value >> 80) & _V4_MASK]
    if value >> 96 == _TEREDO:
        return [(value >> 64) & _V4_MASK, ~value & _V4_MASK]
    return []


def embedded_ipv4(address: str) -> list[str]:
    """:func:`embedded_ipv4_ints` of IPv6 address text, as IPv4 address text."""
    version, value = to_int(address)
    return [_v4_text(v) for v in embedded_ipv4_ints(value)] if version == 6 else []


def _public(version: int, value: int) -> bool:
    if version == 4:
        return not _in(value, _V4_STARTS, _V4_ENDS)
    return _V6_GLOBAL_LOW <= value <= _V6_GLOBAL_HIGH and not _in(value, _V6_STARTS, _V6_ENDS)


def is_public(address: str) -> bool:
    """True for a globally routable unicast address (loopback, RFC 1918, CGNAT,
    ULA, link-local including 169.254.169.254, multicast, unspecified, reserved
    and documentation ranges are not). An embedded IPv4 address is not looked
    at here; :meth:`Policy.denial` checks it as well."""
    return _public(*to_int(address))


class _Networks:
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


_SELF = "is this proxy itself"
#: Verdicts remembered per (address, port); a proxy's tunnels go to few
#: destinations, and a verdict is a pure function of the policy and the pair.
VERDICT_CACHE_ENTRIES = 4096
_MISS = object()


class Policy:
    """The checks of one configuration: ports, destinations, loops; its name
    rules (``hosts``, None when there are none, so a proxy without them pays
    one attribute read) and the policies of users with their own table."""

    __slots__ = (
        "_allow",
        "_deny",
        "_listening",
        "_ports",
        "_verdicts",
        "_wildcard_ports",
        "groups",
        "hosts",
        "report",
        "users",
    )

    def __init__(self, config: Config, listening: Sequence[tuple[str, int]] = ()) -> None:
        self._ports = config.allow_port
        self._allow = _Networks(config.allow_dest)
        self._deny = _Networks(config.deny_dest)
        self._listening: set[tuple[int, int, int]] = set()
        self._wildcard_ports: set[int] = set()
        self._verdicts: dict[tuple[str, int], str | None] = {}
        # Imported here: hostrules builds on this module's address helpers.
        from .hostrules import HostRules

        self.hosts = HostRules(config.allow_host, config.deny_host) if config.allow_host or config.deny_host else None
        #: Report mode: the name rules' refusals are marked and counted, not enforced.
        self.report = config.host_rules_mode == "report"
        #: user name -> that user's Policy (chosen after authentication).
        self.users = {rules.name: Policy(config.for_user(rules)) for rules in config.users}
        #: group name -> that group's Policy (a provider named the group: helper group=, token claim, OU).
        self.groups = {rules.name: Policy(config.for_user(rules)) for rules in config.groups}
        self.set_listening(listening)

    def set_listening(self, addresses: Iterable[tuple[str, int]]) -> None:
        """Record the proxy's own bound addresses: a tunnel to one is a loop."""
        addresses = list(addresses)
        for policy in (*self.users.values(), *self.groups.values()):
            policy.set_listening(addresses)
        self._listening = set()
        self._wildcard_ports = set()
        self._verdicts = {}
        for host, port in addresses:
            version, value = to_int(str(ipaddress.ip_address(host)))
            if value == 0:
                self._wildcard_ports.add(port)
            else:
                self._listening.add((version, value, port))

    def for_identity(self, user: str, group: str | None) -> Policy:
        """The policy for *user*: their own ``[users.NAME]`` table, else their
        group's ``[groups.NAME]`` table, else this one."""
        policy = self.users.get(user)
        if policy is None and group is not None:
            policy = self.groups.get(group)
        return self if policy is None else policy

    def check_port(self, port: int) -> None:
        """Raise PolicyDeniedError unless *port* is in an allowed range."""
        for low, high in self._ports:
            if low <= port <= high:
                return
        raise PolicyDeniedError(f"port {port} is not allowed")

    def check_host(self, host: str, family: int) -> str | None:
        """The name rules, before any DNS lookup: raise their refusal, or in
        report mode return its reason for the tunnel to carry; None if allowed."""
        if self.hosts is None:
            return None
        refusal = self.hosts.judge(host, family)
        if refusal is None:
            return None
        if not self.report:
            raise refusal
        return refusal.code

    def _is_self(self, version: int, value: int, port: int) -> bool:
        if (version, value, port) in self._listening:
            return True
        if port in self._wildcard_ports:
            # A wildcard listener answers on every loopback address and on the unspecified one.
            return value == 0 or (value >> 24 == 127 if version == 4 else value == 1)
        return False

    def denial(self, address: str, port: int) -> str | None:
        """Why dialling ``address:port`` is refused, or None if it is allowed."""
        key = (address, port)
        verdict = self._verdicts.get(key, _MISS)
        if verdict is _MISS:
            verdict = self._judge(address, port)
            if len(self._verdicts) >= VERDICT_CACHE_ENTRIES:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict  # type: ignore[return-value]

    def _judge(self, address: str, port: int) -> str | None:
        version, value = to_int(address)
        if self._listening or self._wildcard_ports:
            if self._is_self(version, value, port):
                return _SELF
            # On a dual-stack socket ::ffff:a.b.c.d reaches the IPv4 listener a.b.c.d.
            if version == 6 and value >> 32 == _MAPPED and self._is_self(4, value & _V4_MASK, port):
                return _SELF
        reason = self._denial_one(version, value)
        if reason:
            return reason
        if version == 6:
            for embedded in embedded_ipv4_ints(value):
                reason = self._denial_one(4, embedded)
                if reason:
                    return f"embeds {_v4_text(embedded)}, which {reason}"
        return None

    def _denial_one(self, version: int, value: int) -> str | None:
        # deny-dest wins over allow-dest; allow-dest wins over the built-in list.
        if self._deny:
            denied = self._deny.find(version, value)
            if denied is not None:
                return f"is in denied network {denied}"
        if self._allow and self._allow.find(version, value) is not None:
            return None
        if not _public(version, value):
            return "is not a public address"
        return None

    def filter_addresses(self, host: str, port: int, addresses: Sequence[str]) -> list[str]:
        """The addresses of *host* that may be dialled, in order.

        Raises DestinationDeniedError (LoopDetectedError for this proxy's own
        address) naming the first reason when none may.
        """
        allowed: list[str] = []
        first_reason = None
        for address in addresses:
            reason = self.denial(address, port)
            if reason is None:
                allowed.append(address)
            elif first_reason is None:
                first_reason = f"{address} {reason}"
        if not allowed:
            error = LoopDetectedError if first_reason and first_reason.endswith(_SELF) else DestinationDeniedError
            raise error(f"destination {host}:{port} denied: {first_reason}")
        return allowed
