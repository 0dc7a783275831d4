"""Proxy authentication: the provider chain behind RFC 9110 §11.7.1
Proxy-Authorization (407 / Proxy-Authenticate), with one cache and one failure
limiter in front of every provider.

Providers (:mod:`gconnect.auth.identity` states their contract) are tried in
the configured order (``--auth-chain``, or every configured one in the order of
:data:`gconnect.defaults.AUTH_PROVIDERS`); the first that knows the user decides:

* ``cert`` (:mod:`gconnect.auth.certs`): the client certificate the TLS listener
  verified. First in the chain, a certificate wins over any header; anywhere
  else, it counts when the request carries no Proxy-Authorization.
* ``jwt`` (:mod:`gconnect.auth.jwtprovider`): a signed token, as Bearer or as the Basic password.
* ``htpasswd`` (:mod:`gconnect.auth.fileprovider`): the file's users, bcrypt in the thread pool.
* ``helper`` (:mod:`gconnect.auth.helperprovider`): a Squid basic auth helper.

In front of them, for credentials that came in a header:

* a check's outcome is cached for the deciding provider's ``ttl`` (a success)
  or ``negative_ttl`` (a refusal), never past a token's expiry, keyed by an HMAC
  of the header value under a per-process random key: the cache never holds a
  password, and a header value that was not seen before is never a hit;
* connections that carry the same header while its first check runs wait for
  that check instead of starting their own (a browser opens several at once);
* failed checks are rate-limited per client address in a sliding minute,
  counted in the totals every worker shares (:class:`FailureLimiter`), spent
  *before* any provider runs (so parallel guesses cannot overdraw it) and
  refunded on success; over the limit the answer is 429 without checking
  anything. A cached header still passes while its address is limited, so a user
  behind the same NAT as a guesser keeps working.

A provider that cannot decide (a helper crashed, hung, or answered BH) makes the
answer 503, never a login. A reload (SIGHUP, the htpasswd file changing) re-reads
every provider's files and clears the cache; a check that spans one is done again.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import gevent

from .. import defaults as d
from ..config import Config
from ..errors import (
    AuthRateLimitedError,
    AuthUnavailableError,
    ClientCertificateRequiredError,
    ProxyAuthFailedError,
    ProxyAuthMalformedError,
    ProxyAuthRequiredError,
)
from ..state.shared import window_key
from ..state.tally import LocalTally, Tally
from .certs import CertProvider
from .identity import (
    MAX_CREDENTIALS_BYTES,
    AuthProvider,
    Credentials,
    Identity,
    Rejected,
    parse_basic_credentials,
    parse_credentials,
)

__all__ = ["MAX_CREDENTIALS_BYTES", "Authenticator", "FailureLimiter", "log_safe", "parse_basic_credentials"]

log = logging.getLogger(__name__)

#: Checks remembered at most; the oldest go first. One entry per distinct
#: header value, about 150 bytes each.
MAX_CACHE_ENTRIES = 10_000
#: The failure windows' keys in the totals (the client's address follows).
FAILURES_KEY = "authfail:"


def log_safe(user: str) -> str:
    """*user* as one access-log token: percent-encoded outside printable ASCII
    and without spaces, ``=`` or ``%``, so ``user=NAME`` stays one key=value."""
    return urllib.parse.quote(user, safe="!$&'()*+,-./:;<>?@[]^_`{|}~")


class FailureLimiter:
    """*per_minute* failed logins per client address in a sliding minute, counted
    in the *totals* tally (so every worker, and a fleet, share the count).

    The count is the current fixed window's plus the previous one's weighted by
    how much of it the sliding minute still covers; the windows are keys of
    their own (``authfail:ADDRESS:w60-N``) that the state drops once past."""

    def __init__(
        self,
        per_minute: int,
        *,
        clock: Callable[[], float] = time.time,
        totals: Tally | None = None,
        window: int = d.AUTH_FAILURE_WINDOW_SECONDS,
    ) -> None:
        self.capacity = per_minute
        self.window = window
        self._clock = clock
        self.totals: Tally = totals if totals is not None else LocalTally()

    def _count(self, address: str) -> tuple[str, float, int, int]:
        """(the current window's key, how far into it, its count, the previous window's count)."""
        current, previous, into = window_key(FAILURES_KEY + address, self.window, self._clock())
        return current, into, self.totals.total(current), self.totals.total(previous)

    def take(self, address: str) -> str:
        """Spend one attempt; AuthRateLimitedError (nothing spent) if none is left.
        Returns what :meth:`refund` needs to give it back."""
        key, into, now_count, before = self._count(address)
        if now_count + before * (1.0 - into) + 1 > self.capacity:
            retry_after = self._retry_after(into, now_count, before)
            raise AuthRateLimitedError(
                f"too many failed proxy logins from {address}; retry in {retry_after} s", retry_after
            )
        self.totals.add(key, 1)
        return key

    def _retry_after(self, into: float, now_count: int, before: int) -> int:
        """Seconds until one more attempt fits in the sliding window."""
        room = self.capacity - 1 - now_count
        if room >= 0 and before:
            # The previous window's weight must fall to room / before.
            wait = (1.0 - room / before - into) * self.window
        else:
            # Only when this window becomes the previous one and its weight falls enough.
            weight = (self.capacity - 1) / now_count if now_count else 1.0
            wait = (1.0 - into) * self.window + (1.0 - weight) * self.window
        return max(1, int(wait + 0.999))

    def refund(self, taken: str) -> None:
        """Give back the attempt *take* returned *taken* for, once the check succeeded."""
        self.totals.add(taken, -1)

    def count(self, address: str) -> float:
        """The failures counted against *address* in the sliding minute now."""
        _, into, now_count, before = self._count(address)
        return now_count + before * (1.0 - into)


def build_providers(config: Config) -> list[AuthProvider]:
    """The configured providers, in the order they are tried. Raises ValueError
    (with the reason) when one cannot be set up: a file that does not parse, a
    helper command line that does not split, PyJWT missing."""
    providers: list[AuthProvider] = []
    for name in config.auth_providers():
        if name == "cert":
            providers.append(CertProvider(config))
        elif name == "htpasswd":
            from .fileprovider import HtpasswdProvider

            providers.append(HtpasswdProvider(config))
        elif name == "helper":
            from .helperprovider import HelperProvider

            providers.append(HelperProvider(config))
        else:
            try:
                from .jwtprovider import JwtProvider

                providers.append(JwtProvider(config))
            except ImportError as exc:
                raise ValueError(f"--auth-jwks needs PyJWT: pip install 'gconnect[jwt]' ({exc})") from None
    return providers


class Authenticator:
    """Who may use the proxy: the provider chain, a cache, a failure limiter."""

    def __init__(
        self, config: Config, *, clock: Callable[[], float] = time.monotonic, totals: Tally | None = None
    ) -> None:
        self.realm = config.auth_realm
        self._clock = clock
        self.limiter = FailureLimiter(config.auth_failures_per_minute, totals=totals)
        self.providers = build_providers(config)
        cert = [p for p in self.providers if isinstance(p, CertProvider)]
        self.cert: CertProvider | None = cert[0] if cert else None
        #: The providers that read Proxy-Authorization, in order.
        self.header_providers = [p for p in self.providers if not isinstance(p, CertProvider)]
        self._cert_first = bool(cert) and self.providers.index(cert[0]) == 0
        self._bearer = any(p.name == "jwt" for p in self.providers)
        # Per process: a cache key means nothing outside this process.
        self._cache_key = os.urandom(32)
        #: HMAC of a header value -> (the identity, or None for a refusal; when it expires).
        self._cache: dict[bytes, tuple[Identity | None, float]] = {}
        #: Bumped by every reload: a check that spans one is done again.
        self._generation = 0
        #: Checks running now, by cache key: a burst of connections carrying the
        #: same new header (a browser opening six at once) waits for one check
        #: instead of running six and spending six attempts of the failure bucket.
        self._inflight: dict[bytes, gevent.Greenlet] = {}
        for provider in self.providers:
            if hasattr(provider, "on_change"):
                provider.on_change = self._changed

    def describe(self) -> list[str]:
        """One line per provider, in the order tried (check-config, the startup log)."""
        return [f"{n}. {p.name}: {p.describe()}" for n, p in enumerate(self.providers, 1)]

    def helper_pools(self) -> list[Any]:
        """The helper pools of the chain (their ``failures`` are counted for the metrics)."""
        return [provider.pool for provider in self.providers if hasattr(provider, "pool")]

    def start(self) -> None:
        """Start the providers' background work (file polling, helper processes)."""
        for provider in self.providers:
            provider.start()

    def stop(self) -> None:
        for provider in self.providers:
            provider.stop()

    def reload(self) -> bool:
        """Re-read every provider's files (SIGHUP). On failure a provider keeps
        what it had. Open tunnels are not touched; the cache is cleared, so a
        removed user or changed password takes effect at the next request.
        True if every provider reloaded."""
        ok = all([provider.reload() for provider in self.providers])
        self._changed()
        return ok

    def _changed(self) -> None:
        self._generation += 1
        self._cache.clear()

    def challenge(self, message: str) -> ProxyAuthRequiredError:
        return ProxyAuthRequiredError(message, realm=self.realm)

    def authenticate(self, values: list[bytes], address: str) -> str:
        """The user named by the request's Proxy-Authorization *values*, or raise
        407 (missing, malformed, wrong), 429 (too many failures from *address*)
        or 503 (a helper could not decide)."""
        return self.identify(values, address).user

    def identify(self, values: list[bytes], address: str, peer_cert: dict[str, Any] | None = None) -> Identity:
        """Who is asking: the :class:`Identity` the chain finds in the request's
        Proxy-Authorization *values* and the client's verified TLS certificate
        *peer_cert* (``SSLObject.getpeercert()``; None or empty without one).
        Raises as :meth:`authenticate` does."""
        cert = self.cert
        if cert is not None and (self._cert_first or not values):
            identity = cert.identify_peer(peer_cert)
            if identity is not None:
                return identity
        if not self.header_providers:
            raise ClientCertificateRequiredError("a client certificate naming the user is required")
        if not values:
            raise self.challenge("proxy authentication required")
        if len(values) > 1:
            raise ProxyAuthMalformedError("more than one Proxy-Authorization header", realm=self.realm)
        value = values[0]
        key = hmac.new(self._cache_key, value, hashlib.sha256).digest()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[1] > self._clock():
                if cached[0] is not None:
                    return cached[0]
                self.limiter.take(address)  # a remembered refusal is still a failed attempt
                raise ProxyAuthFailedError("proxy authentication failed", realm=self.realm)
            del self._cache[key]
        running = self._inflight.get(key)
        if running is not None:
            return self._outcome(running.get())
        try:
            credentials = parse_credentials(value, bearer=self._bearer)
        except ProxyAuthMalformedError as exc:
            raise ProxyAuthMalformedError(str(exc), realm=self.realm) from None
        taken = self.limiter.take(address)
        # The check runs in a greenlet of its own that every asker waits on (the
        # first too): an asker killed or cancelled meanwhile (an HTTP/2 stream
        # reset, a drain's end) leaves the check to the others instead of
        # failing them all with a 407.
        running = self._inflight[key] = gevent.spawn(self._shared_check, credentials, key)
        outcome = running.get()
        if outcome[0] != "failed":
            self.limiter.refund(taken)
        return self._outcome(outcome)

    def _shared_check(self, credentials: Credentials, key: bytes) -> tuple[str, Any]:
        try:
            return self._check(credentials, key)
        finally:
            del self._inflight[key]

    def _outcome(self, outcome: tuple[str, Any]) -> Identity:
        kind, value = outcome
        if kind == "ok":
            return value  # type: ignore[no-any-return]
        if kind == "unavailable":
            raise AuthUnavailableError(value)
        raise ProxyAuthFailedError("proxy authentication failed", realm=self.realm)

    def _check(self, credentials: Credentials, key: bytes) -> tuple[str, Any]:
        """Run the chain (again if a reload happens meanwhile) and cache the outcome."""
        generation = -1
        while generation != self._generation:
            generation = self._generation
            try:
                identity, ttl = self._decide(credentials)
            except AuthUnavailableError as exc:
                return ("unavailable", str(exc))
        if identity is None:
            self._remember(key, None, ttl)
            return ("failed", None)
        self._remember(key, identity, ttl)
        return ("ok", identity)

    def _decide(self, credentials: Credentials) -> tuple[Identity | None, float]:
        """The identity (or None: refused or unknown) and how long to remember it."""
        for provider in self.header_providers:
            try:
                identity = provider.identify(credentials)
            except Rejected as exc:
                log.info("proxy login refused by %s: %s", exc.provider, exc)
                return None, provider.negative_ttl
            if identity is not None:
                ttl = provider.ttl
                if identity.lifetime is not None:
                    ttl = min(ttl, identity.lifetime)
                return identity, ttl
        return None, 0.0

    def _remember(self, key: bytes, identity: Identity | None, ttl: float) -> None:
        if ttl <= 0:
            return
        if len(self._cache) >= MAX_CACHE_ENTRIES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (identity, self._clock() + ttl)
