"""The destination name rules: ``--deny-host`` and ``--allow-host``, decided
before any DNS lookup.

Decision: a target matching any deny pattern is refused (``host_denied``);
otherwise, if any allow pattern is set, a target matching none is refused
(``host_not_allowed``), IP literals included, so an allow-list cannot be
bypassed by dialling an address instead of a name. The rules never widen the
address policy: an allowed name still has every resolved address checked.

Matching costs a few dict lookups per label of the target, whatever the number
of rules (bench/hostrules.py measures it with 10,000): each table maps a
canonical name to the pattern that put it there.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import HostDeniedError, HostNotAllowedError, PolicyDeniedError
from .addresses import embedded_ipv4
from .names import canonical_address


class _Table:
    """Canonical patterns (see :mod:`gconnect.tunnel.names`) as three dicts."""

    __slots__ = ("addresses", "below", "exact")

    def __init__(self, patterns: Iterable[str]) -> None:
        #: name -> pattern matching that name itself (``example.com``, ``.example.com``)
        self.exact: dict[str, str] = {}
        #: name -> pattern matching every name under it (``.example.com``, ``*.example.com``)
        self.below: dict[str, str] = {}
        #: canonical address text -> pattern
        self.addresses: dict[str, str] = {}
        for pattern in patterns:
            if pattern.startswith("*."):
                self.below.setdefault(pattern[2:], pattern)
            elif pattern.startswith("."):
                self.exact.setdefault(pattern[1:], pattern)
                self.below.setdefault(pattern[1:], pattern)
            elif canonical_address(pattern) is not None:
                self.addresses.setdefault(pattern, pattern)
            else:
                self.exact.setdefault(pattern, pattern)

    def match_name(self, name: str) -> str | None:
        """The pattern matching the canonical *name*, or None."""
        found = self.exact.get(name)
        if found is not None or not self.below:
            return found
        below = self.below
        dot = name.find(".")
        while dot >= 0:
            found = below.get(name[dot + 1 :])
            if found is not None:
                return found
            dot = name.find(".", dot + 1)
        return None

    def match(self, host: str, family: int) -> str | None:
        """The pattern matching *host* (an IP literal when *family* is set), or None."""
        if family:
            return self.addresses.get(host)
        return self.match_name(host)

    def __bool__(self) -> bool:
        return bool(self.exact or self.below or self.addresses)


class HostRules:
    """One policy's name rules; :meth:`judge` is the whole decision."""

    __slots__ = ("_allow", "_deny")

    def __init__(self, allow: Iterable[str], deny: Iterable[str]) -> None:
        self._allow = _Table(allow)
        self._deny = _Table(deny)

    def judge(self, host: str, family: int) -> PolicyDeniedError | None:
        """The refusal of the target *host* (HostDeniedError or
        HostNotAllowedError, not raised: report mode only counts it), or None.

        *host* is canonical: a name from the request grammar, or address text
        (*family* set)."""
        deny = self._deny
        if deny:
            pattern = deny.match(host, family)
            if pattern is None and family and ":" in host:
                # ::ffff:203.0.113.7 and its kin reach the IPv4 address a deny names.
                for embedded in embedded_ipv4(host):
                    pattern = deny.addresses.get(embedded)
                    if pattern is not None:
                        break
            if pattern is not None:
                return HostDeniedError(f"host {host} is denied (deny-host {pattern})")
        allow = self._allow
        if allow and allow.match(host, family) is None:
            return HostNotAllowedError(f"host {host} is not in the allow-host list")
        return None
