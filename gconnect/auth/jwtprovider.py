"""Signed tokens (JWT, RFC 7519) as a provider, verified with PyJWT against the
keys of a local JWKS file (RFC 7517).

A token travels as ``Proxy-Authorization: Bearer <token>`` (RFC 6750 §2.1) or
as the password of Basic credentials (apt and many tools send only Basic; the
Basic user name is then not used: the token names the user). A credential that
is not shaped like a JWT is not this provider's: the next one is asked.

Every token must carry ``exp``, ``iss`` and ``aud``, equal to the configured
issuer and audience, be signed with one of the allowed algorithms (``none`` is
refused whatever the list says) by a key of the file (by ``kid``, or the only
key that fits the algorithm), and name the user in the configured claim. The
file is re-read on SIGHUP; one that cannot be used keeps the keys in force.
Verification is a public-key operation of tens of microseconds: it runs on the hub.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

from ..config import Config
from .identity import Credentials, Identity, Rejected

log = logging.getLogger(__name__)

#: Clock skew allowed on exp/nbf/iat: Envoy's jwt_authn clock_skew_seconds default.
JWT_LEEWAY_SECONDS = 60


class JwksError(ValueError):
    """The JWKS file cannot be used."""


@dataclasses.dataclass(frozen=True)
class JwksKey:
    """One key of the file: its ``kid``, the ``alg`` it names (or ""), its
    ``kty``, the algorithm PyJWK infers for it, and the key object to verify with."""

    kid: str | None
    alg: str
    kty: str
    inferred: str
    key: Any

    def fits(self, alg: str) -> bool:
        """Whether this key may verify *alg*: the ``alg`` it names, else its type
        (an RSA key never becomes an HMAC secret) and, for EC, its curve."""
        if self.alg:
            return self.alg == alg
        family = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP", "HS": "oct"}.get(alg[:2])
        if family != self.kty:
            return False
        return self.inferred == alg if self.kty in ("EC", "OKP") else True


def load_jwks(path: str, algorithms: tuple[str, ...]) -> list[JwksKey]:
    """The keys of the JWKS file at *path* that fit an allowed algorithm; JwksError if none."""
    import jwt

    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        entries = data["keys"]
        if not isinstance(entries, list):
            raise ValueError("'keys' is not a list")
        keys = []
        for entry in entries:
            if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
                continue
            jwk = jwt.PyJWK(entry)
            alg = entry.get("alg")
            named = alg if isinstance(alg, str) else ""
            keys.append(JwksKey(jwk.key_id, named, str(jwk.key_type), jwk.algorithm_name, jwk.key))
    except (OSError, ValueError, KeyError, TypeError, jwt.PyJWTError) as exc:
        raise JwksError(f"cannot use JWKS file {path}: {exc}") from exc
    keys = [key for key in keys if any(key.fits(alg) for alg in algorithms)]
    if not keys:
        raise JwksError(f"JWKS file {path} has no key for the allowed algorithms ({', '.join(algorithms)})")
    return keys


class JwtProvider:
    """``--auth-jwks``: tokens signed by the file's keys decide."""

    name = "jwt"

    def __init__(self, config: Config, *, clock: Any = time.time) -> None:
        self.path = config.auth_jwks
        self.algorithms = tuple(a for a in config.auth_jwt_algorithms if a.lower() != "none")
        self.issuer = config.auth_jwt_issuer
        self.audience = config.auth_jwt_audience
        self.claim = config.auth_jwt_claim
        self.group_claim = config.auth_jwt_group_claim
        self.ttl = config.auth_cache_ttl
        self.negative_ttl = 0.0
        self._clock = clock
        self.keys = load_jwks(self.path, self.algorithms)
        log.info("JWKS file %s loaded: %d keys", self.path, len(self.keys))

    def describe(self) -> str:
        return (
            f"JWT signed by a key of {self.path} ({len(self.keys)} keys; {', '.join(self.algorithms)}), "
            f"iss {self.issuer!r}, aud {self.audience!r}, user from {self.claim!r}"
            + (f", group from {self.group_claim!r}" if self.group_claim else "")
        )

    def identify(self, credentials: Credentials) -> Identity | None:
        token = credentials.bearer_token()
        if token is None:
            return None
        claims = self.verify(token)
        user = claims.get(self.claim)
        if not isinstance(user, str) or not user:
            raise Rejected(self.name, f"token has no {self.claim!r} claim naming the user")
        group = claims.get(self.group_claim) if self.group_claim else None
        if isinstance(group, list):
            group = next((g for g in group if isinstance(g, str)), None)
        lifetime = float(claims["exp"]) - self._clock()
        return Identity(user, self.name, group if isinstance(group, str) and group else None, lifetime)

    def verify(self, token: str) -> dict[str, Any]:
        """The token's claims if every check passes; Rejected naming the first that fails."""
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Rejected(self.name, f"token header unreadable: {exc}") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Rejected(self.name, f"token algorithm {alg!r} is not allowed")
        key = self._key_for(header.get("kid"), alg)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self.audience,
                issuer=self.issuer,
                leeway=JWT_LEEWAY_SECONDS,
                options={"require": ["exp", "iss", "aud", self.claim]},
            )
        except jwt.PyJWTError as exc:
            raise Rejected(self.name, f"token refused: {exc}") from None
        return claims

    def _key_for(self, kid: Any, alg: str) -> JwksKey:
        if kid is not None:
            for key in self.keys:
                if key.kid == kid and key.fits(alg):
                    return key
            raise Rejected(self.name, f"no key {kid!r} for {alg} in the JWKS file")
        fitting = [key for key in self.keys if key.fits(alg)]
        if len(fitting) != 1:
            raise Rejected(self.name, f"token has no kid and the JWKS file has {len(fitting)} keys for {alg}")
        return fitting[0]

    def reload(self) -> bool:
        try:
            keys = load_jwks(self.path, self.algorithms)
        except JwksError as exc:
            log.error("%s; keeping the %d keys loaded before", exc, len(self.keys))
            return False
        self.keys = keys
        log.info("JWKS file %s reloaded: %d keys", self.path, len(keys))
        return True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass
