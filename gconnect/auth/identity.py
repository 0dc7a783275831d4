"""Who is asking: the credentials a request carries, the identity a provider
finds in them, and the contract every provider keeps.

A provider is one source of users (the htpasswd file, a Squid helper, signed
tokens, client certificates). :class:`~gconnect.auth.authenticator.Authenticator`
tries the configured ones in order; the first that knows the user decides.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from typing import Protocol

from ..errors import ProxyAuthMalformedError

#: The longest Proxy-Authorization value looked at: a user and password of a few
#: hundred bytes in base64, or a signed token with a few dozen claims. Longer is
#: malformed, not decoded.
MAX_CREDENTIALS_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class Identity:
    """A user as a provider vouches for them.

    ``group`` (a Squid helper's ``group=`` or ``tag=``, a token's group claim)
    may select a ``[groups.NAME]`` rules table; ``lifetime`` is how many more
    seconds the provider vouches for it (a token's expiry), None: no limit of its
    own (the provider's cache TTL applies).
    """

    user: str
    provider: str
    group: str | None = None
    lifetime: float | None = dataclasses.field(default=None, compare=False)


@dataclasses.dataclass(frozen=True)
class Credentials:
    """One Proxy-Authorization value, read: ``scheme`` is ``"basic"`` (``user``
    and ``password`` set) or ``"bearer"`` (``token`` set)."""

    scheme: str
    user: str = ""
    password: bytes = b""
    token: str = ""

    def bearer_token(self) -> str | None:
        """The signed token this carries: a Bearer credential, or a Basic
        password shaped like a JWT (apt and other clients send only Basic)."""
        if self.scheme == "bearer":
            return self.token
        try:
            password = self.password.decode("ascii")
        except UnicodeDecodeError:
            return None
        return password if looks_like_jwt(password) else None


class Rejected(Exception):
    """A provider that knows the user refuses the credentials (wrong password,
    a token that fails a check). The message is for the log, never the client."""

    def __init__(self, provider: str, message: str) -> None:
        super().__init__(message)
        self.provider = provider


class AuthProvider(Protocol):
    """One source of users. The contract:

    * ``name`` is what the access log's ``auth=`` and ``check-config`` show.
    * :meth:`identify` returns the :class:`Identity` the credentials prove, or
      ``None`` when the provider does not know the user (or the credentials are
      not of its kind): the next provider is asked. It raises :class:`Rejected`
      when it knows the user and refuses them: no later provider is asked.
      It raises :class:`~gconnect.errors.AuthUnavailableError` when it cannot
      tell (a helper crashed or hung): never an identity on a guess.
    * It may wait (a thread-pool hash, a helper's answer) but never blocks the
      hub; it may be called by many greenlets at once.
    * ``ttl`` and ``negative_ttl`` say how long its answers may be remembered
      (0: not at all); :meth:`reload` re-reads its files (SIGHUP) and keeps the
      previous state if they cannot be used; :meth:`start` and :meth:`stop`
      begin and end its background work (file polling, helper processes).
    """

    name: str
    ttl: float
    negative_ttl: float

    def identify(self, credentials: Credentials) -> Identity | None: ...

    def describe(self) -> str: ...

    def reload(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


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


def looks_like_jwt(text: str) -> bool:
    """Whether *text* has a JWS compact serialisation's shape (RFC 7515 §7.1):
    three base64url parts, the first a JSON object naming an ``alg``. A password
    is very unlikely to; a token always does."""
    parts = text.split(".")
    if len(parts) != 3 or not all(parts[:2]):
        return False
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
    except (binascii.Error, ValueError):
        return False
    return isinstance(header, dict) and "alg" in header


def parse_credentials(value: bytes, *, bearer: bool) -> Credentials:
    """A Proxy-Authorization value as :class:`Credentials`: Basic always,
    Bearer (RFC 6750 §2.1) only when *bearer* (a token provider is configured).
    Raises ProxyAuthMalformedError for anything else."""
    stripped = value.strip(b" \t")
    scheme, _, token = stripped.partition(b" ")
    if bearer and scheme.lower() == b"bearer":
        if len(value) > MAX_CREDENTIALS_BYTES:
            raise ProxyAuthMalformedError("Proxy-Authorization is too long")
        text = token.strip(b" \t")
        # RFC 6750 §2.1 b64token: no spaces, ASCII.
        if not text or b" " in text or not text.isascii():
            raise ProxyAuthMalformedError("Proxy-Authorization Bearer token is malformed")
        return Credentials("bearer", token=text.decode("ascii"))
    user, password = parse_basic_credentials(value)
    return Credentials("basic", user=user, password=password)
