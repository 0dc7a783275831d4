"""Signed tokens: the JWT provider's checks (in process, no subprocess), and end
to end with curl: ``-U user:<token>`` and ``--proxy-header "Proxy-Authorization:
Bearer …"``, refused when expired, for another audience, signed by another key
or with ``alg=none``; the JWKS file reloaded on SIGHUP."""

from __future__ import annotations

import base64
import json
import shutil
import signal
import subprocess
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gconnect.auth.authenticator import Authenticator
from gconnect.auth.identity import Credentials, Rejected, looks_like_jwt, parse_credentials
from gconnect.auth.jwtprovider import JwksError, JwtProvider
from gconnect.config import Config
from gconnect.errors import ProxyAuthFailedError, ProxyAuthMalformedError

from .conftest import wait_until
from .test_auth import basic

pytestmark = pytest.mark.timeout(90)

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


# The checks, in process


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


# End to end with curl


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed (.ci/run installs it)")


def curl(proxy, ca_file, url: str, *extra: str) -> subprocess.CompletedProcess:
    command = ["curl", "-sS", "--max-time", "20", "-x", f"http://127.0.0.1:{proxy.port}", "--cacert", str(ca_file)]
    return subprocess.run([*command, *extra, url], capture_output=True, text=True, timeout=30)


@pytest.fixture
def jwt_proxy(start_proxy, keys):
    return start_proxy("--auth-jwks", str(keys.path), "--auth-jwt-issuer", ISSUER, "--auth-jwt-audience", AUDIENCE)


@needs_curl
def test_curl_with_a_token_as_basic_password_and_as_bearer(jwt_proxy, keys, tls_server, ca_file):
    url = f"https://tls.test:{tls_server.port}/"
    as_basic = curl(jwt_proxy, ca_file, url, "-U", f"apt:{keys.token()}")
    assert as_basic.returncode == 0 and as_basic.stdout == "hello over tls\n", as_basic.stderr
    as_bearer = curl(
        jwt_proxy, ca_file, url, "--proxy-header", f"Proxy-Authorization: Bearer {keys.token(sub='svc-b')}"
    )
    assert as_bearer.returncode == 0 and as_bearer.stdout == "hello over tls\n", as_bearer.stderr
    assert " auth=jwt" in jwt_proxy.wait_access("user=svc-a ")
    assert " auth=jwt" in jwt_proxy.wait_access("user=svc-b ")


@needs_curl
@pytest.mark.parametrize(
    "make",
    [
        lambda k: k.token(exp=int(time.time()) - 120),
        lambda k: k.token(aud="another-proxy"),
        lambda k: k.token(k.other),
        lambda k: unsigned(),
    ],
    ids=["expired", "wrong-audience", "wrong-key", "alg-none"],
)
def test_curl_with_a_bad_token_gets_407(jwt_proxy, keys, tls_server, ca_file, make):
    url = f"https://tls.test:{tls_server.port}/"
    token = make(keys)
    for extra in (["-U", f"apt:{token}"], ["--proxy-header", f"Proxy-Authorization: Bearer {token}"]):
        result = curl(jwt_proxy, ca_file, url, *extra)
        assert result.returncode != 0 and "407" in result.stderr, result.stderr
    assert tls_server.accepted == 0


@needs_curl
def test_sighup_reloads_the_jwks_file(jwt_proxy, keys, tls_server, ca_file):
    url = f"https://tls.test:{tls_server.port}/"
    rotated = keys.token(keys.other, kid="rsa-2")
    assert "407" in curl(jwt_proxy, ca_file, url, "-U", f"apt:{rotated}").stderr
    keys.write(("rsa-2", keys.other))
    jwt_proxy.proc.send_signal(signal.SIGHUP)
    wait_until(lambda: any("reloaded: 1 keys" in line for line in jwt_proxy.lines))
    result = curl(jwt_proxy, ca_file, url, "-U", f"apt:{rotated}")
    assert result.returncode == 0 and result.stdout == "hello over tls\n", result.stderr


@needs_curl
def test_a_token_users_table_applies_to_them(start_proxy, keys, tls_server, ca_file, tmp_path):
    config = tmp_path / "gconnect.toml"
    config.write_text('[users.svc-b]\nallow-port = ["1"]\n')
    proxy = start_proxy(
        "--config",
        str(config),
        "--auth-jwks",
        str(keys.path),
        "--auth-jwt-issuer",
        ISSUER,
        "--auth-jwt-audience",
        AUDIENCE,
        "--log-format",
        "json",
    )
    url = f"https://tls.test:{tls_server.port}/"
    assert curl(proxy, ca_file, url, "-U", f"apt:{keys.token()}").returncode == 0
    refused = curl(proxy, ca_file, url, "-U", f"apt:{keys.token(sub='svc-b')}")
    assert refused.returncode != 0 and "403" in refused.stderr
    wait_until(lambda: len([json.loads(x) for x in proxy.access_lines() if '"event":"close"' in x]) == 2)
    records = [json.loads(line) for line in proxy.access_lines() if '"event":"close"' in line]
    assert {(r["user"], r["status"], r["auth"]) for r in records} == {("svc-a", 200, "jwt"), ("svc-b", 403, "jwt")}
