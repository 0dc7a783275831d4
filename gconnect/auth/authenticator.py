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
* failed checks are rate-limited per client address by a token bucket, spent
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

from ..config import Config
from ..errors import (
    AuthRateLimitedError,
    AuthUnavailableError,
    ClientCertificateRequiredError,
    ProxyAuthFailedError,
    ProxyAuthMalformedError,
    ProxyAuthRequiredError,
)
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
#: Client addresses with a failure bucket at most; full buckets are dropped first.
MAX_TRACKED_ADDRESSES = 65_536


def log_safe(user: str) -> str:
    """*user* as one access-log token: percent-encoded outside printable ASCII
    and without spaces, ``=`` or ``%``, so ``user=NAME`` stays one key=value."""
    return urllib.parse.quote(user, safe="!$&'()*+,-./:;<>?@[]^_`{|}~")


class FailureLimiter:
    """A token bucket per client address: *per_minute* failures in a burst,
    refilled at *per_minute* a minute."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def _tokens(self, address: str, now: float) -> float:
        tokens, stamp = self._buckets.get(address, (self.capacity, now))
        return min(self.capacity, tokens + (now - stamp) * self.rate)

    def take(self, address: str) -> None:
        """Spend one attempt; AuthRateLimitedError (nothing spent) if none is left."""
        now = self._clock()
        tokens = self._tokens(address, now)
        if tokens < 1.0:
            retry_after = max(1, int((1.0 - tokens) / self.rate + 0.999))
            raise AuthRateLimitedError(
                f"too many failed proxy logins from {address}; retry in {retry_after} s", retry_after
            )
        if len(self._buckets) >= MAX_TRACKED_ADDRESSES and address not in self._buckets:
            self._prune(now)
        self._buckets[address] = (tokens - 1.0, now)

    def refund(self, address: str) -> None:
        """Give back the attempt taken for a check that succeeded."""
        now = self._clock()
        tokens = self._tokens(address, now) + 1.0
        if tokens >= self.capacity:
            self._buckets.pop(address, None)
        else:
            self._buckets[address] = (tokens, now)

    def _prune(self, now: float) -> None:
        for address in [a for a in self._buckets if self._tokens(a, now) >= self.capacity]:
            del self._buckets[address]
        while len(self._buckets) >= MAX_TRACKED_ADDRESSES:
            # Still full of active guessers: forget the oldest entry (dicts keep insertion order).
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


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

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.realm = config.auth_realm
        self._clock = clock
        self.limiter = FailureLimiter(config.auth_failures_per_minute, clock=clock)
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
        self.limiter.take(address)
        # The check runs in a greenlet of its own that every asker waits on (the
        # first too): an asker killed or cancelled meanwhile (an HTTP/2 stream
        # reset, a drain's end) leaves the check to the others instead of
        # failing them all with a 407.
        running = self._inflight[key] = gevent.spawn(self._shared_check, credentials, key)
        outcome = running.get()
        if outcome[0] != "failed":
            self.limiter.refund(address)
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
