"""Name resolution with dnspython under gevent.

``/etc/hosts`` first, then A and AAAA asked in parallel. Answers are cached for
their TTL (clamped), failures for a short negative TTL, and concurrent lookups
of one name share one query. IP literals never come here: the server dials them
directly. Runs cooperatively because the process is monkey-patched before
dnspython is imported (``gconnect.__main__``): dnspython's sockets and selectors
are gevent's.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time
from typing import Union

import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver
import gevent

from ..config import Config
from ..errors import NameNotFoundError, OutboundError, ResolveError, ResolveTimeoutError

log = logging.getLogger(__name__)

#: Canonical address text ("192.0.2.1", "2001:db8::1"): what the policy and the dialler take.
Address = str

#: Bound on cached names; unbound's default rrset-cache is 4 MB, about this many names.
DNS_CACHE_MAX_ENTRIES = 10_000
#: RFC 8305 §3: after the A answer, wait this long for AAAA before connecting.
RESOLUTION_DELAY = 0.05
#: How often the hosts file's mtime is looked at.
HOSTS_CHECK_INTERVAL = 1.0


def order_addresses(v6: list[Address], v4: list[Address]) -> list[Address]:
    """RFC 8305 §4: interleave the families, IPv6 first."""
    ordered: list[Address] = []
    for i in range(max(len(v6), len(v4))):
        if i < len(v6):
            ordered.append(v6[i])
        if i < len(v4):
            ordered.append(v4[i])
    return ordered


def parse_hosts(text: str) -> dict[str, list[Address]]:
    """Parse hosts(5) text into ``name -> addresses`` in file order."""
    table: dict[str, list[Address]] = {}
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            ip = str(ipaddress.ip_address(fields[0]))
        except ValueError:
            continue
        for name in fields[1:]:
            addrs = table.setdefault(name.lower().rstrip("."), [])
            if ip not in addrs:
                addrs.append(ip)
    return table


class _Failure:
    """A cached lookup failure: kind is "nxdomain", "noanswer", "servfail",
    "timeout" or "error"."""

    __slots__ = ("detail", "kind")

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind = kind
        self.detail = detail


class Resolver:
    """Resolve host names to ordered address lists, cooperatively and cached."""

    def __init__(self, config: Config) -> None:
        self._config = config
        if config.dns_server:
            self._dns = dns.resolver.Resolver(configure=False)
            self._dns.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in config.dns_server]
        else:
            self._dns = dns.resolver.Resolver(configure=True)
        # Our own cache holds the combined A+AAAA answer; dnspython's would be a second copy.
        self._dns.cache = None
        self._cache: dict[str, tuple[float, Union[list[Address], _Failure]]] = {}
        self._inflight: dict[str, gevent.Greenlet] = {}
        self._hosts: dict[str, list[Address]] = {}
        self._hosts_mtime: float | None = None
        self._hosts_checked = 0.0
        self.lookups = 0
        self.cache_hits = 0
        self._reload_hosts()

    def _reload_hosts(self) -> None:
        path = self._config.hosts_file
        if not path:
            return
        self._hosts_checked = time.monotonic()
        try:
            mtime = os.stat(path).st_mtime
            if mtime == self._hosts_mtime:
                return
            with open(path, encoding="utf-8", errors="replace") as f:
                self._hosts = parse_hosts(f.read())
            self._hosts_mtime = mtime
        except OSError as exc:
            log.warning("cannot read hosts file %s: %s", path, exc)
            self._hosts = {}

    def resolve(self, host: str) -> list[Address]:
        """Addresses for *host* (a lower-case name), IPv6 and IPv4 interleaved.

        Raises ResolveError (502) or ResolveTimeoutError (504).
        """
        now = time.monotonic()
        if now - self._hosts_checked >= HOSTS_CHECK_INTERVAL:
            self._reload_hosts()
        static = self._hosts.get(host)
        if static:
            return order_addresses([a for a in static if ":" in a], [a for a in static if ":" not in a])
        entry = self._cache.get(host)
        if entry is not None:
            if entry[0] > now:
                self.cache_hits += 1
                return self._unwrap(host, entry[1])
            del self._cache[host]
        pending = self._inflight.get(host)
        if pending is not None:
            self.cache_hits += 1
        else:
            # The lookup runs in a greenlet of its own, which every asker waits on
            # (the first too): a tunnel killed or cancelled while it waits leaves
            # the lookup running for the others, instead of failing them all.
            pending = self._inflight[host] = gevent.spawn(self._shared_lookup, host)
        return self._unwrap(host, pending.get())

    def _shared_lookup(self, host: str) -> Union[list[Address], _Failure]:
        try:
            result, ttl = self._lookup(host)
        except Exception as exc:
            log.exception("DNS lookup of %s failed unexpectedly", host)
            return _Failure("error", f"lookup failed: {exc!r}")  # not cached
        finally:
            del self._inflight[host]
        self._store(host, result, ttl)
        return result

    def _store(self, host: str, result: Union[list[Address], _Failure], ttl: float) -> None:
        if len(self._cache) >= DNS_CACHE_MAX_ENTRIES:
            # dicts keep insertion order: drop the oldest entry.
            del self._cache[next(iter(self._cache))]
        self._cache[host] = (time.monotonic() + ttl, result)

    def _unwrap(self, host: str, result: Union[list[Address], _Failure]) -> list[Address]:
        if not isinstance(result, _Failure):
            return result
        raise self._error(host, result)

    def _error(self, host: str, failure: _Failure) -> OutboundError:
        if failure.kind == "timeout":
            return ResolveTimeoutError(f"DNS lookup of {host} timed out after {self._config.dns_timeout:g} s")
        if failure.kind == "nxdomain":
            return NameNotFoundError(f"name {host} does not exist (NXDOMAIN)")
        if failure.kind == "noanswer":
            return NameNotFoundError(f"name {host} has no A or AAAA records")
        if failure.kind == "servfail":
            return ResolveError(f"DNS servers failed to resolve {host} (SERVFAIL or refused)")
        return ResolveError(f"DNS lookup of {host} failed: {failure.detail}")

    def _lookup(self, host: str) -> tuple[Union[list[Address], _Failure], float]:
        self.lookups += 1
        # --dns-timeout is the budget for the whole answer, both families
        # included: dnspython's lifetime bounds each query, but not its retries'
        # back-off sleeps, and a dead server could answer 504 well past the budget.
        budget = self._config.dns_timeout
        deadline = time.monotonic() + budget
        v6 = gevent.spawn(self._query, host, "AAAA")
        v4 = gevent.spawn(self._query, host, "A")
        try:
            done = gevent.wait([v6, v4], timeout=budget, count=1)
            if done and done[0].value and isinstance(done[0].value[0], list):
                # One family answered: give the other RESOLUTION_DELAY, no more.
                gevent.wait([v6, v4], timeout=min(RESOLUTION_DELAY, max(0.0, deadline - time.monotonic())))
            elif done:
                gevent.wait([v6, v4], timeout=max(0.0, deadline - time.monotonic()))
        finally:
            unfinished = [g for g in (v6, v4) if not g.ready()]
            for g in unfinished:
                g.kill(block=False)
        r6 = v6.value if v6.successful() else None
        r4 = v4.value if v4.successful() else None
        addrs6 = r6[0] if r6 is not None and isinstance(r6[0], list) else []
        addrs4 = r4[0] if r4 is not None and isinstance(r4[0], list) else []
        if addrs6 or addrs4:
            ttls = [r[1] for r in (r6, r4) if r is not None and isinstance(r[0], list) and r[0]]
            ttl = min(ttls)
            if unfinished:
                # A family we did not wait for: look again soon.
                ttl = min(ttl, self._config.dns_negative_ttl)
            ttl = max(self._config.dns_min_ttl, min(ttl, self._config.dns_max_ttl))
            return order_addresses(addrs6, addrs4), ttl
        failures = [r[0] for r in (r6, r4) if r is not None and isinstance(r[0], _Failure)]
        if unfinished:
            failures.append(_Failure("timeout"))  # cut short by the budget
        # The most telling failure wins: a name that does not exist, then a timeout.
        for kind in ("nxdomain", "timeout", "servfail", "error", "noanswer"):
            for failure in failures:
                if failure.kind == kind:
                    return failure, self._config.dns_negative_ttl
        return _Failure("error", "no answer"), self._config.dns_negative_ttl

    def _query(self, host: str, rdtype: str) -> tuple[Union[list[Address], _Failure], float]:
        try:
            answer = self._dns.resolve(host, rdtype, lifetime=self._config.dns_timeout, search=False)
        except dns.resolver.NXDOMAIN:
            return _Failure("nxdomain"), 0.0
        except dns.resolver.NoAnswer:
            return _Failure("noanswer"), 0.0
        except dns.exception.Timeout:
            return _Failure("timeout"), 0.0
        except dns.resolver.NoNameservers as exc:
            return _Failure("servfail", str(exc)), 0.0
        except (dns.exception.DNSException, OSError) as exc:
            return _Failure("error", str(exc)), 0.0
        addrs: list[Address] = []
        for rdata in answer:
            try:
                # One spelling for the policy and the logs, whatever the wire gave.
                addrs.append(str(ipaddress.ip_address(rdata.address)))
            except ValueError:
                continue
        ttl = float(answer.rrset.ttl) if answer.rrset is not None else 0.0
        return addrs, ttl
