"""Signed tokens: the JWT provider's checks in process (expiry, audience,
issuer, wrong key, unknown kid, alg=none, an RSA key as an HMAC secret,
missing claims), the shapes a token travels in, the JWKS file's reload, and a
cached token never outliving its expiry."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gconnect.auth.authenticator import Authenticator
from gconnect.auth.identity import Credentials, Rejected, looks_like_jwt, parse_credentials
from gconnect.auth.jwtprovider import JwksError, JwtProvider
from gconnect.config import Config
from gconnect.errors import ProxyAuthFailedError, ProxyAuthMalformedError

from .test_auth import basic

pytestmark = pytest.mark.timeout(60)

ISSUER = "https://idp.test"


AUDIENCE = "gconnect"


class Keys:
    """Signing keys and the JWKS file holding their public halves."""

    def __init__(self, path) -> None:
        self.path = path
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.write(("rsa-1", self.rsa), ("ec-1", self.ec))

    def write(self, *keys) -> None:
        entries = []
        for kid, key in keys:
            algorithm = (
                jwt.algorithms.RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else jwt.algorithms.ECAlgorithm
            )
            entry = algorithm.to_jwk(key.public_key(), as_dict=True)
            entry["kid"] = kid
            entries.append(entry)
        self.path.write_text(json.dumps({"keys": entries}))

    def token(self, key=None, alg="RS256", kid="rsa-1", **claims) -> str:
        body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-a", "exp": int(time.time()) + 300, **claims}
        body = {k: v for k, v in body.items() if v is not None}
        headers = {"kid": kid} if kid else {}
        return jwt.encode(body, key or self.rsa, algorithm=alg, headers=headers)


def unsigned(**claims) -> str:
    """A token with alg=none (RFC 7519 §6.1): header and claims, empty signature."""

    def part(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    body = {"iss": ISSUER, "aud": AUDIENCE, "sub": "svc-a", "exp": int(time.time()) + 300, **claims}
    return f"{part({'alg': 'none', 'kid': 'rsa-1'})}.{part(body)}."


@pytest.fixture
def keys(tmp_path):
    return Keys(tmp_path / "jwks.json")


def jwt_config(keys, **overrides) -> Config:
    values = {"auth_jwks": str(keys.path), "auth_jwt_issuer": ISSUER, "auth_jwt_audience": AUDIENCE, **overrides}
    return Config(**values)


def bearer(token: str) -> Credentials:
    return Credentials("bearer", token=token)


def test_a_good_token_names_the_user_from_the_claim(keys):
    provider = JwtProvider(jwt_config(keys, auth_jwt_group_claim="groups"))
    identity = provider.identify(bearer(keys.token(groups=["staff", "x"])))
    assert (identity.user, identity.provider, identity.group) == ("svc-a", "jwt", "staff")
    assert 290 < identity.lifetime <= 300
    assert provider.identify(bearer(keys.token(keys.ec, "ES256", "ec-1"))).user == "svc-a"
    # No kid: the only key of that type decides.
    assert provider.identify(bearer(keys.token(keys.ec, "ES256", kid=None))).user == "svc-a"
    other = JwtProvider(jwt_config(keys, auth_jwt_claim="email"))
    assert other.identify(bearer(keys.token(email="a@corp.test"))).user == "a@corp.test"


@pytest.mark.parametrize(
    ("make", "why"),
    [
        (lambda k: k.token(exp=int(time.time()) - 120), "expired"),
        (lambda k: k.token(aud="someone-else"), "audience"),
        (lambda k: k.token(iss="https://idp.test.evil"), "issuer"),
        (lambda k: k.token(iss="https://idp"), "issuer"),  # a substring of the issuer (CVE-2024-53861)
        (lambda k: k.token(k.other), "signature"),
        (lambda k: k.token(k.other, kid="unknown"), "no key"),
        (lambda k: unsigned(), "'none' is not allowed"),
        (lambda k: k.token(exp=None), "exp"),
        (lambda k: k.token(sub=None), "sub"),
        (lambda k: k.token(alg="RS384"), "not allowed"),
        (lambda k: k.token(k.ec, "ES256", "rsa-1"), "no key"),  # an EC signature with the RSA key's kid
    ],
)
def test_bad_tokens_are_rejected(keys, make, why):
    provider = JwtProvider(jwt_config(keys))
    with pytest.raises(Rejected) as info:
        provider.identify(bearer(make(keys)))
    assert why.lower() in str(info.value).lower()


def test_an_rsa_public_key_is_never_an_hmac_secret(keys):
    # The algorithm-confusion attack: HS256 "signed" with the RSA public key's PEM,
    # hand-made because PyJWT itself refuses to use a PEM public key as an HMAC secret.
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    pem = keys.rsa.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    provider = JwtProvider(jwt_config(keys, auth_jwt_algorithms=("RS256", "HS256")))
    claims = unsigned().split(".")[1]
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "kid": "rsa-1"}).encode()).rstrip(b"=").decode()
    digest = hmac.new(pem, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    token = f"{header}.{claims}.{base64.urlsafe_b64encode(digest).rstrip(b'=').decode()}"
    with pytest.raises(Rejected, match="no key"):
        provider.identify(bearer(token))


def test_none_is_never_allowed_and_issuer_and_audience_are_required(keys):
    with pytest.raises(ValueError):
        jwt_config(keys, auth_jwt_algorithms=("none",))
    with pytest.raises(ValueError):
        Config(auth_jwks=str(keys.path), auth_jwt_issuer=ISSUER)


def test_shapes_basic_password_and_bearer(keys):
    token = keys.token()
    assert looks_like_jwt(token) and not looks_like_jwt("pass.word.here") and not looks_like_jwt("pw")
    assert parse_credentials(basic("anyone", token), bearer=True).bearer_token() == token
    assert parse_credentials(b"Bearer " + token.encode(), bearer=True) == bearer(token)
    assert parse_credentials(basic("alice", "pw"), bearer=True).bearer_token() is None
    for value in (b"Bearer " + token.encode(), b"Bearer", b"Bearer a b"):
        with pytest.raises(ProxyAuthMalformedError):
            parse_credentials(value, bearer=value.startswith(b"Bearer a"))
    with pytest.raises(ProxyAuthMalformedError):
        parse_credentials(b"Bearer \xff", bearer=True)


def test_reload_takes_new_keys_and_keeps_them_on_a_bad_file(keys):
    provider = JwtProvider(jwt_config(keys))
    rotated = keys.token(keys.other, kid="rsa-2")
    with pytest.raises(Rejected):
        provider.identify(bearer(rotated))
    keys.write(("rsa-2", keys.other))
    assert provider.reload()
    assert provider.identify(bearer(rotated)).user == "svc-a"
    keys.path.write_text("{not json")
    assert not provider.reload()
    assert provider.identify(bearer(rotated)).user == "svc-a"
    keys.path.write_text('{"keys": []}')
    with pytest.raises(JwksError):
        JwtProvider(jwt_config(keys))


def test_the_chain_caches_a_token_no_longer_than_it_lives(keys):
    class Clock:
        now = 1000.0

        def __call__(self):
            return self.now

    clock = Clock()
    auth = Authenticator(jwt_config(keys, auth_cache_ttl=600), clock=clock)
    token = keys.token(exp=int(time.time()) + 30)
    identity = auth.identify([b"Bearer " + token.encode()], "10.0.0.1")
    assert identity.provider == "jwt"
    (expires,) = [entry[1] for entry in auth._cache.values()]
    assert expires - clock.now <= 30
    with pytest.raises(ProxyAuthFailedError):
        auth.identify([b"Bearer " + keys.token(aud="x").encode()], "10.0.0.1")
