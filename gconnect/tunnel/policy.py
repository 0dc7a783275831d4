"""Who may tunnel where. Pure functions of the configuration and an address.

The destination check runs on the address that will actually be dialled, after
resolution, so a DNS name cannot smuggle in a private address (SSRF, DNS
rebinding), and the dialler is handed exactly the list that passed.

The arithmetic (integers, special ranges, embedded IPv4) is
:mod:`gconnect.tunnel.addresses`'; the name rules are
:mod:`gconnect.tunnel.hostrules`'.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from ..config import Config
from ..errors import DestinationDeniedError, LoopDetectedError, PolicyDeniedError
from .addresses import MAPPED, V4_MASK, Networks, embedded_ipv4_ints, public, to_int, v4_text
from .hostrules import HostRules

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
        "_forward_ports",
        "_listening",
        "_ports",
        "_verdicts",
        "_wildcard_ports",
        "groups",
        "hosts",
        "report",
        "tls_name_check",
        "tls_name_ports",
        "users",
    )

    def __init__(self, config: Config, listening: Sequence[tuple[str, int]] = ()) -> None:
        self._ports = config.allow_port
        self._forward_ports = config.forward_port
        self._allow = Networks(config.allow_dest)
        self._deny = Networks(config.deny_dest)
        self._listening: set[tuple[int, int, int]] = set()
        self._wildcard_ports: set[int] = set()
        self._verdicts: dict[tuple[str, int], str | None] = {}
        self.hosts = HostRules(config.allow_host, config.deny_host) if config.allow_host or config.deny_host else None
        #: Report mode: the name rules' refusals are marked and counted, not enforced.
        self.report = config.host_rules_mode == "report"
        #: The TLS name check's mode (off | report | enforce) and the ports it reads.
        self.tls_name_check = config.tls_name_check
        self.tls_name_ports = config.tls_name_check_ports
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

    def check_forward_port(self, port: int) -> None:
        """Raise PolicyDeniedError unless *port* is one forwarded http:// requests may use."""
        for low, high in self._forward_ports:
            if low <= port <= high:
                return
        raise PolicyDeniedError(f"port {port} is not allowed for http:// requests (--forward-port)")

    def name_check_mode(self, port: int) -> str:
        """The TLS name check's mode for a tunnel to *port*: ``off`` unless listed."""
        mode = self.tls_name_check
        if mode != "off":
            for low, high in self.tls_name_ports:
                if low <= port <= high:
                    return mode
        return "off"

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
            if version == 6 and value >> 32 == MAPPED and self._is_self(4, value & V4_MASK, port):
                return _SELF
        reason = self._denial_one(version, value)
        if reason:
            return reason
        if version == 6:
            for embedded in embedded_ipv4_ints(value):
                reason = self._denial_one(4, embedded)
                if reason:
                    return f"embeds {v4_text(embedded)}, which {reason}"
        return None

    def _denial_one(self, version: int, value: int) -> str | None:
        # deny-dest wins over allow-dest; allow-dest wins over the built-in list.
        if self._deny:
            denied = self._deny.find(version, value)
            if denied is not None:
                return f"is in denied network {denied}"
        if self._allow and self._allow.find(version, value) is not None:
            return None
        if not public(version, value):
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
