"""Proxy authentication: RFC 7617 Basic credentials checked against an htpasswd
file (RFC 9110 §11.7.1 Proxy-Authorization, §11.7.1 407 / Proxy-Authenticate).

The file's formats are :mod:`gconnect.auth.htpasswd`'s. The hash functions are slow on purpose, so:

* they run in gevent's thread pool (bcrypt releases the GIL), and other tunnels'
  bytes keep flowing while one client's password is checked;
* a successful check is cached for ``auth_cache_ttl``, keyed by an HMAC of the
  header value under a per-process random key: the cache never holds a password,
  and a header value that was not seen before is never a hit;
* connections that carry the same header while its first check runs wait for
  that check instead of starting their own (a browser opens several at once);
* failed checks are rate-limited per client address by a token bucket, spent
  *before* the hash runs (so parallel guesses cannot overdraw it) and refunded on
  success; over the limit the answer is 429 without hashing anything. A cached
  header still passes while its address is limited, so a user behind the same
  NAT as a guesser keeps working.

A user name that is not in the file costs one bcrypt check against a dummy
hash, so timing does not say which names exist. The file is re-read when its
mtime, size or inode changes (polled) or on :meth:`Authenticator.reload`
(SIGHUP); a file that fails to parse keeps the previous table in force.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import time
import urllib.parse
from collections.abc import Callable
from typing import Any

import bcrypt
import gevent
from gevent.event import AsyncResult

from ..config import Config
from ..errors import AuthRateLimitedError, ProxyAuthFailedError, ProxyAuthMalformedError, ProxyAuthRequiredError
from .htpasswd import (
    DEFAULT_BCRYPT_ROUNDS,
    WEAK_SCHEMES,
    AuthFileError,
    Entry,
    load_htpasswd,
    verify_password,
)

log = logging.getLogger(__name__)

#: How often the auth file's mtime is polled (seconds): inotify-free and cheap.
AUTH_FILE_POLL_SECONDS = 1.0
#: Successful checks remembered at most; the oldest go first. One entry per
#: distinct header value, about 150 bytes each.
MAX_CACHE_ENTRIES = 10_000
#: Client addresses with a failure bucket at most; full buckets are dropped first.
MAX_TRACKED_ADDRESSES = 65_536
#: The longest Proxy-Authorization value looked at: a user and password of a few
#: hundred bytes in base64. Longer is malformed, not decoded.
MAX_CREDENTIALS_BYTES = 4096


def parse_basic_credentials(value: bytes) -> tuple[str, bytes]:
    """RFC 7617: ``Basic base64(user ":" password)`` -> (user, password).

    Raises ProxyAuthMalformedError for another scheme, bad base64, no colon, or
    a user name that is not UTF-8 (RFC 7617 §2.1: the charset is UTF-8).
    """
    if len(value) > MAX_CREDENTIALS_BYTES:
        raise ProxyAuthMalformedError("Proxy-Authorization is too long")
    scheme, _, token = value.strip(b" \t").partition(b" ")
    if scheme.lower() != b"basic":
        raise ProxyAuthMalformedError("Proxy-Authorization must use the Basic scheme")
    try:
        decoded = base64.b64decode(token.strip(b" \t"), validate=True)
    except (binascii.Error, ValueError):
        raise ProxyAuthMalformedError("Proxy-Authorization is not valid base64") from None
    user_bytes, colon, password = decoded.partition(b":")
    if not colon:
        raise ProxyAuthMalformedError("Proxy-Authorization credentials have no ':'")
    try:
        user = user_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyAuthMalformedError("Proxy-Authorization user name is not UTF-8") from None
    if not user:
        raise ProxyAuthMalformedError("Proxy-Authorization has an empty user name")
    return user, password


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


def _file_identity(path: str) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size, st.st_ctime_ns


class Authenticator:
    """Who may use the proxy: one htpasswd table, a cache, a failure limiter."""

    def __init__(self, config: Config, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = config.auth_file
        self.realm = config.auth_realm
        self.cache_ttl = config.auth_cache_ttl
        self.allow_plaintext = config.allow_plaintext_passwords
        self._clock = clock
        self.limiter = FailureLimiter(config.auth_failures_per_minute, clock=clock)
        # Per process: a cache key means nothing outside this process.
        self._cache_key = os.urandom(32)
        self._cache: dict[bytes, tuple[str, float]] = {}
        #: Bumped by every successful reload: a check that spans one is done again.
        self._generation = 0
        #: Checks running now, by cache key: a burst of connections carrying the
        #: same new header (a browser opening six at once) waits for one check
        #: instead of running six and spending six attempts of the failure bucket.
        self._inflight: dict[bytes, AsyncResult] = {}
        self._identity = _file_identity(self.path)
        self._table = load_htpasswd(self.path, allow_plaintext=self.allow_plaintext)
        self._dummy = self._dummy_entry(self._table)
        self._watcher: Any = None
        self._log_loaded("loaded")

    def _log_loaded(self, verb: str) -> None:
        log.info("auth file %s %s: %d users", self.path, verb, len(self._table))
        weak: dict[str, list[str]] = {}
        for entry in self._table.values():
            if entry.scheme in WEAK_SCHEMES or entry.scheme == "plain":
                weak.setdefault(entry.scheme, []).append(entry.user)
        for scheme, users in sorted(weak.items()):
            log.warning(
                "auth file %s: %d users have weak %s passwords (%s); re-create them with 'gconnect passwd'",
                self.path,
                len(users),
                scheme,
                ", ".join(users[:5]) + (", ..." if len(users) > 5 else ""),
            )

    @staticmethod
    def _dummy_entry(table: dict[str, Entry]) -> Entry:
        # Same cost as the real entries: an unknown name takes as long as a wrong password.
        rounds = DEFAULT_BCRYPT_ROUNDS
        for entry in table.values():
            if entry.scheme == "bcrypt":
                rounds = int(entry.hashed[4:6])
                break
        salt = bcrypt.gensalt(rounds).decode("ascii")
        return Entry("", "bcrypt", salt + "." * 31)

    @property
    def users(self) -> int:
        return len(self._table)

    def start(self) -> None:
        """Poll the file for changes until :meth:`stop`."""
        if self._watcher is None:
            self._watcher = gevent.spawn(self._watch)

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.kill(block=False)
            self._watcher = None

    def _watch(self) -> None:
        while True:
            gevent.sleep(AUTH_FILE_POLL_SECONDS)
            if _file_identity(self.path) != self._identity:
                self.reload()

    def reload(self) -> bool:
        """Re-read the file. On failure keep the table in force and log why.
        Open tunnels are not touched; the cache is cleared, so a removed user
        or changed password takes effect at the next request."""
        identity = _file_identity(self.path)
        try:
            table = load_htpasswd(self.path, allow_plaintext=self.allow_plaintext)
        except AuthFileError as exc:
            self._identity = identity  # one error line per change, not one per poll
            log.error("%s; keeping the %d users loaded before", exc, len(self._table))
            return False
        self._identity = identity
        self._table = table
        self._generation += 1
        self._dummy = self._dummy_entry(table)
        self._cache.clear()
        self._log_loaded("reloaded")
        return True

    def challenge(self, message: str) -> ProxyAuthRequiredError:
        return ProxyAuthRequiredError(message, realm=self.realm)

    def authenticate(self, values: list[bytes], address: str) -> str:
        """The user named by the request's Proxy-Authorization *values*, or raise
        407 (missing, malformed, wrong) or 429 (too many failures from *address*)."""
        if not values:
            raise self.challenge("proxy authentication required")
        if len(values) > 1:
            raise ProxyAuthMalformedError("more than one Proxy-Authorization header", realm=self.realm)
        value = values[0]
        key = hmac.new(self._cache_key, value, hashlib.sha256).digest()
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[1] > now:
                return cached[0]
            del self._cache[key]
        running = self._inflight.get(key)
        if running is not None:
            if running.get():
                return str(running.value)
            raise ProxyAuthFailedError("proxy authentication failed", realm=self.realm)
        try:
            user, password = parse_basic_credentials(value)
        except ProxyAuthMalformedError as exc:
            raise ProxyAuthMalformedError(str(exc), realm=self.realm) from None
        self.limiter.take(address)
        running = self._inflight[key] = AsyncResult()
        ok = False
        try:
            # A reload while the hash runs (SIGHUP, file change) must not let the
            # old table's answer in: check again against the table now in force.
            generation = -1
            while generation != self._generation:
                generation = self._generation
                entry = self._table.get(user)
                ok = self._verify_off_hub(entry or self._dummy, password) and entry is not None
        finally:
            del self._inflight[key]
            # Waiters learn the outcome (the user, or "" for a failure) without a check of their own.
            running.set(user if ok else "")
        if not ok:
            raise ProxyAuthFailedError("proxy authentication failed", realm=self.realm)
        self.limiter.refund(address)
        if self.cache_ttl:
            if len(self._cache) >= MAX_CACHE_ENTRIES:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (user, self._clock() + self.cache_ttl)
        return user

    @staticmethod
    def _verify_off_hub(entry: Entry, password: bytes) -> bool:
        # bcrypt holds a CPU for tens of ms and releases the GIL: the hub keeps
        # serving other tunnels while a pool thread hashes.
        return bool(gevent.get_hub().threadpool.spawn(verify_password, entry, password).get())
